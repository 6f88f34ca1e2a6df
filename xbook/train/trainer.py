"""The training loop: mesh and shardings from config, jit-compiled steps, metrics, Orbax checkpoints.

`train()` is the gin entry point (`xbook train --gin_file=...`). A run directory holds
  config.gin        the operative gin config
  model.json        the DecoderConfig, the vocabulary (relative path) and where the parameters started
                    (the layout's owner, reader and writer: xbook.train.run_info.RunInfo)
  vocab/            a copy of the vocabulary's files, so that the run directory is self-contained
  metrics.jsonl     one record per step
  tensorboard/      TensorBoard events
  checkpoints/      Orbax checkpoints; a rerun with the same run_dir resumes from the latest
  input_counts/     the example count of each book this host reads, so that a resume skips them unbuilt
  data_history.jsonl  the data the run trains on (xbook.train.data_identity): a rerun on other data is
                    refused unless train.allow_data_change=True, which appends the change here

A session of `train()` has three parts, each its own function: `setup_data` (the run's DataSpec: the
vocabulary loaded and the scaffold records validated, once), `restore_or_init` (own checkpoint, else warm start, else random init) and `TrainLoop` (steps,
metrics read one step late, evaluation, checkpoints, and a stop that every host agrees on). On several
hosts every decision that ends in a collective is taken by all hosts together: when to stop after a
SIGTERM (xbook.train.preemption) and how many eval steps to run (xbook.train.eval_input).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import inspect
import itertools
import logging
import math
import statistics
import time
import warnings
from typing import Any, Iterable, Iterator, Mapping, Sequence

import flax.linen as nn
import flax.struct
import gin
import jax
import jax.numpy as jnp
import numpy as np
import optax
from etils import epath
from tqdm import tqdm

from xbook import paths
from xbook.gin_flags import configured
from xbook.data import features
from xbook.data import paper_stages, trajectory, vocab
from xbook.data.spec import DEFAULT_VIEW_RATES, DataSpec, TrajectoryFormat
from xbook.model import Decoder, DecoderConfig, LoraConfig
from xbook.model import lora as lora_lib
from xbook.train import adapters, data_identity, flops, partitioning, run_settings, warm_start
from xbook.train.checkpoints import RunCheckpoints
from xbook.train.eval_input import ValidationSet
from xbook.train.input_pipeline import trajectory_batches
from xbook.train.loss import nll_by_kind, weighted_cross_entropy
from xbook.train.mesh import MeshConfig, make_mesh
from xbook.train.metrics import MetricsWriter, read_metrics
from xbook.train.optimizer import OptimizerConfig, learning_rate_schedule, make_optimizer
from xbook.train.preemption import PreemptionGuard, StopVote
from xbook.train.profiling import StepProfiler
from xbook.train.run_info import RunInfo, RunPaths

log = logging.getLogger(__name__)

gin.external_configurable(DecoderConfig, module="xbook.model")
gin.external_configurable(LoraConfig, module="xbook.model")



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
  seed: int = 0  # of LoRA dropout's masks (with the step)

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
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state=self.tx.init(self.split(params)[0]))

  def _state_from_params(self, params: Any) -> TrainState:
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state=self.tx.init(self.split(params)[0]))

  def split(self, params: Any) -> tuple[Any, Any]:
    """(trainable, frozen) parameters: with LoRA the adapters and the base (xbook.model.lora), else all
    and nothing. Gradients and the optimizer state exist for the trainable part only."""
    return lora_lib.split_params(params) if self.model_config.lora is not None else (params, {})

  def merge(self, trainable: Any, frozen: Any) -> Any:
    return lora_lib.merge_params(trainable, frozen) if self.model_config.lora is not None else trainable

  def init_trainable(self, seed: int) -> Any:
    """Fresh trainable parameters from `seed` on their shardings (LoRA: the adapters, B at zero); the
    frozen part is not computed."""
    shardings = self.split(self.state_shardings.params)[0]
    with self.context():
      return jax.jit(lambda rng: self.split(nn.unbox(self._init_boxed(rng).params))[0],
                     out_shardings=shardings)(jax.random.key(seed))

  def _loss_sums(self, params: Any, batch: Mapping[str, jax.Array], dropout_rng: jax.Array | None = None
                 ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The batch's objective summed over weighted tokens (its gradient is the sum of token gradients),
    with the weight sum, the weighted NLL sum (the objective without the z-loss term), the number of
    real (non-padding) tokens, the NLL sums and token counts of each segment kind, and the weighted NLL
    sums and weight sums of each kind (summed over kinds: `nll_sum` and `weight_sum`). `dropout_rng`
    turns LoRA dropout on (training steps)."""
    rngs = {} if dropout_rng is None else {"dropout": dropout_rng}
    logits = self.model.apply({"params": params}, batch["decoder_input_tokens"],
                              batch["decoder_segment_ids"], batch["decoder_positions"], rngs=rngs)
    loss, aux = weighted_cross_entropy(logits, batch["decoder_target_tokens"],
                                       batch["decoder_loss_weights"], self.z_loss)
    kinds, n_kinds = batch["decoder_segment_kinds"], len(trajectory.SEGMENT_KINDS)
    weights = batch["decoder_loss_weights"].astype(jnp.float32)
    kind_nll, kind_count = nll_by_kind(aux["nll"], kinds, batch["decoder_segment_ids"] > 0, n_kinds)
    kind_weighted_nll, kind_weight = nll_by_kind(aux["nll"], kinds, weights, n_kinds)
    objective_sum = loss * jnp.maximum(aux["weight_sum"], 1e-8)
    return objective_sum, {"weight_sum": aux["weight_sum"], "nll_sum": jnp.sum(aux["nll"] * weights),
                           "real_tokens": jnp.sum(batch["decoder_segment_ids"] > 0, dtype=jnp.float32),
                           "kind_nll": kind_nll, "kind_count": kind_count,
                           "kind_weighted_nll": kind_weighted_nll, "kind_weight": kind_weight}

  def _summed_grads(self, params: Any, frozen: Any, batch: Mapping[str, jax.Array], rng: jax.Array | None):
    """Gradient (with respect to the trainable `params` only; `frozen` is the rest) of the summed
    objective over the batch, accumulated over `microbatches` in float32.

    Microbatch j takes rows j, j + k, j + 2k, ... so that every device keeps its share of each.
    """
    grad_fn = jax.value_and_grad(lambda trainable, batch, rng: self._loss_sums(
        self.merge(trainable, frozen), batch, rng), has_aux=True)
    if self.microbatches == 1:
      return grad_fn(params, batch, rng)
    k = self.microbatches

    def split(x):
      return jnp.swapaxes(x.reshape((x.shape[0] // k, k) + x.shape[1:]), 0, 1)

    def accumulate(carry, microbatch_and_index):
      microbatch, index = microbatch_and_index
      microbatch = {name: jax.lax.with_sharding_constraint(x, self.batch_sharding)
                    for name, x in microbatch.items()}
      micro_rng = None if rng is None else jax.random.fold_in(rng, index)
      (objective, aux), grads = grad_fn(params, microbatch, micro_rng)
      return jax.tree.map(jnp.add, carry, ((objective, aux), grads)), None

    split_batch = {name: split(x) for name, x in batch.items()}
    first = jax.tree.map(lambda x: x[0], split_batch)
    zeros = jax.tree.map(lambda x: jnp.zeros(x.shape, jnp.float32), jax.eval_shape(grad_fn, params, first, rng))
    total, _ = jax.lax.scan(accumulate, zeros, (split_batch, jnp.arange(k)))
    return total

  def _train_step(self, state: TrainState, batch: Mapping[str, jax.Array]):
    trainable, frozen = self.split(state.params)
    lora = self.model_config.lora
    rng = jax.random.fold_in(jax.random.key(self.seed), state.step) if lora and lora.dropout else None
    (objective_sum, aux), summed_grads = self._summed_grads(trainable, frozen, batch, rng)
    denominator = jnp.maximum(aux["weight_sum"], 1e-8)
    extra = {"objective": objective_sum / denominator} if self.z_loss else {}
    grads = jax.tree.map(lambda g, p: (g / denominator).astype(p.dtype), summed_grads, trainable)
    updates, opt_state = self.tx.update(grads, state.opt_state, trainable)
    params = self.merge(optax.apply_updates(trainable, updates), frozen)
    extra.update(trainable_params=float(lora_lib.count(trainable)), frozen_params=float(lora_lib.count(frozen)))
    metrics = {"loss": aux["nll_sum"] / denominator, "grad_norm": optax.tree.norm(grads),
               "lr": self.lr_schedule(state.step), "weighted_tokens": aux["weight_sum"],
               "real_tokens": aux["real_tokens"],
               "kind_nll": aux["kind_nll"], "kind_count": aux["kind_count"],
               "finite_grads": jax.tree.map(lambda g: jnp.all(jnp.isfinite(g)), grads), **extra}
    return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

  def _eval_step(self, params: Any, batch: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
    _, aux = self._loss_sums(params, batch)
    aux["windows"] = jnp.sum(jnp.any(batch["decoder_segment_ids"] > 0, axis=1), dtype=jnp.float32)
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

  def evaluate(self, params: Any, batches: Iterable[Mapping[str, Any]], num_batches: int | None = None
               ) -> dict[str, float]:
    """Weighted loss over all `batches`, the mean NLL of each segment kind and the number of windows
    (rows with a real token), as `eval/...` metrics; {} when no batch was evaluated.

    `batches` are this host's rows ([batch_size / process_count, seq_len] per feature; a short one is
    padded with all-padding rows). With `num_batches`, exactly that many eval steps run, all-padding
    batches following once `batches` run out: on several hosts every host must run the same number of
    collective steps (xbook.train.eval_input.ValidationSet agrees on it); padding adds to no sum.
    """
    totals = self.eval_sums(params, batches, num_batches)
    return _eval_metrics(totals) if totals else {}

  def eval_sums(self, params: Any, batches: Iterable[Mapping[str, Any]], num_batches: int | None = None
                ) -> dict[str, np.ndarray]:
    """The eval step's sums (`_loss_sums`' aux and `windows`) over all `batches`, on the host in float64;
    {} when no batch was evaluated. `params` on `state_shardings.params`; `batches` as in `evaluate`.
    Held-out perplexity (xbook.evals.perplexity) scores with this step on the run's mesh."""
    rows = self.batch_size // jax.process_count()
    if num_batches is not None:
      batches = itertools.islice(itertools.chain(batches, itertools.repeat(None)), num_batches)
    totals: dict[str, Any] = {}
    in_flight: collections.deque = collections.deque()
    with self.context():
      for batch in batches:
        batch = features.pad_batch(batch, rows, self.seq_len)
        in_flight.append(self._eval(params, partitioning.shard_batch(batch, self.batch_sharding)))
        if len(in_flight) > 2:  # a few steps in flight, not the whole validation set on the devices
          totals = _add(totals, jax.device_get(in_flight.popleft()))
      for out in in_flight:
        totals = _add(totals, jax.device_get(out))
    return totals

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
            for name, dtype in features.EXAMPLE_FEATURES.items()}


# Where a run keeps its books' example counts (xbook.train.input_pipeline.ExampleCounts), so that a resumed
# run finds its input position without building the books it has already read.
INPUT_COUNTS_DIR = "input_counts"

# train() arguments renamed in this release, old name -> new name. The old gin names still work for one
# release: their value is used, with a warning that names the new one.
RENAMED_ARGUMENTS = {"layout": "length_layout", "trajectory_layout": "plan_order"}


def _renamed_argument(old_name: str, old_value: Any, value: Any) -> Any:
  """`value`, or the value bound under the argument's old name (with a deprecation warning)."""
  if old_value is None:
    return value
  new_name = RENAMED_ARGUMENTS[old_name]
  default = inspect.signature(train).parameters[new_name].default
  if value != default and value != old_value:
    raise ValueError(f"train.{old_name} ({old_value!r}) and train.{new_name} ({value!r}) are both bound: "
                     f"train.{old_name} is the old name of train.{new_name}; keep train.{new_name} only")
  message = (f"train.{old_name} is deprecated and will stop working in the next release: bind "
             f"train.{new_name} = {old_value!r} instead")
  log.warning(message)
  warnings.warn(message, DeprecationWarning, stacklevel=3)
  return old_value


def train_setting(name: str) -> Any:
  """`train.<name>` as the operative gin config binds it (the default of `train` when unbound), with a
  configurable reference such as @DecoderConfig() evaluated; for a renamed argument, a value bound under
  its old name (RENAMED_ARGUMENTS) counts, with a warning."""
  old_names = [old for old, new in RENAMED_ARGUMENTS.items() if new == name]
  if old_names:
    return _renamed_argument(old_names[0], _bound_setting(old_names[0]), _bound_setting(name))
  return _bound_setting(name)


def _bound_setting(name: str) -> Any:
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
  """The Trainer that `train()` would build from the operative gin config, over `devices` (for entry
  points: `xbook compile`, the benchmarks).

  Reads `train.model_config`, `train.batch_size`, `train.seq_len`, `train.z_loss` and
  `train.microbatches` (their defaults when unbound), OptimizerConfig, MeshConfig and the logical axis
  rules; `overrides` replace any of the train settings (e.g. `model_config=dataclasses.replace(config,
  n_layers=1)`).
  """
  settings = {name: train_setting(name)
              for name in ("model_config", "batch_size", "seq_len", "z_loss", "microbatches")}
  settings.update(overrides)
  return Trainer(optimizer_config=configured(OptimizerConfig), mesh_config=configured(MeshConfig),
                 rules=partitioning.logical_axis_rules(), devices=devices, **settings)


def _add(totals: Mapping[str, Any], out: Mapping[str, Any]) -> dict[str, Any]:
  return {k: totals.get(k, 0) + np.asarray(v, np.float64) for k, v in out.items()}


def _eval_metrics(totals: Mapping[str, Any]) -> dict[str, float]:
  """`eval/...` metrics from the summed outputs of the eval steps."""
  metrics = {"eval/loss": float(totals["nll_sum"] / max(totals["weight_sum"], 1e-8))}
  for kind, total, count in zip(trajectory.SEGMENT_KINDS, totals["kind_nll"], totals["kind_count"]):
    if count > 0:
      metrics[f"eval/loss/{kind}"] = float(total / count)
  # Per-token perplexity beside each loss (TensorBoard shows both; `xbook eval` adds per word and byte).
  metrics.update({name.replace("eval/loss", "eval/perplexity"): math.exp(min(value, 80.0))
                  for name, value in list(metrics.items())})
  metrics["eval/windows"] = float(totals["windows"])
  return metrics


@gin.configurable(denylist=["run_dir"])
def train(run_dir: str, *, scaffold_files: Sequence[str] | str = gin.REQUIRED,
          vocab_path: str = gin.REQUIRED, model_config: DecoderConfig = gin.REQUIRED,
          steps: int = 100, batch_size: int = 8, seq_len: int = 512, seed: int = 0,
          checkpoint_every: int = 50, keep_checkpoints: int = 3, keep_every: int | None = None,
          log_every: int = 10, eval_every: int = 0, eval_batches: int | None = None,
          length_layout: str = "contiguous", microbatches: int = 1, z_loss: float = 0.0,
          profile_steps: Sequence[int] | None = None,
          loss_weights: Mapping[str, float] | None = None, plan_order: str = "interleaved",
          repeat_weight: float = 0.0, view_rates: Mapping[str, float] | None = None,
          cache_dir: str | None = None, init_from: str | None = None,
          init_from_step: int | None = None,
          task_name: str = "xbook_windows", optimizer_config: OptimizerConfig | None = None,
          mesh_config: MeshConfig | None = None, allow_data_change: bool = False,
          layout: str | None = None, trajectory_layout: str | None = None) -> dict[str, float]:
  """Train (or resume) a run until `steps`; returns the last step's metrics.

  SIGTERM (on any host) saves a checkpoint at a step all hosts agree on and returns early; rerunning the
  same command resumes there.

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
    eval_batches: at most this many validation batches per host and evaluation (None: all of them;
      the batches are read once and replayed, xbook.train.eval_input).
    length_layout: order of the length axis, "contiguous" or "zigzag" (balances causal ring attention;
      seq_len must then be a multiple of twice the `sequence` axis).
    microbatches: accumulate gradients over this many microbatches of the global batch.
    z_loss: coefficient of the log(Z)^2 penalty on the softmax normaliser.
    profile_steps: (first, last) steps to record a profiler trace of, into <run_dir>/profile.
    loss_weights: {segment kind: weight}; defaults in xbook.data.trajectory.DEFAULT_LOSS_WEIGHTS.
    plan_order: order of plans and text in a trajectory (xbook.data.trajectory.ALL_PLAN_ORDERS:
      interleaved, plans_first, paper_stages).
    repeat_weight: factor on the loss weight of plans a window repeats from an earlier window
      (xbook.data.windows; 0: each plan is learned where it first appears).
    view_rates: None to train on the `windows` view; else {view: rate} of a mixture of the views
      (xbook.data.spec.VIEWS: windows, full, stages), e.g. {'windows': 3, 'stages': 1}.
    cache_dir: read the windows from the offline cache `xbook data cache` wrote under this folder
      (built at this seq_len, every split that training and evaluation read), not build them online.
    init_from: warm start: a new run's parameters come from this folder (written by `xbook weights
      import`, or another xbook run), restored onto this run's shardings and parameter dtype, with a
      fresh optimizer at step 0 (xbook.train.warm_start). Ignored once the run has a checkpoint of
      its own: a resumed run never reads it again.
    init_from_step: the checkpoint step of an `init_from` run (default: its latest).
    task_name: the name of the offline cache's task (its folder under `cache_dir`; xbook.data.tasks).
    optimizer_config: the optimizer (None: OptimizerConfig with its gin bindings).
    mesh_config: the mesh (None: MeshConfig with its gin bindings).
    allow_data_change: resume a run whose data (vocabulary, scaffold files, plan order, profile, seq_len,
      loss weights) differs from what its checkpoints were trained on, on purpose; the change is
      appended to <run_dir>/data_history.jsonl (xbook.train.data_identity). Without it such a rerun is
      refused before anything is written.
    layout, trajectory_layout: deprecated: the old names of `length_layout` and `plan_order`
      (RENAMED_ARGUMENTS), still read, with a warning, for one release.
  """
  # Configuration enters here (gin's bindings, or the caller's arguments) and goes down as arguments.
  # Relative paths (the README's runs/demo, a gin BASE) are made absolute once, here (Orbax needs them so).
  run_dir, init_from, cache_dir = paths.absolute(run_dir), paths.absolute(init_from), paths.absolute(cache_dir)
  vocab_path, scaffold_files = paths.absolute(vocab_path), paths.absolute_all(scaffold_files)
  length_layout = _renamed_argument("layout", layout, length_layout)
  plan_order = _renamed_argument("trajectory_layout", trajectory_layout, plan_order)
  trajectory_format = TrajectoryFormat(plan_order, paper_stages.configured_profile())
  optimizer_config = optimizer_config or configured(OptimizerConfig)
  run_settings.check_train_settings(  # before anything is built or written
      dict(steps=steps, batch_size=batch_size, seq_len=seq_len, checkpoint_every=checkpoint_every,
           keep_checkpoints=keep_checkpoints, keep_every=keep_every, log_every=log_every, eval_every=eval_every,
           eval_batches=eval_batches, microbatches=microbatches, z_loss=z_loss, repeat_weight=repeat_weight,
           init_from_step=init_from_step), optimizer_config, loss_weights)
  trainer = Trainer(model_config=model_config, optimizer_config=optimizer_config or configured(OptimizerConfig),
                    mesh_config=mesh_config or configured(MeshConfig), rules=partitioning.logical_axis_rules(),
                    batch_size=batch_size, seq_len=seq_len, z_loss=z_loss, microbatches=microbatches, seed=seed)
  run_path = epath.Path(run_dir)  # a local folder or gs://bucket/...
  profiler = StepProfiler(run_path / "profile", profile_steps)
  log.info("mesh %s over %d devices; model of %.2fM parameters", dict(trainer.mesh.shape),
           trainer.mesh.size, model_config.num_params() / 1e6)
  with PreemptionGuard(trainer.mesh) as guard:  # from the start: a notice during setup is kept too
    data = setup_data(scaffold_files, vocab_path, model_config, seq_len=seq_len, trajectory_format=trajectory_format,
                      loss_weights=loss_weights, repeat_weight=repeat_weight, view_rates=view_rates,
                      cache_dir=cache_dir, cache_name=task_name)
    data_change = data_identity.check(run_path, data_identity.identity(data),
                                      has_checkpoints=bool(RunPaths(run_path).checkpoint_steps()),
                                      allow_change=allow_data_change)  # refused here: nothing written yet
    run_path.mkdir(parents=True, exist_ok=True)  # only once the data is found: a mistake leaves no folder
    checkpoints = RunCheckpoints(str(run_path), keep=keep_checkpoints, keep_every=keep_every)
    try:
      start = restore_or_init(trainer, checkpoints, run_path, seed=seed, init_from=init_from,
                              init_from_step=init_from_step)
      if jax.process_index() == 0:
        if data_change is not None:
          data_identity.append(run_path, data_change, start.step)
        RunInfo.for_training(run_path, model_config, data, started_from=start.started_from).write(
            gin.operative_config_str())
      if start.step >= steps:
        return _finished(run_path, start.step, steps)
      read = dict(sequence_shards=trainer.mesh.shape["sequence"], length_layout=length_layout, seed=seed)
      batches = trajectory_batches(data, split="train", global_batch_size=batch_size,
                                   start_batch=start.batches_consumed,
                                   count_cache=str(run_path / INPUT_COUNTS_DIR), **read)
      validation = ValidationSet.of_spec(data, global_batch_size=batch_size, max_batches=eval_batches,
                                         **read) if eval_every else None
      loop = TrainLoop(trainer, LoopPlan(steps, checkpoint_every, log_every, eval_every),
                       checkpoints=checkpoints, guard=guard, validation=validation, profiler=profiler,
                       writer=MetricsWriter(run_path, resume_step=start.step),
                       saved_progress={"seed": seed, "started_from": start.started_from})
      return loop.run(start, batches)
    finally:
      checkpoints.wait()
      checkpoints.close()


def setup_data(scaffold_files: Sequence[str] | str, vocab_path: str, model_config: DecoderConfig, *, seq_len: int,
               trajectory_format: TrajectoryFormat, loss_weights: Mapping[str, float] | None, repeat_weight: float,
               view_rates: Mapping[str, float] | None, cache_dir: str | None, cache_name: str) -> DataSpec:
  """The run's DataSpec: the vocabulary loaded (and checked to fit the model) and the scaffold records
  validated, once, here. Arguments as train()'s (`view_rates` None: the windows view alone)."""
  vocabulary = vocab.load_vocabulary(vocab_path)
  if vocabulary.size > model_config.vocab_size:
    raise ValueError(f"vocabulary {vocabulary.path} has {vocabulary.size} ids but model_config.vocab_size "
                     f"is {model_config.vocab_size}; set DecoderConfig.vocab_size >= {vocabulary.size}")
  return DataSpec.build(scaffold_files, vocabulary, seq_len, trajectory_format=trajectory_format,
                        loss_weights=loss_weights, repeat_weight=repeat_weight,
                        view_rates=view_rates or DEFAULT_VIEW_RATES, cache_dir=cache_dir, cache_name=cache_name)


@dataclasses.dataclass(frozen=True)
class Start:
  """Where a session starts: its state and step, the input batches the run has consumed, and where its
  parameters started (model.json's `started_from`: None for random init)."""

  state: TrainState
  step: int
  batches_consumed: int
  started_from: Mapping[str, Any] | None


def restore_or_init(trainer: Trainer, checkpoints: RunCheckpoints, run_path: epath.Path, *, seed: int,
                    init_from: str | None = None, init_from_step: int | None = None) -> Start:
  """The state a session starts from: the first that applies of, in this order (big_vision's),

  1. the run's own latest readable checkpoint: an exact resume (`init_from` is never read again);
  2. a warm start from `init_from` (xbook.train.warm_start): its parameters on this run's shardings,
     a fresh optimizer state, step 0;
  3. random parameters from `seed`, step 0.

  A run directory whose checkpoints belong to another model is refused first, before any checkpoint is
  read, moved aside or written (warm_start.check_resume).

  Raises:
    ValueError: another model's checkpoints, or a checkpoint trained with another seed.
  """
  warm_start.check_resume(str(run_path), trainer.model_config, has_checkpoints=bool(checkpoints.all_steps()))
  if trainer.model_config.lora is not None:  # adapters on a frozen base: the same order (xbook.train.adapters)
    start = adapters.restore_or_init(trainer, checkpoints, run_path, seed=seed, init_from=init_from,
                                     init_from_step=init_from_step)
    return Start(TrainState(step=jnp.asarray(start.step, jnp.int32), params=start.params,
                            opt_state=start.opt_state), start.step, start.batches_consumed, start.started_from)
  restored = checkpoints.restore_latest(trainer.abstract_state.params, trainer.abstract_state.opt_state)
  if restored is not None:
    progress = restored["progress"]
    step = int(progress["step"])
    if progress.get("seed", seed) != seed:
      raise ValueError(f"{run_path} was trained with seed {progress['seed']}, not {seed}: resuming with "
                       "another seed would change the data order; use a new run_dir")
    log.info("resuming %s from its checkpoint at step %d%s", run_path, step,
             f" (train.init_from={init_from!r} is not read again)" if init_from else "")
    state = TrainState(step=jnp.asarray(step, jnp.int32), params=restored["params"],
                       opt_state=restored["opt_state"])
    return Start(state, step, int(progress.get("batches_consumed", step)), progress.get("started_from"))
  if init_from:
    state, started_from = _warm_start(trainer, init_from, init_from_step)
    return Start(state, 0, 0, started_from)
  log.info("starting a new run in %s from random parameters (seed %d)", run_path, seed)
  return Start(trainer.init_state(seed), 0, 0, None)


@dataclasses.dataclass(frozen=True)
class LoopPlan:
  """Which steps the loop trains to, saves, logs and evaluates (train()'s arguments of these names)."""

  steps: int
  checkpoint_every: int
  log_every: int = 10
  eval_every: int = 0

  def saves(self, step: int) -> bool:
    return step % self.checkpoint_every == 0 or step == self.steps

  def evaluates(self, step: int) -> bool:
    return bool(self.eval_every) and (step % self.eval_every == 0 or step == self.steps)

  def logs(self, step: int) -> bool:
    return step % self.log_every == 0 or step == self.steps


@dataclasses.dataclass
class _InFlight:
  """A dispatched train step whose metrics, and the hosts' stop vote after it, are not read yet."""

  step: int
  metrics: Any
  vote: StopVote
  dispatched: float


class TrainLoop:
  """The steps of a session: dispatch, metrics, evaluation, checkpoints, and an agreed stop.

  Metrics one step late: step n's metrics are read after step n+1 is dispatched, so that the host
  queues the next step while the devices run this one (reading them at once waits for the devices at
  every step). A step that evaluates, saves or stops is a boundary: its state is needed before the next
  step consumes it (the step donates it), so its metrics are read at once, and read first: check_finite
  stops the run before a non-finite state is evaluated or saved.

  Preemption: the hosts' stop vote after step n (PreemptionGuard.vote) is read with step n's metrics.
  Every host reads the same vote at the same point, so all stop after the same step (n+1, already
  dispatched; or n itself at a boundary), save it, and return normally.

  Evaluation: every host runs `validation.steps` eval steps (xbook.train.eval_input).
  """

  def __init__(self, trainer: Trainer, plan: LoopPlan, *, checkpoints: RunCheckpoints,
               writer: MetricsWriter, guard: PreemptionGuard, profiler: StepProfiler,
               validation: ValidationSet | None, saved_progress: Mapping[str, Any]) -> None:
    self.trainer, self.plan, self.checkpoints, self.writer = trainer, plan, checkpoints, writer
    self.guard, self.profiler, self.validation = guard, profiler, validation
    self.saved_progress = dict(saved_progress)
    self.flops_per_token, self.peak = _log_flops(trainer)
    self._last_ready = 0.0
    self._progress = tqdm(total=plan.steps, desc="train", unit="step", disable=jax.process_index() != 0)

  def run(self, start: Start, batches: Iterator[Mapping[str, Any]]) -> dict[str, float]:
    """Train from `start` to plan.steps (or to the agreed stop); the last step's metrics."""
    state, in_flight, metrics = start.state, None, {}
    self._progress.update(start.step)
    self._last_ready = time.perf_counter()
    try:
      for step in range(start.step + 1, self.plan.steps + 1):
        batch = _next_batch(batches)
        self.profiler.before(step)
        dispatched = time.perf_counter()
        state, step_metrics = self.trainer.step(state, batch)
        current, stop = _InFlight(step, step_metrics, self.guard.vote(), dispatched), False
        if in_flight is not None:  # the previous step, read while this one runs
          metrics, stop = self._read(in_flight)  # stop: the hosts voted to stop after this step
          metrics = self._write(in_flight.step, metrics)
        in_flight = current
        if stop or self.plan.saves(step) or self.plan.evaluates(step):  # a boundary: read it now
          metrics, stop_here = self._read(in_flight)
          stop, in_flight = stop or stop_here, None
          if self.plan.evaluates(step):
            metrics.update(self._evaluate(state.params, step))
          metrics = self._write(step, metrics)
          if stop or self.plan.saves(step):
            self._save(step, state)
          if stop:
            log.warning("stopped at step %d after SIGTERM%s; rerun the same command to resume", step,
                        "" if self.guard.requested else " reached another host")
            break
    finally:
      self.profiler.stop()
      self.writer.close()
      self._progress.close()
    return metrics

  def _read(self, in_flight: _InFlight) -> tuple[dict[str, float], bool]:
    """Wait for a dispatched step: its metrics (checked finite) and whether the hosts voted to stop."""
    step_metrics = jax.device_get(in_flight.metrics)
    ready = time.perf_counter()
    self.profiler.after(in_flight.step)
    check_finite(in_flight.step, step_metrics)
    metrics = scalar_metrics(step_metrics)
    # A step's time: from the previous step's result to its own, or from its dispatch when that came
    # later (after a boundary, or waiting for input, which is not the step's). Real tokens only:
    # padding rows and the padded tail of short windows do no useful work.
    step_s = ready - max(in_flight.dispatched, self._last_ready)
    self._last_ready = ready
    real_tokens = metrics["real_tokens"]
    metrics.update(step_s=step_s, tokens_per_s=real_tokens / step_s,
                   padding_fraction=1.0 - real_tokens / (self.trainer.batch_size * self.trainer.seq_len))
    if self.peak:
      metrics["mfu"] = flops.mfu(metrics["tokens_per_s"], self.flops_per_token, self.trainer.mesh.size,
                                 self.peak)
    return metrics, in_flight.vote.agreed()

  def _write(self, step: int, metrics: dict[str, float]) -> dict[str, float]:
    """Record a step's metrics (metrics.jsonl, TensorBoard, progress bar, log); them with "step"."""
    self.writer.write(step, metrics)
    self._progress.update(step - self._progress.n)
    self._progress.set_postfix(loss=f"{metrics['loss']:.3f}")
    if self.plan.logs(step):
      log.info("step %d/%d: loss %.4f, grad norm %.3f, lr %.2e, %.0f tokens/s", step, self.plan.steps,
               metrics["loss"], metrics["grad_norm"], metrics["lr"], metrics["tokens_per_s"])
    return {**metrics, "step": step}

  def _evaluate(self, params: Any, step: int) -> dict[str, float]:
    """`eval/...` metrics of the validation windows (empty, with a warning, if there are none)."""
    batches = self.validation.batches()  # the first call agrees on validation.steps
    metrics = self.trainer.evaluate(params, batches, num_batches=self.validation.steps)
    if metrics:
      log.info("step %d: validation loss %.4f over %d windows", step, metrics["eval/loss"],
               metrics["eval/windows"])
    else:
      log.warning("step %d: no validation windows (no scaffold record with split 'validation')", step)
    return metrics

  def _save(self, step: int, state: TrainState) -> None:
    self.checkpoints.save(step, adapters.saved_params(self.trainer.model_config, state.params), state.opt_state,
                          {"step": step, "batches_consumed": step, **self.saved_progress})


def _next_batch(batches: Iterator[Mapping[str, Any]]) -> Mapping[str, Any]:
  try:
    return next(batches)
  except StopIteration:
    raise RuntimeError("no training windows: no scaffold record with split 'train' in train.scaffold_files"
                       ) from None


def _log_flops(trainer: Trainer) -> tuple[float, float | None]:
  """The training FLOPs per token (with the causal mask) and the device's peak FLOP/s (None: unknown)."""
  per_token = flops.training_flops_per_token(trainer.model_config, trainer.seq_len, causal=True)
  peak = flops.peak_flops_per_device()
  log.info("training FLOPs per token: %.3g with the causal mask, %.3g counting full attention; MFU %s",
           per_token, flops.training_flops_per_token(trainer.model_config, trainer.seq_len, causal=False),
           f"against {peak:.3g} FLOP/s per device" if peak else "not reported (unknown device peak)")
  return per_token, peak


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
