"""Import a Hugging Face Llama/Mistral safetensors checkpoint into xbook parameters, and export back.

Import reads tensor by tensor (lazily, with `safe_open`) into preallocated stacked arrays, so the host
holds one copy of the parameters, never a second full one.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from xbook.atomic import atomic_open
from xbook.model.config import DecoderConfig
from xbook.model.hf.checkpoint import load_params, save_params
from xbook.model.hf.config import config_from_hf, config_to_hf
from xbook.model.hf.layout import TensorMap, tensor_maps

# Buffers some checkpoints carry that the Decoder recomputes.
_IGNORED_SUFFIXES = (".rotary_emb.inv_freq",)


def _open_shards(hf_dir: Path, stack: contextlib.ExitStack) -> dict[str, Any]:
  """Open every safetensors file of the checkpoint; returns tensor name -> the open file holding it."""
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


def _check_names(files: dict[str, Any], maps: list[TensorMap], config: DecoderConfig) -> None:
  expected = {name for m in maps for name in m.hf_names(config.n_layers)}
  missing = sorted(expected - files.keys())
  if missing:
    raise ValueError(f"checkpoint is missing tensors: {', '.join(missing)}")
  allowed = expected | ({"lm_head.weight"} if config.tie_embeddings else set())
  unexpected = sorted(name for name in files.keys() - allowed if not name.endswith(_IGNORED_SUFFIXES))
  if unexpected:
    raise ValueError(f"checkpoint has unexpected tensors: {', '.join(unexpected)}")


def _read_hf(files: dict[str, Any], name: str, shape: tuple[int, ...]) -> np.ndarray:
  found = tuple(files[name].get_slice(name).get_shape())
  if found != shape:
    raise ValueError(f"tensor {name}: expected shape {shape}, found {found}")
  return files[name].get_tensor(name)


def _read(files: dict[str, Any], m: TensorMap, config: DecoderConfig) -> np.ndarray:
  """The xbook parameter of `m`: [n_layers, *m.shape] filled one layer at a time, or [*m.shape]."""
  names = m.hf_names(config.n_layers)
  out = np.empty((len(names),) + m.shape, config.weights_dtype)
  for i, name in enumerate(names):
    out[i] = m.to_xbook(_read_hf(files, name, m.hf_shape))
  return out if m.per_layer else out[0]


def _check_tied_head(files: dict[str, Any], config: DecoderConfig) -> None:
  """A tied checkpoint may still store lm_head.weight; accept it only as a copy of the embedding."""
  if config.tie_embeddings and "lm_head.weight" in files:
    shape = (config.vocab_size, config.d_model)
    if not np.array_equal(_read_hf(files, "lm_head.weight", shape),
                          _read_hf(files, "model.embed_tokens.weight", shape)):
      raise ValueError("tie_word_embeddings is true but lm_head.weight differs from "
                       "model.embed_tokens.weight")


def import_hf_checkpoint(hf_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str]) -> DecoderConfig:
  """Convert a Hugging Face checkpoint folder (config.json + safetensors) to an xbook parameter folder.

  Args:
    hf_dir: holds config.json and model.safetensors, or model.safetensors.index.json and its shards.
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
  config = config_from_hf(config_json)
  maps = tensor_maps(config)
  params: dict[str, Any] = {}
  with contextlib.ExitStack() as stack:
    files = _open_shards(hf_dir, stack)
    _check_names(files, maps, config)
    _check_tied_head(files, config)
    for m in maps:
      *parents, leaf = m.path
      node = params
      for key in parents:
        node = node.setdefault(key, {})
      node[leaf] = _read(files, m, config)
  save_params(out_dir, config, params, hf_model_type=config_json["model_type"])
  return config


def export_hf_checkpoint(params_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str],
                         model_type: str | None = None) -> None:
  """Write an xbook parameter folder as a Hugging Face checkpoint: config.json + model.safetensors.

  The tensors keep the parameters' dtype. The host holds the parameters and their converted copy.

  Args:
    params_dir: a folder written by `import_hf_checkpoint` (or `xbook.model.hf.save_params`).
    out_dir: receives config.json and model.safetensors.
    model_type: "llama" or "mistral"; by default the architecture the parameters were imported from.
  """
  config, params, hf_model_type = load_params(params_dir)
  config_json = config_to_hf(config, model_type or hf_model_type)
  tensors: dict[str, np.ndarray] = {}
  for m in tensor_maps(config):
    value = params
    for key in m.path:
      value = value[key]
    values = value if m.per_layer else value[None]
    for name, layer in zip(m.hf_names(config.n_layers), values, strict=True):
      tensors[name] = m.to_hf(layer)
  out_dir = Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  save_file(tensors, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
  with atomic_open(out_dir / "config.json") as f:
    json.dump(config_json, f, indent=2)
