"""Relative paths work as the README writes them (`--run_dir runs/demo`): each entry point makes its paths
absolute once (xbook.paths), so Orbax, which refuses a relative checkpoint path, and child processes see
absolute ones; gs:// paths are left as they are."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from xbook import cli, paths

from tiny_runs import train_tiny

WRITE_SMALL = ["--gin.WriteConfig.premise_tokens=8", "--gin.WriteConfig.synopsis_tokens=8",
               "--gin.WriteConfig.outline_tokens=16", "--gin.WriteConfig.scene_plans_tokens=8",
               "--gin.WriteConfig.text_tokens=8", "--gin.WriteConfig.max_chapters=1",
               "--gin.WriteConfig.max_scenes=1", "--gin.WriteConfig.retries=0"]


def test_absolute_leaves_urls_and_none_alone(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  assert paths.absolute("runs/demo") == str(tmp_path / "runs/demo")
  assert paths.absolute("gs://bucket/runs/a") == "gs://bucket/runs/a"
  assert paths.absolute(None) is None
  assert paths.absolute_all(["out/*.jsonl", "gs://b/x.jsonl"]) == [str(tmp_path / "out/*.jsonl"), "gs://b/x.jsonl"]


@pytest.fixture(scope="module")
def relative_run(tmp_path_factory, scaffold_file, vocab_path):
  """(working folder, "runs/rel"): a tiny run trained through a checkpoint save from a relative run_dir."""
  cwd = tmp_path_factory.mktemp("cwd")
  with pytest.MonkeyPatch.context() as patch:
    patch.chdir(cwd)
    metrics = train_tiny("runs/rel", scaffold_file, vocab_path, steps=2)
  assert metrics["step"] == 2
  return cwd, "runs/rel"


def test_a_relative_run_dir_trains_through_a_checkpoint_and_resumes(relative_run, scaffold_file, vocab_path,
                                                                    monkeypatch):
  cwd, run = relative_run
  assert (cwd / run / "checkpoints" / "2").is_dir()
  monkeypatch.chdir(cwd)
  metrics = train_tiny(run, scaffold_file, vocab_path, steps=3, checkpoint_every=3)
  assert metrics["step"] == 3 and (cwd / run / "checkpoints" / "3").is_dir()
  assert [json.loads(line)["step"] for line in (cwd / run / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]


def test_generate_write_and_export_take_a_relative_run_dir(relative_run, monkeypatch, capsys):
  cwd, run = relative_run
  monkeypatch.chdir(cwd)
  assert cli.main(["generate", "--run_dir", run, "--prompt", "A ghost story.", "--max_new_tokens", "4",
                   "--json"]) == 0
  assert json.loads(capsys.readouterr().out)["step"] >= 2
  assert cli.main(["write", "--run_dir", run, "--prompt", "A ghost story.", "--out", "book", "--json",
                   *WRITE_SMALL]) == 0
  summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert summary["json"] == str(cwd / "book" / "book.json") and (cwd / "book" / "journal.jsonl").is_file()
  assert cli.main(["weights", "export", "--run_dir", run, "--out", "exported", "--dtype", "float32"]) == 0
  assert (cwd / "exported" / "config.json").is_file()


@pytest.mark.parametrize("command, target", [
    (["serve", "--run_dir", "runs/rel", "--port", "0"], "xbook.infer.serve.serve"),
    (["eval", "--run_dir", "runs/rel", "--out", "eval"], "xbook.evals.command.run"),
    (["bench", "decode", "--run_dir", "runs/rel"], "xbook.infer.decode_bench.run"),
])
def test_every_command_with_a_run_dir_gets_it_absolute(command, target, tmp_path, monkeypatch):
  """What the handler is given: the entry point resolved the run directory (serve, eval and bench decode
  are exercised on real runs in their own tests; here only what their entry point passes down)."""
  import importlib
  monkeypatch.chdir(tmp_path)
  module_name, function = target.rsplit(".", 1)
  seen = {}

  def record(*args, **kwargs):
    seen["run_dir"] = args[0] if isinstance(args[0], str) else args[0].run_dir
    return 0

  monkeypatch.setattr(importlib.import_module(module_name), function, record)
  assert cli.main(command) == 0
  assert seen["run_dir"] == os.path.join(str(tmp_path), "runs", "rel")


def test_the_finetune_demo_base_is_a_path_from_the_repository_root():
  """configs/runs/finetune_demo.gin's BASE names the folder the README's import writes, from the root."""
  text = (Path(__file__).resolve().parents[1] / "configs/runs/finetune_demo.gin").read_text()
  assert "BASE = 'demo_out/tiny-mistral-xbook'" in text
  readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
  assert "--out demo_out/tiny-mistral-xbook" in readme


def test_a_local_sweep_gives_its_runs_absolute_run_dirs(tmp_path, monkeypatch, capsys):
  from launch import sweep
  monkeypatch.chdir(Path(__file__).resolve().parents[1])
  sweep_file = Path("configs/sweeps/demo_lr.py").resolve()
  monkeypatch.chdir(tmp_path)
  assert sweep.main(["run", str(sweep_file), "--out", "sweeps/lr", "--dry_run"]) == 0
  lines = capsys.readouterr().out.splitlines()
  assert lines and all(f"--run_dir {tmp_path}/sweeps/lr/" in line for line in lines)


def test_generate_refuses_a_prompt_longer_than_the_run_trained_at(relative_run, monkeypatch):
  """Nothing is cut silently: a prompt that, with --max_new_tokens, exceeds the trained length is refused."""
  cwd, run = relative_run
  monkeypatch.chdir(cwd)
  with pytest.raises(ValueError, match=r"more than the 256 tokens .* trained at; shorten the prompt or lower"):
    cli.main(["generate", "--run_dir", run, "--prompt", "word " * 400, "--max_new_tokens", "8"])
