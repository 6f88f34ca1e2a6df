"""Orbax checkpoints of a run: parameters, optimizer state and the run's progress, saved together.

Layout: `<run_dir>/checkpoints/<step>/{params, opt_state, progress}`. `progress` is JSON: the step, the
input pipeline position (batches consumed) and the seed, which with the step determines every random
choice of the run (data order; the model has no dropout), so a restarted run continues where it stopped.
"""

from __future__ import annotations

import logging
from typing import Any

import orbax.checkpoint as ocp
from etils import epath

log = logging.getLogger(__name__)


class RunCheckpoints:
  """Asynchronous saves at the steps the caller chooses, keeping the latest `keep` and, if
  `keep_every` is set, every step that is a multiple of it."""

  def __init__(self, run_dir: str, keep: int = 3, keep_every: int | None = None) -> None:
    self.directory = f"{str(run_dir).rstrip('/')}/checkpoints"
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, keep_period=keep_every,
                                             enable_async_checkpointing=True))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def save(self, step: int, params: Any, opt_state: Any, progress: dict[str, Any]) -> None:
    """Start saving `step` in the background; the next save or `wait()` waits for it."""
    self._manager.save(
        step, force=True,
        args=ocp.args.Composite(params=ocp.args.StandardSave(params),
                                opt_state=ocp.args.StandardSave(opt_state),
                                progress=ocp.args.JsonSave(progress)))
    log.info("saving checkpoint of step %d to %s", step, self.directory)

  def restore(self, step: int, abstract_params: Any, abstract_opt_state: Any | None = None
              ) -> dict[str, Any]:
    """Restore a step onto the shardings of the abstract trees (jax.ShapeDtypeStruct leaves).

    Without `abstract_opt_state` only the parameters and progress are read (for inference).
    """
    items = {"params": ocp.args.StandardRestore(abstract_params),
             "progress": ocp.args.JsonRestore()}
    if abstract_opt_state is not None:
      items["opt_state"] = ocp.args.StandardRestore(abstract_opt_state)
    restored = self._manager.restore(step, args=ocp.args.Composite(**items))
    return {name: restored[name] for name in items}

  def restore_latest(self, abstract_params: Any, abstract_opt_state: Any | None = None
                     ) -> dict[str, Any] | None:
    """Restore the newest readable checkpoint, falling back to older ones with a warning.

    An unreadable checkpoint is moved aside to `<run_dir>/checkpoints_unreadable/<step>` (kept for
    inspection, out of the way of the run that resaves that step).

    Returns:
      The restored items plus "step", or None when the run has no checkpoint yet.

    Raises:
      RuntimeError: checkpoints exist but none can be read.
    """
    steps = self.all_steps()
    for step in reversed(steps):
      try:
        restored = self.restore(step, abstract_params, abstract_opt_state)
      except Exception as error:  # noqa: BLE001 - any failure to read means: try the previous one
        aside = self._move_aside(step)
        log.warning("checkpoint of step %d is incomplete or corrupt (%s: %s); moved it to %s and "
                    "trying an older one", step, type(error).__name__, error, aside)
        continue
      if step != steps[-1]:
        log.warning("restored step %d instead of the newest checkpoint", step)
      return {"step": step, **restored}
    if steps:
      raise RuntimeError(f"none of the checkpoints {steps} in {self.directory} can be read")
    return None

  def _move_aside(self, step: int) -> epath.Path:
    source = epath.Path(self.directory) / str(step)
    target = epath.Path(self.directory).parent / "checkpoints_unreadable" / str(step)
    target.parent.mkdir(parents=True, exist_ok=True)
    source.rename(target)
    self._manager.reload()
    return target

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()
