"""LoRA runs: adapters trained on a frozen base, their checkpoints, and their merged parameters.

A run whose DecoderConfig has `lora` (xbook.model.lora) trains only the adapters. Its base comes from
`train.init_from`, as a full fine-tune's does, restored onto the trainer's shardings in the base's
dtype (DecoderConfig.param_dtype: bf16 on TPU). Its checkpoints hold the adapters and their optimizer
state only; model.json's `started_from` records the base they belong to: its path and a fingerprint of
its weights (xbook.model.lora.params_fingerprint).

The start order is the full fine-tune's: the run's own latest checkpoint (the adapters, on the base
that `train.init_from` names, which must be the recorded one); else fresh adapters (B zero) on the base;
random init has no meaning for adapters. A resume whose base has another fingerprint is refused, naming
both, before any checkpoint is read, moved aside or written.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Mapping

import jax
from etils import epath

from xbook.model import DecoderConfig, abstract_params
from xbook.model import lora as lora_lib
from xbook.train import warm_start
from xbook.train.run_info import RunInfo

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class AdapterStart:
  """Where a LoRA session starts: the merged parameter tree (adapters and base), the optimizer state of
  the adapters, the step, batches consumed, and model.json's `started_from` (the base, fingerprinted)."""

  params: Any
  opt_state: Any
  step: int
  batches_consumed: int
  started_from: Mapping[str, Any]


def saved_params(config: DecoderConfig, params: Any) -> Any:
  """What a checkpoint holds of the parameters: the adapters of a LoRA run, else all of them."""
  return lora_lib.split_params(params)[0] if config.lora is not None else params


def base_config(config: DecoderConfig) -> DecoderConfig:
  """The base model of a LoRA config (the same DecoderConfig without adapters)."""
  return dataclasses.replace(config, lora=None)


def recorded_base(run_dir: str | epath.Path) -> Mapping[str, Any] | None:
  """The base a LoRA run's checkpoints belong to, as its model.json records it ({"path", "fingerprint",
  ...}, RunInfo.started_from), or None when the run has no model.json yet."""
  info = RunInfo.read_if_present(run_dir)
  return info.started_from if info is not None else None


def find_base(init_from: str | None, init_from_step: int | None, run_dir: str | epath.Path
              ) -> warm_start.InitSource:
  """The base `init_from` names (warm_start.check_compatible refuses one that holds adapters itself).

  Raises:
    ValueError: no init_from.
  """
  if not init_from:
    recorded = recorded_base(run_dir) or {}
    hint = f" (this run's adapters belong to {recorded['path']})" if recorded.get("path") else ""
    raise ValueError(f"DecoderConfig.lora trains adapters on a frozen base: set train.init_from to the base "
                     f"model (a folder from `xbook weights import`, or an xbook run){hint}")
  return warm_start.find_source(init_from, init_from_step)


def check_base(run_dir: str | epath.Path, source: warm_start.InitSource, fingerprint: str) -> None:
  """Refuse to resume adapters on another base than the one their checkpoints were trained on.

  Raises:
    ValueError: naming the recorded base (path, fingerprint) and this one.
  """
  recorded = recorded_base(run_dir) or {}
  if not recorded.get("fingerprint"):
    raise ValueError(f"{run_dir} holds checkpoints but its model.json records no LoRA base (path and "
                     "fingerprint): were they trained without DecoderConfig.lora? Use a new run_dir")
  if recorded["fingerprint"] != fingerprint:
    raise ValueError(
        f"{run_dir}: its adapters belong to the base {recorded.get('path')} (fingerprint "
        f"{recorded['fingerprint']}), but train.init_from={source.path} is another base (fingerprint "
        f"{fingerprint}); nothing was changed there. Set train.init_from to the run's base, or train these "
        "adapters in a new run_dir")
  if recorded.get("path") != source.path:
    log.info("the base of %s moved from %s to %s (same fingerprint %s)", run_dir, recorded.get("path"),
             source.path, fingerprint)


def restore_base(trainer: Any, source: warm_start.InitSource) -> Any:
  """The base parameters of `source` on the trainer's shardings, in the base's dtype."""
  config = trainer.model_config
  warm_start.check_compatible(source, config)
  abstract_base = trainer.split(trainer.abstract_state.params)[1]
  return warm_start.restore_params(source, base_config(config), trainer.mesh, trainer.rules, abstract_base)


def restore_or_init(trainer: Any, checkpoints: Any, run_path: epath.Path, *, seed: int,
                    init_from: str | None, init_from_step: int | None) -> AdapterStart:
  """A LoRA session's start (module docstring): the base from `init_from` (checked against the run's
  record when it has checkpoints), then the run's own adapters, else fresh ones from `seed`.

  Args:
    trainer: the run's xbook.train.trainer.Trainer (its config has `lora`).
    checkpoints: the run's RunCheckpoints.

  Raises:
    ValueError: no base, a LoRA run as the base, or a base other than the one the checkpoints record.
  """
  resuming = bool(checkpoints.all_steps())
  source = find_base(init_from, init_from_step, run_path)
  base = restore_base(trainer, source)
  fingerprint = lora_lib.params_fingerprint(base)
  if resuming:
    check_base(run_path, source, fingerprint)
  started_from = {**source.describe(), "fingerprint": fingerprint}
  frozen, trainable = lora_lib.count(base), trainer.model_config.lora_params()
  log.info("LoRA: %d trainable adapter parameters (%.3g%% of the model) on a frozen base of %d from %s "
           "(fingerprint %s)", trainable, 100 * trainable / max(frozen + trainable, 1), frozen, source.path,
           fingerprint)
  abstract_adapters = trainer.split(trainer.abstract_state.params)[0]
  restored = checkpoints.restore_latest(abstract_adapters, trainer.abstract_state.opt_state) if resuming else None
  if restored is not None:
    progress = restored["progress"]
    step = int(progress["step"])
    if progress.get("seed", seed) != seed:
      raise ValueError(f"{run_path} was trained with seed {progress['seed']}, not {seed}: resuming with "
                       "another seed would change the data order; use a new run_dir")
    log.info("resuming the adapters of %s from their checkpoint at step %d", run_path, step)
    return AdapterStart(trainer.merge(restored["params"], base), restored["opt_state"], step,
                        int(progress.get("batches_consumed", step)), started_from)
  log.info("starting fresh adapters (seed %d) on the base %s", seed, source.path)
  state = trainer.state_from_params(trainer.merge(trainer.init_trainable(seed), base))
  return AdapterStart(state.params, state.opt_state, 0, 0, started_from)


def merged_run_params(config: DecoderConfig, adapters: Any, base: Mapping[str, Any], abstract_base: Any
                      ) -> dict[str, Any]:
  """A LoRA run's plain weights: its base (read from the folder the run records, checked against the
  recorded fingerprint) with `adapters` merged in; the tree of Decoder(base_config(config)).

  Args:
    config: the run's DecoderConfig (with `lora`); adapters: its checkpoint's adapters.
    base: the run's record of its base (RunInfo.lora_base(): {"path", "kind", "step", "fingerprint"}).
    abstract_base: where and how the base is read (abstract leaves of the base's tree: shapes,
      shardings, the run's parameter dtype).

  Raises:
    FileNotFoundError / ValueError: the recorded base is gone or has another fingerprint.
  """
  source = warm_start.find_source(base["path"], base.get("step"))
  target = base_config(config)
  stored = abstract_base
  if source.config.scan_layers != target.scan_layers:  # read in the source's layout, on one device
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    stored = abstract_params(dataclasses.replace(target, scan_layers=source.config.scan_layers), device)
  params = warm_start.read_params(source, stored)
  if source.config.scan_layers != target.scan_layers:
    params = warm_start.relayout(source.config.scan_layers, target.n_layers)(params)
  fingerprint = lora_lib.params_fingerprint(params)
  if base.get("fingerprint") and fingerprint != base["fingerprint"]:
    raise ValueError(f"the run's adapters belong to the base {base['path']} of fingerprint {base['fingerprint']}, "
                     f"but that folder now holds weights of fingerprint {fingerprint}; put the base back there")
  return lora_lib.merged_params(lora_lib.merge_params(adapters, params), config.lora)


def restore_adapters(checkpoints: Any, step: int, target: Any) -> Any:
  """The adapters of a LoRA run's checkpoint `step`, read onto the adapter leaves of `target` (the
  abstract parameter tree of the run's DecoderConfig)."""
  return checkpoints.restore(step, lora_lib.split_params(target)[0])["params"]


def load_merged(checkpoints: Any, step: int, target: Any, config: DecoderConfig, base: Mapping[str, Any]
                ) -> tuple[dict[str, Any], DecoderConfig]:
  """(plain weights, their DecoderConfig) of a LoRA run at `step`: its adapters merged once into its base
  (`base`: RunInfo.lora_base()), read onto the leaves of `target` (the abstract tree of `config`, adapters
  included), for inference (xbook.infer.generate.load_run) and export."""
  adapters = restore_adapters(checkpoints, step, target)
  params = merged_run_params(config, adapters, base, lora_lib.split_params(target)[1])
  return params, base_config(config)
