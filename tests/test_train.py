"""Training on 8 simulated devices from real scaffolds: sharding, loss, metrics, checkpoints, resume."""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import shutil
import signal
import subprocess
import sys
import time
import types

import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from xbook.data.features import synthetic_batch
from xbook.infer.generate import generate_passage, load_run, sample_tokens
from xbook.infer.generate import prompt_ids
from xbook.model import DecoderConfig
from xbook.scaffold import write_scaffolds
from xbook.train import trainer as trainer_lib
from xbook.train.checkpoints import RunCheckpoints
from xbook.train.eval_input import ValidationSet
from xbook.train.input_pipeline import trajectory_batches
from xbook.train.mesh import MeshConfig, make_mesh
from xbook.train.optimizer import OptimizerConfig, learning_rate_schedule
from xbook.train.metrics import read_metrics
from xbook.train.preemption import PreemptionGuard
from xbook.train.profiling import StepProfiler

from tiny_runs import run_data

MODEL = DecoderConfig(vocab_size=1024, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=16,
                      mlp_dim=128)


def _train(run_dir, scaffold_file, vocab_path, steps, mesh=(2, 2, 1, 2), **overrides):
  bindings = [f"MeshConfig.{axis} = {size}" for axis, size in zip(("data", "fsdp", "sequence", "tensor"), mesh)]
  bindings += ["OptimizerConfig.learning_rate = 3e-3", "OptimizerConfig.warmup_steps = 2",
               "OptimizerConfig.decay_steps = 20"]
  gin.clear_config()
  gin.parse_config(bindings)
  kwargs = dict(scaffold_files=str(scaffold_file), vocab_path=str(vocab_path), model_config=MODEL,
                steps=steps, batch_size=8, seq_len=128, checkpoint_every=3, log_every=5)
  kwargs.update(overrides)
  try:
    return trainer_lib.train(str(run_dir), **kwargs)
  finally:
    gin.clear_config()


@pytest.fixture(scope="module")
def split_scaffold_file(tmp_path_factory, scaffold_records):
  """The scaffolds with the second book moved to the validation split."""
  path = tmp_path_factory.mktemp("split") / "scaffolds.jsonl"
  write_scaffolds(path, [dict(r, split="validation" if i == 1 else "train")
                         for i, r in enumerate(scaffold_records)])
  return path


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, split_scaffold_file, vocab_path):
  run_dir = tmp_path_factory.mktemp("run")
  _train(run_dir, split_scaffold_file, vocab_path, steps=12, eval_every=6, keep_every=6,
         microbatches=2, profile_steps=(2, 3))
  return run_dir


def test_mesh_fills_the_free_axis_and_rejects_impossible_shapes():
  assert MeshConfig(data=2, fsdp=-1, sequence=1, tensor=2).shape(8) == (2, 2, 1, 2)
  mesh = make_mesh(MeshConfig(data=1, fsdp=2, sequence=2, tensor=2))
  assert dict(mesh.shape) == {"data": 1, "fsdp": 2, "sequence": 2, "tensor": 2}
  with pytest.raises(ValueError, match="needs 12 devices"):
    MeshConfig(data=3, fsdp=2, sequence=1, tensor=2).shape(8)


def test_multi_slice_mesh_puts_the_dcn_axis_across_slices():
  config = MeshConfig(data=1, fsdp=-1, sequence=1, tensor=2, dcn_data=2)
  assert config.ici_shape(8) == (1, 2, 1, 2) and config.shape(8) == (2, 2, 1, 2)
  mesh = make_mesh(config)
  devices = np.vectorize(lambda d: d.id)(mesh.devices)
  # Simulated slices are consecutive devices: slice 0 = devices 0-3 holds data index 0.
  assert set(devices[0].ravel()) == {0, 1, 2, 3} and set(devices[1].ravel()) == {4, 5, 6, 7}
  with pytest.raises(ValueError, match="cannot form 3 equal slices"):
    MeshConfig(dcn_data=3).shape(8)


def test_parameters_and_batches_are_sharded_by_the_logical_rules():
  trainer = trainer_lib.Trainer(model_config=MODEL, optimizer_config=trainer_lib.OptimizerConfig(),
                                mesh_config=MeshConfig(data=2, fsdp=2, sequence=1, tensor=2),
                                batch_size=8, seq_len=64)
  params = trainer.state_shardings.params
  assert params["layers"]["mlp"]["gate"]["kernel"].spec == P(None, "fsdp", "tensor")
  assert params["embed"]["embedding"].spec == P("tensor", "fsdp")
  assert params["layers"]["attention"]["key"].spec == P(None, "fsdp", "tensor", None)
  mu = trainer.state_shardings.opt_state[1][0].mu  # adamw's first moment follows the parameters
  assert mu["layers"]["mlp"]["gate"]["kernel"].spec == P(None, "fsdp", "tensor")
  assert trainer.batch_sharding.spec == P(("data", "fsdp"), "sequence")
  with pytest.raises(ValueError, match="multiple of data\\*fsdp"):
    trainer_lib.Trainer(model_config=MODEL, optimizer_config=trainer_lib.OptimizerConfig(),
                        mesh_config=MeshConfig(data=2, fsdp=2, sequence=1, tensor=2),
                        batch_size=6, seq_len=64)


def test_training_lowers_the_loss_and_writes_metrics_and_checkpoints(trained_run):
  records = read_metrics(trained_run)
  assert [r["step"] for r in records] == list(range(1, 13))
  for key in ("loss", "grad_norm", "lr", "tokens_per_s", "step_s", "loss/text"):
    assert all(np.isfinite(r[key]) for r in records), key
  first, last = records[0]["loss"], records[-1]["loss"]
  assert last < first - 0.5, (first, last)
  assert records[-1]["loss/text"] < records[0]["loss/text"]
  assert any("loss/scene_plan" in r for r in records)
  assert list((trained_run / "tensorboard").glob("events.out.tfevents.*"))
  # The latest 3 (checkpoint_every=3) plus every multiple of keep_every=6.
  assert _checkpoint_steps(trained_run) == [6, 9, 12]
  assert {"eval/loss", "eval/loss/text", "eval/loss/prompt"} <= set(records[5]) & set(records[11])
  assert "eval/loss" not in records[4]
  assert records[5]["eval/perplexity/text"] == pytest.approx(np.exp(records[5]["eval/loss/text"]), rel=1e-6)
  assert records[11]["eval/loss"] < records[5]["eval/loss"] + 0.5
  assert records[5]["eval/windows"] == records[11]["eval/windows"] > 100  # the whole validation book
  assert "MeshConfig.tensor = 2" in (trained_run / "config.gin").read_text()
  assert list((trained_run / "profile").rglob("*.xplane.pb"))


def test_gradient_accumulation_over_microbatches_matches_one_batch():
  def one_step(microbatches):
    trainer = trainer_lib.Trainer(model_config=MODEL, optimizer_config=trainer_lib.OptimizerConfig(),
                                  mesh_config=MeshConfig(data=2, fsdp=2, sequence=1, tensor=2),
                                  batch_size=16, seq_len=32, microbatches=microbatches, z_loss=1e-4)
    batch = synthetic_batch(16, 32, MODEL.vocab_size)
    batch["decoder_loss_weights"] = np.random.default_rng(1).uniform(0, 1, (16, 32)).astype(np.float32)
    state, metrics = trainer.step(trainer.init_state(0), batch)
    return jax.device_get(state.params), jax.device_get(metrics)

  params_1, metrics_1 = one_step(1)
  params_4, metrics_4 = one_step(4)
  for key in ("loss", "grad_norm", "weighted_tokens"):
    np.testing.assert_allclose(metrics_4[key], metrics_1[key], rtol=1e-5)
  np.testing.assert_allclose(metrics_4["kind_nll"], metrics_1["kind_nll"], rtol=1e-5)
  for a, b in zip(jax.tree.leaves(params_4), jax.tree.leaves(params_1)):
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_bfloat16_compute_keeps_float32_master_weights():
  def one_step(dtype):
    trainer = trainer_lib.Trainer(model_config=dataclasses.replace(MODEL, dtype=dtype),
                                  optimizer_config=trainer_lib.OptimizerConfig(),
                                  mesh_config=MeshConfig(data=2, fsdp=2, sequence=1, tensor=2),
                                  batch_size=8, seq_len=32)
    state, metrics = trainer.step(trainer.init_state(0), synthetic_batch(8, 32, MODEL.vocab_size))
    return jax.device_get(state.params), jax.device_get(metrics)

  params_bf16, metrics_bf16 = one_step("bfloat16")
  _, metrics_f32 = one_step("float32")
  assert {leaf.dtype for leaf in jax.tree.leaves(params_bf16)} == {np.dtype("float32")}
  np.testing.assert_allclose(metrics_bf16["loss"], metrics_f32["loss"], rtol=2e-2)


def test_non_finite_gradients_stop_the_run_naming_the_tensor():
  metrics = {"loss": np.float32(2.0),
             "finite_grads": {"embed": {"embedding": np.bool_(True)},
                              "layers": {"mlp": {"up": {"kernel": np.bool_(False)}}}}}
  with pytest.raises(FloatingPointError, match=r"step 7: .*\['layers'\]\['mlp'\]\['up'\]\['kernel'\]"):
    trainer_lib.check_finite(7, metrics)
  metrics["finite_grads"]["layers"]["mlp"]["up"]["kernel"] = np.bool_(True)
  trainer_lib.check_finite(7, metrics)
  with pytest.raises(FloatingPointError, match="loss nan"):
    trainer_lib.check_finite(8, dict(metrics, loss=np.float32("nan")))


class _FakeTrainer:
  """Stands in for Trainer in TrainLoop: step n yields losses[n - 1] and logs its dispatch."""

  batch_size, seq_len, model_config = 2, 4, MODEL
  mesh = types.SimpleNamespace(size=1)

  def __init__(self, losses, on_dispatch=lambda step: None):
    self.losses, self.on_dispatch, self.dispatched = losses, on_dispatch, []

  def step(self, state, batch):
    step = int(state.step) + 1
    self.dispatched.append(step)
    self.on_dispatch(step)
    loss = np.float32(self.losses[step - 1])
    kinds = len(trainer_lib.trajectory.SEGMENT_KINDS)
    return trainer_lib.TrainState(step=step, params=f"params {step}", opt_state=None), {
        "loss": loss, "grad_norm": np.float32(1), "lr": np.float32(0.1), "weighted_tokens": np.float32(8),
        "real_tokens": np.float32(8), "kind_nll": np.zeros(kinds), "kind_count": np.zeros(kinds),
        "finite_grads": {"w": np.bool_(np.isfinite(loss))}}


def _fake_loop(tmp_path, trainer, steps, checkpoint_every):
  """Run TrainLoop over a fake trainer; (the saved steps, the recorded steps, the error if any)."""
  saves, records = [], []
  checkpoints = types.SimpleNamespace(save=lambda step, *args: saves.append(step))
  writer = types.SimpleNamespace(write=lambda step, metrics: records.append(step), close=lambda: None)
  with PreemptionGuard() as guard:
    trainer.guard = guard
    loop = trainer_lib.TrainLoop(trainer, trainer_lib.LoopPlan(steps, checkpoint_every),
                                 checkpoints=checkpoints, writer=writer, guard=guard,
                                 profiler=StepProfiler(tmp_path, None), validation=None, saved_progress={})
    start = trainer_lib.Start(trainer_lib.TrainState(step=0, params=None, opt_state=None), 0, 0, None)
    try:
      loop.run(start, itertools.repeat({}))
    except FloatingPointError as error:
      return saves, records, error
  return saves, records, None


def test_the_loop_reads_metrics_a_step_late_but_never_saves_a_non_finite_step(tmp_path):
  # Saves at every multiple of checkpoint_every and at the end; every step recorded once, in order.
  trainer = _FakeTrainer([3.0] * 5)
  assert _fake_loop(tmp_path, trainer, steps=5, checkpoint_every=2) == ([2, 4, 5], [1, 2, 3, 4, 5], None)
  # Step 2 is not finite: it is found once step 3 is dispatched, before step 3 (which follows from it)
  # is saved.
  trainer = _FakeTrainer([3.0, float("nan"), 3.0])
  saves, records, error = _fake_loop(tmp_path, trainer, steps=3, checkpoint_every=3)
  assert trainer.dispatched == [1, 2, 3] and saves == [] and records == [1]
  assert "step 2: loss nan" in str(error)


def test_the_loop_stops_at_the_step_after_the_hosts_vote_and_saves_it(tmp_path):
  def sigterm_during(step):
    if step == 2:
      trainer.guard.requested = True
  trainer = _FakeTrainer([3.0] * 10, on_dispatch=sigterm_during)
  # The vote after step 2 is read with step 2's metrics, once step 3 is dispatched: all stop after 3.
  assert _fake_loop(tmp_path, trainer, steps=10, checkpoint_every=100) == ([3], [1, 2, 3], None)
  assert trainer.dispatched == [1, 2, 3]


def test_validation_batches_are_read_once_and_replayed():
  reads = []

  def read():
    reads.append(1)
    return iter([{"x": np.full((2, 3), i)} for i in range(5)])

  validation = ValidationSet(read, max_batches=4)
  for _ in range(3):
    assert [int(b["x"][0, 0]) for b in validation.batches()] == [0, 1, 2, 3]
  assert len(reads) == 1 and validation.steps == validation.local_batches == 4
  # Over the memory budget: read again at every evaluation.
  reads.clear()
  validation = ValidationSet(read, cache_bytes=100)
  for _ in range(2):
    assert len(list(validation.batches())) == 5
  assert len(reads) == 3 and validation.steps == 5


def test_evaluation_pads_short_and_missing_batches_without_counting_them(trained_run, split_scaffold_file):
  trainer = trainer_lib.Trainer(model_config=MODEL, optimizer_config=trainer_lib.OptimizerConfig(),
                                mesh_config=MeshConfig(data=2, fsdp=2, sequence=1, tensor=2),
                                batch_size=8, seq_len=128)
  params = load_run(trained_run).params
  with trainer.context():
    params = jax.device_put(params, trainer.state_shardings.params)
  windows = next(trajectory_batches(run_data(trained_run, split_scaffold_file, 128), split="validation",
                                    global_batch_size=20, seed=0, repeat=False, shuffle=False))
  def rows(*bounds):
    return [{k: v[a:b] for k, v in windows.items()} for a, b in zip(bounds, bounds[1:])]
  full = trainer.evaluate(params, rows(0, 8, 16, 20))
  ragged = trainer.evaluate(params, rows(0, 3, 11, 19, 20), num_batches=6)  # 2 all-padding batches
  assert full["eval/windows"] == ragged["eval/windows"] == 20
  assert ragged.keys() == full.keys()
  for name, value in full.items():
    assert ragged[name] == pytest.approx(value, rel=1e-5), name
  assert trainer.evaluate(params, [], num_batches=0) == {}


def test_linear_and_cosine_schedules_warm_up_then_decay_to_the_final_fraction():
  for schedule in ("linear", "cosine"):
    config = OptimizerConfig(learning_rate=1.0, schedule=schedule, warmup_steps=10, decay_steps=110,
                             final_lr_fraction=0.1)
    lr = learning_rate_schedule(config)
    assert float(lr(0)) == 0.0 and float(lr(5)) == pytest.approx(0.5)
    assert float(lr(10)) == pytest.approx(1.0) and float(lr(110)) == pytest.approx(0.1)
  assert float(learning_rate_schedule(OptimizerConfig(learning_rate=1.0, schedule="linear",
                                                      warmup_steps=10, decay_steps=110,
                                                      final_lr_fraction=0.1))(60)) == pytest.approx(0.55)
  with pytest.raises(ValueError, match="schedule"):
    learning_rate_schedule(OptimizerConfig(schedule="step"))


def _checkpoint_steps(run_dir):
  return sorted(int(p.name) for p in (run_dir / "checkpoints").iterdir() if p.name.isdigit())


def test_checkpoints_restore_onto_a_different_mesh(trained_run):
  saved = load_run(trained_run).params
  other = trainer_lib.Trainer(model_config=MODEL, optimizer_config=trainer_lib.OptimizerConfig(),
                              mesh_config=MeshConfig(data=1, fsdp=4, sequence=1, tensor=2),
                              batch_size=8, seq_len=128)
  checkpoints = RunCheckpoints(str(trained_run))
  restored = checkpoints.restore_latest(other.abstract_state.params, other.abstract_state.opt_state)
  checkpoints.close()
  assert restored["step"] == 12
  kernel = restored["params"]["layers"]["mlp"]["gate"]["kernel"]
  assert kernel.sharding.spec == P(None, "fsdp", "tensor") and kernel.sharding.mesh.shape["fsdp"] == 4
  for a, b in zip(jax.tree.leaves(saved), jax.tree.leaves(restored["params"])):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_a_corrupt_latest_checkpoint_falls_back_to_the_previous_one(trained_run, split_scaffold_file,
                                                                     vocab_path, tmp_path, caplog):
  run_dir = tmp_path / "run"
  shutil.copytree(trained_run, run_dir)
  for f in (run_dir / "checkpoints" / "12" / "params").rglob("*"):
    if f.is_file():
      f.write_bytes(b"garbage")
  with caplog.at_level(logging.WARNING, logger="xbook"):
    _train(run_dir, split_scaffold_file, vocab_path, steps=12)
  assert "checkpoint of step 12" in caplog.text and "restored step 9" in caplog.text
  assert [r["step"] for r in read_metrics(run_dir)][-3:] == [10, 11, 12]
  # The replayed steps 10-12 appear once, in metrics.jsonl and in TensorBoard.
  lines = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
  assert lines == list(range(1, 13))
  assert _tensorboard_steps(run_dir / "tensorboard", "loss") == list(range(1, 13))


def test_ring_attention_on_a_zigzag_sequence_axis_trains_like_dense(tmp_path, scaffold_file, vocab_path):
  dense, ring = tmp_path / "dense", tmp_path / "ring"
  _train(dense, scaffold_file, vocab_path, steps=3, mesh=(1, 2, 2, 2))
  _train(ring, scaffold_file, vocab_path, steps=3, mesh=(1, 2, 2, 2), length_layout="zigzag",
         model_config=dataclasses.replace(MODEL, attention="ring"))
  want = [r["loss"] for r in read_metrics(dense)]
  got = [r["loss"] for r in read_metrics(ring)]
  np.testing.assert_allclose(got, want, rtol=2e-5)


def test_a_restarted_run_continues_exactly_like_an_uninterrupted_one(tmp_path, scaffold_file, vocab_path):
  straight, resumed = tmp_path / "straight", tmp_path / "resumed"
  _train(straight, scaffold_file, vocab_path, steps=6)
  _train(resumed, scaffold_file, vocab_path, steps=3)
  _train(resumed, scaffold_file, vocab_path, steps=6)
  want = [r["loss"] for r in read_metrics(straight)]
  got = [r["loss"] for r in read_metrics(resumed)]
  assert got == want


def test_greedy_generation_matches_an_unpadded_forward_pass(trained_run):
  run = load_run(trained_run)
  assert run.step == 12
  prefix = prompt_ids("Write a novel about a man who meets a ghost.", run.vocabulary)
  greedy = sample_tokens(run, prefix, max_new_tokens=8, temperature=0.0)
  assert 0 < len(greedy) <= 8
  tokens = prefix + greedy

  @jax.jit
  def forward(params, inputs):
    positions = jnp.arange(inputs.shape[1])[None]
    return run.model.apply({"params": params}, inputs, jnp.ones_like(inputs), positions)[0]

  # BOS, then every token but the last, in one causal forward pass without padding: the logits at position
  # len(prefix) + k are those after prefix + greedy[:k], so token k is their argmax.
  inputs = jnp.asarray([[run.vocabulary.bos_id] + tokens[:-1]], jnp.int32)
  logits = forward(run.params, inputs)
  assert [int(i) for i in jnp.argmax(logits[len(prefix):], axis=-1)] == greedy
  # The pass over the prompt alone gives the same logits there: no later token reached an earlier one.
  np.testing.assert_allclose(forward(run.params, inputs[:, :len(prefix) + 1]), logits[:len(prefix) + 1],
                             atol=1e-4, rtol=1e-4)
  sampled = sample_tokens(run, prefix, max_new_tokens=8, temperature=1.0, seed=3)
  assert sampled == sample_tokens(run, prefix, max_new_tokens=8, temperature=1.0, seed=3)
  assert isinstance(generate_passage(run, "A ghost story.", max_new_tokens=8), str)


def test_generation_reads_an_earlier_checkpoint_too(trained_run):
  early, late = load_run(trained_run, step=6), load_run(trained_run)
  assert early.step == 6
  leaves = zip(jax.tree.leaves(early.params), jax.tree.leaves(late.params))
  assert any(not np.array_equal(a, b) for a, b in leaves)


def test_sigterm_saves_a_checkpoint_and_a_rerun_resumes_from_it(tmp_path, split_scaffold_file, vocab_path, caplog):
  gin_file = tmp_path / "run.gin"
  gin_file.write_text("\n".join([
      "include 'configs/models/tiny.gin'",
      f"train.scaffold_files = '{split_scaffold_file}'", f"train.vocab_path = '{vocab_path}'",
      "train.steps = 1000", "train.batch_size = 8", "train.seq_len = 128",
      "train.checkpoint_every = 1000", "MeshConfig.fsdp = 4", "MeshConfig.tensor = 2"]))
  run_dir = tmp_path / "run"
  command = [sys.executable, "-m", "xbook.cli", "train", f"--gin_file={gin_file}", "--run_dir", str(run_dir)]
  process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  try:
    deadline = time.monotonic() + 180
    while not ((run_dir / "metrics.jsonl").is_file() and len(read_metrics(run_dir)) >= 3):
      assert process.poll() is None and time.monotonic() < deadline, process.communicate()[0]
      time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    output = process.communicate(timeout=120)[0]
  finally:
    process.kill()
  assert process.returncode == 0, output
  stopped = read_metrics(run_dir)[-1]["step"]
  assert "after SIGTERM" in output and stopped < 1000
  assert _checkpoint_steps(run_dir) == [stopped]
  # The rerun: the same command in this process (its imports and jax start-up already paid for).
  from xbook import cli
  gin.clear_config()
  try:
    with caplog.at_level(logging.INFO, logger="xbook"):
      assert cli.main(command[3:] + [f"--gin.train.steps={stopped + 2}"]) == 0
  finally:
    gin.clear_config()
  assert f"from its checkpoint at step {stopped}" in caplog.text
  assert [r["step"] for r in read_metrics(run_dir)] == list(range(1, stopped + 3))


def test_training_on_a_mixture_of_views(tmp_path, scaffold_file, vocab_path, caplog):
  """With view_rates the run trains on a mixture of the windows and the packed stages."""
  with caplog.at_level(logging.INFO, logger="xbook.train.input_pipeline"):
    metrics = _train(tmp_path / "mixture", scaffold_file, vocab_path, steps=4,
                     view_rates={"windows": 1.0, "stages": 1.0})
  assert np.isfinite(metrics["loss"])
  assert "input pipeline: windows (rate 1) and stages (rate 1) of 2 train books" in caplog.text
  records = read_metrics(tmp_path / "mixture")
  assert [r["step"] for r in records] == [1, 2, 3, 4]


def test_training_reads_the_offline_cache_that_xbook_data_cache_built(tmp_path, scaffold_file, vocab_path,
                                                                      caplog):
  """`xbook data cache` builds the windows of a gin config with Beam; train.cache_dir trains from them,
  and names the command to run when the cache is missing."""
  from xbook import cli
  config = tmp_path / "cache.gin"
  config.write_text(f"train.scaffold_files = '{scaffold_file}'\ntrain.vocab_path = '{vocab_path}'\n"
                    f"train.seq_len = 128\ntrain.task_name = 'xbook_test_cached'\n", encoding="utf-8")
  with pytest.raises(FileNotFoundError, match="xbook data cache"):
    _train(tmp_path / "nocache", scaffold_file, vocab_path, steps=1, cache_dir=str(tmp_path / "cache"),
           task_name="xbook_test_cached")
  gin.clear_config()
  assert cli.main(["data", "cache", f"--gin_file={config}", "--out", str(tmp_path / "cache"),
                   "--num_shards", "2", "--split", "train"]) == 0
  gin.clear_config()
  with caplog.at_level(logging.INFO, logger="xbook.train.trainer"):
    cached = _train(tmp_path / "cached", scaffold_file, vocab_path, steps=3, cache_dir=str(tmp_path / "cache"),
                    task_name="xbook_test_cached")
  assert "offline cache" in caplog.text
  assert np.isfinite(cached["loss"])
  assert [r["step"] for r in read_metrics(tmp_path / "cached")] == [1, 2, 3]


def _tensorboard_steps(logdir, tag: str) -> list[int]:
  """The steps of the `tag` summaries in the event files of `logdir`, in file order."""
  import tensorflow as tf
  return [event.step for path in sorted(tf.io.gfile.glob(f"{logdir}/events.out.tfevents.*"))
          for event in tf.compat.v1.train.summary_iterator(path)
          if any(value.tag == tag for value in event.summary.value)]
