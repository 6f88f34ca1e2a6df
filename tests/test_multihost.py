"""Multi-host training for real: 2 processes x 4 simulated CPU devices joined on 127.0.0.1.

Each process trains on its own share of the books (one scaffold file per book). Three launches of the
pair cover what every host must agree on:

* an uninterrupted run, which evaluates at its last step on validation windows that only one host
  reads (the other has none): both hosts run the same number of eval steps, and the metrics
  count every window once and equal one process's evaluation of the same windows;
* a run where SIGTERM reaches one process only: both save the same step and exit 0;
* its restart, which finishes with the losses of the uninterrupted run.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from xbook.scaffold import write_scaffolds
from xbook.train.metrics import read_metrics

N_PROCESSES, STEPS = 2, 8


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _short_validation_book(record: dict) -> dict:
  """The book's first scene cut to 1,500 characters, as a validation record (about 10 windows of 128)."""
  chapter = dict(record["chapters"][0])
  scene = dict(chapter["scenes"][0], text=chapter["scenes"][0]["text"][:1500])
  scene["n_words"] = len(scene["text"].split())
  return dict(record, split="validation", chapters=[dict(chapter, scenes=[scene])],
              book=dict(record["book"], n_chapters=1, n_words=scene["n_words"]))


@pytest.fixture(scope="module")
def gin_file(tmp_path_factory, scaffold_records, vocab_path):
  """One scaffold file per book, each host training on one of the two books; the first file also holds
  the only validation book, so one host evaluates windows of its own and the other none."""
  root = tmp_path_factory.mktemp("multihost")
  paths = sorted(root / f"scaffolds-{r['book']['id']}.jsonl" for r in scaffold_records)
  by_path = {root / f"scaffolds-{r['book']['id']}.jsonl": r for r in scaffold_records}
  for i, path in enumerate(paths):
    write_scaffolds(path, [by_path[path]] + ([_short_validation_book(by_path[paths[1]])] if i == 0 else []))
  path = root / "run.gin"
  path.write_text("\n".join([
      "include 'configs/models/tiny.gin'",
      f"train.scaffold_files = '{root}/scaffolds-*.jsonl'", f"train.vocab_path = '{vocab_path}'",
      f"train.steps = {STEPS}", "train.batch_size = 8", "train.seq_len = 128",
      # A checkpoint at the last step only (each save costs both hosts about a second): the preempted run's
      # one checkpoint is the one SIGTERM makes it save.
      f"train.checkpoint_every = {STEPS}", f"train.eval_every = {STEPS}", "MeshConfig.data = 2",
      "MeshConfig.fsdp = 2", "MeshConfig.tensor = 2"]))
  return path


def _start(gin_file, run_dir, *flags: str) -> list[subprocess.Popen]:
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4")
  address = f"127.0.0.1:{_free_port()}"
  return [subprocess.Popen(
      [sys.executable, "-m", "xbook.cli", "train", f"--gin_file={gin_file}", "--run_dir", str(run_dir),
       "--coordinator_address", address, "--num_processes", str(N_PROCESSES), "--process_id", str(i),
       *flags],
      env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
      for i in range(N_PROCESSES)]


def _finish(processes, timeout=300) -> list[str]:
  outputs = []
  for process in processes:
    try:
      outputs.append(process.communicate(timeout=timeout)[0])
    finally:
      process.kill()
  for process, output in zip(processes, outputs):
    assert process.returncode == 0, output[-3000:]
  return outputs


@pytest.fixture(scope="module")
def straight_run(gin_file, tmp_path_factory):
  run_dir = tmp_path_factory.mktemp("straight")
  outputs = _finish(_start(gin_file, run_dir))
  assert "process 0 of 2 joined the job: 4 local of 8 devices" in outputs[0]
  assert "process 1 of 2 joined the job: 4 local of 8 devices" in outputs[1]
  return run_dir, outputs


def test_sigterm_to_one_host_stops_both_at_the_same_step_and_they_resume_exactly(gin_file, straight_run,
                                                                                tmp_path):
  want = [r["loss"] for r in read_metrics(straight_run[0])]
  assert len(want) == STEPS

  run_dir = tmp_path / "preempted"
  processes = _start(gin_file, run_dir, "--gin.train.steps=1000")  # no end to race the signal to
  try:
    deadline = time.monotonic() + 240
    while not ((run_dir / "metrics.jsonl").is_file() and read_metrics(run_dir)
               and read_metrics(run_dir)[-1]["step"] >= 2):
      assert all(p.poll() is None for p in processes) and time.monotonic() < deadline
      time.sleep(0.1)
    processes[1].send_signal(signal.SIGTERM)  # the host that writes no metrics, and only it
  except BaseException:
    for process in processes:
      process.kill()
    raise
  outputs = _finish(processes, timeout=120)
  stops = [re.findall(r"stopped at step (\d+) after SIGTERM", output) for output in outputs]
  assert len(stops[0]) == len(stops[1]) == 1 and stops[0] == stops[1], stops
  stopped = int(stops[0][0])
  assert "received SIGTERM" in outputs[1] and "received SIGTERM" not in outputs[0]
  assert "reached another host" in outputs[0]
  assert stopped < STEPS and str(stopped) in os.listdir(run_dir / "checkpoints")
  assert read_metrics(run_dir)[-1]["step"] == stopped

  outputs = _finish(_start(gin_file, run_dir, "--gin.train.eval_every=0"))  # the other test evaluates
  assert f"from its checkpoint at step {stopped}" in outputs[0]
  assert f"from its checkpoint at step {stopped}" in outputs[1]
  assert [r["loss"] for r in read_metrics(run_dir)] == want


def test_hosts_with_uneven_validation_shards_evaluate_every_window_once(straight_run, gin_file, vocab_path):
  import jax
  from xbook.data.spec import DataSpec
  from xbook.data.vocab import load_vocabulary
  from xbook.model import DecoderConfig
  from xbook.train import trainer as trainer_lib
  from xbook.train.checkpoints import RunCheckpoints
  from xbook.train.input_pipeline import trajectory_batches
  from xbook.train.mesh import MeshConfig
  run_dir, outputs = straight_run
  # The validation windows, read by this one process.
  data = DataSpec.build(str(gin_file.parent / "scaffolds-*.jsonl"), load_vocabulary(vocab_path), 128)
  batches = list(trajectory_batches(data, split="validation", global_batch_size=8, seed=0, repeat=False,
                                    shuffle=False))
  windows = sum(int(np.any(b["decoder_segment_ids"] > 0, axis=1).sum()) for b in batches)
  assert 4 < windows < 20  # several batches of 4 rows (the per-host batch) on the host that has the book

  # One host read all of them, the other none; both ran the same number of eval steps.
  agreed = [re.findall(r"validation: (\d+) eval steps per evaluation on every host; (\d+) batches", output)
            for output in outputs]
  assert all(len(found) == 1 for found in agreed), agreed
  (steps_0, local_0), (steps_1, local_1) = [(int(a), int(b)) for a, b in (agreed[0][0], agreed[1][0])]
  assert {local_0, local_1} == {-(-windows // 4), 0} and steps_0 == steps_1 == max(local_0, local_1)

  # Every window counted once, and the metrics of this process's evaluation of the last checkpoint.
  record = read_metrics(run_dir)[-1]
  assert record["step"] == STEPS and record["eval/windows"] == windows
  model = DecoderConfig(**json.loads((run_dir / "model.json").read_text())["model"])
  trainer = trainer_lib.Trainer(model_config=model, optimizer_config=trainer_lib.OptimizerConfig(),
                                mesh_config=MeshConfig(data=1, fsdp=jax.device_count(), sequence=1, tensor=1),
                                batch_size=8, seq_len=128)
  checkpoints = RunCheckpoints(str(run_dir))
  params = checkpoints.restore(STEPS, trainer.abstract_state.params)["params"]
  checkpoints.close()
  expected = trainer.evaluate(params, batches)
  for name, value in expected.items():
    assert record[name] == pytest.approx(value, rel=1e-5), name
