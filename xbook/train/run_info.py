"""The one owner of a run directory's layout: what `xbook train` writes there, and how every release's is read.

A run directory (local or gs://) holds

  model.json          the run's record (RunInfo): DecoderConfig, vocabulary, sequence length, trajectory
                      format and where its parameters started
  config.gin          the operative gin config of its latest session
  vocab/              a copy of the vocabulary's files, so that the run directory is self-contained
  checkpoints/<step>  Orbax checkpoints (xbook.train.checkpoints)
  input_counts/       the example count of each book a host reads, so that a resume skips them unbuilt
  metrics.jsonl       one record per step, and tensorboard/ its events (xbook.train.metrics)
  data_history.jsonl  the data the run trains on (xbook.train.data_identity)
  profile/            profiler traces

`RunPaths` names these files; `RunInfo` is a RunPaths with the record of model.json. `RunInfo.read` reads
the model.json of every release (all the legacy parsing of the package is here; tests/fixtures/run_layouts
keeps one of each):

  2026-11-29  {"model", "vocab_path": absolute}; the sequence length and plan order only in config.gin
              (train.seq_len; train.trajectory_layout from 2026-11-30, with paper_stages.profile)
  2026-11-30  + "started_from" (the warm start: {"path", "kind", "step"}, later + "hf_model_type")
              + "vocab_path" relative to the run ("vocab/<file>") and "vocab_source"
              + "seq_len"
              + "trajectory": {"layout", "profile"}, renamed {"plan_order", "profile"} the same day
  2026-12-06  LoRA runs: "model"'s "lora" (a LoraConfig's fields) and "started_from"'s "fingerprint"

A folder of imported weights (`xbook weights import`) is not a run: its own reader is
xbook.model.hf.checkpoint.ImportedWeights.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any, Mapping

from etils import epath

from xbook.atomic import atomic_open, is_url
from xbook.json_records import read_json_record
from xbook.data import trajectory
from xbook.data.vocab import Vocabulary, load_vocabulary
from xbook.data.spec import DataSpec, TrajectoryFormat
from xbook.model import DecoderConfig

# The paper profile of runs whose files name none (stage_protocol.DEFAULT_PROFILE when they were written).
LEGACY_DEFAULT_PROFILE = "14b_full_book"


@dataclasses.dataclass(frozen=True)
class RunPaths:
  """Where each part of a run directory is (module docstring); nothing is read or created."""

  run_dir: epath.Path

  @property
  def model_json(self) -> epath.Path:
    return self.run_dir / "model.json"

  @property
  def config_gin(self) -> epath.Path:
    return self.run_dir / "config.gin"

  @property
  def vocab_dir(self) -> epath.Path:
    return self.run_dir / "vocab"

  @property
  def checkpoints_dir(self) -> epath.Path:
    return self.run_dir / "checkpoints"

  @property
  def input_counts_dir(self) -> epath.Path:
    return self.run_dir / "input_counts"

  @property
  def metrics_jsonl(self) -> epath.Path:
    return self.run_dir / "metrics.jsonl"

  @property
  def tensorboard_dir(self) -> epath.Path:
    return self.run_dir / "tensorboard"

  @property
  def data_history(self) -> epath.Path:
    return self.run_dir / "data_history.jsonl"

  @property
  def profile_dir(self) -> epath.Path:
    return self.run_dir / "profile"

  def checkpoint_steps(self) -> list[int]:
    """The saved steps (the numbered folders of checkpoints/), ascending, read without opening Orbax."""
    folder = self.checkpoints_dir
    return sorted(int(child.name) for child in folder.iterdir() if child.name.isdigit()) if folder.is_dir() else []


@dataclasses.dataclass(frozen=True)
class RunInfo(RunPaths):
  """A run directory and its record (model.json), as `xbook train` writes it and every later command reads it.

  Attributes:
    run_dir: the run directory (local or gs://).
    model: the run's DecoderConfig (a LoRA run's includes `lora`: its adapters on a frozen base).
    vocab: the vocabulary's path as recorded: relative to the run directory (its `vocab/` copy) or, in runs
      written before 2026-11-30's copy, absolute; `vocab_path` resolves it.
    seq_len: the sequence length the run trains at (the context generation may use); None if unrecorded.
    plan_order: the trajectory format's plan order (xbook.data.trajectory.ALL_PLAN_ORDERS).
    profile: the paper stage protocol's profile when plan_order is paper_stages, else None.
    started_from: where the parameters started: None for random init, else the warm start's record
      ({"path", "kind", "step", "hf_model_type"}; a LoRA run's base also has its "fingerprint").
    vocab_source: the path the vocabulary was copied from (None in runs written before the copy).
  """

  model: DecoderConfig
  vocab: str
  seq_len: int | None
  plan_order: str = "interleaved"
  profile: str | None = None
  started_from: Mapping[str, Any] | None = None
  vocab_source: str | None = None

  @property
  def vocab_path(self) -> epath.Path:
    """The vocabulary to load (xbook.data.vocab.load_vocabulary): `vocab` inside the run unless absolute."""
    if is_url(self.vocab) or Path(self.vocab).is_absolute():
      return epath.Path(self.vocab)
    return self.run_dir / self.vocab

  @property
  def is_paper(self) -> bool:
    """Whether the run learns the paper's stage protocol (plan order paper_stages, in `profile`)."""
    return self.trajectory_format.is_paper

  @property
  def trajectory_format(self) -> TrajectoryFormat:
    """The trajectory format the run learns (its plan order and profile)."""
    return TrajectoryFormat(self.plan_order, self.profile)

  def load_vocabulary(self) -> Vocabulary:
    """The run's vocabulary, checked to fit the model's embedding.

    Raises:
      ValueError: the vocabulary has more ids than the model has embedding rows.
    """
    vocabulary = load_vocabulary(self.vocab_path)
    if vocabulary.size > self.model.vocab_size:
      raise ValueError(f"{self.model_json}: the vocabulary {vocabulary.path} has {vocabulary.size} ids but the "
                       f"model only {self.model.vocab_size} embedding rows; is vocab_path the run's vocabulary?")
    return vocabulary

  @classmethod
  def read(cls, run_dir: str | Path | epath.Path) -> RunInfo:
    """The record of `run_dir`, whichever release wrote it (module docstring).

    Raises:
      FileNotFoundError: no model.json there.
      ValueError: model.json is not JSON, is a folder of imported weights, or lacks or misstates a field;
        the message names the file and the field.
    """
    paths = RunPaths(epath.Path(run_dir))
    path = paths.model_json
    recorded = read_json_record(path, missing_hint=f"is {run_dir} a run directory made by `xbook train`?",
                                fix="restore it from the run's copy or retrain", what="the run's record")
    if "hf_model_type" in recorded and "vocab_path" not in recorded and (paths.run_dir / "params").is_dir():
      raise ValueError(f"{run_dir} holds imported weights (`xbook weights import`), not a run of `xbook train`: "
                       f"train from them with train.init_from={run_dir}, or export them with "
                       f"`xbook weights export --params {run_dir}`")
    gin_text = paths.config_gin.read_text(encoding="utf-8") if paths.config_gin.is_file() else ""
    plan_order, profile = _trajectory(recorded, gin_text)
    return cls(run_dir=paths.run_dir, model=_decoder_config(recorded, paths.model_json),
               vocab=_required(recorded, "vocab_path", paths.model_json, "the vocabulary's path"),
               seq_len=_seq_len(recorded, gin_text, paths.model_json), plan_order=plan_order, profile=profile,
               started_from=recorded.get("started_from") or None, vocab_source=recorded.get("vocab_source"))

  def lora_base(self) -> Mapping[str, Any]:
    """The base a LoRA run's adapters belong to ({"path", "kind", "step", "fingerprint"} of `started_from`).

    Raises:
      ValueError: the record names no base path (the message names the file and the field).
    """
    base = dict(self.started_from or {})
    if not base.get("path"):
      raise ValueError(f"{self.model_json} records no base for its LoRA adapters (started_from.path): "
                       "were its checkpoints trained by another tool? Retrain the adapters with train.init_from")
    return base

  @classmethod
  def read_if_present(cls, run_dir: str | Path | epath.Path) -> RunInfo | None:
    """`read(run_dir)`, or None when the run has no model.json yet (a new run directory)."""
    return cls.read(run_dir) if RunPaths(epath.Path(run_dir)).model_json.is_file() else None

  @classmethod
  def for_training(cls, run_dir: str | epath.Path, model: DecoderConfig, data: DataSpec, *,
                   started_from: Mapping[str, Any] | None) -> RunInfo:
    """The record of a training session on `data`: copies the vocabulary's files into the run's `vocab/`
    (created if missing) and records that copy, the sequence length and the trajectory format; `write`
    writes the record."""
    paths = RunPaths(epath.Path(run_dir))
    copy = epath.Path(data.vocabulary.save(paths.vocab_dir))
    return cls(run_dir=paths.run_dir, model=model, vocab=f"{paths.vocab_dir.name}/{copy.name}", seq_len=data.seq_len,
               plan_order=data.trajectory_format.plan_order, profile=data.trajectory_format.profile,
               started_from=dict(started_from) if started_from else None, vocab_source=data.vocabulary.path)

  def to_json(self) -> dict[str, Any]:
    """model.json's content (the newest layout)."""
    return {"model": dataclasses.asdict(self.model), "seq_len": self.seq_len, "vocab_path": self.vocab,
            "vocab_source": self.vocab_source, "trajectory": {"plan_order": self.plan_order, "profile": self.profile},
            "started_from": dict(self.started_from) if self.started_from else None}

  def write(self, config_gin: str) -> None:
    """Write model.json (`to_json`) and config.gin (`config_gin`: the operative gin config), each atomically."""
    for path, text in ((self.model_json, json.dumps(self.to_json(), indent=2)), (self.config_gin, config_gin)):
      with atomic_open(path, "w") as f:
        f.write(text)


def _required(recorded: Mapping[str, Any], field: str, path: epath.Path, what: str) -> Any:
  if not recorded.get(field):
    raise ValueError(f"{path}: no `{field}` ({what}); is this the model.json of a run of `xbook train`?")
  return recorded[field]


def _decoder_config(recorded: Mapping[str, Any], path: epath.Path) -> DecoderConfig:
  return DecoderConfig.from_record(_required(recorded, "model", path, "the run's DecoderConfig"), path)


def _gin_binding(gin_text: str, pattern: str) -> str | None:
  """The value of the first config.gin line `pattern = value` (quotes stripped), or None."""
  match = re.search(rf"^{pattern}\s*=\s*['\"]?([\w.-]+)['\"]?\s*$", gin_text, re.MULTILINE)
  return match.group(1) if match else None


def _seq_len(recorded: Mapping[str, Any], gin_text: str, path: epath.Path) -> int | None:
  """model.json's `seq_len`, else (written before 2026-11-30's record) config.gin's train.seq_len, else None."""
  value = recorded.get("seq_len") or _gin_binding(gin_text, r"train\.seq_len")
  if value is None:
    return None
  try:
    return int(value)
  except ValueError:
    raise ValueError(f"{path}: seq_len {value!r} is not a whole number of tokens") from None


def _trajectory(recorded: Mapping[str, Any], gin_text: str) -> tuple[str, str | None]:
  """(plan order, profile or None): model.json's `trajectory` ({"plan_order"} or, before the rename, {"layout"}),
  else config.gin's train.plan_order or train.trajectory_layout and paper_stages.profile, else interleaved."""
  trajectory_record = recorded.get("trajectory") or {}
  plan_order = trajectory_record.get("plan_order") or trajectory_record.get("layout")
  if plan_order:
    profile = trajectory_record.get("profile")
  else:
    plan_order = _gin_binding(gin_text, r"train\.(?:plan_order|trajectory_layout)") or "interleaved"
    profile = _gin_binding(gin_text, r"paper_stages\.profile") or LEGACY_DEFAULT_PROFILE
  return plan_order, (profile if plan_order == trajectory.PAPER_STAGES else None)
