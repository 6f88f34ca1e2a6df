"""LoRA fine-tuning: adapters on a frozen base (xbook.model.lora, xbook.train.adapters), their checkpoints,
their merge, and the peft adapter folder that transformers and peft load.

The bases are tiny random Mistral and Ministral 3 models built here with transformers and imported with
`xbook weights import`; training reads conftest's scaffolds of real novels and its xbook vocabulary.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import flax.linen as nn
import gin
import jax
import numpy as np
import pytest
import torch
import transformers

from xbook import cli
from xbook.gin_flags import parse_gin
from xbook.infer.generate import load_run
from xbook.model import Decoder, DecoderConfig, LoraConfig, abstract_params
from xbook.model import lora as lora_lib
from xbook.model.hf import import_hf_checkpoint, load_params, read_peft_adapter
from xbook.train import adapters, aot
from xbook.train import trainer as trainer_lib
from xbook.train.checkpoints import RunCheckpoints
from xbook.train.input_pipeline import trajectory_batches
from xbook.train.metrics import read_metrics
from tiny_runs import MESH, run_data, train_tiny

# conftest's vocabulary has 1,024 pieces: the tiny bases have as many embedding rows.
HF_SHAPE = {"vocab_size": 1024, "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "tie_word_embeddings": False}
MINISTRAL_ROPE = {"rope_type": "yarn", "type": "yarn", "rope_theta": 10000.0, "factor": 4.0,
                  "original_max_position_embeddings": 8, "beta_fast": 32.0, "beta_slow": 1.0,
                  "mscale": 1.0, "mscale_all_dim": 1.0, "llama_4_scaling_beta": 0.1}
ARCHITECTURES = {"mistral": {"sliding_window": None},
                 "ministral3": {"rope_parameters": MINISTRAL_ROPE, "max_position_embeddings": 32}}
LORA = LoraConfig(rank=4, alpha=8.0, dropout=0.1)
SEQ_LEN, BATCH = 256, 8
REPO = Path(__file__).resolve().parents[1]


def hf_base(model_type: str, seed: int = 0) -> transformers.PreTrainedModel:
  torch.manual_seed(seed)
  config = transformers.AutoConfig.for_model(model_type, **HF_SHAPE, **ARCHITECTURES[model_type])
  model = transformers.AutoModelForCausalLM.from_config(config).eval()
  with torch.no_grad():
    for param in model.parameters():  # a pretrained model is far from init: larger weights
      param.mul_(3.0)
  return model


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
  """{name: (transformers model, its imported folder)}: Mistral (two seeds) and Ministral 3."""
  root = tmp_path_factory.mktemp("bases")
  out = {}
  for name, model_type, seed in (("mistral", "mistral", 0), ("other", "mistral", 1),
                                 ("ministral3", "ministral3", 0)):
    model = hf_base(model_type, seed)
    model.save_pretrained(root / f"{name}-hf")
    import_hf_checkpoint(root / f"{name}-hf", root / name)
    out[name] = (model, root / name)
  return out


def lora_model(base_dir, lora: LoraConfig = LORA) -> DecoderConfig:
  config = DecoderConfig(**json.loads((base_dir / "model.json").read_text())["model"])
  return dataclasses.replace(config, lora=lora)


def first_batch(run_dir, scaffold_file):
  """The first training batch of seed 0 of a run trained on `scaffold_file` with the default data settings."""
  return next(trajectory_batches(run_data(run_dir, scaffold_file, SEQ_LEN), split="train", global_batch_size=BATCH,
                                 seed=0))


def logits(config: DecoderConfig, params, tokens: np.ndarray) -> np.ndarray:
  positions = np.broadcast_to(np.arange(tokens.shape[1], dtype=np.int32), tokens.shape)
  return np.asarray(jax.jit(Decoder(config).apply)({"params": params}, tokens, np.ones_like(tokens), positions))


@pytest.fixture(scope="module")
def lora_run(bases, scaffold_file, vocab_path, tmp_path_factory):
  """A LoRA run of 4 steps on the Mistral base, checkpoints at 2 and 4."""
  run_dir = tmp_path_factory.mktemp("lora") / "run"
  train_tiny(run_dir, scaffold_file, vocab_path, steps=4, model=lora_model(bases["mistral"][1]),
             init_from=str(bases["mistral"][1]), checkpoint_every=2)
  return run_dir


def test_a_fresh_adapter_starts_at_the_base_models_loss_and_checkpoints_hold_adapters_only(lora_run, bases,
                                                                                          scaffold_file):
  config = lora_model(bases["mistral"][1])
  base_config = dataclasses.replace(config, lora=None)
  trainer = trainer_lib.Trainer(model_config=base_config, optimizer_config=trainer_lib.OptimizerConfig(),
                                mesh_config=trainer_lib.MeshConfig(*MESH), batch_size=BATCH, seq_len=SEQ_LEN)
  _, base_params, _ = load_params(bases["mistral"][1])
  with trainer.context():
    params = jax.device_put(base_params, trainer.state_shardings.params)
  records = read_metrics(lora_run)
  assert records[0]["loss"] == pytest.approx(trainer.evaluate(params, [first_batch(lora_run, scaffold_file)])["eval/loss"], rel=1e-5)
  assert records[-1]["loss"] < records[0]["loss"]
  assert records[0]["trainable_params"] == config.lora_params()
  assert records[0]["frozen_params"] == base_config.num_params()

  info = json.loads((lora_run / "model.json").read_text())
  assert info["started_from"]["path"] == str(bases["mistral"][1])
  assert len(info["started_from"]["fingerprint"]) == 16 and info["model"]["lora"]["rank"] == 4
  # The checkpoint holds the adapters and their Adam moments, nothing of the base.
  cpu = jax.sharding.SingleDeviceSharding(jax.devices("cpu")[0])
  abstract = lora_lib.split_params(nn.unbox(
      jax.eval_shape(lambda: Decoder(config).init(jax.random.key(0), *[np.zeros((1, 1), np.int32)] * 3))["params"]))[0]
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=cpu), abstract)
  checkpoints = RunCheckpoints(str(lora_run))
  restored = checkpoints.restore(4, abstract)["params"]
  checkpoints.close()
  assert lora_lib.count(restored) == config.lora_params()
  stored = {p.name for p in (lora_run / "checkpoints/4/params").iterdir()}
  assert stored and not any("embed" in name for name in stored)


def test_training_changes_only_the_adapters_and_adam_holds_only_theirs(bases):
  config = dataclasses.replace(lora_model(bases["mistral"][1]), lora=dataclasses.replace(LORA, dropout=0.0))
  trainer = trainer_lib.Trainer(model_config=config, optimizer_config=trainer_lib.OptimizerConfig(
      learning_rate=1e-2, warmup_steps=1), mesh_config=trainer_lib.MeshConfig(*MESH), batch_size=BATCH,
      seq_len=64)
  state = trainer.init_state(seed=0)
  before = jax.device_get(state.params)
  rng = np.random.default_rng(0)
  tokens = rng.integers(3, 1000, (BATCH, 64)).astype(np.int32)
  batch = {"decoder_input_tokens": tokens, "decoder_target_tokens": np.roll(tokens, -1, axis=1),
           "decoder_loss_weights": np.ones((BATCH, 64), np.float32),
           "decoder_segment_ids": np.ones((BATCH, 64), np.int32),
           "decoder_positions": np.broadcast_to(np.arange(64, dtype=np.int32), (BATCH, 64)).copy(),
           "decoder_segment_kinds": np.ones((BATCH, 64), np.int32)}
  for _ in range(3):
    state, metrics = trainer.step(state, batch)
  after = jax.device_get(state.params)
  changed = {jax.tree_util.keystr(path): not np.array_equal(x, y) for (path, x), y in
             zip(jax.tree_util.tree_leaves_with_path(before), jax.tree.leaves(after))}
  assert all(changed[name] == ("_lora_" in name) for name in changed), changed
  moments = [leaf for leaf in jax.tree.leaves(state.opt_state) if np.ndim(leaf) > 0]
  assert sum(leaf.size for leaf in moments) == 2 * config.lora_params()  # Adam's mu and nu, adapters only
  adapter_shapes = sorted(x.shape for x in jax.tree.leaves(lora_lib.split_params(after)[0]))
  assert sorted(leaf.shape for leaf in moments) == sorted(adapter_shapes * 2)
  assert float(metrics["frozen_params"]) == dataclasses.replace(config, lora=None).num_params()


def test_resume_from_an_adapter_checkpoint_is_exact_and_another_base_is_refused(
    lora_run, bases, scaffold_file, vocab_path, tmp_path):
  config = lora_model(bases["mistral"][1])
  resumed = tmp_path / "resumed"
  kwargs = dict(model=config, init_from=str(bases["mistral"][1]), checkpoint_every=2)
  train_tiny(resumed, scaffold_file, vocab_path, steps=2, **kwargs)
  train_tiny(resumed, scaffold_file, vocab_path, steps=4, **kwargs)
  assert [r["loss"] for r in read_metrics(resumed)] == [r["loss"] for r in read_metrics(lora_run)]
  straight, again = load_run(lora_run), load_run(resumed)
  jax.tree.map(np.testing.assert_array_equal, straight.params, again.params)

  before = sorted(str(p.relative_to(resumed)) for p in resumed.rglob("*"))
  model_json = (resumed / "model.json").read_text()
  other = str(bases["other"][1])
  with pytest.raises(ValueError, match="another base") as error:
    train_tiny(resumed, scaffold_file, vocab_path, steps=6, model=config, init_from=other, checkpoint_every=2)
  recorded = json.loads(model_json)["started_from"]
  assert recorded["path"] in str(error.value) and recorded["fingerprint"] in str(error.value)
  assert other in str(error.value)
  assert sorted(str(p.relative_to(resumed)) for p in resumed.rglob("*")) == before
  assert (resumed / "model.json").read_text() == model_json


def test_merged_weights_and_the_peft_adapter_give_the_adapter_models_logits(lora_run, bases, tmp_path):
  config = lora_model(bases["mistral"][1])
  _, base_params, _ = load_params(bases["mistral"][1])
  checkpoints = RunCheckpoints(str(lora_run))
  cpu = jax.sharding.SingleDeviceSharding(jax.devices("cpu")[0])
  trained = adapters.restore_adapters(checkpoints, 4, abstract_params(config, cpu))
  checkpoints.close()
  assert np.abs(np.asarray(trained["layers"]["mlp"]["down_lora_b"])).max() > 0  # trained away from zero
  tokens = np.random.default_rng(1).integers(0, 1000, (2, 24)).astype(np.int32)
  expected = logits(config, lora_lib.merge_params(trained, base_params), tokens)

  merged = load_run(lora_run)  # what `xbook write`, `serve` and `generate` use: plain merged weights
  assert merged.model.config.lora is None
  np.testing.assert_allclose(logits(merged.model.config, merged.params, tokens), expected, atol=1e-5, rtol=1e-5)

  assert cli.main(["weights", "export", "--run_dir", str(lora_run), "--out", str(tmp_path / "merged"),
                   "--dtype", "float32"]) == 0
  exported = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
  with torch.no_grad():
    np.testing.assert_allclose(exported(input_ids=torch.from_numpy(tokens).long()).logits.numpy(), expected,
                               atol=1e-4, rtol=0)
  check_peft(lora_run, bases["mistral"][0], tokens, expected, tmp_path / "adapter")


def check_peft(run_dir, hf_model, tokens, expected, out) -> None:
  """`xbook weights export --adapter` writes a folder peft loads onto the transformers base, giving
  `expected`; `xbook weights import --adapter` reads the same adapters back."""
  import peft
  assert cli.main(["weights", "export", "--run_dir", str(run_dir), "--adapter", "--out", str(out),
                   "--dtype", "float32"]) == 0
  assert sorted(p.name for p in out.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
  model = peft.PeftModel.from_pretrained(hf_model, out).eval()
  with torch.no_grad():
    got = model(input_ids=torch.from_numpy(tokens).long()).logits.numpy()
  np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)
  model.unload()  # the transformers model without the adapter layers, for the next use


def test_a_ministral3_adapter_loads_in_peft_and_comes_back_with_import(bases, tmp_path, capsys):
  """A LoRA run on a Ministral 3 base (adapters set to random values as training would leave them): its
  peft export equals xbook's logits, and importing that folder gives the same adapters."""
  hf_model, base_dir = bases["ministral3"]
  lora = LoraConfig(rank=4, alpha=16.0, attention=("q", "v", "o"), mlp=("down", "up"))
  config = lora_model(base_dir, lora)
  _, base_params, _ = load_params(base_dir)
  init = nn.unbox(Decoder(config).init(jax.random.key(0), *[np.zeros((1, 4), np.int32)] * 3)["params"])
  trained = jax.tree.map(lambda x: np.asarray(jax.random.normal(jax.random.key(x.size), x.shape)) * 0.2,
                         lora_lib.split_params(init)[0])
  run_dir = tmp_path / "run"
  checkpoints = RunCheckpoints(str(run_dir))
  checkpoints.save(3, trained, {"count": np.zeros((), np.int32)}, {"step": 3})
  checkpoints.wait()
  checkpoints.close()
  fingerprint = lora_lib.params_fingerprint(base_params)
  (run_dir / "model.json").write_text(json.dumps({
      "model": dataclasses.asdict(config), "vocab_path": "unused",
      "started_from": {"path": str(base_dir), "kind": "imported", "step": None, "hf_model_type": "ministral3",
                       "fingerprint": fingerprint}}))
  tokens = np.random.default_rng(2).integers(0, 1000, (2, 24)).astype(np.int32)
  expected = logits(config, lora_lib.merge_params(trained, base_params), tokens)
  assert np.abs(expected - logits(dataclasses.replace(config, lora=None), base_params, tokens)).max() > 1e-2
  check_peft(run_dir, hf_model, tokens, expected, tmp_path / "adapter")

  lora_back, adapters_back = read_peft_adapter(tmp_path / "adapter", dataclasses.replace(config, lora=None))
  assert lora_back == dataclasses.replace(lora, dropout=0.0)
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, atol=1e-7), adapters_back, trained)
  assert cli.main(["weights", "import", "--adapter", str(tmp_path / "adapter"), "--base", str(base_dir),
                   "--out", str(tmp_path / "imported")]) == 0
  assert "rank 4" in capsys.readouterr().out
  config_back, params_back, _ = load_params(tmp_path / "imported")
  np.testing.assert_allclose(logits(config_back, params_back, tokens), expected, atol=1e-5, rtol=0)
  # Another base at the recorded path: the adapters are refused on it.
  moved = {"path": str(bases["other"][1]), "kind": "imported", "step": None, "fingerprint": fingerprint}
  cpu = jax.sharding.SingleDeviceSharding(jax.devices("cpu")[0])
  with pytest.raises(ValueError, match=f"fingerprint {fingerprint}"):
    adapters.merged_run_params(config, trained, moved, lora_lib.split_params(abstract_params(config, cpu))[1])


@pytest.mark.usefixtures("no_compilation_cache")  # a TPU compile: the session's cache cannot load it back
def test_a_scaled_down_lora_config_compiles_for_a_tpu_in_less_memory_than_the_full_fine_tune():
  """The demo config with LoRA on a v5e-8, widened so that weights outweigh activations as at paper scale
  (25M parameters): the compiled step's memory per chip is below the full fine-tune's of the same model
  (float32 weights and Adam moments for every parameter)."""
  gin.clear_config()
  try:
    parse_gin([str(REPO / "configs/runs/demo.gin")], ["xbook.model.DecoderConfig.lora = @xbook.model.LoraConfig()",
                                           "xbook.model.DecoderConfig.param_dtype = 'bfloat16'",
                                           "xbook.model.LoraConfig.rank = 8", "xbook.model.DecoderConfig.n_layers = 2",
                                           "xbook.model.DecoderConfig.d_model = 1024",
                                           "xbook.model.DecoderConfig.mlp_dim = 4096"])
    report = aot.compile_for_tpu(aot.TpuTarget(accelerator="v5e-8"), trainer_lib.trainer_from_gin,
                                 count_flops=False)
  finally:
    gin.clear_config()
  full = report.full_finetune
  assert report.fits and report.lora_rank == 8 and full["param_dtype"] == "float32"
  assert 0 < report.total_bytes_per_chip < full["total_bytes_per_chip"]
  assert report.opt_state_bytes < full["opt_state_bytes"] / 10 and report.param_bytes < full["param_bytes"]
  assert report.projected_step_s < full["projected_step_s"]  # no weight gradients of the frozen base
  assert report.trainable_params < report.params / 10
  text = aot.format_report(report)
  assert "LoRA rank 8" in text and "full fine-tune of the same model" in text
