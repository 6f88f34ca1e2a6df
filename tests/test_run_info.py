"""RunInfo (xbook.train.run_info) reads the run directory of every release, and ImportedWeights the folders
`xbook weights import` wrote (tests/fixtures/run_layouts: one of each layout); the record it writes reads back
the same, and a wrong file is refused naming the file and the field."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
from etils import epath

from xbook.model import DecoderConfig, LoraConfig
from xbook.model.hf.checkpoint import ImportedWeights
from xbook.train import warm_start
from xbook.train.run_info import RunInfo, RunPaths

LAYOUTS = Path(__file__).parent / "fixtures" / "run_layouts"

# folder: (vocab as recorded, seq_len, plan_order, profile, started_from's kind or None)
EXPECTED = {
    "2026-11-29_skeleton": ("/home/user/xbook/out/vocab/xbook.model", 512, "interleaved", None, None),
    "2026-11-30_started_from": ("/home/user/xbook/out/vocab/xbook.model", 1024, "plans_first", None, "run"),
    "2026-11-30_vocab_copy": ("vocab/tokenizer.json", 2048, "interleaved", None, "imported"),
    "2026-11-30_seq_len_paper_in_gin": ("vocab/tekken.json", 4096, "paper_stages", "24b_first_chapter", "imported"),
    "2026-11-30_trajectory_layout": ("vocab/xbook.model", 8192, "paper_stages", "14b_full_book", None),
    "2026-11-30_plan_order": ("vocab/xbook.model", 512, "plans_first", None, None),
    "2026-12-06_lora": ("vocab/tekken.json", 32768, "interleaved", None, "imported"),
}


def test_every_run_layout_has_a_fixture_and_an_expectation():
  folders = {p.name for p in LAYOUTS.iterdir() if p.is_dir() and not p.name.startswith("imported_")}
  assert folders == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_run_info_reads_the_layout_of_every_release(name):
  vocab, seq_len, plan_order, profile, started_kind = EXPECTED[name]
  run = RunInfo.read(LAYOUTS / name)
  recorded = json.loads((LAYOUTS / name / "model.json").read_text())
  assert run.run_dir == epath.Path(LAYOUTS / name)
  assert dataclasses.asdict(run.model) == {**dataclasses.asdict(DecoderConfig(vocab_size=1)),
                                           **recorded["model"], "lora": run.model.lora and dataclasses.asdict(run.model.lora)}
  assert (run.vocab, run.seq_len, run.plan_order, run.profile) == (vocab, seq_len, plan_order, profile)
  assert (run.started_from or {}).get("kind") == started_kind
  # A relative vocabulary is the run's own copy; an absolute one (before the copy) stays where it was.
  assert run.vocab_path == (epath.Path(vocab) if vocab.startswith("/") else LAYOUTS / name / vocab)
  assert run.is_paper == (plan_order == "paper_stages")


def test_a_lora_run_reads_its_adapters_and_its_base_fingerprint():
  run = RunInfo.read(LAYOUTS / "2026-12-06_lora")
  assert run.model.lora == LoraConfig(rank=8, alpha=16.0)
  assert run.started_from["fingerprint"] == "3f2a9c0d1b7e4a65"
  assert run.lora_base()["path"] == "/home/user/imported/ministral3"
  with pytest.raises(ValueError, match=r"model\.json records no base for its LoRA adapters \(started_from\.path\)"):
    dataclasses.replace(run, started_from=None).lora_base()


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_the_newest_layout_written_from_any_release_reads_back_the_same(name, tmp_path):
  old = RunInfo.read(LAYOUTS / name)
  rewritten = dataclasses.replace(old, run_dir=epath.Path(tmp_path))
  rewritten.write("train.steps = 3\n")
  again = RunInfo.read(tmp_path)
  assert again == rewritten
  assert again.config_gin.read_text() == "train.steps = 3\n"
  assert json.loads(again.model_json.read_text())["trajectory"] == {"plan_order": old.plan_order,
                                                                     "profile": old.profile}


def test_the_paths_of_a_run_are_where_the_other_modules_write_them(tmp_path):
  from xbook.train.checkpoints import RunCheckpoints
  from xbook.train.data_identity import HISTORY_FILE
  from xbook.train.metrics import read_metrics
  from xbook.train.trainer import INPUT_COUNTS_DIR
  paths = RunPaths(epath.Path(tmp_path))
  checkpoints = RunCheckpoints(str(tmp_path))
  try:
    assert epath.Path(checkpoints.directory) == paths.checkpoints_dir
  finally:
    checkpoints.close()
  paths.metrics_jsonl.write_text('{"step": 1, "loss": 2.5}\n')
  assert read_metrics(tmp_path) == [{"step": 1, "loss": 2.5}]
  assert paths.data_history.name == HISTORY_FILE and paths.input_counts_dir.name == INPUT_COUNTS_DIR
  assert paths.checkpoint_steps() == []
  for step in (20, 3):
    (paths.checkpoints_dir / str(step)).mkdir(parents=True)
  (paths.checkpoints_dir / "tmp").mkdir()
  assert paths.checkpoint_steps() == [3, 20]


@pytest.mark.parametrize("name", ["imported_2026-11-29", "imported_2026-11-30"])
def test_imported_weights_have_their_own_reader(name, tmp_path):
  folder = tmp_path / name
  shutil.copytree(LAYOUTS / name, folder)
  assert not ImportedWeights.holds_imported(folder)
  (folder / "params").mkdir()
  assert ImportedWeights.holds_imported(folder)
  imported = ImportedWeights.read(folder)
  recorded = json.loads((folder / "model.json").read_text())
  assert imported.model == DecoderConfig(**recorded["model"])
  assert imported.hf_model_type == recorded["hf_model_type"]
  assert imported.hf_config == recorded.get("hf_config", {})
  assert imported.params_dir == epath.Path(folder / "params")
  # A run is not imported weights, and imported weights are no run: each reader says which it is.
  with pytest.raises(ValueError, match=r"holds imported weights .*train\.init_from="):
    RunInfo.read(folder)
  source = warm_start.find_source(str(folder))
  assert (source.kind, source.config, source.params_dir) == ("imported", imported.model, str(folder / "params"))


def _run_with(tmp_path, text: str) -> Path:
  shutil.copytree(LAYOUTS / "2026-11-30_plan_order", tmp_path / "run")
  (tmp_path / "run" / "model.json").write_text(text)
  return tmp_path / "run"


def test_a_wrong_model_json_is_refused_naming_the_file_and_the_field(tmp_path):
  with pytest.raises(FileNotFoundError, match=r"model\.json not found: is .* a run directory made by `xbook train`"):
    RunInfo.read(tmp_path / "nothing")
  assert RunInfo.read_if_present(tmp_path / "nothing") is None
  recorded = json.loads((LAYOUTS / "2026-11-30_plan_order" / "model.json").read_text())
  cases = {
      "{not json": r"model\.json: not valid JSON",
      "[1, 2]": r"model\.json: expected a JSON object",
      json.dumps({k: v for k, v in recorded.items() if k != "model"}): r"model\.json: no `model`",
      json.dumps({k: v for k, v in recorded.items() if k != "vocab_path"}): r"model\.json: no `vocab_path`",
      json.dumps({**recorded, "model": {**recorded["model"], "n_experts": 8}}):
          r"model\.json: model\.n_experts is not a DecoderConfig field",
      json.dumps({**recorded, "model": {**recorded["model"], "remat": "sometimes"}}):
          r"model\.json: `model` is not a valid DecoderConfig: remat='sometimes'",
      json.dumps({**recorded, "seq_len": "long"}): r"model\.json: seq_len 'long' is not a whole number",
  }
  for text, message in cases.items():
    with pytest.raises(ValueError, match=message):
      RunInfo.read(_run_with(tmp_path / str(len(message)), text))
