"""Write xbook parameters as a Hugging Face checkpoint folder, in the layout transformers and vLLM read.

Layout of `out_dir`:
  config.json                          architectures, model_type, shape, RoPE, dtype, token ids, context
  generation_config.json               bos/eos/pad token ids
  model-00001-of-0000N.safetensors     the tensors, in layer order, each file at most max_shard_size
  model.safetensors.index.json         {"metadata": {"total_size": bytes}, "weight_map": {tensor: file}}
  ...                                  files the caller adds (tokenizer files)

Tensors are converted one at a time and written one shard at a time: beside the parameters the host holds
at most one shard of converted tensors. Everything is written into a hidden staging folder beside
`out_dir` that is renamed to `out_dir` when complete, so `out_dir` is either as before or complete.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import re
import secrets
import shutil
from pathlib import Path
from typing import Any, Iterator, Mapping

import jax.numpy as jnp
import numpy as np
from safetensors.numpy import save_file

from xbook.atomic import is_url
from xbook.model.config import DecoderConfig
from xbook.model.hf.config import config_to_hf
from xbook.model.hf.layout import TensorMap, tensor_maps

log = logging.getLogger(__name__)

DTYPES = ("bfloat16", "float16", "float32")
INDEX_FILE = "model.safetensors.index.json"
TOKEN_ID_FIELDS = ("bos_token_id", "eos_token_id", "pad_token_id")

# Decimal units as transformers' `convert_file_size_to_int` reads them ("5GB" = 5e9), binary with "i".
_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_size(size: str | int) -> int:
  """Bytes of a size such as 5GB, 500MB, 2GiB or a plain number of bytes.

  Raises:
    ValueError: not a positive size with one of the units B, KB, MB, GB, TB, KiB, MiB, GiB, TiB.
  """
  if isinstance(size, int):
    value = size
  else:
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", size)
    unit = match.group(2).lower() if match else None
    if not match or (unit and unit not in _UNITS):
      raise ValueError(f"max_shard_size={size!r}: expected a number of bytes or a size such as 5GB, "
                       "500MB or 2GiB")
    value = int(float(match.group(1)) * _UNITS[unit or "b"])
  if value <= 0:
    raise ValueError(f"max_shard_size={size!r} must be positive")
  return value


@dataclasses.dataclass(frozen=True)
class _Entry:
  """One tensor of the checkpoint: its HF name, its TensorMap, the layer it slices (or None)."""

  name: str
  tensor_map: TensorMap
  layer: int | None
  nbytes: int


def _entries(config: DecoderConfig, dtype: np.dtype) -> list[_Entry]:
  """Every tensor in the order of a transformers state dict: embedding, layer by layer, then the rest."""
  first, layers, last = [], [], []
  for m in tensor_maps(config):
    nbytes = math.prod(m.hf_shape) * dtype.itemsize
    if m.per_layer:
      layers += [(i, _Entry(name, m, i, nbytes)) for i, name in enumerate(m.hf_names(config.n_layers))]
    else:
      (first if m.hf_name == "model.embed_tokens.weight" else last).append(_Entry(m.hf_name, m, None, nbytes))
  layers.sort(key=lambda pair: pair[0])  # stable: within a layer, tensor_maps' order
  return first + [entry for _, entry in layers] + last


def _plan_shards(entries: list[_Entry], max_bytes: int) -> list[list[_Entry]]:
  """Consecutive tensors grouped so that each group stays under `max_bytes` (a larger tensor alone)."""
  shards: list[list[_Entry]] = []
  size = 0
  for entry in entries:
    if not shards or (shards[-1] and size + entry.nbytes > max_bytes):
      shards.append([])
      size = 0
    shards[-1].append(entry)
    size += entry.nbytes
  return shards


def _tensor(params: Mapping[str, Any], entry: _Entry, dtype: np.dtype) -> np.ndarray:
  """The HF tensor of `entry` in `dtype`, C-contiguous: [*entry.tensor_map.hf_shape]."""
  value: Any = params
  for key in entry.tensor_map.path:
    value = value[key]
  value = np.asarray(value)
  if entry.layer is not None:
    value = value[entry.layer]
  return entry.tensor_map.to_hf(value.astype(dtype, copy=False))


def _fsync(path: Path) -> None:
  with open(path, "rb") as f:
    os.fsync(f.fileno())


def _write_shards(folder: Path, config: DecoderConfig, params: Mapping[str, Any], dtype: np.dtype,
                  max_bytes: int) -> dict[str, Any]:
  """Write the safetensors shards into `folder`; returns the index (metadata and weight map)."""
  shards = _plan_shards(_entries(config, dtype), max_bytes)
  weight_map: dict[str, str] = {}
  total = 0
  for number, shard in enumerate(shards, start=1):
    filename = f"model-{number:05d}-of-{len(shards):05d}.safetensors"
    tensors = {entry.name: _tensor(params, entry, dtype) for entry in shard}
    save_file(tensors, str(folder / filename), metadata={"format": "pt"})
    _fsync(folder / filename)
    del tensors
    for entry in shard:
      weight_map[entry.name] = filename
      total += entry.nbytes
    log.info("wrote %s (%d tensors)", filename, len(shard))
  return {"metadata": {"total_size": total}, "weight_map": weight_map}


def _is_empty_folder(path: Path) -> bool:
  return path.is_dir() and not any(path.iterdir())


@contextlib.contextmanager
def staged_folder(out_dir: Path, overwrite: bool) -> Iterator[Path]:
  """A fresh hidden folder beside `out_dir`, renamed to `out_dir` when the block succeeds (a non-empty
  `out_dir` is replaced only when `overwrite`), removed when it fails."""
  staging = out_dir.with_name(f".{out_dir.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
  staging.mkdir(parents=True)
  try:
    yield staging
    old = None
    if _is_empty_folder(out_dir):
      out_dir.rmdir()
    elif out_dir.exists():
      old = out_dir.with_name(f".{out_dir.name}.{os.getpid()}.{secrets.token_hex(4)}.old")
      out_dir.rename(old)
    staging.rename(out_dir)
    if old is not None:
      shutil.rmtree(old) if old.is_dir() else old.unlink()
  except BaseException:
    shutil.rmtree(staging, ignore_errors=True)
    raise


def check_out_dir(out_dir: str | os.PathLike[str], overwrite: bool) -> Path:
  """`out_dir` as a Path, refused (before any work) if it is a URL or a non-empty folder or a file.

  Raises:
    ValueError: `out_dir` is an object-store URL.
    FileExistsError: `out_dir` holds files and `overwrite` is false.
  """
  if is_url(out_dir):
    raise ValueError(f"{out_dir}: export to a local folder, then copy it to the bucket "
                     "(e.g. gcloud storage cp -r)")
  out = Path(out_dir).absolute()
  if out.exists() and not _is_empty_folder(out) and not overwrite:
    raise FileExistsError(f"{out} exists and is not an empty folder; choose a new folder or pass "
                          "--overwrite to replace it")
  return out


def _write_json(path: Path, value: Any) -> None:
  with open(path, "x", encoding="utf-8") as f:
    json.dump(value, f, indent=2)
    f.write("\n")
    f.flush()
    os.fsync(f.fileno())


def write_hf_checkpoint(out_dir: str | os.PathLike[str], config: DecoderConfig, params: Mapping[str, Any],
                        *, model_type: str, dtype: str = "bfloat16", max_shard_size: str | int = "5GB",
                        max_position_embeddings: int | None = None,
                        token_ids: Mapping[str, int | None] | None = None,
                        extra_files: Mapping[str, bytes] | None = None,
                        overwrite: bool = False) -> list[str]:
  """Write `params` (the tree of Decoder(config), numpy or host jax arrays) as a Hugging Face checkpoint.

  Args:
    out_dir: the checkpoint folder: absent or empty, or replaced when `overwrite`. Local only.
    config: the parameters' DecoderConfig (layers scanned).
    params: the parameter tree; converted tensor by tensor, never copied whole.
    model_type: one of xbook.model.hf.SUPPORTED_MODEL_TYPES.
    dtype: of the written tensors, one of DTYPES (also config.json's `torch_dtype` and `dtype`).
    max_shard_size: the most bytes per safetensors file (`parse_size`); a larger tensor gets its own.
    max_position_embeddings: config.json's context length; default the scaled context of a yarn or
      llama3 RoPE, else left out (transformers then uses its class default).
    token_ids: bos_token_id / eos_token_id / pad_token_id for config.json and generation_config.json
      (a missing or None id is written as null).
    extra_files: file name -> content, written beside the weights (tokenizer files).
    overwrite: replace a non-empty `out_dir`.

  Returns:
    The names of the files written, sorted.

  Raises:
    ValueError: an unknown dtype or shard size, or a config `model_type` cannot express.
    FileExistsError: `out_dir` is not empty and `overwrite` is false.
  """
  if dtype not in DTYPES:
    raise ValueError(f"dtype={dtype!r}; expected one of {DTYPES}")
  max_bytes = parse_size(max_shard_size)
  config_json = config_to_hf(config, model_type)  # refuses what model_type cannot express, before work
  out = check_out_dir(out_dir, overwrite)
  ids = {field: (token_ids or {}).get(field) for field in TOKEN_ID_FIELDS}
  config_json.update(torch_dtype=dtype, dtype=dtype, **ids)
  if max_position_embeddings is not None:
    config_json["max_position_embeddings"] = int(max_position_embeddings)
  with staged_folder(out, overwrite) as staging:
    index = _write_shards(staging, config, params, jnp.dtype(dtype), max_bytes)
    for name, content in (extra_files or {}).items():
      with open(staging / name, "xb") as f:
        f.write(content)
        f.flush()
        os.fsync(f.fileno())
    _write_json(staging / "config.json", config_json)
    _write_json(staging / "generation_config.json", ids)
    _write_json(staging / INDEX_FILE, index)  # last: its presence marks a complete set of shards
    names = sorted(p.name for p in staging.iterdir())
  log.info("wrote %s: %s checkpoint in %s, %d files, %.1f MB of tensors", out, model_type, dtype,
           len(names), index["metadata"]["total_size"] / 1e6)
  return names
