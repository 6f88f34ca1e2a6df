"""Warm start: a new run's parameters from imported Hugging Face weights or from another xbook run.

A run starts from, in this order (docs/architecture.md): its own latest checkpoint; else the parameters
named by `train.init_from`; else random init. This module is the middle case. The source is either

  imported  a folder written by `xbook weights import` (model.json + params/, xbook.model.hf.checkpoint)
  run       a trained xbook run directory (model.json + checkpoints/<step>/params), at its latest
            checkpoint or at a given step

The parameters are restored straight onto the trainer's sharded abstract parameters: every host reads
only the shards its devices hold, and Orbax casts to the configured parameter dtype. Only the
parameters are read; the optimizer state is fresh and the step is 0.

The run's DecoderConfig must describe the same network as the source's: every field that sets a
parameter's shape or the function the weights compute must be equal, and all are named when they are
not. The fields in MAY_DIFFER only change how the same function is computed or stored (precision,
rematerialization, attention kernel, layer scan) or extend its context (RoPE scaling), and are logged.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Callable

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from etils import epath

from xbook.model import DecoderConfig, abstract_params
from xbook.model.hf.checkpoint import ImportedWeights
from xbook.train.run_info import RunInfo, RunPaths

log = logging.getLogger(__name__)

# DecoderConfig fields a resumed run may set differently from its own checkpoints: they change how the
# same parameters are computed with or stored (Orbax casts on restore), not the parameter tree.
RESUME_MAY_DIFFER: tuple[str, ...] = ("dtype", "param_dtype", "remat", "attention", "attention_block")

# DecoderConfig fields a warm-started run may set differently from its source.
MAY_DIFFER: tuple[str, ...] = (
    "dtype", "param_dtype", "remat", "attention", "attention_block", "scan_layers",
    # Context extension: a longer context than the source's, by scaling its rotary embeddings.
    "rope_scaling", "rope_factor", "rope_original_max_position", "rope_low_freq_factor",
    "rope_high_freq_factor", "rope_beta_fast", "rope_beta_slow", "rope_attention_factor",
    # LoRA adapters on the source as a frozen base (xbook.train.adapters).
    "lora")


@dataclasses.dataclass(frozen=True)
class InitSource:
  """Where a warm start reads its parameters.

  Attributes:
    path: the folder named by `train.init_from`.
    kind: "imported" (`xbook weights import`) or "run" (an xbook run directory).
    step: the checkpoint step of a run; None for imported weights.
    params_dir: the Orbax checkpoint directory of the parameter tree.
    config: the DecoderConfig the parameters were saved with.
    hf_model_type: the Hugging Face architecture the weights were imported from (for a run, the one
      its own warm start recorded), so that an export writes the same one; None if unknown.
  """

  path: str
  kind: str
  step: int | None
  params_dir: str
  config: DecoderConfig
  hf_model_type: str | None = None

  def describe(self) -> dict[str, Any]:
    """What the run records about where it started from (JSON)."""
    return {"path": self.path, "kind": self.kind, "step": self.step, "hf_model_type": self.hf_model_type}


def find_source(init_from: str, step: int | None = None) -> InitSource:
  """The parameters that `init_from` names.

  Args:
    init_from: a folder written by `xbook weights import`, or an xbook run directory (local or gs://).
    step: for a run, the checkpoint step to start from (default its latest); must be None for
      imported weights.

  Raises:
    FileNotFoundError: the folder, its model.json or the asked checkpoint is missing (the message says
      which and what to run).
    ValueError: a step is given for imported weights.
  """
  if ImportedWeights.holds_imported(init_from):
    if step is not None:
      raise ValueError(f"train.init_from_step={step}, but {init_from} holds imported weights "
                       "(one set of parameters, no steps); unset train.init_from_step")
    imported = ImportedWeights.read(init_from)
    return InitSource(str(init_from), "imported", None, str(imported.params_dir), imported.model,
                      imported.hf_model_type)
  paths = RunPaths(epath.Path(init_from))
  if not paths.model_json.is_file():
    raise FileNotFoundError(
        f"train.init_from={init_from!r}: {paths.model_json} not found; name a folder written by "
        "`xbook weights import --hf HF_DIR --out DIR` or an xbook run directory")
  run = RunInfo.read(init_from)
  steps = run.checkpoint_steps()
  if not steps:
    raise FileNotFoundError(f"train.init_from={init_from!r}: neither imported weights ({run.run_dir / 'params'}) "
                            f"nor run checkpoints ({run.checkpoints_dir}) found there")
  if step is None:
    step = steps[-1]
  elif step not in steps:
    raise FileNotFoundError(f"train.init_from_step={step}: {init_from} has checkpoints of steps {steps}")
  return InitSource(str(init_from), "run", step, str(run.checkpoints_dir / str(step) / "params"), run.model,
                    (run.started_from or {}).get("hf_model_type"))


def config_differences(source: DecoderConfig, target: DecoderConfig) -> dict[str, tuple[Any, Any]]:
  """{field: (source value, target value)} of every DecoderConfig field that differs."""
  return {f.name: (getattr(source, f.name), getattr(target, f.name))
          for f in dataclasses.fields(DecoderConfig)
          if getattr(source, f.name) != getattr(target, f.name)}


def check_compatible(source: InitSource, target: DecoderConfig) -> dict[str, tuple[Any, Any]]:
  """Refuse a run config that describes another network than the source; return the allowed
  differences (fields of MAY_DIFFER).

  Raises:
    ValueError: naming every differing structural field with both values.
  """
  if source.config.lora is not None:
    flag = "--run_dir" if source.kind == "run" else "--params"
    raise ValueError(
        f"train.init_from={source.path!r} holds LoRA adapters; start from its merged weights: `xbook weights "
        f"export {flag} {source.path} --out HF_DIR`, then `xbook weights import --hf HF_DIR --out DIR` and "
        "train.init_from=DIR")
  differences = config_differences(source.config, target)
  structural = {name: values for name, values in differences.items() if name not in MAY_DIFFER}
  if structural:
    listed = "; ".join(f"{name}: {src!r} in the source, {dst!r} in this run"
                       for name, (src, dst) in sorted(structural.items()))
    raise ValueError(
        f"train.init_from={source.path!r} is a different model than train.model_config: {listed}. "
        f"Set these DecoderConfig fields to the source's values (its model.json); only "
        f"{', '.join(MAY_DIFFER)} may differ")
  return {name: values for name, values in differences.items() if name in MAY_DIFFER}


def check_resume(run_dir: str, target: DecoderConfig, has_checkpoints: bool) -> None:
  """Refuse to resume a run directory whose checkpoints belong to another model, before any checkpoint
  is read, moved or overwritten.

  Compares `target` with the DecoderConfig the run recorded (its model.json); only RESUME_MAY_DIFFER
  fields may change between sessions. A run directory without checkpoints may change anything.

  Raises:
    ValueError: naming every differing field with the recorded and the new value.
  """
  run = RunInfo.read_if_present(run_dir) if has_checkpoints else None
  if run is None:
    return
  differences = config_differences(run.model, target)
  blocking = {name: values for name, values in differences.items() if name not in RESUME_MAY_DIFFER}
  if blocking:
    listed = "; ".join(f"{name}: {was!r} in the run, {now!r} now" for name, (was, now) in sorted(blocking.items()))
    raise ValueError(
        f"{run_dir} holds checkpoints of another model ({listed}); nothing was changed there. Train this "
        f"model in a new run_dir, or set these DecoderConfig fields back to the run's values (its "
        f"model.json); only {', '.join(RESUME_MAY_DIFFER)} may change when a run resumes")
  for name, (was, now) in sorted(differences.items()):
    log.info("resuming with %s=%r (the run had %r)", name, now, was)


def relayout(scanned: bool, n_layers: int) -> Callable[[dict[str, Any]], dict[str, Any]]:
  """A function from the parameter tree in the source's layer layout to the other layout: stacked
  `layers` [n_layers, ...] when `scanned`, else `layers_0` ... `layers_{n-1}`."""

  def unstack(params: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in params.items() if k != "layers"}
    for i in range(n_layers):
      out[f"layers_{i}"] = jax.tree.map(lambda x, i=i: x[i], params["layers"])
    return out

  def stack(params: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in params.items() if not k.startswith("layers_")}
    out["layers"] = jax.tree.map(lambda *xs: jnp.stack(xs),
                                 *[params[f"layers_{i}"] for i in range(n_layers)])
    return out

  return unstack if scanned else stack


def read_params(source: InitSource, stored: Any) -> Any:
  """The source's parameter tree read onto `stored` (abstract leaves: shapes, shardings, dtypes to cast to),
  in the source's layer layout."""
  checkpointer = ocp.StandardCheckpointer()
  try:
    return checkpointer.restore(epath.Path(source.params_dir), stored)
  finally:
    checkpointer.close()


def restore_params(source: InitSource, target: DecoderConfig, mesh: jax.sharding.Mesh, rules: Any,
                   target_params: Any) -> Any:
  """The source's parameters on the trainer's shardings and dtypes.

  Args:
    source: from `find_source`, already checked with `check_compatible`.
    target: the run's DecoderConfig.
    mesh, rules: the trainer's mesh and logical axis rules.
    target_params: the trainer's abstract parameters (sharded jax.ShapeDtypeStruct leaves).

  Returns:
    The parameter tree, each leaf a jax.Array with the sharding and dtype of `target_params`.
  """
  same_layout = source.config.scan_layers == target.scan_layers
  # Read in the layout the source was saved in, sharded by the run's rules and cast to its dtype.
  stored = target_params if same_layout else abstract_params(
      dataclasses.replace(target, scan_layers=source.config.scan_layers), mesh=mesh, rules=rules)
  params = read_params(source, stored)
  if same_layout:
    return params
  log.info("converting the source's %s layers to this run's %s layers", 
           "scanned" if source.config.scan_layers else "unrolled",
           "scanned" if target.scan_layers else "unrolled")
  shardings = jax.tree.map(lambda leaf: leaf.sharding, target_params)
  with jax.set_mesh(mesh):
    return jax.jit(relayout(source.config.scan_layers, target.n_layers),
                   out_shardings=shardings)(params)
