"""Warm start (train.init_from): a new run starts from another run's or imported parameters, on this
run's shardings and dtypes, with a fresh optimizer; a resumed run never reads the source again; a
source that is a different network is refused with every differing field named."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import shutil

import jax
import numpy as np
import pytest

from xbook.infer.generate import load_run
from xbook.model.hf import save_params
from xbook.train import trainer as trainer_lib
from xbook.train import warm_start
from xbook.train.input_pipeline import trajectory_batches
from xbook.train.mesh import MeshConfig
from xbook.train.metrics import read_metrics

from tiny_runs import MESH, MODEL, run_data, train_tiny



def _train(run_dir, scaffold_file, vocab_path, steps, model=MODEL, **overrides):
  kwargs = dict(seq_len=128, checkpoint_every=4, log_every=5)
  kwargs.update(overrides)
  return train_tiny(run_dir, scaffold_file, vocab_path, steps=steps, model=model, warmup_steps=2,
                    gin_bindings=["OptimizerConfig.decay_steps = 20"], **kwargs)


@pytest.fixture(scope="module")
def source_run(tmp_path_factory, scaffold_file, vocab_path):
  run_dir = tmp_path_factory.mktemp("source")
  _train(run_dir, scaffold_file, vocab_path, steps=8)
  return run_dir


def _loss_of(params, model, run_dir, scaffold_file):
  """The training loss of `params` on the first training batch of seed 0 of `run_dir` (trained on
  `scaffold_file`), computed by the evaluation path: the reference for a warm-started step 1."""
  trainer = trainer_lib.Trainer(model_config=model, optimizer_config=trainer_lib.OptimizerConfig(),
                                mesh_config=MeshConfig(*MESH), batch_size=8, seq_len=128)
  batch = next(trajectory_batches(run_data(run_dir, scaffold_file, 128), split="train", global_batch_size=8, seed=0))
  with trainer.context():
    params = jax.device_put(params, trainer.state_shardings.params)
  return trainer.evaluate(params, [batch])["eval/loss"]


def test_a_warm_started_run_begins_with_the_source_parameters(source_run, tmp_path, scaffold_file,
                                                              vocab_path):
  source_losses = [r["loss"] for r in read_metrics(source_run)]
  # Another layer layout and remat: allowed differences, converted on the way in.
  model = dataclasses.replace(MODEL, scan_layers=False, remat="full")
  _train(tmp_path, scaffold_file, vocab_path, steps=2, model=model, init_from=str(source_run))
  first = read_metrics(tmp_path)[0]
  expected = _loss_of(load_run(source_run).params, MODEL, tmp_path, scaffold_file)
  assert first["loss"] == pytest.approx(expected, rel=1e-5)
  assert first["loss"] < source_losses[0] - 0.5 and first["loss"] < math.log(MODEL.vocab_size) - 0.5
  info = json.loads((tmp_path / "model.json").read_text())
  assert info["started_from"] == {"path": str(source_run), "kind": "run", "step": 8, "hf_model_type": None}
  assert info["model"]["scan_layers"] is False


def test_warm_start_from_imported_weights_at_another_dtype(source_run, tmp_path, scaffold_file,
                                                           vocab_path):
  imported = tmp_path / "imported"
  params = load_run(source_run).params
  save_params(imported, MODEL, jax.device_get(params), hf_model_type="llama")
  run_dir = tmp_path / "run"
  model = dataclasses.replace(MODEL, param_dtype="bfloat16", dtype="bfloat16")
  _train(run_dir, scaffold_file, vocab_path, steps=1, model=model, init_from=str(imported),
         checkpoint_every=1)
  restored = load_run(run_dir).params
  assert {leaf.dtype for leaf in jax.tree.leaves(restored)} == {np.dtype("bfloat16")}
  # One optimizer step away from the source, far from a random init.
  before = np.asarray(params["embed"]["embedding"], np.float32)
  after = np.asarray(restored["embed"]["embedding"], np.float32)
  assert np.abs(after - before).max() < 0.05
  first = read_metrics(run_dir)[0]
  assert first["loss"] == pytest.approx(_loss_of(params, MODEL, run_dir, scaffold_file), rel=2e-2)
  assert json.loads((run_dir / "model.json").read_text())["started_from"]["kind"] == "imported"
  with pytest.raises(ValueError, match="holds imported weights"):
    warm_start.find_source(str(imported), step=3)


def test_a_resumed_run_does_not_read_init_from_again(source_run, tmp_path, scaffold_file, vocab_path):
  source = tmp_path / "source"
  source.symlink_to(source_run, target_is_directory=True)
  run_dir = tmp_path / "run"
  _train(run_dir, scaffold_file, vocab_path, steps=2, init_from=str(source), checkpoint_every=2)
  source.unlink()  # the source is gone: a resume that read it would fail
  _train(run_dir, scaffold_file, vocab_path, steps=3, init_from=str(source), checkpoint_every=2)
  assert [r["step"] for r in read_metrics(run_dir)][-1] == 3
  info = json.loads((run_dir / "model.json").read_text())
  assert info["started_from"]["path"] == str(source)  # still recorded after the resume


def test_a_different_network_is_refused_naming_every_field(source_run, tmp_path, scaffold_file,
                                                           vocab_path):
  model = dataclasses.replace(MODEL, d_model=32, n_heads=2, n_kv_heads=1, rope_theta=500_000.0)
  with pytest.raises(ValueError) as error:
    _train(tmp_path, scaffold_file, vocab_path, steps=1, model=model, init_from=str(source_run))
  message = str(error.value)
  for field in ("d_model", "n_heads", "n_kv_heads", "rope_theta"):
    assert field in message
  assert "head_dim" not in message
  assert not list(tmp_path.glob("checkpoints/[0-9]*")) and not (tmp_path / "model.json").exists()
  with pytest.raises(FileNotFoundError, match="checkpoints of steps \\[4, 8\\]"):
    warm_start.find_source(str(source_run), step=5)
  with pytest.raises(FileNotFoundError, match="xbook weights import"):
    warm_start.find_source(str(tmp_path / "nowhere"))


def _files(folder):
  return {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_a_rerun_with_another_shape_leaves_the_run_as_it_was(source_run, tmp_path, scaffold_file, vocab_path):
  run_dir = tmp_path / "run"
  shutil.copytree(source_run, run_dir)
  before = _files(run_dir)
  other = dataclasses.replace(MODEL, d_model=32, scan_layers=False)
  with pytest.raises(ValueError) as error:
    _train(run_dir, scaffold_file, vocab_path, steps=10, model=other)
  assert "d_model: 64 in the run, 32 now" in str(error.value) and "scan_layers" in str(error.value)
  assert _files(run_dir) == before and not (tmp_path / "run" / "checkpoints_unreadable").exists()
  # Compute-only fields may change when a run resumes.
  _train(run_dir, scaffold_file, vocab_path, steps=9, model=dataclasses.replace(MODEL, remat="full"))
  assert [r["step"] for r in read_metrics(run_dir)][-1] == 9


def test_rerunning_a_finished_run_reports_where_it_is(source_run, tmp_path, scaffold_file, vocab_path, caplog):
  run_dir = tmp_path / "run"
  shutil.copytree(source_run, run_dir)
  last = read_metrics(run_dir)[-1]
  with caplog.at_level(logging.INFO, logger="xbook.train.trainer"):
    metrics = _train(run_dir, scaffold_file, vocab_path, steps=8)
  assert metrics["step"] == 8 and metrics["loss"] == last["loss"]
  assert "already at step 8" in caplog.text
  with caplog.at_level(logging.WARNING, logger="xbook.train.trainer"):
    metrics = _train(run_dir, scaffold_file, vocab_path, steps=5)
  assert metrics["step"] == 8 and "past train.steps=5" in caplog.text
  assert [r["step"] for r in read_metrics(run_dir)] == list(range(1, 9))
