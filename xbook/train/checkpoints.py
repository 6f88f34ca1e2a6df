"""Orbax checkpoints of a run: parameters, optimizer state and the run's progress, saved together.

Layout: `<run_dir>/checkpoints/<step>/{params, opt_state, progress}`. `progress` is JSON: the step and
the input pipeline position (batches consumed), so a restarted run continues where it stopped.
"""

from __future__ import annotations

import logging
from typing import Any

import orbax.checkpoint as ocp

log = logging.getLogger(__name__)


class RunCheckpoints:
  """Asynchronous saves at the steps the caller chooses, keeping the latest `keep`."""

  def __init__(self, run_dir: str, keep: int = 3) -> None:
    self.directory = f"{str(run_dir).rstrip('/')}/checkpoints"
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=True))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

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

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()
