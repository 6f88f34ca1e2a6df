"""A run's data identity (xbook.train.data_identity): a rerun with another vocabulary, other scaffolds or
another plan order is refused before anything is written, naming each field; train.allow_data_change=True
continues on purpose and appends the change to the run's data history, keeping the earlier lines."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from xbook.train import data_identity

from tiny_runs import train_tiny


def _snapshot(folder: Path) -> dict[str, bytes]:
  return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def run(tmp_path_factory, scaffold_file, vocab_path):
  """A tiny run trained to step 2 (a checkpoint at 2)."""
  folder = tmp_path_factory.mktemp("identity") / "run"
  train_tiny(folder, scaffold_file, vocab_path, steps=2)
  return folder


@pytest.fixture(scope="module")
def other_inputs(tmp_path_factory, scaffold_records):
  """Another vocabulary (fewer pieces) and another scaffold file (the first book only)."""
  from xbook.data.vocab import train_vocab
  from xbook.scaffold import write_scaffolds
  folder = tmp_path_factory.mktemp("other")
  vocab = train_vocab(scaffold_records, folder / "other.model", vocab_size=900)
  write_scaffolds(folder / "one_book.jsonl", scaffold_records[:1])
  return vocab, folder / "one_book.jsonl"


def test_the_data_is_recorded_at_the_start_of_the_run(run, scaffold_file, vocab_path):
  (line,) = data_identity.read_history(Path(run))
  data = line["data"]
  assert line["step"] == 0 and line["reason"] == "start" and line["changed"] == []
  assert data["vocabulary_path"] == str(vocab_path) and data["plan_order"] == "interleaved"
  assert data["seq_len"] == 256 and data["profile"] is None and data["loss_weights"]["text"] == 1.0
  assert [f["path"] for f in data["scaffold_files"]] == [str(scaffold_file)]
  assert data["scaffold_files"][0]["sha256"] == data_identity.file_sha256(str(scaffold_file))


@pytest.mark.parametrize("change, named", [
    ("vocabulary", ["vocabulary (fingerprint", "other.model", "train.vocab_path"]),
    ("scaffolds", ["scaffold files (", "one_book.jsonl added", "scaffolds.jsonl removed", "train.scaffold_files"]),
    ("plan_order", ["plan order ('interleaved' recorded, 'plans_first' now; train.plan_order)"]),
    ("all", ["vocabulary (", "scaffold files (", "plan order (", "seq len (256 recorded, 128 now"]),
])
def test_a_resume_on_other_data_is_refused_with_nothing_changed(run, scaffold_file, vocab_path, other_inputs,
                                                                change, named):
  other_vocab, other_scaffolds = other_inputs
  before = _snapshot(run)
  kwargs = {"scaffold": scaffold_file, "vocab": vocab_path, "plan_order": "interleaved", "seq_len": 256}
  if change in ("vocabulary", "all"):
    kwargs["vocab"] = other_vocab
  if change in ("scaffolds", "all"):
    kwargs["scaffold"] = other_scaffolds
  if change in ("plan_order", "all"):
    kwargs["plan_order"] = "plans_first"
  if change == "all":
    kwargs["seq_len"] = 128
  with pytest.raises(data_identity.DataChangedError) as error:
    train_tiny(run, kwargs["scaffold"], kwargs["vocab"], steps=3, plan_order=kwargs["plan_order"],
               seq_len=kwargs["seq_len"])
  message = str(error.value)
  for phrase in named + ["train.allow_data_change=True", "use a new run_dir"]:
    assert phrase in message, (phrase, message)
  assert _snapshot(run) == before


def test_allow_data_change_continues_and_appends_to_the_history(tmp_path, scaffold_file, vocab_path):
  folder = tmp_path / "run"
  train_tiny(folder, scaffold_file, vocab_path, steps=1)
  first = (folder / data_identity.HISTORY_FILE).read_text()
  metrics = train_tiny(folder, scaffold_file, vocab_path, steps=2, plan_order="plans_first",
                       allow_data_change=True)
  assert metrics["step"] == 2
  text = (folder / data_identity.HISTORY_FILE).read_text()
  assert text.startswith(first)
  lines = [json.loads(line) for line in text.splitlines()]
  assert [(x["step"], x["reason"], x["changed"]) for x in lines] == [
      (0, "start", []), (1, "allow_data_change", ["plan_order"])]
  assert lines[-1]["data"]["plan_order"] == "plans_first"
  train_tiny(folder, scaffold_file, vocab_path, steps=3, plan_order="plans_first")  # the new data is the run's now
  assert (folder / data_identity.HISTORY_FILE).read_text() == text
