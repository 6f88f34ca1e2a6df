"""xbook's side of a conversion: a folder holding a parameter tree and the DecoderConfig it belongs to.

Layout: `<dir>/model.json` ({"model": DecoderConfig fields, "hf_model_type": architecture it came from,
"hf_config": the source's config.json fields that DecoderConfig does not hold but an export writes back:
max_position_embeddings and the bos/eos/pad token ids}) and `<dir>/params` (an Orbax checkpoint of the
parameter tree, layers scanned).
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from xbook.atomic import atomic_open
from xbook.model.config import DecoderConfig
from xbook.model.decoder import abstract_params


def save_params(out_dir: str | os.PathLike[str], config: DecoderConfig, params: dict[str, Any], *,
                hf_model_type: str, hf_config: dict[str, Any] | None = None) -> None:
  """Write `params` (numpy or jax arrays, the tree of Decoder(config)) and model.json to `out_dir`.

  `hf_config` (JSON) is kept in model.json for `load_info`.

  Raises:
    ValueError: `out_dir/params` exists already (Orbax does not overwrite).
  """
  out_dir = Path(out_dir).resolve()
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(out_dir / "params", params)
  checkpointer.wait_until_finished()
  checkpointer.close()
  info = {"model": dataclasses.asdict(config), "hf_model_type": hf_model_type, "hf_config": hf_config or {}}
  with atomic_open(out_dir / "model.json") as f:
    json.dump(info, f, indent=2)


def load_info(params_dir: str | os.PathLike[str]) -> dict[str, Any]:
  """The model.json of a folder written by `save_params` ("hf_config" is {} when the file has none)."""
  path = Path(params_dir) / "model.json"
  if not path.is_file():
    raise FileNotFoundError(f"{path} not found: is {params_dir} a folder written by `xbook weights import`?")
  info = json.loads(path.read_text(encoding="utf-8"))
  info.setdefault("hf_config", {})
  return info


def load_params(params_dir: str | os.PathLike[str]) -> tuple[DecoderConfig, dict[str, Any], str]:
  """Read a folder written by `save_params`, parameters on the host.

  Returns:
    (config, params as numpy arrays, hf_model_type).
  """
  params_dir = Path(params_dir).resolve()
  info = load_info(params_dir)
  config = DecoderConfig(**info["model"])
  checkpointer = ocp.StandardCheckpointer()
  cpu = jax.sharding.SingleDeviceSharding(jax.devices("cpu")[0])
  params = checkpointer.restore(params_dir / "params", abstract_params(config, cpu))
  checkpointer.close()
  return config, jax.tree.map(np.asarray, params), info["hf_model_type"]
