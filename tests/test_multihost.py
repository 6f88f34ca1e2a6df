"""Multi-host training for real: 2 processes x 4 simulated CPU devices joined on 127.0.0.1.

They train from their own shards of the scaffold files, checkpoint, are killed with SIGKILL, restart,
and finish with the same losses as an uninterrupted 2-process run.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from xbook.scaffold import write_scaffolds
from xbook.train.metrics import read_metrics

N_PROCESSES, STEPS = 2, 6


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.fixture(scope="module")
def gin_file(tmp_path_factory, scaffold_records, vocab_path):
  """One scaffold file per book, so each of the 2 hosts reads its own file."""
  root = tmp_path_factory.mktemp("multihost")
  for record in scaffold_records:
    write_scaffolds(root / f"scaffolds-{record['book']['id']}.jsonl", [record])
  path = root / "run.gin"
  path.write_text("\n".join([
      "include 'configs/models/tiny.gin'",
      f"train.scaffold_files = '{root}/scaffolds-*.jsonl'", f"train.vocab_path = '{vocab_path}'",
      f"train.steps = {STEPS}", "train.batch_size = 8", "train.seq_len = 128",
      "train.checkpoint_every = 2", "MeshConfig.data = 2", "MeshConfig.fsdp = 2",
      "MeshConfig.tensor = 2"]))
  return path


def _start(gin_file, run_dir) -> list[subprocess.Popen]:
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4")
  address = f"127.0.0.1:{_free_port()}"
  return [subprocess.Popen(
      [sys.executable, "-m", "xbook.cli", "train", f"--gin_file={gin_file}", "--run_dir", str(run_dir),
       "--coordinator_address", address, "--num_processes", str(N_PROCESSES), "--process_id", str(i)],
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


def test_two_hosts_train_are_killed_and_resume_exactly(gin_file, tmp_path):
  straight, killed = tmp_path / "straight", tmp_path / "killed"
  outputs = _finish(_start(gin_file, straight))
  assert "process 0 of 2 joined the job: 4 local of 8 devices" in outputs[0]
  assert "process 1 of 2 joined the job: 4 local of 8 devices" in outputs[1]
  want = [r["loss"] for r in read_metrics(straight)]
  assert len(want) == STEPS

  processes = _start(gin_file, killed)
  try:
    deadline = time.monotonic() + 240
    while not ((killed / "metrics.jsonl").is_file() and read_metrics(killed)
               and read_metrics(killed)[-1]["step"] >= 3):
      assert all(p.poll() is None for p in processes) and time.monotonic() < deadline
      time.sleep(0.1)
  finally:
    for process in processes:
      process.send_signal(signal.SIGKILL)
      process.wait()
  assert (killed / "checkpoints").is_dir()

  outputs = _finish(_start(gin_file, killed))
  assert "from its checkpoint at step" in outputs[0]
  got = [r["loss"] for r in read_metrics(killed)]
  assert got == want
