"""The training loop: mesh and shardings from config, jit-compiled steps, metrics, Orbax checkpoints.

`train()` is the gin entry point (`xbook train --gin_file=...`). A run directory holds
  config.gin        the operative gin config
  model.json        the DecoderConfig, the vocabulary (relative path) and where the parameters started
  vocab/            a copy of the vocabulary's files, so that the run directory is self-contained
  metrics.jsonl     one record per step
  tensorboard/      TensorBoard events
  checkpoints/      Orbax checkpoints; a rerun with the same run_dir resumes from the latest
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import itertools
import statistics
import json
import logging
import math
import time
from typing import Any, Iterable, Iterator, Mapping, Sequence

import flax.linen as nn
import flax.struct
import gin
import jax
import jax.numpy as jnp
import numpy as np
import optax
import seqio
from etils import epath
from tqdm import tqdm

from xbook.atomic import atomic_open
from xbook.data import paper_stages, tasks, trajectory, vocab
from xbook.model import Decoder, DecoderConfig
from xbook.train import flops, partitioning, warm_start
from xbook.train.checkpoints import RunCheckpoints
from xbook.train.input_pipeline import trajectory_batches
from xbook.train.loss import nll_by_kind, weighted_cross_entropy
from xbook.train.mesh import MeshConfig, make_mesh
from xbook.train.metrics import MetricsWriter, read_metrics
from xbook.train.optimizer import OptimizerConfig, learning_rate_schedule, make_optimizer
from xbook.train.preemption import PreemptionGuard
from xbook.train.profiling import StepProfiler

log = logging.getLogger(__name__)

gin.external_configurable(DecoderConfig, module="xbook.model")


# The decoder example contract (DESIGN.md "Examples"): every feature is [batch, length].
EXAMPLE_FEATURES: dict[str, Any] = {
    "decoder_input_tokens": jnp.int32, "decoder_target_tokens": jnp.int32,
    "decoder_loss_weights": jnp.float32, "decoder_segment_ids": jnp.int32,
    "decoder_positions": jnp.int32, "decoder_segment_kinds": jnp.int32}


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any


@dataclasses.dataclass
class Trainer:
  """The model, optimizer, mesh and compiled steps of one run (no data, no I/O)."""

  model_config: DecoderConfig
  optimizer_config: OptimizerConfig
  mesh_config: MeshConfig
  batch_size: int
  seq_len: int
  rules: Sequence[tuple[str, Any]] = partitioning.DEFAULT_RULES
  z_loss: float = 0.0
  microbatches: int = 1
  devices: Sequence[jax.Device] | None = None  # default: all devices; TPU topology devices to compile AOT

  def __post_init__(self) -> None:
    self.mesh = make_mesh(self.mesh_config, self.devices)
    self.model = Decoder(self.model_config)
    self.tx = make_optimizer(self.optimizer_config)
    self.lr_schedule = learning_rate_schedule(self.optimizer_config)
    sequence_size = self.mesh.shape["sequence"]
    if self.seq_len % sequence_size:
      raise ValueError(f"seq_len {self.seq_len} must be a multiple of the sequence axis size {sequence_size}")
    batch_shards = self.mesh.shape["data"] * self.mesh.shape["fsdp"]
    if self.batch_size % batch_shards:
      raise ValueError(f"batch_size {self.batch_size} must be a multiple of data*fsdp = {batch_shards}")
    if self.batch_size % (self.microbatches * batch_shards):
      raise ValueError(f"batch_size {self.batch_size} must split into {self.microbatches} microbatches "
                       f"of a multiple of data*fsdp = {batch_shards} rows")
    boxed = jax.eval_shape(self._init_boxed, jax.random.key(0))
    self.state_shardings = partitioning.logical_shardings(boxed, self.mesh, self.rules)
    self.abstract_state = jax.tree.map(
        lambda leaf, sharding: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding),
        nn.unbox(boxed), self.state_shardings)
    self.batch_sharding = partitioning.batch_sharding(self.mesh, self.rules)
    self._init = jax.jit(lambda rng: nn.unbox(self._init_boxed(rng)),
                         out_shardings=self.state_shardings)
    self._fresh_state = jax.jit(self._state_from_params, out_shardings=self.state_shardings,
                                donate_argnums=(0,))
    self._step = jax.jit(self._train_step, in_shardings=(self.state_shardings, self.batch_sharding),
                         out_shardings=(self.state_shardings, partitioning.replicated(self.mesh)),
                         donate_argnums=(0,))
    self._eval = jax.jit(self._eval_step,
                         in_shardings=(self.state_shardings.params, self.batch_sharding),
                         out_shardings=partitioning.replicated(self.mesh))

  def _dummy_inputs(self) -> tuple[jax.Array, jax.Array, jax.Array]:
    tokens = jnp.zeros((self.batch_size, self.seq_len), jnp.int32)
    return tokens, tokens + 1, jnp.broadcast_to(jnp.arange(self.seq_len), tokens.shape)

  def _init_boxed(self, rng: jax.Array) -> TrainState:
    params = self.model.init(rng, *self._dummy_inputs())["params"]
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=self.tx.init(params))

  def _state_from_params(self, params: Any) -> TrainState:
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=self.tx.init(params))

  def _loss_sums(self, params: Any, batch: Mapping[str, jax.Array]
                 ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The batch's objective summed over weighted tokens (its gradient is the sum of token gradients),
    with the weight sum, the weighted NLL sum (the objective without the z-loss term), the number of
    real (non-padding) tokens, and the NLL sums and token counts of each segment kind."""
    logits = self.model.apply({"params": params}, batch["decoder_input_tokens"],
                              batch["decoder_segment_ids"], batch["decoder_positions"])
    loss, aux = weighted_cross_entropy(logits, batch["decoder_target_tokens"],
                                       batch["decoder_loss_weights"], self.z_loss)
    kind_nll, kind_count = nll_by_kind(aux["nll"], batch["decoder_segment_kinds"],
                                       batch["decoder_segment_ids"] > 0, len(trajectory.SEGMENT_KINDS))
    objective_sum = loss * jnp.maximum(aux["weight_sum"], 1e-8)
    weights = batch["decoder_loss_weights"].astype(jnp.float32)
    return objective_sum, {"weight_sum": aux["weight_sum"], "nll_sum": jnp.sum(aux["nll"] * weights),
                           "real_tokens": jnp.sum(batch["decoder_segment_ids"] > 0, dtype=jnp.float32),
                           "kind_nll": kind_nll, "kind_count": kind_count}

  def _summed_grads(self, params: Any, batch: Mapping[str, jax.Array]):
    """Gradient of the summed objective over the batch, accumulated over `microbatches` in float32.

    Microbatch j takes rows j, j + k, j + 2k, ... so that every device keeps its share of each.
    """
    grad_fn = jax.value_and_grad(self._loss_sums, has_aux=True)
    if self.microbatches == 1:
      return grad_fn(params, batch)
    k = self.microbatches

    def split(x):
      return jnp.swapaxes(x.reshape((x.shape[0] // k, k) + x.shape[1:]), 0, 1)

    def accumulate(carry, microbatch):
      microbatch = {name: jax.lax.with_sharding_constraint(x, self.batch_sharding)
                    for name, x in microbatch.items()}
      (objective, aux), grads = grad_fn(params, microbatch)
      return jax.tree.map(jnp.add, carry, ((objective, aux), grads)), None

    split_batch = {name: split(x) for name, x in batch.items()}
    first = jax.tree.map(lambda x: x[0], split_batch)
    zeros = jax.tree.map(lambda x: jnp.zeros(x.shape, jnp.float32), jax.eval_shape(grad_fn, params, first))
    total, _ = jax.lax.scan(accumulate, zeros, split_batch)
    return total

  def _train_step(self, state: TrainState, batch: Mapping[str, jax.Array]):
    (objective_sum, aux), summed_grads = self._summed_grads(state.params, batch)
    denominator = jnp.maximum(aux["weight_sum"], 1e-8)
    extra = {"objective": objective_sum / denominator} if self.z_loss else {}
    grads = jax.tree.map(lambda g, p: (g / denominator).astype(p.dtype), summed_grads, state.params)
    updates, opt_state = self.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {"loss": aux["nll_sum"] / denominator, "grad_norm": optax.tree.norm(grads),
               "lr": self.lr_schedule(state.step), "weighted_tokens": aux["weight_sum"],
               "real_tokens": aux["real_tokens"],
               "kind_nll": aux["kind_nll"], "kind_count": aux["kind_count"],
               "finite_grads": jax.tree.map(lambda g: jnp.all(jnp.isfinite(g)), grads), **extra}
    return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

  def _eval_step(self, params: Any, batch: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
    _, aux = self._loss_sums(params, batch)
    return aux

  @contextlib.contextmanager
  def context(self) -> Iterator[None]:
    """Mesh and logical-rule context under which steps are traced."""
    with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
      yield

  def init_state(self, seed: int) -> TrainState:
    with self.context():
      return self._init(jax.random.key(seed))

  def state_from_params(self, params: Any) -> TrainState:
    """Step 0 with these parameters (on the state's shardings; donated) and a fresh optimizer state."""
    with self.context():
      return self._fresh_state(params)

  def step(self, state: TrainState, batch: Mapping[str, Any]) -> tuple[TrainState, dict[str, Any]]:
    with self.context():
      return self._step(state, partitioning.shard_batch(batch, self.batch_sharding))

  def evaluate(self, params: Any, batches: Iterable[Mapping[str, Any]]) -> dict[str, float]:
    """Weighted loss over all `batches`, and the mean NLL of each segment kind, as `eval/...` metrics."""
    totals: dict[str, Any] = {}
    with self.context():
      for batch in batches:
        batch = _pad_batch(batch, self.batch_size)
        out = jax.device_get(self._eval(params, partitioning.shard_batch(batch, self.batch_sharding)))
        totals = {k: totals.get(k, 0) + v for k, v in out.items()}
    if not totals:
      return {}
    metrics = {"eval/loss": float(totals["nll_sum"] / max(totals["weight_sum"], 1e-8))}
    for kind, total, count in zip(trajectory.SEGMENT_KINDS, totals["kind_nll"], totals["kind_count"]):
      if count > 0:
        metrics[f"eval/loss/{kind}"] = float(total / count)
    # Per-token perplexity beside each loss (TensorBoard shows both; `xbook eval` adds per word and byte).
    metrics.update({name.replace("eval/loss", "eval/perplexity"): math.exp(min(value, 80.0))
                    for name, value in list(metrics.items())})
    return metrics

  def median_step_seconds(self, state: TrainState, batch: Mapping[str, Any], steps: int) -> float:
    """Median wall time of `steps` train steps on `batch`, after one warm-up step (for benchmarks)."""
    state, metrics = self.step(state, batch)
    jax.block_until_ready(metrics)
    times = []
    for _ in range(steps):
      began = time.perf_counter()
      state, metrics = self.step(state, batch)
      jax.block_until_ready(metrics)
      times.append(time.perf_counter() - began)
    return statistics.median(times)

  def compile_step(self, state: TrainState, batch: Mapping[str, Any]) -> jax.stages.Compiled:
    """The compiled train step for these shapes (for memory_analysis / cost_analysis)."""
    with self.context():
      return self._step.lower(state, partitioning.shard_batch(batch, self.batch_sharding)).compile()

  def lower_abstract_step(self) -> jax.stages.Lowered:
    """The train step lowered for abstract inputs (no arrays allocated): the state's shapes and
    shardings, and a batch of the example contract, {feature: [batch_size, seq_len]} on the mesh.
    Works for devices this process cannot run on (a TPU topology, for ahead-of-time compilation)."""
    with self.context():
      return self._step.lower(self.abstract_state, self.abstract_batch())

  def abstract_batch(self) -> dict[str, jax.ShapeDtypeStruct]:
    """{feature: [batch_size, seq_len]} of the example contract, sharded like a real batch."""
    return {name: jax.ShapeDtypeStruct((self.batch_size, self.seq_len), dtype,
                                       sharding=self.batch_sharding)
            for name, dtype in EXAMPLE_FEATURES.items()}


def _configured_trainer(model_config: DecoderConfig, **settings: Any) -> Trainer:
  """A Trainer with the optimizer, mesh and logical rules of the operative gin config."""
  return Trainer(model_config=model_config, optimizer_config=OptimizerConfig(),
                 mesh_config=MeshConfig(), rules=partitioning.logical_axis_rules(), **settings)


def train_setting(name: str) -> Any:
  """`train.<name>` as the operative gin config binds it (the default of `train` when unbound), with a
  configurable reference such as @DecoderConfig() evaluated."""
  try:
    value = gin.query_parameter(f"train.{name}")
  except ValueError:
    value = inspect.signature(train).parameters[name].default
  if isinstance(value, gin.config.ConfigurableReference):
    value = value.scoped_configurable_fn()
  if value is gin.REQUIRED:
    raise ValueError(f"the gin config does not bind train.{name}")
  return value


def trainer_from_gin(devices: Sequence[jax.Device] | None = None, **overrides: Any) -> Trainer:
  """The Trainer that `train()` would build from the operative gin config, over `devices`.

  Reads `train.model_config`, `train.batch_size`, `train.seq_len`, `train.z_loss` and
  `train.microbatches` (their defaults when unbound); `overrides` replace any of them (e.g.
  `model_config=dataclasses.replace(config, n_layers=1)`).
  """
  settings = {name: train_setting(name)
              for name in ("model_config", "batch_size", "seq_len", "z_loss", "microbatches")}
  settings.update(overrides)
  return _configured_trainer(settings.pop("model_config"), devices=devices, **settings)


def _validate(trainer: Trainer, params: Any, task_name: str, *, step: int, seed: int, layout: str,
              max_batches: int | None, use_cached: bool) -> dict[str, float]:
  """`eval/...` metrics on the validation windows of `task_name` (empty, with a warning, if none)."""
  windows = trajectory_batches(task_name, split="validation", global_batch_size=trainer.batch_size,
                               seq_len=trainer.seq_len, sequence_shards=trainer.mesh.shape["sequence"],
                               layout=layout, seed=seed, repeat=False, shuffle=False,
                               use_cached=use_cached)
  metrics = trainer.evaluate(params, itertools.islice(windows, max_batches))
  if metrics:
    log.info("step %d: validation loss %.4f", step, metrics["eval/loss"])
  else:
    log.warning("step %d: no validation windows (no scaffold record with split 'validation')", step)
  return metrics


def _pad_batch(batch: Mapping[str, Any], size: int) -> dict[str, Any]:
  """Pad a short final batch with all-padding rows (segment id 0, weight 0) up to `size` rows."""
  rows = next(iter(batch.values())).shape[0]
  return {k: np.pad(v, [(0, size - rows)] + [(0, 0)] * (v.ndim - 1)) for k, v in batch.items()}


def write_run_info(run_dir: epath.Path, model_config: DecoderConfig, vocabulary: vocab.Vocabulary,
                   seq_len: int, started_from: Mapping[str, Any] | None = None,
                   trajectory_format: Mapping[str, Any] | None = None) -> None:
  """The run's vocabulary files (copied into `vocab/`), model.json (what inference needs: the model,
  the vocabulary's path relative to the run directory and the path it was copied from, the sequence
  length the run trains at (what generation may use as its context), the trajectory format it learns
  ({"layout", "profile"}: what `xbook write` writes), and where the
  parameters started: None for random init, else xbook.train.warm_start.InitSource.describe()) and
  config.gin (the operative gin config), each written atomically."""
  copy = epath.Path(vocabulary.save(run_dir / "vocab"))
  info = {"model": dataclasses.asdict(model_config), "seq_len": seq_len, "vocab_path": f"vocab/{copy.name}",
          "vocab_source": vocabulary.path, "trajectory": dict(trajectory_format or {}),
          "started_from": dict(started_from) if started_from else None}
  for name, text in (("model.json", json.dumps(info, indent=2)), ("config.gin", gin.operative_config_str())):
    with atomic_open(run_dir / name) as f:
      f.write(text)


@gin.configurable(denylist=["run_dir"])
def train(run_dir: str, *, scaffold_files: Sequence[str] | str = gin.REQUIRED,
          vocab_path: str = gin.REQUIRED, model_config: DecoderConfig = gin.REQUIRED,
          steps: int = 100, batch_size: int = 8, seq_len: int = 512, seed: int = 0,
          checkpoint_every: int = 50, keep_checkpoints: int = 3, keep_every: int | None = None,
          log_every: int = 10, eval_every: int = 0, eval_batches: int | None = None,
          layout: str = "contiguous", microbatches: int = 1, z_loss: float = 0.0,
          profile_steps: Sequence[int] | None = None,
          loss_weights: Mapping[str, float] | None = None, trajectory_layout: str = "interleaved",
          repeat_weight: float = 0.0, view_rates: Mapping[str, float] | None = None,
          cache_dir: str | None = None, init_from: str | None = None,
          init_from_step: int | None = None,
          task_name: str = "xbook_windows") -> dict[str, float]:
  """Train (or resume) a run until `steps`; returns the last step's metrics.

  Args:
    run_dir: run directory (created if missing; resumed from its latest checkpoint if any).
    scaffold_files: scaffold JSONL file(s) or glob pattern(s); records of split "train" are used.
    vocab_path: the vocabulary (xbook.data.vocab.load_vocabulary): an xbook SentencePiece model from
      `xbook vocab train`, or a pretrained model's tokenizer.json, tekken.json or tokenizer.model, or a
      folder holding one (e.g. the folder `xbook weights import` wrote). Copied into the run directory.
    model_config: the decoder's shape (its vocab_size must cover the vocabulary).
    steps: total optimizer steps of the run (not steps of this invocation).
    batch_size: global batch, in windows of `seq_len` tokens.
    seq_len: tokens per window (a multiple of the `sequence` mesh axis).
    seed: seeds parameter init and data order.
    checkpoint_every: save every N steps (and always at the end).
    keep_checkpoints: how many recent checkpoints to keep.
    keep_every: also keep every checkpoint whose step is a multiple of this (None: only the recent).
    log_every: log a summary line every N steps (metrics.jsonl gets every step).
    eval_every: evaluate on the records of split "validation" every N steps and at the end (0: never).
    eval_batches: at most this many validation batches per evaluation (None: all of them).
    layout: order of the length axis, "contiguous" or "zigzag" (balances causal ring attention;
      seq_len must then be a multiple of twice the `sequence` axis).
    microbatches: accumulate gradients over this many microbatches of the global batch.
    z_loss: coefficient of the log(Z)^2 penalty on the softmax normaliser.
    profile_steps: (first, last) steps to record a profiler trace of, into <run_dir>/profile.
    loss_weights: {segment kind: weight}; defaults in xbook.data.trajectory.DEFAULT_LOSS_WEIGHTS.
    trajectory_layout: order of plans and text in a trajectory (xbook.data.trajectory.LAYOUTS).
    repeat_weight: factor on the loss weight of plans a window repeats from an earlier window
      (xbook.data.windows; 0: each plan is learned where it first appears).
    view_rates: None to train on the `windows` view; else {view: rate} of a seqio Mixture of the views
      (xbook.data.tasks.VIEWS: windows, full, stages), e.g. {'windows': 3, 'stages': 1}.
    cache_dir: read the windows from the offline cache `xbook data cache` wrote under this folder
      (built at this seq_len, every split that training and evaluation read), not build them online.
    init_from: warm start: a new run's parameters come from this folder (written by `xbook weights
      import`, or another xbook run), restored onto this run's shardings and parameter dtype, with a
      fresh optimizer at step 0 (xbook.train.warm_start). Ignored once the run has a checkpoint of
      its own: a resumed run never reads it again.
    init_from_step: the checkpoint step of an `init_from` run (default: its latest).
    task_name: seqio task (or mixture) name to register the scaffold files under.
  """
  run_path = epath.Path(run_dir)  # a local folder or gs://bucket/...
  run_path.mkdir(parents=True, exist_ok=True)
  trainer = _configured_trainer(model_config, batch_size=batch_size, seq_len=seq_len, z_loss=z_loss,
                                microbatches=microbatches)
  profiler = StepProfiler(run_path / "profile", profile_steps)
  log.info("mesh %s over %d devices; model of %.2fM parameters", dict(trainer.mesh.shape),
           trainer.mesh.size, model_config.num_params() / 1e6)
  flops_per_token = flops.training_flops_per_token(model_config, seq_len, causal=True)
  peak = flops.peak_flops_per_device()
  log.info("training FLOPs per token: %.3g with the causal mask, %.3g counting full attention; MFU %s",
           flops_per_token, flops.training_flops_per_token(model_config, seq_len, causal=False),
           f"against {peak:.3g} FLOP/s per device" if peak else "not reported (unknown device peak)")
  view_kwargs = dict(layout=trajectory_layout, loss_weights=loss_weights, repeat_weight=repeat_weight)
  if view_rates and cache_dir:
    raise ValueError("train.cache_dir caches the windows view only; unset train.view_rates")
  vocabulary = vocab.load_vocabulary(vocab_path)
  if vocabulary.size > model_config.vocab_size:
    raise ValueError(f"vocabulary {vocabulary.path} has {vocabulary.size} ids but model_config.vocab_size "
                     f"is {model_config.vocab_size}; set DecoderConfig.vocab_size >= {vocabulary.size}")
  if view_rates:
    task = tasks.register_mixture(task_name, scaffold_files, vocabulary, rates=view_rates, **view_kwargs)
  else:
    task = tasks.register_task(task_name, "windows", scaffold_files, vocabulary,
                               cached_length=seq_len if cache_dir else None, **view_kwargs)
  if cache_dir:
    seqio.add_global_cache_dirs([cache_dir])
    if task.cache_dir is None:
      raise FileNotFoundError(f"no completed cache of task {task_name!r} in {cache_dir}: build it with "
                              f"`xbook data cache --task {task_name} --seq_len {seq_len} --out {cache_dir}`")
    log.info("reading the examples of %s from its offline cache %s", task_name, task.cache_dir)
  checkpoints = RunCheckpoints(str(run_path), keep=keep_checkpoints, keep_every=keep_every)
  warm_start.check_resume(str(run_path), model_config, has_checkpoints=bool(checkpoints.all_steps()))
  restored = checkpoints.restore_latest(trainer.abstract_state.params, trainer.abstract_state.opt_state)
  if restored is None and init_from:
    state, started_from = _warm_start(trainer, init_from, init_from_step)
    start = consumed = 0
  elif restored is None:
    log.info("starting a new run in %s from random parameters (seed %d)", run_path, seed)
    state, started_from = trainer.init_state(seed), None
    start = consumed = 0
  else:
    start = int(restored["progress"]["step"])
    consumed = int(restored["progress"].get("batches_consumed", start))
    if restored["progress"].get("seed", seed) != seed:
      raise ValueError(f"{run_path} was trained with seed {restored['progress']['seed']}, not {seed}: "
                       "resuming with another seed would change the data order; use a new run_dir")
    started_from = restored["progress"].get("started_from")
    log.info("resuming %s from its checkpoint at step %d%s", run_path, start,
             f" (train.init_from={init_from!r} is not read again)" if init_from else "")
    state = TrainState(step=jnp.asarray(start, jnp.int32), params=restored["params"],
                       opt_state=restored["opt_state"])
  if jax.process_index() == 0:
    profile = paper_stages.configured_profile() if trajectory_layout == trajectory.PAPER_LAYOUT else None
    write_run_info(run_path, model_config, vocabulary, seq_len, started_from,
                   {"layout": trajectory_layout, "profile": profile})
  if start >= steps:
    checkpoints.close()
    return _finished(run_path, start, steps)

  batches = trajectory_batches(task_name, split="train", global_batch_size=batch_size,
                               seq_len=seq_len, sequence_shards=trainer.mesh.shape["sequence"],
                               layout=layout, seed=seed, start_batch=consumed,
                               use_cached=bool(cache_dir))
  writer = MetricsWriter(run_path, resume_step=start)
  metrics: dict[str, float] = {}
  progress = tqdm(range(start, steps), initial=start, total=steps, desc="train", unit="step",
                  disable=jax.process_index() != 0)

  with PreemptionGuard() as guard:
    try:
      for step in progress:
        try:
          batch = next(batches)
        except StopIteration:
          raise RuntimeError(f"no training windows: no scaffold record with split 'train' in "
                             f"{scaffold_files}") from None
        profiler.before(step + 1)
        began = time.perf_counter()
        state, step_metrics = trainer.step(state, batch)
        step_metrics = jax.device_get(step_metrics)
        profiler.after(step + 1)
        check_finite(step + 1, step_metrics)
        metrics = scalar_metrics(step_metrics)
        step_s = time.perf_counter() - began
        # Real tokens only: padding rows and the padded tail of short windows do no useful work.
        metrics.update(step_s=step_s, tokens_per_s=metrics["real_tokens"] / step_s,
                       padding_fraction=1.0 - metrics["real_tokens"] / (batch_size * seq_len))
        if peak:
          metrics["mfu"] = flops.mfu(metrics["tokens_per_s"], flops_per_token, trainer.mesh.size, peak)
        last = step + 1 == steps
        if eval_every and ((step + 1) % eval_every == 0 or last):
          metrics.update(_validate(trainer, state.params, task_name, step=step + 1, seed=seed,
                                   layout=layout, max_batches=eval_batches,
                                   use_cached=bool(cache_dir)))
        writer.write(step + 1, metrics)
        metrics["step"] = step + 1
        progress.set_postfix(loss=f"{metrics['loss']:.3f}")
        if (step + 1) % log_every == 0 or last:
          log.info("step %d/%d: loss %.4f, grad norm %.3f, lr %.2e, %.0f tokens/s", step + 1, steps,
                   metrics["loss"], metrics["grad_norm"], metrics["lr"], metrics["tokens_per_s"])
        if (step + 1) % checkpoint_every == 0 or last or guard.requested:
          checkpoints.save(step + 1, state.params, state.opt_state,
                           {"step": step + 1, "batches_consumed": step + 1, "seed": seed,
                            "started_from": started_from})
        if guard.requested:
          log.warning("stopped at step %d after SIGTERM; rerun the same command to resume", step + 1)
          break
    finally:
      profiler.stop()
      checkpoints.wait()
      checkpoints.close()
      writer.close()
  return metrics


def _warm_start(trainer: Trainer, init_from: str, init_from_step: int | None
                ) -> tuple[TrainState, dict[str, Any]]:
  """Step 0 of a new run with the parameters of `init_from` and a fresh optimizer state."""
  source = warm_start.find_source(init_from, init_from_step)
  allowed = warm_start.check_compatible(source, trainer.model_config)
  for name, (was, now) in sorted(allowed.items()):
    log.info("warm start: %s is %r in the source and %r in this run", name, was, now)
  log.info("starting a new run from the %s parameters of %s%s (optimizer state fresh, step 0)",
           source.kind, source.path, f" at step {source.step}" if source.step is not None else "")
  params = warm_start.restore_params(source, trainer.model_config, trainer.mesh, trainer.rules,
                                     trainer.abstract_state.params)
  return trainer.state_from_params(params), source.describe()


def _finished(run_path: epath.Path, start: int, steps: int) -> dict[str, float]:
  """The last metrics of a run that is already at (or past) `steps`: nothing to train."""
  records = [r for r in read_metrics(run_path) if r["step"] <= start] \
      if (run_path / "metrics.jsonl").exists() else []
  last = dict(records[-1]) if records else {"step": start}
  if start > steps:
    log.warning("%s is at step %d, past train.steps=%d: nothing to train (a run never goes back; use "
                "train.init_from_step to start a new run from one of its checkpoints)", run_path, start, steps)
  else:
    log.info("%s is already at step %d = train.steps: nothing to train (raise train.steps to go on)",
             run_path, start)
  return last


def scalar_metrics(step_metrics: Mapping[str, Any]) -> dict[str, float]:
  """Step metrics as floats, with the NLL of each segment kind present in the batch as `loss/<kind>`
  (the mean over its tokens, whatever its loss weight: the prompt's NLL shows even when untrained)."""
  metrics = {k: float(v) for k, v in step_metrics.items()
             if k not in ("kind_nll", "kind_count", "finite_grads")}
  for kind, total, count in zip(trajectory.SEGMENT_KINDS, step_metrics["kind_nll"],
                                step_metrics["kind_count"]):
    if count > 0:
      metrics[f"loss/{kind}"] = float(total / count)
  return metrics


def check_finite(step: int, step_metrics: Mapping[str, Any]) -> None:
  """Stop the run on a NaN or Inf loss or gradient, naming the step and the offending tensors.

  Raised before the step's checkpoint is written, so the last checkpoint on disk stays finite.
  """
  bad = [jax.tree_util.keystr(path) for path, ok in
         jax.tree_util.tree_leaves_with_path(step_metrics["finite_grads"]) if not ok]
  if bad or not np.isfinite(step_metrics["loss"]):
    raise FloatingPointError(
        f"step {step}: loss {float(step_metrics['loss'])}, non-finite gradients in "
        f"{', '.join(bad) or 'none'}; stopping without saving this step (the latest checkpoint is "
        f"the last finite state)")
