"""An imported model's chat template, rendered with Jinja as transformers' `apply_chat_template` renders it.

A Hugging Face model folder carries its template in `chat_template.jinja` (transformers >= 4.43 writes it
there) or as `tokenizer_config.json`'s `chat_template` (a string, or a list of {"name", "template"} of which
"default" is used). A run keeps its vocabulary's files in `<run_dir>/vocab/` (Vocabulary.save: the
tokenizer file and the side files xbook.data.hf_vocab reads, tokenizer_config.json among them), so
`load_chat_template(run_dir / "vocab")` finds the template of a run started from imported weights.

Rendering follows transformers (5.x, `transformers.utils.chat_template_utils`), which runs untrusted Hub
templates in Jinja's immutable sandbox:
  - environment: `ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)` with the
    `loopcontrols` extension (`{% break %}`, `{% continue %}`) and a `{% generation %}...{% endgeneration %}`
    block that renders its body (transformers uses it to find assistant tokens);
  - globals: `raise_exception(message)` (raises jinja2.TemplateError), `strftime_now(format)` (the local time),
    `dict` and `namespace` (no underscore-prefixed names); filter `tojson(x, ensure_ascii=False, indent=None,
    separators=None, sort_keys=False)` (json.dumps, no HTML escaping);
  - variables: `messages`, `tools`, `documents`, `add_generation_prompt`, the tokenizer's special tokens by
    name as strings (`bos_token`, `eos_token`, `unk_token`, `pad_token`, ... from tokenizer_config.json /
    special_tokens_map.json), and any extra keyword (which overrides a special token of the same name).
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import jinja2
import jinja2.ext
import jinja2.nodes
import jinja2.utils
from jinja2.sandbox import ImmutableSandboxedEnvironment

# transformers' special-token attributes, as `special_tokens_map` names them.
SPECIAL_TOKEN_NAMES = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")


class ChatTemplateError(ValueError):
  """A folder without a usable chat template, or a template that fails; the message says which and why."""


class _GenerationBlock(jinja2.ext.Extension):
  """`{% generation %}body{% endgeneration %}`: renders the body (transformers marks assistant text with it)."""

  tags = {"generation"}

  def parse(self, parser: jinja2.parser.Parser) -> jinja2.nodes.Node:
    lineno = next(parser.stream).lineno
    body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
    return jinja2.nodes.CallBlock(self.call_method("_render"), [], [], body).set_lineno(lineno)

  def _render(self, caller) -> str:
    return caller()


class _Namespace(jinja2.utils.Namespace):
  """Jinja's `namespace` that refuses underscore-prefixed attributes."""

  def __init__(*args: Any, **kwargs: Any) -> None:  # noqa: N805 - Jinja's Namespace signature
    self, attributes = args[0], dict(*args[1:], **kwargs)
    for name in attributes:
      _Namespace._check(name)
    jinja2.utils.Namespace.__init__(self, attributes)

  def __setitem__(self, name: str, value: Any) -> None:
    _Namespace._check(name)
    jinja2.utils.Namespace.__setitem__(self, name, value)

  @staticmethod
  def _check(name: Any) -> None:
    if isinstance(name, str) and name.startswith("_"):
      raise jinja2.exceptions.SecurityError(f"a chat template may not set the attribute {name!r} on a namespace")


class _Dict:
  """The `dict` of templates: builds plain dicts, and nothing else of the type is reachable."""

  def __call__(self, *args: Any, **kwargs: Any) -> dict:
    return dict(*args, **kwargs)

  def fromkeys(self, *args: Any, **kwargs: Any) -> dict:
    return dict.fromkeys(*args, **kwargs)


def _raise_exception(message: str) -> None:
  raise jinja2.exceptions.TemplateError(message)


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None, separators=None,
            sort_keys: bool = False) -> str:
  return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(format: str) -> str:  # noqa: A002 - the name templates call it with
  return datetime.datetime.now().strftime(format)


@functools.lru_cache(maxsize=16)
def compile_template(source: str) -> jinja2.Template:
  """`source` compiled in the sandboxed environment of the module docstring.

  Raises:
    ChatTemplateError: for a template Jinja cannot parse.
  """
  env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                      extensions=[_GenerationBlock, jinja2.ext.loopcontrols])
  env.filters["tojson"] = _tojson
  env.globals.update(raise_exception=_raise_exception, strftime_now=_strftime_now, namespace=_Namespace,
                     dict=_Dict())
  try:
    return env.from_string(source)
  except jinja2.TemplateSyntaxError as error:
    raise ChatTemplateError(f"the chat template does not parse: {error} (line {error.lineno})") from error


@dataclasses.dataclass(frozen=True)
class ChatTemplate:
  """A model's chat template and the special tokens it is rendered with.

  Attributes:
    source: the Jinja template text.
    special_tokens: {"bos_token": "<s>", ...}: the tokenizer's special tokens by name (strings).
    origin: where the template was read (for error messages).
  """

  source: str
  special_tokens: Mapping[str, str] = dataclasses.field(default_factory=dict)
  origin: str = "chat template"

  def render(self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True,
             tools: Sequence[Mapping[str, Any]] | None = None, documents: Sequence[Mapping[str, Any]] | None = None,
             **kwargs: Any) -> str:
    """The prompt text of `messages` ([{"role", "content"}, ...]), as transformers'
    `apply_chat_template(messages, tokenize=False, add_generation_prompt=...)` gives it.

    Raises:
      ChatTemplateError: when the template raises (raise_exception, an undefined operation, the sandbox).
    """
    variables = {**self.special_tokens, **kwargs}
    try:
      return compile_template(self.source).render(
          messages=[dict(m) for m in messages], tools=None if tools is None else [dict(t) for t in tools],
          documents=None if documents is None else [dict(d) for d in documents],
          add_generation_prompt=add_generation_prompt, **variables)
    except jinja2.TemplateError as error:
      raise ChatTemplateError(f"{self.origin}: rendering failed: {error}") from error


def _token_text(value: Any) -> str | None:
  """A special token as tokenizer_config.json writes it: a string or {"content": ...}."""
  if isinstance(value, str):
    return value
  if isinstance(value, Mapping) and isinstance(value.get("content"), str):
    return value["content"]
  return None


def _read_json(path: Path) -> dict[str, Any]:
  try:
    data = json.loads(path.read_text(encoding="utf-8"))
  except (OSError, json.JSONDecodeError) as error:
    raise ChatTemplateError(f"{path}: not readable JSON ({error})") from error
  if not isinstance(data, dict):
    raise ChatTemplateError(f"{path}: expected a JSON object")
  return data


def _template_from_config(config: Mapping[str, Any], path: Path) -> str | None:
  template = config.get("chat_template")
  if template is None or isinstance(template, str):
    return template
  if isinstance(template, list):
    named = {t.get("name"): t.get("template") for t in template if isinstance(t, Mapping)}
    if isinstance(named.get("default"), str):
      return named["default"]
  raise ChatTemplateError(f"{path}: chat_template must be a string or a list holding a template named "
                          f"'default', got {json.dumps(template)[:80]}")


def load_chat_template(folder: str | Path) -> ChatTemplate:
  """The chat template of a model folder (module docstring: where it is looked for) with the special tokens
  named in its tokenizer_config.json and special_tokens_map.json (the former wins, as in transformers).

  Raises:
    ChatTemplateError: when the folder has no chat template (a base model: use plain prompts, or add one).
  """
  folder = Path(folder)
  config_path, map_path, jinja_path = (folder / "tokenizer_config.json", folder / "special_tokens_map.json",
                                       folder / "chat_template.jinja")
  config = _read_json(config_path) if config_path.is_file() else {}
  special_map = _read_json(map_path) if map_path.is_file() else {}
  specials = {}
  for name in SPECIAL_TOKEN_NAMES:
    text = _token_text(config.get(name, special_map.get(name)))
    if text is not None:
      specials[name] = text
  if jinja_path.is_file():
    return ChatTemplate(jinja_path.read_text(encoding="utf-8"), specials, str(jinja_path))
  source = _template_from_config(config, config_path)
  if source is None:
    raise ChatTemplateError(f"{folder}: no chat template (neither chat_template.jinja nor a chat_template in "
                            "tokenizer_config.json); an instruct model's folder carries one")
  return ChatTemplate(source, specials, str(config_path))


def render_chat(folder: str | Path, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True,
                **kwargs: Any) -> str:
  """`load_chat_template(folder).render(messages, add_generation_prompt, **kwargs)`."""
  return load_chat_template(folder).render(messages, add_generation_prompt=add_generation_prompt, **kwargs)
