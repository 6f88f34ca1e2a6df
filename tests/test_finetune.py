"""Fine-tuning a pretrained model end to end, as the README walks it: a Hugging Face folder (config.json,
safetensors, tokenizer.json) -> `xbook weights import` -> `xbook train` with `train.init_from` and the
model's own tokenizer -> `xbook weights export --run_dir` -> `transformers` loads the result.

The models are tiny random Llama, Mistral and Ministral 3 built here with `transformers`, with a
byte-level BPE tokenizer trained here with `tokenizers` on real novels; their vocabularies are padded
(more embedding rows than tokenizer ids), as published models' often are.
"""

from __future__ import annotations

import dataclasses
import json

import gin
import jax
import numpy as np
import pytest
import tokenizers
import torch
import transformers
from tokenizers import decoders, models, pre_tokenizers, trainers

from xbook import cli
from xbook.data import vocab
from xbook.infer.generate import load_run
from xbook.model import DecoderConfig
from xbook.train import trainer as trainer_lib
from xbook.train.input_pipeline import trajectory_batches
from xbook.train.metrics import read_metrics

from tiny_runs import run_data

SPECIALS = ("<unk>", "<s>", "</s>", "<pad>")  # Mistral's first ids: unk 0, bos 1, eos 2
PADDED_ROWS = 8
SEQ_LEN, BATCH = 128, 8
MESH = (2, 2, 1, 2)
ARCHITECTURES = {
    "llama": {},
    "mistral": {"sliding_window": None},
    # Query scaling from position 32 on (a tiny original context), so the short windows cross it.
    "ministral3": {"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e6, "factor": 4.0,
                                       "original_max_position_embeddings": 32, "beta_fast": 32.0,
                                       "beta_slow": 1.0, "mscale": 1.0, "mscale_all_dim": 1.0,
                                       "llama_4_scaling_beta": 0.1},
                   "max_position_embeddings": 128},
}


# An instruct model's template in the Mistral style (written for this test): system text before the first
# user turn, [INST] ... [/INST] around user turns, </s> after assistant turns.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'system' %}{% set ns_system = message['content'] %}"
    "{% elif message['role'] == 'user' %}[INST] {{ message['content'] }} [/INST]"
    "{% else %}{{ message['content'] }}{{ eos_token }}{% endif %}{% endfor %}")


@pytest.fixture(scope="module")
def tokenizer_dir(corpus_dir, tmp_path_factory):
  """A Mistral-style tokenizer folder: byte-level BPE of 1,000 ids trained on two novels, specials first."""
  tokenizer = tokenizers.Tokenizer(models.BPE())
  tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tokenizer.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=1000, special_tokens=list(SPECIALS), show_progress=False,
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
  tokenizer.train_from_iterator([(corpus_dir / name).read_text(encoding="utf-8")
                                 for name in ("pg46.txt", "pg43.txt")], trainer)
  folder = tmp_path_factory.mktemp("tokenizer")
  tokenizer.save(str(folder / "tokenizer.json"))
  (folder / "tokenizer_config.json").write_text(json.dumps(
      {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>",
       "tokenizer_class": "PreTrainedTokenizerFast", "chat_template": CHAT_TEMPLATE}))
  return folder


def _hf_folder(model_type, tokenizer_dir, out):
  """A tiny random `model_type` checkpoint with the tokenizer's files, as published models ship."""
  size = tokenizers.Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json")).get_vocab_size()
  torch.manual_seed(0)
  config = transformers.AutoConfig.for_model(
      model_type, vocab_size=size + PADDED_ROWS, hidden_size=64, intermediate_size=128,
      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
      bos_token_id=1, eos_token_id=2, pad_token_id=3, tie_word_embeddings=False,
      **ARCHITECTURES[model_type])
  model = transformers.AutoModelForCausalLM.from_config(config).eval()
  with torch.no_grad():
    for param in model.parameters():  # a pretrained model is far from init: larger weights
      param.mul_(3.0)
  model.save_pretrained(out)
  for name in ("tokenizer.json", "tokenizer_config.json"):
    (out / name).write_bytes((tokenizer_dir / name).read_bytes())
  return model


def _train(run_dir, scaffold_file, model, learning_rate=1e-3, **overrides):
  bindings = [f"MeshConfig.{axis} = {size}" for axis, size in zip(("data", "fsdp", "sequence", "tensor"), MESH)]
  bindings += [f"OptimizerConfig.learning_rate = {learning_rate}", "OptimizerConfig.warmup_steps = 1"]
  gin.clear_config()
  gin.parse_config(bindings)
  kwargs = dict(scaffold_files=str(scaffold_file), model_config=model, batch_size=BATCH,
                seq_len=SEQ_LEN, checkpoint_every=2, log_every=1, seed=0)
  kwargs.update(overrides)
  try:
    return trainer_lib.train(str(run_dir), **kwargs)
  finally:
    gin.clear_config()


def _hf_loss(model, batch) -> float:
  """The weighted NLL that `transformers` computes on the batch's tokens and weights."""
  with torch.no_grad():
    logits = model(input_ids=torch.from_numpy(batch["decoder_input_tokens"]).long(),
                   position_ids=torch.from_numpy(batch["decoder_positions"]).long()).logits.double()
  nll = -torch.log_softmax(logits, -1).gather(
      -1, torch.from_numpy(batch["decoder_target_tokens"]).long()[..., None])[..., 0]
  weights = torch.from_numpy(batch["decoder_loss_weights"]).double()
  return float((nll * weights).sum() / weights.sum())


@pytest.mark.parametrize("model_type", sorted(ARCHITECTURES))
def test_a_pretrained_model_fine_tunes_and_goes_back_to_transformers(model_type, tokenizer_dir,
                                                                     scaffold_file, tmp_path, capsys):
  hf_dir, imported, run_dir, exported = (tmp_path / name for name in ("hf", "imported", "run", "exported"))
  hf_model = _hf_folder(model_type, tokenizer_dir, hf_dir)
  assert cli.main(["weights", "import", "--hf", str(hf_dir), "--out", str(imported)]) == 0
  assert "tokenizer tokenizer.json" in capsys.readouterr().out

  with open(imported / "model.json") as f:
    model = DecoderConfig(**json.load(f)["model"])
  model = dataclasses.replace(model, attention="blockwise", attention_block=32)  # allowed to differ
  _train(run_dir, scaffold_file, model, steps=2, init_from=str(imported), vocab_path=str(imported))

  # Step 1's loss is the pretrained model's own loss on the first batch, as transformers computes it.
  vocabulary = vocab.load_vocabulary(imported)
  assert (vocabulary.bos_id, vocabulary.eos_id, vocabulary.pad_id) == (1, 2, 3)
  batch = next(trajectory_batches(run_data(run_dir, scaffold_file, SEQ_LEN), split="train", global_batch_size=BATCH,
                                  seed=0))
  assert (batch["decoder_input_tokens"][:, 0] == vocabulary.bos_id).all()
  first = read_metrics(run_dir)[0]
  assert first["loss"] == pytest.approx(_hf_loss(hf_model, batch), rel=1e-4, abs=1e-4)
  info = json.loads((run_dir / "model.json").read_text())
  assert info["started_from"]["kind"] == "imported" and info["vocab_path"] == "vocab/tokenizer.json"

  # The trained run goes back to the Hugging Face world: same logits, same tokenizer.
  assert cli.main(["weights", "export", "--run_dir", str(run_dir), "--out", str(exported),
                   "--dtype", "float32"]) == 0
  trained = load_run(run_dir)
  reloaded = transformers.AutoModelForCausalLM.from_pretrained(exported).eval()
  tokens = batch["decoder_input_tokens"][:2]
  positions = batch["decoder_positions"][:2]
  ours = np.asarray(jax.jit(trained.model.apply)({"params": trained.params}, tokens, np.ones_like(tokens),
                                                  positions))
  with torch.no_grad():
    theirs = reloaded(input_ids=torch.from_numpy(tokens).long(),
                      position_ids=torch.from_numpy(positions).long()).logits.numpy()
  np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=1e-4)
  hf_tokenizer = transformers.AutoTokenizer.from_pretrained(exported)
  text = "“Marley was dead: to begin with.” — Ça va?"
  assert hf_tokenizer(text, add_special_tokens=False)["input_ids"] == vocabulary.encode(text)
  if model_type == "mistral":
    _serve_renders_the_chat_template_as_transformers(run_dir, transformers.AutoTokenizer.from_pretrained(tokenizer_dir))


def _serve_renders_the_chat_template_as_transformers(run_dir, hf_tokenizer) -> None:
  """xbook serve's chat endpoint on an imported instruct model's run: the model's own template (kept in the
  run's vocab/ folder), rendered and encoded to the ids transformers' apply_chat_template gives."""
  from xbook.infer import serve
  model = serve.load_model(run_dir)
  assert model.chat_template is not None
  messages = [{"role": "user", "content": "Plan a ghost story."}, {"role": "assistant", "content": "A miser."},
              {"role": "user", "content": "Now the first chapter — “in the fog”."}]
  request = serve.parse_request("chat", {"messages": messages, "max_tokens": 4}, model)
  want = hf_tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
  want = want["input_ids"] if isinstance(want, dict) or hasattr(want, "keys") else want
  assert request.ids == list(want)
  assert request.ids[0] == model.vocabulary.bos_id


def test_an_exported_run_imported_again_starts_where_it_ended(tokenizer_dir, scaffold_file, tmp_path,
                                                             capsys):
  """From scratch -> export -> import -> warm start: the second run begins with the first one's
  parameters, its first loss that of the trained model on the same batch, far below ln(vocab)."""
  tokenizer_size = vocab.load_vocabulary(tokenizer_dir).size
  model = DecoderConfig(vocab_size=tokenizer_size, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2,
                        head_dim=16, mlp_dim=128)
  first_run, exported, imported, second_run = (tmp_path / n for n in ("a", "hf", "imported", "b"))
  _train(first_run, scaffold_file, model, steps=20, vocab_path=str(tokenizer_dir), checkpoint_every=10,
         learning_rate=5e-3)
  assert cli.main(["weights", "export", "--run_dir", str(first_run), "--out", str(exported),
                   "--dtype", "float32", "--model_type", "mistral"]) == 0
  assert cli.main(["weights", "import", "--hf", str(exported), "--out", str(imported)]) == 0
  _train(second_run, scaffold_file, model, steps=1, init_from=str(imported), vocab_path=str(imported),
         checkpoint_every=1)
  first_losses = [r["loss"] for r in read_metrics(first_run)]
  second = read_metrics(second_run)[0]["loss"]
  trainer = trainer_lib.Trainer(model_config=model, optimizer_config=trainer_lib.OptimizerConfig(),
                                mesh_config=trainer_lib.MeshConfig(*MESH), batch_size=BATCH, seq_len=SEQ_LEN)
  batch = next(trajectory_batches(run_data(second_run, scaffold_file, SEQ_LEN), split="train",
                                  global_batch_size=BATCH, seed=0))
  trained = load_run(first_run).params
  with trainer.context():
    params = jax.device_put(trained, trainer.state_shardings.params)
  assert second == pytest.approx(trainer.evaluate(params, [batch])["eval/loss"], rel=1e-5)
  assert second < first_losses[0] - 0.5 and second < np.log(tokenizer_size) - 0.5
  assert abs(second - first_losses[-1]) < 0.5  # the last loss was on another batch: close, not equal
