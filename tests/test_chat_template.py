"""Chat templates (xbook.infer.chat_template): rendered prompts equal transformers' apply_chat_template."""

from __future__ import annotations

import json
from pathlib import Path

import jinja2
import pytest
import tokenizers
import transformers
from tokenizers import decoders, models, pre_tokenizers, trainers

from xbook.infer import chat_template as ct

# Written for this test in the manner of the published templates (not copied from any model).
MISTRAL_STYLE = (
    "{{ bos_token }}"
    "{% if messages[0]['role'] == 'system' %}{% set system = messages[0]['content'] %}"
    "{% set rest = messages[1:] %}{% else %}{% set system = '' %}{% set rest = messages %}{% endif %}"
    "{% for message in rest %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}"
    "{% if loop.last and system %}[INST] {{ system }}\n\n{{ message['content'] | trim }}[/INST]"
    "{% else %}[INST] {{ message['content'] | trim }}[/INST]{% endif %}"
    "{% else %} {{ message['content'] | trim }}{{ eos_token }}{% endif %}"
    "{% endfor %}")
CHATML_STYLE = """{% for message in messages %}
  {% if loop.first and message['role'] != 'system' %}<|im_start|>system
You write novels.<|im_end|>
{% endif %}
<|im_start|>{{ message['role'] }}
{% generation %}{{ message['content'] }}{% endgeneration %}<|im_end|>
{% endfor %}
{% if add_generation_prompt %}<|im_start|>assistant
{% endif %}"""
# tojson with options, namespace, loop controls, dict and a year from strftime_now.
FEATURES = """{% set ns = namespace(count=0, seen=dict(a=1)) %}
{% for message in messages %}
  {% if message['role'] == 'tool' %}{% continue %}{% endif %}
  {% if ns.count >= 3 %}{% break %}{% endif %}
  {% set ns.count = ns.count + 1 %}
[{{ ns.count }}] {{ message | tojson(indent=2, sort_keys=True) }} {{ message['content'] | tojson }}
{% endfor %}
{{ tools | tojson(separators=(',', ':')) }} {{ pad_token }} {{ unk_token }} {{ strftime_now('%Y') }}
{% if add_generation_prompt %}>>{% endif %}"""

CHATS = [
    [{"role": "user", "content": "Write the first chapter of a sea story. "}],
    [{"role": "system", "content": "You are a careful editor."},
     {"role": "user", "content": "Plan a book about a lighthouse keeper."},
     {"role": "assistant", "content": "## Book Title\nThe Keeper — «un phare»"},
     {"role": "user", "content": "Now the chapter names, with \"quotes\" & <angle> brackets."}],
    [{"role": "user", "content": "a"}, {"role": "tool", "content": "skipped"}, {"role": "assistant", "content": "b"},
     {"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}],
]


@pytest.fixture(scope="module")
def tokenizer_json(tmp_path_factory) -> str:
  """A tiny byte-level BPE with special tokens, trained here."""
  tokenizer = tokenizers.Tokenizer(models.BPE())
  tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tokenizer.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                special_tokens=["<unk>", "<s>", "</s>", "<pad>", "<|im_start|>", "<|im_end|>"],
                                show_progress=False)
  tokenizer.train_from_iterator(["The keeper of the lighthouse wrote a chapter every night."] * 4, trainer)
  return tokenizer.to_str()


def _folder(root: Path, tokenizer_json: str, config: dict) -> Path:
  root.mkdir(parents=True)
  (root / "tokenizer.json").write_text(tokenizer_json, encoding="utf-8")
  base = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>",
          "eos_token": {"__type": "AddedToken", "content": "</s>", "special": True}, "unk_token": "<unk>", "pad_token": "<pad>"}
  (root / "tokenizer_config.json").write_text(json.dumps({**base, **config}), encoding="utf-8")
  return root


@pytest.mark.parametrize("name, template", [("mistral", MISTRAL_STYLE), ("chatml", CHATML_STYLE),
                                            ("features", FEATURES)])
def test_rendered_prompts_equal_transformers_apply_chat_template(tmp_path, tokenizer_json, name, template):
  folder = _folder(tmp_path / name, tokenizer_json, {"chat_template": template})
  reference = transformers.AutoTokenizer.from_pretrained(folder)
  ours = ct.load_chat_template(folder)
  assert ours.special_tokens["bos_token"] == "<s>" and ours.special_tokens["eos_token"] == "</s>"
  tools = [{"type": "function", "function": {"name": "count_words", "parameters": {"type": "object"}}}]
  rendered = 0
  for messages in CHATS:
    for add_generation_prompt in (True, False):
      try:
        expected = reference.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt,
                                                 tools=tools)
      except jinja2.TemplateError as error:  # the Mistral-style template refuses a tool turn
        with pytest.raises(ct.ChatTemplateError, match=str(error)[:40]):
          ours.render(messages, add_generation_prompt=add_generation_prompt, tools=tools)
        continue
      assert ours.render(messages, add_generation_prompt=add_generation_prompt, tools=tools) == expected
      rendered += 1
  assert rendered >= 4


def test_a_template_list_a_jinja_file_and_a_folder_without_template(tmp_path, tokenizer_json):
  listed = _folder(tmp_path / "listed", tokenizer_json, {"chat_template": [
      {"name": "tool_use", "template": "tools"}, {"name": "default", "template": CHATML_STYLE}]})
  assert ct.load_chat_template(listed).render(CHATS[0]) == transformers.AutoTokenizer.from_pretrained(
      listed).apply_chat_template(CHATS[0], tokenize=False, add_generation_prompt=True)
  jinja_file = _folder(tmp_path / "jinja", tokenizer_json, {})
  (jinja_file / "chat_template.jinja").write_text(MISTRAL_STYLE, encoding="utf-8")
  assert ct.load_chat_template(jinja_file).render(CHATS[1]) == transformers.AutoTokenizer.from_pretrained(
      jinja_file).apply_chat_template(CHATS[1], tokenize=False, add_generation_prompt=True)
  bare = _folder(tmp_path / "bare", tokenizer_json, {})
  with pytest.raises(ct.ChatTemplateError, match="no chat template"):
    ct.load_chat_template(bare)
  with pytest.raises(ct.ChatTemplateError, match="does not parse"):
    ct.ChatTemplate("{% for m in messages %}").render(CHATS[0])
  with pytest.raises(ct.ChatTemplateError, match="rendering failed"):  # the sandbox: no dunder access
    ct.ChatTemplate("{{ messages.__class__.__mro__ }}").render(CHATS[0])
