"""Mistakes a user makes end in one `error:` line that names what is wrong and how to fix it, never in a
traceback, and change nothing; data that does not fit the config is refused, never read as if it did."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import seqio

from xbook import cli, cli_errors
from xbook.data import cache, tasks
from xbook.data.spec import DataSpec
from xbook.data.vocab import load_vocabulary

ROOT = Path(__file__).resolve().parents[1]


def test_a_cache_built_at_another_length_is_refused_naming_the_field_and_the_rebuild_command(
    tmp_path, scaffold_file, vocab_path, monkeypatch):
  """A cache records what it was built from; a task at another seq_len refuses it before reading it."""
  from xbook import gin_flags
  monkeypatch.setattr(gin_flags, "_PARSED", ((), ()))  # no command line parsed gin in this process
  vocabulary = load_vocabulary(vocab_path)

  def cached(seq_len, **settings):
    return tasks.cached_task(DataSpec.build(str(scaffold_file), vocabulary, seq_len, cache_name="xbook_test_provenance",
                                            **settings))
  built = cached(64)
  folder = tmp_path / "cache" / "xbook_test_provenance"
  folder.mkdir(parents=True)
  # What cache_task writes (its Beam pipeline is tested in test_data and test_train): provenance, COMPLETED.
  (folder / cache.PROVENANCE_FILE).write_text(json.dumps({**built.provenance, "splits": ["train"]}))
  (folder / "COMPLETED").write_text("")
  seqio.add_global_cache_dirs([str(tmp_path / "cache")])
  assert built.cache_dir == str(folder)
  with pytest.raises(cache.CacheMismatchError, match="holds the split.*train, not validation"):
    built.get_dataset({"targets": 64}, split="validation", use_cached=True)

  other = cached(128, loss_weights={"prompt": 1.0})
  with pytest.raises(cache.CacheMismatchError) as error:
    other.get_dataset({"targets": 128}, split="train", use_cached=True)
  message = str(error.value)
  assert "seq_len 64 in the cache, 128 here (train.seq_len)" in message
  assert "train.loss_weights" in message and "plan_order" not in message
  assert f"xbook data cache --gin_file=YOUR_CONFIG.gin --out {tmp_path / 'cache'} --overwrite" in message

  (folder / cache.PROVENANCE_FILE).unlink()  # a cache from before provenance was recorded
  with pytest.raises(cache.CacheMismatchError, match="does not record what it was built from"):
    cached(64).cache_dir


def test_the_rebuild_command_repeats_the_command_lines_gin_config():
  command = cache.rebuild_command("out/cache", overwrite=True, gin_files=["configs/runs/demo.gin"],
                                  gin_bindings=["train.seq_len = 128", "train.vocab_path = 'a b/v.model'",
                                                "train.cache_dir = 'out/cache'"])
  assert command == ("xbook data cache --gin_file=configs/runs/demo.gin --gin.train.seq_len=128 "
                     "--gin.train.vocab_path=\"'a b/v.model'\" --out out/cache --overwrite")



def test_the_command_fills_the_rebuild_command_with_its_own_gin_flags(tmp_path, monkeypatch, capsys):
  """The library writes a placeholder for the config (it never reads the command line); the `xbook` command,
  the entry point, prints its own gin flags in its place."""
  from xbook import gin_flags
  (tmp_path / "cache" / "task").mkdir(parents=True)  # a cache folder with no provenance.json
  with pytest.raises(cache.CacheMismatchError) as error:
    cache.check_cache(str(tmp_path / "cache" / "task"), {"task": "task"})
  assert f"`xbook data cache {cache.CONFIG_PLACEHOLDER} --out {tmp_path / 'cache'} --overwrite`" in str(error.value)
  monkeypatch.setattr(gin_flags, "_PARSED", (("configs/runs/demo.gin",),
                                             ("train.seq_len = 128", f"train.cache_dir = '{tmp_path}'")))
  assert cli_errors.report(error.value) == 1
  assert (f"`xbook data cache --gin_file=configs/runs/demo.gin --gin.train.seq_len=128 --out {tmp_path / 'cache'} "
          "--overwrite`") in capsys.readouterr().err

@pytest.mark.parametrize("damage, expected", [
    ("truncate", r"bad\.jsonl:2: not a JSON line: .*the line ends before its record does"),
    ("wrong_type", r"bad\.jsonl:2 \(book pg43\): chapters\[0\]\.title: expected a string, got int 5"),
    ("unknown_field", r"bad\.jsonl:2 \(book pg43\): record: unknown field\(s\) \['colour'\]"),
])
def test_the_data_path_validates_records_as_scaffold_show_does(tmp_path, scaffold_records, vocab_path, damage,
                                                               expected):
  """A bad scaffold line is named (file, line, book, field) when the task is registered, before tf.data
  runs, with the messages of `xbook scaffold show` (xbook.scaffold.read_scaffolds)."""
  from xbook.scaffold import ScaffoldError, read_scaffolds
  good, record = scaffold_records
  record = json.loads(json.dumps(record))
  line = json.dumps(record)
  if damage == "truncate":
    line = line[:len(line) // 2]
  elif damage == "wrong_type":
    record["chapters"][0]["title"] = 5
    line = json.dumps(record)
  else:
    record["colour"] = "red"
    line = json.dumps(record)
  path = tmp_path / "bad.jsonl"
  path.write_text(json.dumps(good) + "\n" + line + "\n", encoding="utf-8")
  with pytest.raises(ScaffoldError, match=expected) as in_data:
    DataSpec.build(str(path), load_vocabulary(vocab_path), 64)
  with pytest.raises(ScaffoldError) as in_show:
    list(read_scaffolds(path))
  assert str(in_data.value) == str(in_show.value)


def test_a_missing_scaffold_file_is_named(tmp_path, vocab_path):
  with pytest.raises(FileNotFoundError, match=r"no scaffold file matches .*nothing-\*\.jsonl.*xbook scaffold build"):
    DataSpec.build(str(tmp_path / "nothing-*.jsonl"), load_vocabulary(vocab_path), 64)


# ----------------------------------------------------------------------------------- the command line
def _snapshot(folder: Path) -> dict[str, bytes]:
  return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _xbook(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-m", "xbook", *args], capture_output=True, text=True, cwd=ROOT,
                        env={**os.environ, **(env or {})}, timeout=120)


@pytest.fixture
def run_dir(tmp_path):
  """An existing run directory, whose files a refused command must leave byte for byte."""
  folder = tmp_path / "run"
  folder.mkdir()
  (folder / "model.json").write_text('{"model": {}}')
  (folder / "config.gin").write_text("train.steps = 3\n")
  return folder


TRAIN = ("train", "--gin_file=configs/runs/demo.gin")

# (arguments, what the error line must say: each a substring). {run}, {tmp} and {busy_port} are filled in.
BAD_INPUTS = [
    # gin: a missing file, an unknown name, an unparsable or unquoted value, a wrong type
    (TRAIN[:1] + ("--gin_file=configs/runs/dem.gin", "--run_dir", "{run}"),
     ["--gin_file=configs/runs/dem.gin: no such gin file", "did you mean configs/runs/demo.gin"]),
    (TRAIN + ("--run_dir", "{run}", "--gin.train.stepz=3"),
     ["--gin.train.stepz=3", "train has no parameter 'stepz'", "did you mean steps"]),
    (TRAIN + ("--run_dir", "{run}", "--gin.Trian.steps=3"),
     ["no gin configurable named 'Trian'", "did you mean train"]),
    (TRAIN + ("--run_dir", "{run}", "--gin.train.steps=3)"), ["--gin.train.steps=3)", "gin cannot parse"]),
    (TRAIN + ("--run_dir", "{run}", "--gin.train.vocab_path=out/v.model"),
     ["strings are quoted", "--gin.train.vocab_path=\"'out/v.model'\""]),
    (TRAIN + ("--run_dir", "{run}", "--gin.train.steps='ten'"), ["train.steps takes an int, got str 'ten'"]),
    (("train", "--gin_file={tmp}/bad.gin", "--run_dir", "{run}"),
     ["bad.gin:2", "strings are quoted, write train.vocab_path = 'out/v.model'"]),
    (("data", "cache", "--gin_file={tmp}/include.gin", "--out", "{run}"),
     ["include.gin:1: include 'configs/models/tny.gin': no such gin file", "did you mean"]),
    # files and folders
    (TRAIN + ("--run_dir", "{tmp}/a_file"), ["a_file is a file, not a run directory: pass a folder"]),
    (("scaffold", "show", "{tmp}/cut.jsonl"),
     ["cut.jsonl:1: not a JSON line", "the line ends before its record does", "xbook scaffold build"]),
    (("scaffold", "show", "{tmp}/missing.jsonl"), ["no such file or folder", "missing.jsonl", "check the path"]),
    (("books", "segment", "--books", "{tmp}/no_books", "--out", "{run}/books.jsonl"),
     ["--books", "no_books is not a folder of Gutenberg .txt files"]),
    (("weights", "import", "--hf", "{tmp}", "--out", "{run}/weights"),
     ["has no config.json: pass a Hugging Face model folder with config.json"]),
    # a busy port, found before the model loads (the run does not even exist)
    (("serve", "--run_dir", "{tmp}/no_run", "--port", "{busy_port}"),
     ["cannot listen on 127.0.0.1:{busy_port}", "pick another --port"]),
]


def test_bad_inputs_print_one_error_line_without_a_traceback_and_change_nothing(tmp_path, run_dir):
  """Each mistake: exit status non-zero, one `error:` line naming what is wrong and the fix, no traceback,
  the run directory byte for byte as it was; gin mistakes before any heavy import."""
  (tmp_path / "bad.gin").write_text("train.steps = 3\ntrain.vocab_path = out/v.model\n")
  (tmp_path / "include.gin").write_text("include 'configs/models/tny.gin'\n")
  (tmp_path / "a_file").write_text("not a run")
  (tmp_path / "cut.jsonl").write_text('{"schema": "xbook.scaffold/1", "book": {"id": "pg1"')
  before = _snapshot(run_dir)
  with socket.socket() as busy:
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    port = str(busy.getsockname()[1])
    failures = []
    for arguments, expected in BAD_INPUTS:
      fill = lambda text: text.format(run=run_dir, tmp=tmp_path, busy_port=port)  # noqa: E731
      result = _xbook(*map(fill, arguments))
      errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
      problems = [f"exit status {result.returncode}"] if result.returncode == 0 else []
      problems += ["a traceback"] if "Traceback" in result.stderr else []
      problems += [f"{len(errors)} error lines"] if len(errors) != 1 else []
      problems += [f"no {fill(e)!r}" for e in expected if errors and fill(e) not in errors[0]]
      if problems:
        failures.append(f"xbook {' '.join(map(fill, arguments))}: {', '.join(problems)}\n{result.stderr}")
  assert not failures, "\n".join(failures)
  assert _snapshot(run_dir) == before
  assert not (tmp_path / "no_run").exists()


def test_gin_mistakes_are_found_before_the_heavy_imports():
  code = ("import sys\nfrom xbook import cli\ntry:\n  cli.main(['train', '--gin_file=configs/runs/demo.gin', "
          "'--run_dir', 'unused', '--gin.train.stepz=3'])\nexcept ValueError as error:\n  print(error)\n"
          "print(sorted(m for m in ('jax', 'tensorflow', 'seqio', 'flax') if m in sys.modules))")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True).stdout
  assert "train has no parameter 'stepz'" in out and out.strip().endswith("[]")


def test_verbose_shows_the_traceback_of_a_user_error(tmp_path):
  for env, args in (({cli_errors.VERBOSE_ENV: "1"}, ()), ({}, ("--verbose",))):
    result = _xbook("scaffold", "show", str(tmp_path / "missing.jsonl"), *args, env=env)
    assert result.returncode == 1
    assert "Traceback" in result.stderr and result.stderr.strip().splitlines()[-1].startswith("error: no such file")


def test_a_mesh_that_does_not_fit_the_devices_says_how_to_simulate_them_on_a_cpu():
  from xbook.train.mesh import MeshConfig
  with pytest.raises(ValueError) as error:
    MeshConfig(data=2, fsdp=2, sequence=1, tensor=2).ici_shape(1)
  message = cli_errors.user_message(error.value)
  assert "needs 8 devices per slice, but 1 are available" in message
  assert "XLA_FLAGS=--xla_force_host_platform_device_count=8" in message


def test_an_unknown_tpu_topology_is_named(capsys):
  with pytest.raises(ValueError) as error:
    cli.main(["compile", "--gin_file=configs/runs/demo.gin", "--topology", "v9z-8", "--memory_only"])
  assert "unknown generation 'v9z'" in cli_errors.user_message(error.value)


def test_serve_stops_cleanly_on_sigterm_while_the_model_loads():
  """Before uvicorn takes the signals over (loading, compiling), SIGTERM ends `xbook serve` with status 0."""
  import signal
  from xbook.infer import serve
  before = signal.getsignal(signal.SIGTERM)
  with pytest.raises(serve._Stopped):
    with serve._stop_on_sigterm():
      os.kill(os.getpid(), signal.SIGTERM)
      time.sleep(5)  # interrupted by the handler's exception
  assert signal.getsignal(signal.SIGTERM) is before
