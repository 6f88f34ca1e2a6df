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
from typing import Any, Mapping

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from xbook.atomic import atomic_open
from xbook.json_records import read_json_record
from xbook.model.config import DecoderConfig
from xbook.model.decoder import abstract_params


def save_params(out_dir: str | os.PathLike[str], config: DecoderConfig, params: dict[str, Any], *,
                hf_model_type: str, hf_config: dict[str, Any] | None = None) -> None:
  """Write `params` (numpy or jax arrays, the tree of Decoder(config)) and model.json to `out_dir`.

  `hf_config` (JSON) is kept in model.json for `ImportedWeights.hf_config`.

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


@dataclasses.dataclass(frozen=True)
class ImportedWeights:
  """A folder of imported weights (`xbook weights import`, `save_params`): one parameter tree and what it is.

  Not a run directory (xbook.train.run_info.RunInfo): no steps, no vocabulary record, no trajectory format.
  Its record keeps the file name model.json, as every folder imported before this type was named has it;
  the `params/` folder is what tells the two apart (`holds_imported`).

  Attributes:
    folder: the folder (local or gs://).
    model: the DecoderConfig of the parameters (an adapter folder's has `lora`).
    hf_model_type: the Hugging Face architecture the weights came from (what an export writes back).
    hf_config: the source config.json's fields that DecoderConfig does not hold but an export writes back
      (max_position_embeddings, bos/eos/pad token ids); {} in folders imported before it was recorded.
  """

  folder: epath.Path
  model: DecoderConfig
  hf_model_type: str | None
  hf_config: Mapping[str, Any]

  @property
  def params_dir(self) -> epath.Path:
    """The Orbax checkpoint of the parameter tree (layers scanned)."""
    return self.folder / "params"

  @staticmethod
  def holds_imported(folder: str | os.PathLike[str]) -> bool:
    """Whether `folder` holds imported weights (a `params/` checkpoint beside its record)."""
    return (epath.Path(folder) / "params").is_dir()

  @classmethod
  def read(cls, folder: str | os.PathLike[str]) -> ImportedWeights:
    """The record of a folder `save_params` wrote.

    Raises:
      FileNotFoundError: no model.json there.
      ValueError: model.json is not a JSON object or misstates the DecoderConfig (the message says which field).
    """
    path = epath.Path(folder) / "model.json"
    recorded = read_json_record(path, missing_hint=f"is {folder} a folder written by `xbook weights import`?",
                                fix="import the weights again", what="the imported weights' record")
    if "model" not in recorded:
      raise ValueError(f"{path}: no `model` (the DecoderConfig of the weights); import the weights again")
    return cls(folder=epath.Path(folder), model=DecoderConfig.from_record(recorded["model"], path),
               hf_model_type=recorded.get("hf_model_type"), hf_config=recorded.get("hf_config") or {})


def load_params(params_dir: str | os.PathLike[str]) -> tuple[DecoderConfig, dict[str, Any], str]:
  """Read a folder written by `save_params`, parameters on the host.

  Returns:
    (config, params as numpy arrays, hf_model_type).
  """
  params_dir = Path(params_dir).resolve()
  imported = ImportedWeights.read(params_dir)
  config = imported.model
  checkpointer = ocp.StandardCheckpointer()
  cpu = jax.sharding.SingleDeviceSharding(jax.devices("cpu")[0])
  params = checkpointer.restore(params_dir / "params", abstract_params(config, cpu))
  checkpointer.close()
  return config, jax.tree.map(np.asarray, params), imported.hf_model_type
