"""LoRA adapters as a `peft` adapter folder, in the layout `peft.PeftModel.from_pretrained` and vLLM's LoRA
loader read, and back.

Layout of the folder:
  adapter_config.json          peft's LoraConfig: peft_type LORA, task_type CAUSAL_LM, r, lora_alpha,
                               lora_dropout, target_modules (q_proj, ..., down_proj), bias none
  adapter_model.safetensors    base_model.model.model.layers.{i}.{self_attn|mlp}.{module}.lora_{A|B}.weight

peft computes W x + (lora_alpha / r) B_hf A_hf x with lora_A.weight A_hf [r, in] and lora_B.weight B_hf
[out, r] (torch Linear layout). xbook's adapters (xbook.model.lora) are A [*in, r] and B [r, *out] with
the heads split out as the base kernels have them, so A_hf = A.reshape(-1, r).T and
B_hf = B.reshape(r, -1).T: the same C-order head layout as xbook.model.hf.layout's kernels.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path
from typing import Any, Mapping

import jax.numpy as jnp
import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from xbook.model.config import DecoderConfig
from xbook.model.hf.checkpoint import ImportedWeights, load_params, save_params
from xbook.model.hf.writer import check_out_dir, staged_folder
from xbook.model.lora import BASE_PARAMS, HF_MODULES, LORA_TARGETS, LoraConfig, merge_params

log = logging.getLogger(__name__)

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
_PREFIX = "base_model.model.model.layers"


def _hf_parent(target: str) -> tuple[str, str]:
  """(xbook module, HF module) of a target: attention's are `self_attn`, the MLP's `mlp`."""
  return ("attention", "self_attn") if target in LORA_TARGETS["attention"] else ("mlp", "mlp")


def _stacked(adapters: Mapping[str, Any], n_layers: int) -> Mapping[str, Any]:
  """The adapters with layers stacked on a leading axis (`layers`), whatever the run's layout."""
  if "layers" in adapters:
    return adapters["layers"]
  layers = [adapters[f"layers_{i}"] for i in range(n_layers)]
  return {module: {name: np.stack([np.asarray(layer[module][name]) for layer in layers])
                   for name in layers[0][module]} for module in layers[0]}


def tensor_name(layer: int, target: str, matrix: str) -> str:
  """peft's name of one adapter matrix ("A" or "B") of `target` in `layer`."""
  return f"{_PREFIX}.{layer}.{_hf_parent(target)[1]}.{HF_MODULES[target]}.lora_{matrix}.weight"


def peft_config(lora: LoraConfig, base_model: str | None) -> dict[str, Any]:
  """adapter_config.json: the fields peft's LoraConfig reads for a plain LoRA adapter."""
  return {"peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_model,
          "r": lora.rank, "lora_alpha": lora.alpha, "lora_dropout": lora.dropout,
          "target_modules": [HF_MODULES[t] for t in lora.targets], "bias": "none", "fan_in_fan_out": False,
          "inference_mode": True, "init_lora_weights": True, "use_rslora": False, "use_dora": False,
          "modules_to_save": None, "layers_to_transform": None, "layers_pattern": None, "rank_pattern": {},
          "alpha_pattern": {}, "revision": None}


def write_peft_adapter(out_dir: str | os.PathLike[str], config: DecoderConfig, adapters: Mapping[str, Any], *,
                       dtype: str = "bfloat16", base_model: str | None = None, overwrite: bool = False) -> list[str]:
  """Write a LoRA run's adapters (the adapter part of Decoder(config)'s tree) as a peft adapter folder.

  Args:
    out_dir: the new folder (absent or empty, unless `overwrite`); written whole or not at all.
    config: the run's DecoderConfig (with `lora`).
    dtype: of the written tensors (bfloat16, float16, float32).
    base_model: adapter_config.json's base_model_name_or_path (the base's name or folder).

  Returns:
    The names of the files written.

  Raises:
    ValueError: `config` has no `lora`.
  """
  lora = config.lora
  if lora is None:
    raise ValueError("the run has no LoRA adapters (its DecoderConfig.lora is None): export it without "
                     "--adapter, as a full checkpoint")
  out = check_out_dir(out_dir, overwrite)
  stacked = _stacked(adapters, config.n_layers)
  np_dtype = jnp.dtype(dtype)
  tensors = {}
  for target in lora.targets:
    module = stacked[_hf_parent(target)[0]]
    a, b = (np.asarray(module[BASE_PARAMS[target] + suffix], np.float32) for suffix in ("_lora_a", "_lora_b"))
    for layer in range(config.n_layers):
      tensors[tensor_name(layer, target, "A")] = np.ascontiguousarray(
          a[layer].reshape(-1, lora.rank).T).astype(np_dtype)
      tensors[tensor_name(layer, target, "B")] = np.ascontiguousarray(
          b[layer].reshape(lora.rank, -1).T).astype(np_dtype)
  with staged_folder(out, overwrite) as staging:
    save_file(tensors, str(staging / WEIGHTS_FILE), metadata={"format": "pt"})
    (staging / CONFIG_FILE).write_text(json.dumps(peft_config(lora, base_model), indent=2) + "\n",
                                       encoding="utf-8")
    names = sorted(p.name for p in staging.iterdir())
  log.info("wrote %s: LoRA adapter of rank %d on %s (%d tensors)", out, lora.rank,
           ", ".join(HF_MODULES[t] for t in lora.targets), len(tensors))
  return names


def read_peft_config(folder: str | os.PathLike[str]) -> LoraConfig:
  """The LoraConfig of a peft adapter folder.

  Raises:
    FileNotFoundError: no adapter_config.json.
    ValueError: not a plain LoRA adapter xbook computes (another peft type, DoRA, rsLoRA, per-module
      ranks, biases, modules outside q/k/v/o/gate/up/down), naming the field.
  """
  path = Path(folder) / CONFIG_FILE
  if not path.is_file():
    raise FileNotFoundError(f"{path} not found: pass a peft adapter folder (adapter_config.json and "
                            f"{WEIGHTS_FILE})")
  info = json.loads(path.read_text(encoding="utf-8"))
  if info.get("peft_type", "LORA") != "LORA":
    raise ValueError(f"{path}: peft_type {info.get('peft_type')!r}; xbook reads LORA adapters only")
  for field, plain in (("use_dora", False), ("use_rslora", False), ("fan_in_fan_out", False), ("bias", "none")):
    if info.get(field, plain) != plain:
      raise ValueError(f"{path}: {field}={info[field]!r}; xbook reads plain LoRA ({field}={plain!r})")
  for field in ("rank_pattern", "alpha_pattern", "modules_to_save", "layers_to_transform"):
    if info.get(field):
      raise ValueError(f"{path}: {field}={info[field]!r}; xbook reads one rank and alpha for every layer")
  modules = info.get("target_modules") or []
  if isinstance(modules, str):
    raise ValueError(f"{path}: target_modules is a pattern ({modules!r}); name the modules")
  by_hf = {hf: target for target, hf in HF_MODULES.items()}
  unknown = [m for m in modules if m not in by_hf]
  if unknown:
    raise ValueError(f"{path}: target_modules {unknown} are not among {sorted(by_hf)}")
  targets = [by_hf[m] for m in modules]
  return LoraConfig(rank=int(info["r"]), alpha=float(info["lora_alpha"]),
                    dropout=float(info.get("lora_dropout") or 0.0),
                    attention=tuple(t for t in LORA_TARGETS["attention"] if t in targets),
                    mlp=tuple(t for t in LORA_TARGETS["mlp"] if t in targets))


def _target_shapes(config: DecoderConfig) -> dict[str, tuple[tuple[int, ...], tuple[int, ...]]]:
  """{target: (input axes, output axes)} of the base kernels, heads split out."""
  c, group = config, config.n_heads // config.n_kv_heads
  q_out, kv_out = (c.n_kv_heads, group, c.head_dim), (c.n_kv_heads, c.head_dim)
  return {"q": ((c.d_model,), q_out), "k": ((c.d_model,), kv_out), "v": ((c.d_model,), kv_out),
          "o": (q_out, (c.d_model,)), "gate": ((c.d_model,), (c.mlp_dim,)), "up": ((c.d_model,), (c.mlp_dim,)),
          "down": ((c.mlp_dim,), (c.d_model,))}


def read_peft_adapter(folder: str | os.PathLike[str], config: DecoderConfig) -> tuple[LoraConfig, dict[str, Any]]:
  """A peft adapter folder as xbook adapters for the base `config` (layers scanned).

  Returns:
    (its LoraConfig, the adapter tree {"layers": {"attention": {...}, "mlp": {...}}} of float32 arrays,
    [n_layers, ...] each).

  Raises:
    ValueError: a tensor missing, unexpected or of the wrong shape (named).
  """
  lora = read_peft_config(folder)
  shapes = _target_shapes(config)
  layers: dict[str, dict[str, np.ndarray]] = {"attention": {}, "mlp": {}}
  path = Path(folder) / WEIGHTS_FILE
  with safe_open(str(path), framework="numpy") as f:
    names = set(f.keys())
    expected = set()
    for target in lora.targets:
      in_shape, out_shape = shapes[target]
      module = layers[_hf_parent(target)[0]]
      for matrix, shape, hf_shape in (("A", in_shape + (lora.rank,), (lora.rank, int(np.prod(in_shape)))),
                                      ("B", (lora.rank,) + out_shape, (int(np.prod(out_shape)), lora.rank))):
        stacked = np.empty((config.n_layers,) + shape, np.float32)
        for layer in range(config.n_layers):
          name = tensor_name(layer, target, matrix)
          expected.add(name)
          if name not in names:
            raise ValueError(f"{path}: tensor {name} is missing")
          tensor = f.get_tensor(name)
          if tuple(tensor.shape) != hf_shape:
            raise ValueError(f"{path}: tensor {name}: expected shape {hf_shape}, found {tuple(tensor.shape)}")
          stacked[layer] = tensor.astype(np.float32).T.reshape(shape)
        module[BASE_PARAMS[target] + ("_lora_a" if matrix == "A" else "_lora_b")] = stacked
  unexpected = sorted(names - expected)
  if unexpected:
    raise ValueError(f"{path}: unexpected tensors {', '.join(unexpected[:5])}")
  return lora, {"layers": {kind: module for kind, module in layers.items() if module}}


def import_peft_adapter(adapter_dir: str | os.PathLike[str], base_dir: str | os.PathLike[str],
                        out_dir: str | os.PathLike[str]) -> DecoderConfig:
  """A peft adapter on imported base weights, as one xbook parameter folder: model.json with the base's
  DecoderConfig plus `lora`, and params/ holding the base and the adapters (xbook.model.hf.checkpoint's
  layout; `xbook weights export --params` writes it merged, or with --adapter as peft again).

  Args:
    adapter_dir: the peft folder; base_dir: the base as `xbook weights import --hf` wrote it.
    out_dir: a new folder.

  Returns:
    The DecoderConfig written (with `lora`).
  """
  if (Path(out_dir) / "params").exists():
    raise FileExistsError(f"{Path(out_dir) / 'params'} exists already; import into a new folder")
  config, params, hf_model_type = load_params(base_dir)
  if config.lora is not None:
    raise ValueError(f"--base {base_dir} holds LoRA adapters already; name the plain base weights")
  lora, adapters = read_peft_adapter(adapter_dir, config)
  config = dataclasses.replace(config, lora=lora)
  save_params(out_dir, config, merge_params(adapters, params), hf_model_type=hf_model_type,
              hf_config=dict(ImportedWeights.read(base_dir).hf_config))
  return config
