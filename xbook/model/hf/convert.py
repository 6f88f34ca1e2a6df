"""Import a Hugging Face safetensors checkpoint into xbook parameters, and export an imported folder back.

Import reads tensor by tensor (lazily, with `safe_open`) into preallocated stacked arrays, so the host
holds one copy of the parameters, never a second full one. A multimodal checkpoint (Ministral 3,
Mistral Small 3.x: `model_type: mistral3`) gives its language model; the vision tower and the
multimodal projector are skipped, and named in a log line.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import safe_open

from xbook.model.config import DecoderConfig
from xbook.model.hf.adapter import write_peft_adapter
from xbook.model.hf.checkpoint import ImportedWeights, load_params, save_params
from xbook.model.hf.config import config_from_hf, text_config
from xbook.model.hf.layout import TensorMap, tensor_maps
from xbook.model.hf.writer import TOKEN_ID_FIELDS, write_hf_checkpoint
from xbook.model.lora import merged_params, split_params

log = logging.getLogger(__name__)

# Buffers some checkpoints carry that the Decoder recomputes.
_IGNORED_SUFFIXES = (".rotary_emb.inv_freq",)

# Stored name prefix -> the text model's (Llama layout) prefix, in multimodal checkpoints, first match
# wins. transformers 5 saves Mistral3ForConditionalGeneration in the llava layout
# ("language_model.model.", "language_model.lm_head."); in memory it names them "model.language_model."
# and "lm_head." (the "llava" rules of transformers/conversion_mapping.py); a bare Mistral3Model has
# "language_model.layers." etc. All are read.
_LANGUAGE_MODEL_PREFIXES = (("language_model.model.", "model."), ("language_model.lm_head.", "lm_head."),
                            ("model.language_model.", "model."), ("language_model.", "model."))
_SKIPPED_PREFIXES = ("vision_tower.", "multi_modal_projector.", "model.vision_tower.",
                     "model.multi_modal_projector.")

# Text-model tensor name -> (the open safetensors file holding it, its name there).
Tensors = dict[str, tuple[Any, str]]


def _open_shards(hf_dir: Path, stack: contextlib.ExitStack) -> dict[str, Any]:
  """Open every safetensors file of the checkpoint; returns stored tensor name -> the open file holding it."""
  index = hf_dir / "model.safetensors.index.json"
  if index.is_file():
    shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
  elif (hf_dir / "model.safetensors").is_file():
    shards = ["model.safetensors"]
  else:
    raise FileNotFoundError(f"{hf_dir} has neither model.safetensors nor model.safetensors.index.json")
  files: dict[str, Any] = {}
  for shard in shards:
    handle = stack.enter_context(safe_open(str(hf_dir / shard), framework="numpy"))
    for name in handle.keys():
      if name in files:
        raise ValueError(f"tensor {name} appears in more than one shard of {hf_dir}")
      files[name] = handle
  return files


def _language_model(files: dict[str, Any], multimodal: bool) -> Tensors:
  """The text model's tensors under their Llama-layout names; a multimodal checkpoint's vision tower and
  projector are left out (logged)."""
  if not multimodal:
    return {name: (handle, name) for name, handle in files.items()}
  tensors: Tensors = {}
  skipped: dict[str, int] = {}
  for stored, handle in files.items():
    prefix = next((p for p in _SKIPPED_PREFIXES if stored.startswith(p)), None)
    if prefix is not None:
      skipped[prefix.rstrip(".")] = skipped.get(prefix.rstrip("."), 0) + 1
      continue
    name = stored
    for old, new in _LANGUAGE_MODEL_PREFIXES:
      if stored.startswith(old):
        name = new + stored[len(old):]
        break
    if name in tensors:
      raise ValueError(f"tensors {tensors[name][1]} and {stored} are both the language model's {name}")
    tensors[name] = (handle, stored)
  if skipped:
    log.info("skipping %s (not part of the language model)",
             ", ".join(f"{prefix} ({count} tensors)" for prefix, count in sorted(skipped.items())))
  return tensors


def _check_names(tensors: Tensors, maps: list[TensorMap], config: DecoderConfig) -> None:
  expected = {name for m in maps for name in m.hf_names(config.n_layers)}
  missing = sorted(expected - tensors.keys())
  if missing:
    raise ValueError(f"checkpoint is missing tensors: {', '.join(missing)}")
  allowed = expected | ({"lm_head.weight"} if config.tie_embeddings else set())
  unexpected = sorted(tensors[name][1] for name in tensors.keys() - allowed
                      if not name.endswith(_IGNORED_SUFFIXES))
  if unexpected:
    raise ValueError(f"checkpoint has unexpected tensors: {', '.join(unexpected)}")


def _read_hf(tensors: Tensors, name: str, shape: tuple[int, ...]) -> np.ndarray:
  handle, stored = tensors[name]
  found = tuple(handle.get_slice(stored).get_shape())
  if found != shape:
    raise ValueError(f"tensor {stored}: expected shape {shape}, found {found}")
  return handle.get_tensor(stored)


def _read(tensors: Tensors, m: TensorMap, config: DecoderConfig) -> np.ndarray:
  """The xbook parameter of `m`: [n_layers, *m.shape] filled one layer at a time, or [*m.shape]."""
  names = m.hf_names(config.n_layers)
  out = np.empty((len(names),) + m.shape, config.weights_dtype)
  for i, name in enumerate(names):
    out[i] = m.to_xbook(_read_hf(tensors, name, m.hf_shape))
  return out if m.per_layer else out[0]


def _tied_head(tensors: Tensors, config: DecoderConfig, wrapper: str | None) -> DecoderConfig:
  """A tied checkpoint may still store lm_head.weight, as a copy of the embedding.

  A text model's config that says tied with a different lm_head is an error. A multimodal wrapper's
  tie flag defaults to true whatever its language model does, so there transformers keeps a stored,
  different lm_head untied (`PreTrainedModel.tie_weights`), and so does this.
  """
  if not (config.tie_embeddings and "lm_head.weight" in tensors):
    return config
  shape = (config.vocab_size, config.d_model)
  if np.array_equal(_read_hf(tensors, "lm_head.weight", shape),
                    _read_hf(tensors, "model.embed_tokens.weight", shape)):
    return config
  if wrapper is None:
    raise ValueError("tie_word_embeddings is true but lm_head.weight differs from "
                     "model.embed_tokens.weight")
  log.info("%s checkpoint: tie_word_embeddings is true but it stores its own lm_head; keeping it "
           "untied, as transformers does", wrapper)
  return dataclasses.replace(config, tie_embeddings=False)


def _hf_config(text: dict[str, Any]) -> dict[str, Any]:
  """The config.json fields an export writes back that DecoderConfig does not hold."""
  fields = ("max_position_embeddings", "bos_token_id", "eos_token_id", "pad_token_id")
  return {field: text[field] for field in fields if field in text}


def import_hf_checkpoint(hf_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str]) -> DecoderConfig:
  """Convert a Hugging Face checkpoint folder (config.json + safetensors) to an xbook parameter folder.

  Args:
    hf_dir: holds config.json and model.safetensors, or model.safetensors.index.json and its shards.
      Llama, Mistral, Qwen2 and Ministral 3 (text-only `ministral3`, or the multimodal `mistral3`,
      whose language model is read).
    out_dir: receives model.json and params (the layout of xbook.model.hf.checkpoint).

  Returns:
    The DecoderConfig of the imported model (float32 parameters).

  Raises:
    FileExistsError: `out_dir` holds parameters already.
    ValueError: an unsupported architecture or feature (named by its config field), or a missing,
      unexpected or misshapen tensor (named, with the expected and found shapes).
  """
  if (Path(out_dir) / "params").exists():
    raise FileExistsError(f"{Path(out_dir) / 'params'} exists already; import into a new folder")
  hf_dir = Path(hf_dir)
  config_json = json.loads((hf_dir / "config.json").read_text(encoding="utf-8"))
  text, wrapper = text_config(config_json)
  config = config_from_hf(config_json)
  params: dict[str, Any] = {}
  with contextlib.ExitStack() as stack:
    tensors = _language_model(_open_shards(hf_dir, stack), multimodal=wrapper is not None)
    _check_names(tensors, tensor_maps(config), config)
    config = _tied_head(tensors, config, wrapper)
    maps = tensor_maps(config)
    for m in maps:
      *parents, leaf = m.path
      node = params
      for key in parents:
        node = node.setdefault(key, {})
      node[leaf] = _read(tensors, m, config)
  save_params(out_dir, config, params, hf_model_type=text["model_type"], hf_config=_hf_config(text))
  return config


def export_hf_checkpoint(params_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str],
                         model_type: str | None = None, *, dtype: str | None = None,
                         max_shard_size: str | int = "5GB", max_position_embeddings: int | None = None,
                         overwrite: bool = False, adapter: bool = False) -> list[str]:
  """Write an xbook parameter folder as a Hugging Face checkpoint (xbook.model.hf.writer's layout); one
  that holds LoRA adapters (`xbook weights import --adapter`) merged into its base, or with `adapter`
  its adapters alone as a peft adapter folder (xbook.model.hf.adapter).

  The host holds the parameters, plus one shard of converted tensors while it is written.

  Args:
    params_dir: a folder written by `import_hf_checkpoint` (or `xbook.model.hf.save_params`).
    out_dir: the new checkpoint folder (absent or empty, unless `overwrite`).
    model_type: one of SUPPORTED_MODEL_TYPES; by default the text architecture the parameters came from.
    dtype: of the written tensors ("bfloat16", "float16", "float32"); default the parameters' own.
    max_shard_size: the most bytes per safetensors file ("5GB", "500MB", or an int).
    max_position_embeddings: config.json's context; default the imported checkpoint's.
    overwrite: replace a non-empty `out_dir`.
    adapter: write the folder's LoRA adapters as a peft adapter folder.

  Returns:
    The names of the files written.
  """
  hf_config = ImportedWeights.read(params_dir).hf_config
  config, params, hf_model_type = load_params(params_dir)
  if adapter:
    if config.lora is None:
      raise ValueError(f"--adapter: {params_dir} holds no LoRA adapters (its model.json has no lora)")
    return write_peft_adapter(out_dir, config, split_params(params)[0], dtype=dtype or config.lora.param_dtype,
                              base_model=None, overwrite=overwrite)
  if config.lora is not None:
    params, config = merged_params(params, config.lora), dataclasses.replace(config, lora=None)
  return write_hf_checkpoint(
      out_dir, config, params, model_type=model_type or hf_model_type, dtype=dtype or config.param_dtype,
      max_shard_size=max_shard_size,
      max_position_embeddings=max_position_embeddings or hf_config.get("max_position_embeddings"),
      token_ids={k: hf_config[k] for k in TOKEN_ID_FIELDS if k in hf_config}, overwrite=overwrite)
