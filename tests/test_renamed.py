"""Renamed settings keep working for one release: `train.layout` is now `train.length_layout` and
`train.trajectory_layout` is now `train.plan_order`; the old names are read with a warning that names the
new binding, and runs, caches and model.json files written under the old names still load."""

from __future__ import annotations

import json
import logging

import gin
import pytest

from xbook import cli_gin
from xbook.data import cache
from xbook.train import trainer as trainer_lib
from xbook.train.run_info import RunInfo

from tiny_runs import train_tiny


def plan_order_and_profile(run_dir) -> tuple[str, str | None]:
  """The plan order and profile the run directory's record (RunInfo) reports."""
  info = RunInfo.read(run_dir)
  return info.plan_order, info.profile


@pytest.fixture
def clean_gin():
  gin.clear_config()
  yield
  gin.clear_config()


def test_the_old_gin_names_are_read_with_a_warning_naming_the_new_binding(clean_gin, caplog):
  cli_gin.precheck([], ["train.layout = 'zigzag'", "train.trajectory_layout = 'plans_first'"])  # still valid
  gin.parse_config(["train.layout = 'zigzag'", "train.trajectory_layout = 'plans_first'"])
  with caplog.at_level(logging.WARNING, logger=trainer_lib.__name__), pytest.warns(DeprecationWarning):
    assert trainer_lib.train_setting("length_layout") == "zigzag"
    assert trainer_lib.train_setting("plan_order") == "plans_first"
  assert "train.layout is deprecated" in caplog.text and "train.length_layout = 'zigzag'" in caplog.text
  assert "train.plan_order = 'plans_first'" in caplog.text


def test_the_new_names_need_no_warning_and_both_names_at_once_are_refused(clean_gin, caplog):
  gin.parse_config(["train.plan_order = 'plans_first'"])
  with caplog.at_level(logging.WARNING, logger=trainer_lib.__name__):
    assert trainer_lib.train_setting("plan_order") == "plans_first"
    assert trainer_lib.train_setting("length_layout") == "contiguous"  # the default
  assert "deprecated" not in caplog.text

  gin.parse_config(["train.trajectory_layout = 'interleaved'"])
  with pytest.raises(ValueError, match="keep train.plan_order only"):
    trainer_lib.train_setting("plan_order")


def test_a_run_configured_with_the_old_name_trains_in_that_plan_order(tmp_path, scaffold_file, vocab_path,
                                                                      caplog):
  with caplog.at_level(logging.WARNING, logger=trainer_lib.__name__), pytest.warns(DeprecationWarning):
    metrics = train_tiny(tmp_path / "run", scaffold_file, vocab_path, steps=1,
                         gin_bindings=["train.trajectory_layout = 'plans_first'"])
  assert metrics["loss"] > 0
  assert "bind train.plan_order = 'plans_first' instead" in caplog.text
  info = json.loads((tmp_path / "run" / "model.json").read_text())
  assert info["trajectory"]["plan_order"] == "plans_first"
  assert plan_order_and_profile(tmp_path / "run") == ("plans_first", None)


def test_runs_written_under_the_old_names_report_their_plan_order(tmp_path):
  # (tests/test_run_info.py reads a fixture of every release's run directory with RunInfo.)
  record = {"model": {"vocab_size": 64}, "vocab_path": "vocab/xbook.model"}
  old_info = tmp_path / "recorded"  # model.json's trajectory under its old key
  old_info.mkdir()
  (old_info / "model.json").write_text(json.dumps({**record, "trajectory": {"layout": "paper_stages",
                                                                            "profile": "24b_first_chapter"}}))
  assert plan_order_and_profile(old_info) == ("paper_stages", "24b_first_chapter")

  older = tmp_path / "gin_only"  # model.json without `trajectory`: its config.gin says
  older.mkdir()
  (older / "model.json").write_text(json.dumps(record))
  (older / "config.gin").write_text("train.trajectory_layout = 'paper_stages'\n"
                                    "paper_stages.profile = '14b_full_book'\n")
  assert plan_order_and_profile(older) == ("paper_stages", "14b_full_book")
  (older / "config.gin").write_text("train.plan_order = 'plans_first'\n")
  assert plan_order_and_profile(older) == ("plans_first", None)
  (older / "config.gin").unlink()
  assert plan_order_and_profile(older) == ("interleaved", None)


def test_a_cache_recorded_under_the_old_field_name_compares_as_plan_order(tmp_path):
  recorded = {"task": "t", "view": "windows", "seq_len": 64, "trajectory_layout": "plans_first"}
  (tmp_path / cache.PROVENANCE_FILE).write_text(json.dumps(recorded))
  read = cache.read_provenance(str(tmp_path))
  assert read["plan_order"] == "plans_first" and "trajectory_layout" not in read
  wanted = {**read, "plan_order": "interleaved"}
  assert cache.differences(read, wanted) == [
      "plan_order 'plans_first' in the cache, 'interleaved' here (train.plan_order)"]
