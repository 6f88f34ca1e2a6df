"""Hugging Face Llama/Mistral/Qwen2 checkpoints: import gives transformers' logits, export round-trips."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from pathlib import Path

import flax.linen
import jax
import numpy as np
import pytest
import torch
import transformers
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

from xbook.model import Decoder, DecoderConfig
from xbook.model.hf import (config_from_hf, config_to_hf, export_hf_checkpoint, import_hf_checkpoint,
                            load_params)

# 8 query heads over 2 key/value heads: group (4) != n_kv_heads (2), so a swapped head layout shows.
TINY = {"vocab_size": 128, "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2,
        "num_attention_heads": 8, "num_key_value_heads": 2}


def tiny_model(model_type: str, **overrides) -> transformers.PreTrainedModel:
  """A tiny random model with norm scales away from 1 and non-zero biases (so a mis-mapping shows)."""
  torch.manual_seed(0)
  config = transformers.AutoConfig.for_model(model_type, **{**TINY, **overrides})
  model = transformers.AutoModelForCausalLM.from_config(config).eval()
  with torch.no_grad():
    for name, param in model.named_parameters():
      if name.endswith("norm.weight"):
        param.uniform_(0.5, 1.5)
      elif name.endswith("bias"):  # Qwen2's q/k/v biases start at zero; make a mis-mapping show
        param.uniform_(-0.5, 0.5)
  return model


def hf_logits(model: transformers.PreTrainedModel, tokens: np.ndarray) -> np.ndarray:
  with torch.no_grad():
    return model(input_ids=torch.from_numpy(tokens)).logits.numpy()


def xbook_logits(params_dir, tokens: np.ndarray, positions: np.ndarray | None = None, **changes) -> np.ndarray:
  """Logits of the imported model at `positions` (default 0, 1, ...); `changes` replace config fields."""
  config, params, _ = load_params(params_dir)
  config = dataclasses.replace(config, **changes)
  if positions is None:
    positions = np.broadcast_to(np.arange(tokens.shape[1], dtype=np.int32), tokens.shape)
  segment_ids = np.ones_like(tokens)
  return np.asarray(jax.jit(Decoder(config).apply)({"params": params}, tokens, segment_ids, positions))


@pytest.fixture(scope="module")
def tokens() -> np.ndarray:
  """[2, 16] random token ids."""
  return np.random.default_rng(0).integers(0, TINY["vocab_size"], size=(2, 16), dtype=np.int32)


@pytest.mark.parametrize("model_type, overrides", [
    ("llama", {"rope_theta": 5000.0, "rms_norm_eps": 1e-5}),
    ("mistral", {"sliding_window": None, "tie_word_embeddings": True}),
    ("mistral", {"sliding_window": 5}),  # 16 tokens: the window matters
    ("qwen2", {"use_sliding_window": False}),
    # Scaled RoPE, with an original context of 8 so that 16 tokens reach the scaled frequencies.
    ("llama", {"rope_parameters": {"rope_type": "linear", "rope_theta": 10000.0, "factor": 2.0}}),
    ("llama", {"rope_parameters": {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                                   "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                   "original_max_position_embeddings": 8}}),
    ("llama", {"rope_parameters": {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0,
                                   "original_max_position_embeddings": 8}}),
])
def test_import_matches_transformers_and_export_round_trips(tmp_path, tokens, model_type, overrides):
  model = tiny_model(model_type, **overrides)
  model.save_pretrained(tmp_path / "hf")
  expected = hf_logits(model, tokens)

  config = import_hf_checkpoint(tmp_path / "hf", tmp_path / "xbook")
  assert config.tie_embeddings == bool(overrides.get("tie_word_embeddings"))
  np.testing.assert_allclose(xbook_logits(tmp_path / "xbook", tokens), expected, atol=1e-4, rtol=0)

  export_hf_checkpoint(tmp_path / "xbook", tmp_path / "export")
  exported = transformers.AutoModelForCausalLM.from_pretrained(
      tmp_path / "export", torch_dtype=torch.float32).eval()
  assert exported.config.model_type == model_type
  np.testing.assert_allclose(hf_logits(exported, tokens), expected, atol=1e-4, rtol=0)


def test_sharded_checkpoint_imports(tmp_path, tokens):
  model = tiny_model("llama")
  model.save_pretrained(tmp_path / "hf", max_shard_size="40KB")
  assert (tmp_path / "hf/model.safetensors.index.json").is_file()
  assert len(list((tmp_path / "hf").glob("*.safetensors"))) > 2
  import_hf_checkpoint(tmp_path / "hf", tmp_path / "xbook")
  np.testing.assert_allclose(xbook_logits(tmp_path / "xbook", tokens), hf_logits(model, tokens),
                             atol=1e-4, rtol=0)
  with pytest.raises(FileExistsError, match="exists already"):
    import_hf_checkpoint(tmp_path / "hf", tmp_path / "xbook")


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
  path = tmp_path_factory.mktemp("hf")
  tiny_model("llama").save_pretrained(path)
  return path


def edited_copy(hf_dir, tmp_path, edit, **config_changes):
  """A copy of the checkpoint at hf_dir whose tensors dict went through `edit`, config.json updated."""
  path = tmp_path / "edited"
  shutil.rmtree(path, ignore_errors=True)
  shutil.copytree(hf_dir, path)
  tensors = load_file(path / "model.safetensors")
  edit(tensors)
  save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})
  config_json = json.loads((path / "config.json").read_text())
  (path / "config.json").write_text(json.dumps({**config_json, **config_changes}))
  return path


def test_wrong_shape_names_tensor_and_shapes(hf_dir, tmp_path):
  name = "model.layers.1.self_attn.k_proj.weight"
  edited = edited_copy(hf_dir, tmp_path, lambda t: t.update({name: t[name][:8]}))
  with pytest.raises(ValueError, match=rf"{name}: expected shape \(16, 64\), found \(8, 64\)"):
    import_hf_checkpoint(edited, tmp_path / "xbook")


def test_missing_and_unexpected_tensors_are_named(hf_dir, tmp_path):
  name = "model.layers.0.mlp.up_proj.weight"
  edited = edited_copy(hf_dir, tmp_path, lambda t: t.pop(name))
  with pytest.raises(ValueError, match=f"missing tensors: {name}"):
    import_hf_checkpoint(edited, tmp_path / "xbook")
  edited = edited_copy(hf_dir, tmp_path, lambda t: t.update({"model.extra.bias": np.zeros(4, np.float32)}))
  with pytest.raises(ValueError, match="unexpected tensors: model.extra.bias"):
    import_hf_checkpoint(edited, tmp_path / "xbook")


@pytest.mark.parametrize("change, message", [
    ({"model_type": "gpt2"}, "model_type='gpt2' is not supported"),
    ({"model_type": "qwen2", "use_sliding_window": True}, "use_sliding_window=true"),
    ({"attention_bias": True}, "attention_bias=true"),
    ({"mlp_bias": True}, "mlp_bias=true"),
    ({"hidden_act": "gelu"}, "hidden_act='gelu'"),
    ({"rope_parameters": {"rope_type": "dynamic", "rope_theta": 5e5, "factor": 8.0}}, "rope_type='dynamic'"),
    ({"rope_parameters": {"rope_type": "linear", "rope_theta": 1e4, "factor": 4.0, "attention_factor": 2.0}},
     "attention_factor=2.0 is not supported with rope_type='linear'"),
    ({"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4, "factor": 4.0, "truncate": False}},
     "truncate=false"),
    ({"quantization_config": {"quant_method": "fp8"}}, "quantization_config \\(quant_method='fp8'\\)"),
    ({"model_type": "mistral3"}, "has no 'text_config'"),
    ({"rope_parameters": None, "rope_scaling": {"type": "linear"}}, "needs a 'factor'"),
    ({"num_hidden_layers": None}, "'num_hidden_layers'"),
])
def test_unsupported_config_names_the_field(hf_dir, change, message):
  config_json = json.loads((hf_dir / "config.json").read_text())
  with pytest.raises(ValueError, match=message):
    config_from_hf({**config_json, **change})


def test_unsupported_model_type_fails_import(hf_dir, tmp_path):
  edited = edited_copy(hf_dir, tmp_path, lambda t: None, model_type="gpt2")
  with pytest.raises(ValueError, match="model_type='gpt2'"):
    import_hf_checkpoint(edited, tmp_path / "xbook")


def test_tied_checkpoint_may_store_only_a_copy_of_the_embedding(hf_dir, tmp_path):
  edited = edited_copy(hf_dir, tmp_path, lambda t: None, tie_word_embeddings=True)
  with pytest.raises(ValueError, match="lm_head.weight differs from model.embed_tokens.weight"):
    import_hf_checkpoint(edited, tmp_path / "xbook")
  def copy_embedding(tensors):
    tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"]

  edited = edited_copy(hf_dir, tmp_path, copy_embedding, tie_word_embeddings=True)
  assert import_hf_checkpoint(edited, tmp_path / "xbook").tie_embeddings


def test_bfloat16_checkpoint_imports_as_float32(tmp_path, tokens):
  tiny_model("llama").to(torch.bfloat16).save_pretrained(tmp_path / "hf")
  reference = transformers.AutoModelForCausalLM.from_pretrained(
      tmp_path / "hf", torch_dtype=torch.float32).eval()
  import_hf_checkpoint(tmp_path / "hf", tmp_path / "xbook")
  _, params, _ = load_params(tmp_path / "xbook")
  assert params["layers"]["attention"]["query"].dtype == np.float32
  np.testing.assert_allclose(xbook_logits(tmp_path / "xbook", tokens), hf_logits(reference, tokens),
                             atol=1e-4, rtol=0)


def test_config_round_trips_through_hf_json(hf_dir):
  config = config_from_hf(json.loads((hf_dir / "config.json").read_text()))
  for model_type in ("llama", "mistral"):
    assert config_from_hf(config_to_hf(config, model_type)) == config


def test_cli_imports_and_exports(hf_dir, tmp_path, tokens, capsys):
  from xbook import cli
  assert cli.main(["weights", "import", "--hf", str(hf_dir), "--out", str(tmp_path / "xb")]) == 0
  assert cli.main(["weights", "export", "--params", str(tmp_path / "xb"), "--out", str(tmp_path / "back")]) == 0
  assert "imported" in capsys.readouterr().out
  reference = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, torch_dtype=torch.float32).eval()
  exported = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "back",
                                                              torch_dtype=torch.float32).eval()
  np.testing.assert_allclose(xbook_logits(tmp_path / "xb", tokens), hf_logits(reference, tokens), atol=1e-4)
  np.testing.assert_allclose(hf_logits(exported, tokens), hf_logits(reference, tokens), atol=1e-5)


# Ministral 3's text model: YaRN with mscale == mscale_all_dim (attention factor 1) and queries scaled by
# 1 + beta ln(1 + floor(position / original_max_position_embeddings)). An original context of 4 makes 16
# tokens cross three scaling boundaries.
MINISTRAL_ROPE = {"rope_type": "yarn", "type": "yarn", "rope_theta": 10000.0, "factor": 4.0,
                  "original_max_position_embeddings": 4, "beta_fast": 32.0, "beta_slow": 1.0,
                  "mscale": 1.0, "mscale_all_dim": 1.0, "llama_4_scaling_beta": 0.1}
# A wider initialization than the default 0.02 makes attention (and so the query scaling) visible in the logits.
MINISTRAL = {**TINY, "head_dim": 8, "max_position_embeddings": 16, "rope_parameters": MINISTRAL_ROPE,
             "initializer_range": 0.15}


def hf_logits_at(model, tokens: np.ndarray, positions: np.ndarray) -> np.ndarray:
  with torch.no_grad():
    return model(input_ids=torch.from_numpy(tokens),
                 position_ids=torch.from_numpy(positions.astype(np.int64))).logits.numpy()


def check_ministral_import(model, hf_dir, out_dir, tokens) -> None:
  """Imported logits equal transformers' from position 0 and from position 21, with query scaling."""
  config = import_hf_checkpoint(hf_dir, out_dir)
  assert (config.query_scale_beta, config.query_scale_period) == (0.1, 4)
  assert config.rope_attention_factor == 1.0  # the default for factor 4 would be 0.1 ln 4 + 1
  expected = hf_logits(model, tokens)
  np.testing.assert_allclose(xbook_logits(out_dir, tokens), expected, atol=1e-4, rtol=0)
  shifted = np.broadcast_to(np.arange(21, 21 + tokens.shape[1], dtype=np.int32), tokens.shape)
  np.testing.assert_allclose(xbook_logits(out_dir, tokens, shifted), hf_logits_at(model, tokens, shifted),
                             atol=1e-4, rtol=0)
  # Blockwise attention takes the same scaled queries; without the scaling the logits move.
  np.testing.assert_allclose(xbook_logits(out_dir, tokens, attention="blockwise", attention_block=4),
                             expected, atol=1e-4, rtol=0)
  assert np.abs(xbook_logits(out_dir, tokens, query_scale_beta=0.0) - expected).max() > 1e-2


def test_ministral3_config_round_trips_and_other_architectures_refuse_query_scaling():
  config = config_from_hf({**MINISTRAL, "model_type": "ministral3"})
  assert (config.rope_attention_factor, config.query_scale_beta, config.query_scale_period) == (1.0, 0.1, 4)
  assert config_from_hf(config_to_hf(config, "ministral3")) == config
  with pytest.raises(ValueError, match="only ministral3 scales queries by position"):
    config_to_hf(config, "mistral")
  standard_yarn = dataclasses.replace(config, query_scale_beta=0.0, query_scale_period=8192,
                                      rope_attention_factor=1.5)
  assert config_to_hf(standard_yarn, "llama")["rope_parameters"]["attention_factor"] == 1.5
  assert config_from_hf(config_to_hf(standard_yarn, "llama")) == standard_yarn


def test_ministral3_text_model_imports_and_exports(tmp_path, tokens):
  model = tiny_model("ministral3", **MINISTRAL)
  assert type(model).__name__ == "Ministral3ForCausalLM"
  model.save_pretrained(tmp_path / "hf")
  check_ministral_import(model, tmp_path / "hf", tmp_path / "xbook", tokens)

  export_hf_checkpoint(tmp_path / "xbook", tmp_path / "export")
  exported = transformers.AutoModelForCausalLM.from_pretrained(
      tmp_path / "export", torch_dtype=torch.float32).eval()
  assert type(exported).__name__ == "Ministral3ForCausalLM"
  assert exported.config.rope_parameters["llama_4_scaling_beta"] == 0.1
  assert exported.config.llama_4_scaling == {"beta": 0.1, "original_max_position_embeddings": 4}
  assert exported.config.max_position_embeddings == 16
  np.testing.assert_allclose(hf_logits(exported, tokens), hf_logits(model, tokens), atol=1e-4, rtol=0)


def tiny_mistral3(tie_word_embeddings: bool) -> transformers.PreTrainedModel:
  """Ministral 3 as published: the multimodal wrapper with a (tiny) Pixtral vision tower."""
  torch.manual_seed(0)
  text = transformers.Ministral3Config(**MINISTRAL)
  vision = transformers.PixtralVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                            num_attention_heads=2, head_dim=16, image_size=56, patch_size=14)
  config = transformers.Mistral3Config(text_config=text.to_dict(), vision_config=vision.to_dict(),
                                       tie_word_embeddings=tie_word_embeddings)
  model = transformers.Mistral3ForConditionalGeneration(config).eval()
  with torch.no_grad():
    for name, param in model.named_parameters():
      if name.endswith("norm.weight"):
        param.uniform_(0.5, 1.5)
  return model


@pytest.mark.parametrize("tie_word_embeddings", [False, True])
def test_ministral3_multimodal_checkpoint_imports_its_language_model(tmp_path, tokens, caplog,
                                                                     tie_word_embeddings):
  model = tiny_mistral3(tie_word_embeddings)
  model.save_pretrained(tmp_path / "hf")
  with caplog.at_level("INFO", logger="xbook"):
    check_ministral_import(model, tmp_path / "hf", tmp_path / "xbook", tokens)
  assert "skipping multi_modal_projector" in caplog.text and "vision_tower" in caplog.text
  config, _, model_type = load_params(tmp_path / "xbook")
  assert config.tie_embeddings == tie_word_embeddings and model_type == "ministral3"


def test_ministral3_in_memory_tensor_names_import(tmp_path, tokens):
  """transformers saves the wrapper as language_model.model.*; its in-memory names (model.language_model.*,
  lm_head.*) are read too."""
  model = tiny_mistral3(tie_word_embeddings=False)
  model.save_pretrained(tmp_path / "hf")
  tensors = load_file(tmp_path / "hf/model.safetensors")
  renamed = {name.replace("language_model.model.", "model.language_model.")
             .replace("language_model.lm_head.", "lm_head."): value for name, value in tensors.items()}
  assert "model.language_model.layers.0.self_attn.q_proj.weight" in renamed and "lm_head.weight" in renamed
  save_file(renamed, tmp_path / "hf/model.safetensors", metadata={"format": "pt"})
  import_hf_checkpoint(tmp_path / "hf", tmp_path / "xbook")
  np.testing.assert_allclose(xbook_logits(tmp_path / "xbook", tokens), hf_logits(model, tokens),
                             atol=1e-4, rtol=0)


def test_cli_names_every_architecture_and_round_trips_qwen2(tmp_path, tokens, capsys):
  from xbook import cli
  with pytest.raises(SystemExit):
    cli.main(["weights", "import", "--help"])
  help_text = capsys.readouterr().out
  assert all(name in help_text for name in ("llama", "mistral", "qwen2", "ministral3"))
  model = tiny_model("qwen2", use_sliding_window=False)
  model.save_pretrained(tmp_path / "hf")
  assert cli.main(["weights", "import", "--hf", str(tmp_path / "hf"), "--out", str(tmp_path / "xb")]) == 0
  assert cli.main(["weights", "export", "--params", str(tmp_path / "xb"), "--out", str(tmp_path / "back")]) == 0
  exported = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "back", torch_dtype=torch.float32)
  assert type(exported).__name__ == "Qwen2ForCausalLM"
  np.testing.assert_allclose(hf_logits(exported.eval(), tokens), hf_logits(model, tokens), atol=1e-5)


# ------------------------------------------------------------------------------------ trained runs
RUN_MODEL = DecoderConfig(vocab_size=416, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8,
                          mlp_dim=64)
SAMPLE_TEXT = "Chapter 1\n\nThe storm came  at 12:40, and Ana — café in hand — said: “No.”\n"


@pytest.fixture(scope="module")
def run_params() -> dict[int, dict]:
  """Random parameters of RUN_MODEL for steps 1 and 2."""
  tokens = np.zeros((1, 4), np.int32)
  init = jax.jit(lambda key: Decoder(RUN_MODEL).init(key, tokens, tokens + 1, tokens)["params"])
  return {step: flax.linen.unbox(init(jax.random.key(step))) for step in (1, 2)}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, run_params):
  """A run as `xbook train` leaves it: model.json, config.gin, an xbook vocabulary and checkpoints of
  steps 1 and 2 (different parameters)."""
  import sentencepiece as spm
  from xbook.data import trajectory
  from xbook.train.checkpoints import RunCheckpoints
  root = tmp_path_factory.mktemp("run")
  lines = [line for line in Path(__file__).read_text().splitlines() if line.strip()] + [SAMPLE_TEXT]
  spm.SentencePieceTrainer.train(  # xbook's settings (xbook.data.vocab.train_vocab), small
      sentence_iterator=iter(lines), model_prefix=str(root / "vocab"), vocab_size=400,
      model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
      user_defined_symbols=list(trajectory.ALL_MARKERS), byte_fallback=True,
      normalization_rule_name="identity", remove_extra_whitespaces=False, add_dummy_prefix=False,
      split_digits=True, hard_vocab_limit=False, minloglevel=2)
  (root / "model.json").write_text(json.dumps(
      {"model": dataclasses.asdict(RUN_MODEL), "vocab_path": str(root / "vocab.model")}))
  (root / "config.gin").write_text("train.batch_size = 8\ntrain.seq_len = 64\n")
  checkpoints = RunCheckpoints(str(root))
  for step, params in run_params.items():
    checkpoints.save(step, params, {"count": np.zeros((), np.int32)}, {"step": step})
  checkpoints.wait()
  checkpoints.close()
  return root


def run_logits(params: dict, tokens: np.ndarray) -> np.ndarray:
  positions = np.broadcast_to(np.arange(tokens.shape[1], dtype=np.int32), tokens.shape)
  apply = jax.jit(Decoder(RUN_MODEL).apply)
  return np.asarray(apply({"params": params}, tokens, np.ones_like(tokens), positions))


def check_index(out) -> dict:
  """The index names exactly the shards present, every tensor once, and their total size."""
  index = json.loads((out / "model.safetensors.index.json").read_text())
  shards = sorted(p.name for p in out.glob("*.safetensors"))
  assert sorted(set(index["weight_map"].values())) == shards
  assert all(re.fullmatch(rf"model-\d{{5}}-of-{len(shards):05d}\.safetensors", name) for name in shards)
  total, names = 0, []
  for shard in shards:
    with safe_open(str(out / shard), framework="np") as f:
      for name in f.keys():
        assert index["weight_map"][name] == shard
        tensor = f.get_tensor(name)
        total += tensor.size * tensor.dtype.itemsize
        names.append(name)
  assert sorted(names) == sorted(index["weight_map"]) and index["metadata"]["total_size"] == total
  return index


def test_run_exports_as_a_checkpoint_transformers_loads(run_dir, run_params, tmp_path):
  from xbook.infer.export import export_run
  out = tmp_path / "export"
  result = export_run(run_dir, out, step=1, dtype="float32", max_shard_size="20KB")
  assert (result.step, result.model_type) == (1, "llama")
  assert len(list(out.glob("*.safetensors"))) > 2
  check_index(out)
  config_json = json.loads((out / "config.json").read_text())
  assert config_json["architectures"] == ["LlamaForCausalLM"] and config_json["torch_dtype"] == "float32"
  # xbook vocabularies have no BOS: training starts every input with id 0, the pad piece.
  assert (config_json["bos_token_id"], config_json["eos_token_id"], config_json["pad_token_id"]) == (0, 1, 0)
  assert config_json["max_position_embeddings"] == 64  # the run's train.seq_len
  assert json.loads((out / "generation_config.json").read_text())["eos_token_id"] == 1

  tokenizer = transformers.AutoTokenizer.from_pretrained(out)
  import sentencepiece as spm
  processor = spm.SentencePieceProcessor(model_file=str(run_dir / "vocab.model"))
  assert tokenizer.encode(SAMPLE_TEXT) == [0] + processor.encode(SAMPLE_TEXT)
  assert tokenizer.decode(tokenizer.encode(SAMPLE_TEXT), skip_special_tokens=True) == SAMPLE_TEXT

  model = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
  tokens = np.asarray([tokenizer.encode(SAMPLE_TEXT)[:24]], np.int32)
  got, expected = hf_logits(model, tokens), run_logits(run_params[1], tokens)
  np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)
  assert np.abs(run_logits(run_params[2], tokens) - got).max() > 1e-2  # --step chose step 1


def test_cli_exports_a_run_in_bfloat16_and_refuses_to_overwrite(run_dir, run_params, tmp_path, capsys):
  from xbook import cli
  out = tmp_path / "bf16"
  out.mkdir()  # an empty folder is fine
  assert cli.main(["weights", "export", "--run_dir", str(run_dir), "--out", str(out)]) == 0
  assert "step 2" in capsys.readouterr().out
  index = check_index(out)
  assert len(set(index["weight_map"].values())) == 1  # 5GB shards: one
  with safe_open(str(out / "model-00001-of-00001.safetensors"), framework="np") as f:
    assert {str(f.get_tensor(name).dtype) for name in f.keys()} == {"bfloat16"}
  assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
  assert {"tokenizer.model", "tokenizer_config.json"} <= {p.name for p in out.iterdir()}
  model = transformers.AutoModelForCausalLM.from_pretrained(out, dtype="auto").eval()
  assert model.dtype == torch.bfloat16
  tokens = np.arange(1, 17, dtype=np.int32)[None]
  with torch.no_grad():
    got = model(input_ids=torch.from_numpy(tokens)).logits.float().numpy()
  np.testing.assert_allclose(got, run_logits(run_params[2], tokens), atol=0.1, rtol=0)

  args = ["weights", "export", "--run_dir", str(run_dir), "--out", str(out)]
  with pytest.raises(FileExistsError, match="--overwrite"):
    cli.main(args)
  assert cli.main(args + ["--dtype", "float16", "--overwrite", "--max_shard_size", "30KB"]) == 0
  assert json.loads((out / "config.json").read_text())["dtype"] == "float16"
  check_index(out)
  assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folder left
