"""A run's data identity: what its examples are made of, recorded when it starts and checked at every rerun.

A checkpoint's weights only mean something with the token ids and trajectories they were trained on. A
rerun of a run directory that has checkpoints, whose vocabulary, scaffold files, plan order, profile,
sequence length or loss weights differ from what the run recorded, is refused before anything is written
(DataChangedError names each differing field and the binding that sets it), unless the caller continues
on purpose (train.allow_data_change=True); then the change is appended to the run's history.

`<run_dir>/data_history.jsonl` is that history, appended to and never rewritten in place: its first line
is the data the run started on, and each later line a deliberate change, each {"step", "time", "reason",
"changed": [fields], "data": the identity}. The last line is the run's current data.
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any, Mapping, Sequence

import tensorflow as tf
from etils import epath

from xbook.atomic import atomic_open
from xbook.data.records import list_scaffold_files
from xbook.data.spec import DataSpec

HISTORY_FILE = "data_history.jsonl"

# Compared fields, and the gin binding that sets each (what the error message tells the user to check).
COMPARED_FIELDS = {"vocabulary": "train.vocab_path", "scaffold_files": "train.scaffold_files",
                   "plan_order": "train.plan_order", "profile": "paper_stages.profile",
                   "seq_len": "train.seq_len", "loss_weights": "train.loss_weights"}


class DataChangedError(ValueError):
  """A rerun whose data differs from the data its run directory's checkpoints were trained on."""


def file_sha256(path: str) -> str:
  """The SHA-256 of a file's bytes (local or gs://), read in 4 MiB chunks."""
  digest = hashlib.sha256()
  with tf.io.gfile.GFile(path, "rb") as f:
    while chunk := f.read(4 << 20):
      digest.update(chunk)
  return digest.hexdigest()


def identity(data: DataSpec) -> dict[str, Any]:
  """The data identity of a run reading `data`: the vocabulary's content fingerprint (its path recorded
  too), each scaffold file (in the order they are read) with the SHA-256 of its bytes, and the settings that
  make examples of them; loss weights resolved as training uses them, so an unset weight and its default
  are the same."""
  return {"vocabulary": data.vocabulary.fingerprint, "vocabulary_path": data.vocabulary.path,
          "scaffold_files": [{"path": path, "sha256": file_sha256(path)}
                             for path in list_scaffold_files(list(data.scaffold_files))],
          **data.trajectory_format.describe(), "seq_len": int(data.seq_len),
          "loss_weights": data.trajectory_format.resolved_loss_weights(data.loss_weights)}


def read_history(run_path: epath.Path) -> list[dict[str, Any]]:
  """The lines of the run's data history (empty for a new run, or one from before it was recorded)."""
  path = run_path / HISTORY_FILE
  if not path.exists():
    return []
  return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _shown_files(was: Sequence[Mapping[str, str]], now: Sequence[Mapping[str, str]]) -> str:
  before = {f["path"]: f["sha256"] for f in was}
  after = {f["path"]: f["sha256"] for f in now}
  parts = [f"{p} changed" for p in after if p in before and before[p] != after[p]]
  parts += [f"{p} added" for p in after if p not in before]
  parts += [f"{p} removed" for p in before if p not in after]
  return ", ".join(parts) or "the same files in another order"


def differences(recorded: Mapping[str, Any], wanted: Mapping[str, Any]) -> dict[str, str]:
  """{field: what differs, in words} for each compared field where `wanted` differs from `recorded`."""
  found = {}
  for field, binding in COMPARED_FIELDS.items():
    was, now = recorded.get(field), wanted.get(field)
    if field == "scaffold_files":
      if [f["sha256"] for f in was or []] != [f["sha256"] for f in now]:
        found[field] = f"scaffold files ({_shown_files(was or [], now)}; {binding})"
    elif was != now:
      if field == "vocabulary":
        shown = (f"fingerprint {str(was)[:12]} ({recorded.get('vocabulary_path')}) recorded, "
                 f"{str(now)[:12]} ({wanted.get('vocabulary_path')}) now")
      elif isinstance(was, dict) and isinstance(now, dict):
        shown = ", ".join(f"{k}: {was.get(k)} -> {now.get(k)}" for k in sorted(set(was) | set(now))
                          if was.get(k) != now.get(k))
      else:
        shown = f"{was!r} recorded, {now!r} now"
      found[field] = f"{field.replace('_', ' ')} ({shown}; {binding})"
  return found


def check(run_path: epath.Path, wanted: Mapping[str, Any], *, has_checkpoints: bool,
          allow_change: bool) -> dict[str, Any] | None:
  """The history line to append for this session (None: the data is the recorded one), or
  DataChangedError when the data differs from what the run's checkpoints were trained on and
  `allow_change` is False. Reads only: nothing is written here."""
  history = read_history(run_path)
  if not history:
    reason = "resumed: recorded from this session (the run predates its data history)" if has_checkpoints \
        else "start"
    return {"reason": reason, "changed": [], "data": dict(wanted)}
  found = differences(history[-1]["data"], wanted)
  if not found:
    return None
  if has_checkpoints and not allow_change:
    raise DataChangedError(
        f"{run_path} was trained on other data than this run config gives: {'; '.join(found.values())}. "
        f"Resuming would train its weights on other data: use a new run_dir, or bind "
        f"train.allow_data_change=True to continue on purpose (the change is appended to "
        f"{run_path / HISTORY_FILE})")
  reason = "allow_data_change" if has_checkpoints else "restarted before its first checkpoint"
  return {"reason": reason, "changed": sorted(found), "data": dict(wanted)}


def append(run_path: epath.Path, line: Mapping[str, Any], step: int) -> None:
  """Append `line` (from check()) to the history with the step it applies from; the earlier lines are
  kept byte for byte (the file is rewritten whole, atomically where the file system allows: gs:// has
  no append)."""
  path = run_path / HISTORY_FILE
  before = path.read_text(encoding="utf-8") if path.exists() else ""
  record = {"step": int(step), "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **line}
  with atomic_open(path) as f:
    f.write(before + json.dumps(record, sort_keys=True) + "\n")
