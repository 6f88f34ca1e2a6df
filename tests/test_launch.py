"""TPU pod launch plans (dry runs) and gin sweeps: expansion, bad sweep files, and a real local sweep."""

from __future__ import annotations

import json
import math
import shlex
import subprocess
import sys
import textwrap

import pytest

from launch import pod, sweep, xla_flags

PAPER_GIN = "configs/paper/mistral24b_131k.gin"


def _dry_run(capsys, *argv: str) -> list[list[str]]:
  """The commands `python -m launch.pod ARGV --dry_run` prints, split into argv lists."""
  assert pod.main([*argv, "--dry_run"]) == 0
  return [shlex.split(line) for line in capsys.readouterr().out.splitlines()]


def _remote(command: list[str]) -> list[str]:
  """The shell words of an ssh command's --command=..."""
  [remote] = [arg.removeprefix("--command=") for arg in command if arg.startswith("--command=")]
  return shlex.split(remote)


def _training(words: list[str]) -> tuple[dict[str, str], list[str]]:
  """(environment, xbook argv) of the `env K=V ... .venv/bin/xbook train ...` in a remote command."""
  start = words.index("env") + 1
  end = words.index(".venv/bin/xbook")
  env = dict(word.split("=", 1) for word in words[start:end])
  stop = next(i for i, word in enumerate(words) if i > end and word in (">", "2>&1"))  # the redirection
  return env, words[end:stop]


def test_accelerator_names_give_the_workers_per_slice():
  assert [pod.hosts_per_slice(t) for t in ("v5p-8", "v5p-256", "v4-32", "v5litepod-8", "v5litepod-256",
                                            "v6e-16")] == [1, 32, 4, 1, 64, 4]
  assert pod.default_runtime_version("v5p-256") == "v2-alpha-tpuv5"
  with pytest.raises(ValueError, match="unknown accelerator type 'v9z-8'"):
    pod.hosts_per_slice("v9z-8")


def test_single_slice_plan_creates_a_tpu_vm_and_runs_the_same_command_on_every_worker(capsys):
  where = ["--name", "xb", "--zone", "us-east5-a", "--project", "proj", "--accelerator_type", "v5p-128"]
  [create] = _dry_run(capsys, "create", *where, "--spot")
  assert create == ["gcloud", "compute", "tpus", "tpu-vm", "create", "xb", "--zone=us-east5-a", "--project=proj",
                    "--accelerator-type=v5p-128", "--version=v2-alpha-tpuv5", "--spot"]

  header, run = _dry_run(capsys, "run", *where, "--run_dir", "gs://bucket/runs/a", "--gin_file", PAPER_GIN,
                         "--gin.train.steps=1000", "--gin.train.run_name='m24b'")
  assert " ".join(header) == "# xb: 1 slice(s) of v5p-128, 16 worker processes"
  assert run[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "xb"]
  assert "--worker=all" in run and not any(a.startswith("--node") for a in run)
  env, argv = _training(_remote(run))
  assert argv == [".venv/bin/xbook", "train", f"--gin_file={PAPER_GIN}", "--run_dir=gs://bucket/runs/a",
                  "--distributed_auto", "--gin.train.steps=1000", "--gin.train.run_name='m24b'"]
  assert env == {"LIBTPU_INIT_ARGS": xla_flags.libtpu_init_args(1), "TF_CPP_MIN_LOG_LEVEL": "2"}
  libtpu = env["LIBTPU_INIT_ARGS"].split()
  assert "--xla_enable_async_collective_permute=true" in libtpu
  assert "--xla_tpu_enable_async_collective_fusion=true" in libtpu
  assert not any("data_parallel" in flag for flag in libtpu)  # DCN flags only across slices

  pack, scp, install = _dry_run(capsys, "setup", *where)
  assert pack[0] == "bash" and "git ls-files" in pack[2] and "/tmp/xbook-code.tar.gz" in pack[2]
  assert scp == ["gcloud", "compute", "tpus", "tpu-vm", "scp", "/tmp/xbook-code.tar.gz", "xb:xbook-code.tar.gz",
                 "--zone=us-east5-a", "--project=proj", "--worker=all"]
  remote = " ".join(_remote(install))
  jax_pin = next(line for line in open("requirements.txt") if line.startswith("jax==")).strip()
  assert "bash launch/setup.sh" in remote and f"jax[tpu]{jax_pin[3:]}" in remote
  [logs] = _dry_run(capsys, "logs", *where)
  assert "--worker=0" in logs and _remote(logs)[:2] == ["tail", "-n"]
  [delete] = _dry_run(capsys, "delete", *where)
  assert delete == ["gcloud", "compute", "tpus", "tpu-vm", "delete", "xb", "--zone=us-east5-a", "--project=proj",
                    "--quiet"]


def test_multi_slice_plan_uses_a_queued_resource_and_spans_the_data_axis_over_slices(capsys):
  where = ["--name", "xb", "--zone", "us-east5-a", "--accelerator_type", "v5p-256", "--num_slices", "2",
           "--queued_resource"]
  [create] = _dry_run(capsys, "create", *where, "--spot")
  assert create == ["gcloud", "compute", "tpus", "queued-resources", "create", "xb", "--zone=us-east5-a",
                    "--accelerator-type=v5p-256", "--runtime-version=v2-alpha-tpuv5", "--node-count=2",
                    "--node-prefix=xb", "--spot"]
  header, run = _dry_run(capsys, "run", *where, "--run_dir", "gs://bucket/runs/b", "--gin_file", PAPER_GIN,
                         "--libtpu_arg", "xla_tpu_overlap_compute_collective_tc=false", "--env", "XBOOK_X=1")
  assert " ".join(header) == "# xb: 2 slice(s) of v5p-256, 64 worker processes"
  assert run[:6] == ["gcloud", "compute", "tpus", "queued-resources", "ssh", "xb"]
  assert "--node=all" in run and "--worker=all" in run
  env, argv = _training(_remote(run))
  assert argv[-2:] == ["--distributed_auto", "--gin.MeshConfig.dcn_data=2"]
  assert "--run_dir=gs://bucket/runs/b" in argv
  libtpu = env["LIBTPU_INIT_ARGS"].split()
  assert "--xla_tpu_enable_data_parallel_all_reduce_opt=true" in libtpu
  assert "--xla_tpu_overlap_compute_collective_tc=false" in libtpu
  assert env["XBOOK_X"] == "1" and not any(k.startswith("MEGASCALE") for k in env)  # the QR's metadata has them
  # A binding of the DCN mesh given by hand is kept as it is.
  _, run = _dry_run(capsys, "run", *where, "--run_dir", "gs://bucket/runs/b", "--gin.MeshConfig.dcn_fsdp=2")
  assert [a for a in _training(_remote(run))[1] if "dcn" in a] == ["--gin.MeshConfig.dcn_fsdp=2"]
  _, scp, _ = _dry_run(capsys, "setup", *where)
  assert scp[3:5] == ["queued-resources", "scp"] and scp[-2:] == ["--node=all", "--worker=all"]
  [delete] = _dry_run(capsys, "delete", *where)
  assert delete[3:6] == ["queued-resources", "delete", "xb"] and delete[-2:] == ["--force", "--quiet"]


@pytest.mark.parametrize("argv, message", [
    (["create", "--accelerator_type", "v5p-256", "--num_slices", "2"], "need a queued resource"),
    (["run", "--run_dir", "/tmp/local"], "share no disk; give a gs://"),
    (["create", "--accelerator_type", "tpu-8"], "unknown accelerator type 'tpu-8'"),
    (["create"], "create needs --accelerator_type"),
])
def test_impossible_launches_are_refused_with_the_reason(argv, message):
  with pytest.raises(SystemExit, match=message):
    pod.main([*argv, "--name", "xb", "--zone", "z", "--dry_run"])


def _write_sweep(path, body: str):
  path.write_text("import ml_collections\n\n" + textwrap.dedent(body))
  return path


def test_sweep_expands_a_grid_and_a_seeded_random_search(tmp_path):
  path = _write_sweep(tmp_path / "s.py", """
      def get_config():
        return ml_collections.ConfigDict({
            "name": "lr", "gin_files": ["configs/runs/demo.gin"], "bindings": {"train.steps": 3},
            "grid": {"OptimizerConfig.learning_rate": [1e-3, 3e-3], "train.seed": [0, 1, 2]},
            "random": {"num_samples": 2, "seed": 7, "params": {
                "OptimizerConfig.weight_decay": {"log_uniform": [1e-4, 1e-1]},
                "OptimizerConfig.warmup_steps": {"choice": [1, 5]}}},
        }, allow_dotted_keys=True)
      """)
  config = sweep.load_sweep_config(path)
  first = sweep.expand(config, "/out")
  assert len(first.runs) == 2 * 3 * 2
  assert len({r.name for r in first.runs}) == len({r.run_dir for r in first.runs}) == 12
  assert all(r.run_dir == f"/out/{r.name}" and r.name.startswith("lr-") for r in first.runs)
  assert {(r.params["OptimizerConfig.learning_rate"], r.params["train.seed"]) for r in first.runs} == {
      (lr, seed) for lr in (1e-3, 3e-3) for seed in (0, 1, 2)}
  decays = [r.params["OptimizerConfig.weight_decay"] for r in first.runs]
  assert all(1e-4 <= d <= 1e-1 for d in decays) and len(set(decays)) == 12
  assert {r.params["OptimizerConfig.warmup_steps"] for r in first.runs} <= {1, 5}
  assert len({tuple(sorted(r.params.items())) for r in first.runs}) == 12  # no run trained twice
  assert sweep.expand(sweep.load_sweep_config(path), "/out") == first  # the seed fixes every draw
  reseeded = sweep.expand({**config, "random": {**config["random"], "seed": 8}}, "/out")
  assert [r.params for r in reseeded.runs] != [r.params for r in first.runs]
  run = first.runs[0]
  assert sweep.local_command(first, run, ["--gin.train.log_every=1"])[3:] == [
      "train", "--gin_file=configs/runs/demo.gin", "--run_dir", run.run_dir, "--gin.train.steps=3",
      f"--gin.OptimizerConfig.learning_rate={run.params['OptimizerConfig.learning_rate']!r}", "--gin.train.seed=0",
      f"--gin.OptimizerConfig.warmup_steps={run.params['OptimizerConfig.warmup_steps']}",  # ConfigDict sorts
      f"--gin.OptimizerConfig.weight_decay={run.params['OptimizerConfig.weight_decay']!r}",
      "--gin.train.log_every=1"]


def test_the_demo_sweep_file_has_four_distinct_runs():
  demo = sweep.expand(sweep.load_sweep_config("configs/sweeps/demo_lr.py"), "sweeps/demo_lr")
  assert len(demo.runs) == 4 and demo.gin_files == ["configs/runs/demo.gin"]
  assert len({tuple(sorted(run.params.items())) for run in demo.runs}) == 4


def test_random_draws_of_a_small_choice_space_are_distinct(tmp_path):
  path = _write_sweep(tmp_path / "s.py", """
      def get_config():
        return {"name": "w", "random": {"num_samples": 3, "seed": 0,
                                        "params": {"OptimizerConfig.warmup_steps": {"choice": [1, 5, 15]}}}}
      """)
  runs = sweep.expand(sweep.load_sweep_config(path), "/out").runs
  assert sorted(r.params["OptimizerConfig.warmup_steps"] for r in runs) == [1, 5, 15]


@pytest.mark.parametrize("body, message", [
    ("X = 1\n", "defines no get_config"),
    ("def get_config(:\n", "could not be executed: SyntaxError"),
    ("def get_config():\n  return {'name': 'a', 'grids': {}}\n", "unknown field\\(s\\) grids"),
    ("def get_config():\n  return {'name': 'a', 'grid': {'train.steps': []}}\n", "grid.train.steps must be a non-empty"),
    ("def get_config():\n  return {'name': 'a', 'grid': {'train steps': [1]}}\n", "'train steps' is not a gin name"),
    ("def get_config():\n  return {'name': 'a', 'random': {'num_samples': 2, 'params': {'x.y': {'normal': [0, 1]}}}}\n",
     "random.params.x.y must be one of"),
    ("def get_config():\n  return {'name': 'a', 'random': {'num_samples': 2, 'params': {'x.y': {'log_uniform': [0, 1]}}}}\n",
     "log_uniform needs low > 0"),
    ("def get_config():\n  return {'name': 'a', 'random': {'num_samples': 2}}\n", "random.params is empty"),
    ("def get_config():\n  return {'name': 'a', 'random': {'num_samples': 3, 'params': {'x.y': {'choice': [1, 2]}}}}\n",
     "allow only 2 distinct draws"),
    ("def get_config():\n  return {'grid': {}}\n", "name must be a non-empty string"),
])
def test_a_bad_sweep_file_is_refused_naming_the_file_and_field(tmp_path, body, message):
  path = _write_sweep(tmp_path / "bad.py", body)
  with pytest.raises(sweep.SweepError, match=message) as error:
    sweep.load_sweep_config(path)
  assert str(path) in str(error.value)


def test_a_local_sweep_refuses_a_gcs_folder():
  with pytest.raises(SystemExit, match="a gs:// sweep needs a pod"):
    sweep.main(["run", "configs/sweeps/demo_lr.py", "--out", "gs://bucket/sweeps/x", "--dry_run"])


def test_a_pod_sweep_runs_each_run_in_the_foreground_with_its_own_gcs_run_dir(tmp_path, capsys):
  path = _write_sweep(tmp_path / "s.py", """
      def get_config():
        return {"name": "p", "gin_files": ["a.gin"], "grid": {"train.seed": [0, 1]}}
      """)
  assert sweep.main(["run", str(path), "--out", "gs://bucket/sweeps/p", "--name", "xb", "--zone", "z",
                     "--accelerator_type", "v5p-8", "--dry_run"]) == 0
  lines = capsys.readouterr().out.splitlines()
  assert [line for line in lines if line.startswith("#")] == ["# p-00-seed=0", "# p-01-seed=1"]
  assert all("| tee ~/xbook-train.log" in line and "nohup" not in line for line in lines if line.startswith("gcloud"))
  runs = [_training(_remote(shlex.split(line))) for line in lines if line.startswith("gcloud")]
  assert [argv[3:] for _, argv in runs] == [
      ["--run_dir=gs://bucket/sweeps/p/p-00-seed=0", "--distributed_auto", "--gin.train.seed=0"],
      ["--run_dir=gs://bucket/sweeps/p/p-01-seed=1", "--distributed_auto", "--gin.train.seed=1"]]


def test_a_local_sweep_trains_two_runs_at_once_and_tabulates_their_metrics(tmp_path, scaffold_file, vocab_path):
  gin_file = tmp_path / "tiny_run.gin"
  gin_file.write_text("\n".join([
      "include 'configs/models/tiny.gin'", f"train.scaffold_files = '{scaffold_file}'",
      f"train.vocab_path = '{vocab_path}'", "train.batch_size = 8", "train.seq_len = 64",
      "train.checkpoint_every = 100"]))
  path = _write_sweep(tmp_path / "tiny.py", f"""
      def get_config():
        return ml_collections.ConfigDict({{
            "name": "tiny", "gin_files": ["{gin_file}"], "bindings": {{"train.steps": 3}},
            "grid": {{"OptimizerConfig.learning_rate": [1e-3, 1e-2]}}}}, allow_dotted_keys=True)
      """)
  out = tmp_path / "sweep"
  result = subprocess.run([sys.executable, "-m", "launch.sweep", "run", str(path), "--out", str(out),
                           "--parallel", "2", "--host_devices", "1", "--gin.train.log_every=1"],
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
  names = ["tiny-00-learning_rate=0.001", "tiny-01-learning_rate=0.01"]
  table = result.stdout.splitlines()
  assert table[0] == f"sweep tiny: 2 runs in {out}"
  assert table[1].split() == ["run", "status", "step", "loss", "eval/loss", "tokens/s",
                              "OptimizerConfig.learning_rate"]
  assert [line.split()[:3] for line in table[2:4]] == [[name, "ok", "3"] for name in names]
  manifest = json.loads((out / "sweep.json").read_text())
  rows = sweep.summarize(manifest["runs"])
  assert [(row["run"], row["step"]) for row in rows] == [(name, 3) for name in names]
  assert all(math.isfinite(row["loss"]) and row["tokens/s"] > 0 for row in rows)
  assert rows[0]["loss"] != rows[1]["loss"]  # different learning rates, same data and seed
  assert all((out / name / "train.log").is_file() for name in names)
