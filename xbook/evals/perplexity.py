from __future__ import annotations

import dataclasses
import logging
import math
import re
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import jax
import numpy as np
from jax.sharding import Mesh
from tqdm import tqdm

from xbook.books import load_book
from xbook.data import pieces, trajectory
from xbook.data.features import pad_batch
from xbook.data.records import read_split
from xbook.data.spec import DataSpec, TrajectoryFormat
from xbook.data.vocab import Vocabulary
from xbook.infer.generate import load_run
from xbook.model import DecoderConfig, abstract_params
from xbook.train import partitioning
from xbook.train.input_pipeline import trajectory_batches
from xbook.train.mesh import MESH_AXES, MeshConfig, make_mesh
from xbook.train.optimizer import OptimizerConfig
from xbook.train.run_info import RunInfo
from xbook.train.trainer import Trainer

log = logging.getLogger(__name__)
N_KINDS = len(trajectory.SEGMENT_KINDS)


@dataclasses.dataclass
class Scorer:
  """A run's parameters on a mesh and the trainer's eval step over it: what scores held-out windows.

  `trainer` holds the mesh, the batch size (windows per step) and the window length; `params` are on
  `trainer.state_shardings.params`.
  """

  trainer: Trainer
  params: Any
  vocabulary: Vocabulary
  step: int

  @classmethod
  def of_run(cls, run: RunInfo, *, step: int | None, batch_size: int, seq_len: int,
             mesh_config: MeshConfig | None = None,
             rules: Sequence[tuple[str, Any]] = partitioning.DEFAULT_RULES) -> "Scorer":
    """The run's parameters (xbook.infer.generate.load_run) restored straight onto the mesh of
    `mesh_config` over every device, sharded by `rules`; None: one device.

    Raises:
      ValueError: when the mesh does not split the batch, the windows or the run's parameters (naming
        the flag to change), before anything is loaded.
    """
    devices = jax.devices() if mesh_config is not None else jax.devices()[:1]
    mesh_config = mesh_config or MeshConfig()
    check_fits(mesh_config, len(devices), batch_size=batch_size, seq_len=seq_len)
    mesh = make_mesh(mesh_config, devices)  # the Trainer's: the same devices and config
    check_params_split(run.model, mesh, rules)
    loaded = load_run(run, step, mesh=mesh, rules=rules)
    trainer = Trainer(model_config=loaded.model.config, optimizer_config=OptimizerConfig(),
                      mesh_config=mesh_config, batch_size=batch_size, seq_len=seq_len, rules=rules, devices=devices)
    params = jax.device_put(loaded.params, trainer.state_shardings.params)  # the same shardings: no copy
    return cls(trainer=trainer, params=params, vocabulary=loaded.vocabulary, step=loaded.step)

  @property
  def mesh_shape(self) -> dict[str, int]:
    return dict(self.trainer.mesh.shape)


def check_fits(mesh_config: MeshConfig, n_devices: int, *, batch_size: int, seq_len: int) -> None:
  """Raise ValueError unless the mesh of `mesh_config` over `n_devices` devices fits them and splits
  `batch_size` windows (over data * fsdp) and `seq_len` tokens (over sequence)."""
  if jax.process_count() > 1:
    raise ValueError("held-out perplexity runs on one host; run `xbook eval --run_dir` on one host of the slice")
  shape = dict(zip(MESH_AXES, mesh_config.shape(n_devices)))
  rows = shape["data"] * shape["fsdp"]
  if batch_size % rows:
    raise ValueError(f"--batch_size {batch_size}: the mesh {shape} splits each batch over data*fsdp = {rows} "
                     f"devices; give a multiple of {rows}")
  if seq_len % shape["sequence"]:
    raise ValueError(f"windows of {seq_len} tokens do not split over the mesh's sequence axis of "
                     f"{shape['sequence']}; choose a --mesh sequence size that divides {seq_len}")


def check_params_split(config: DecoderConfig, mesh: Mesh, rules: Sequence[tuple[str, Any]]) -> None:
  """Raise ValueError, naming the parameter, when `rules` shard one of the model's parameters over mesh
  axes whose sizes do not divide its dimension (e.g. tensor=4 over 2 kv heads)."""
  target = abstract_params(config, mesh=mesh, rules=rules)
  for path, leaf in jax.tree_util.tree_leaves_with_path(target):
    for size, axes in zip(leaf.shape, leaf.sharding.spec):
      names = axes if isinstance(axes, tuple) else (axes,) if axes else ()
      ways = math.prod(mesh.shape[name] for name in names)
      if size % ways:
        raise ValueError(f"--mesh {dict(mesh.shape)}: the run's parameter {jax.tree_util.keystr(path)} "
                         f"{list(leaf.shape)} splits {ways} ways ({'*'.join(names)}) along a dimension of {size}; "
                         f"choose axis sizes that divide it (the model has {config.n_heads} heads, "
                         f"{config.n_kv_heads} kv heads, MLP width {config.mlp_dim})")


def score_batches(scorer: Scorer, batches: Iterable[Mapping[str, np.ndarray]], desc: str = "perplexity",
                  text: ScoredText | None = None) -> dict[str, np.ndarray]:
  """The trainer's eval sums (Trainer.eval_sums; float64) over `batches` ({feature: [rows <= batch size,
  length]}, weights 0 or 1), each kind's in `kind_weighted_nll` and `kind_weight`; the scored tokens go
  to `text` too when given."""
  def checked() -> Iterator[dict[str, np.ndarray]]:
    for batch in tqdm(batches, desc=desc, unit="batch", leave=False):
      batch = pad_batch(batch, scorer.trainer.batch_size, scorer.trainer.seq_len)
      weights = batch["decoder_loss_weights"]
      if not np.isin(weights, (0.0, 1.0)).all():
        raise ValueError(f"perplexity scores tokens of weight 0 or 1, got weights {np.unique(weights)[:5]}")
      if text is not None:
        text.add(batch)
      yield batch
  sums = scorer.trainer.eval_sums(scorer.params, checked())
  return sums or {name: np.zeros(N_KINDS) for name in ("kind_weighted_nll", "kind_weight")}


class ScoredText:
  """The scored tokens of each kind, in stream order, and the words and bytes of their text.

  `add` keeps the target ids of weight > 0 of a batch (rows in order, so a scene cut across consecutive
  windows joins up again); `sizes` decodes each kind's ids at once and splits the text at the segment
  markers: words and UTF-8 bytes of each stripped part, markers and EOS left out (as the plain text of
  a segment body counts them). A plan the windows view cut counts only its scored prefix.
  """

  def __init__(self, vocabulary: Any) -> None:
    self.vocabulary = vocabulary
    self.ids: list[list[np.ndarray]] = [[] for _ in range(N_KINDS)]
    kind_markers, end = trajectory.markers(vocabulary.marker_style)
    names = sorted({*kind_markers.values(), end}, key=len, reverse=True)
    self._markers = re.compile("|".join(re.escape(m) for m in names))

  def add(self, batch: Mapping[str, np.ndarray]) -> None:
    scored = (np.asarray(batch["decoder_loss_weights"]) > 0) & (np.asarray(batch["decoder_segment_ids"]) > 0)
    kinds = np.asarray(batch["decoder_segment_kinds"])
    targets = np.asarray(batch["decoder_target_tokens"])
    for k in np.unique(kinds[scored]):
      self.ids[int(k)].append(targets[scored & (kinds == k)])

  def text_sizes(self, text: str) -> tuple[int, int]:
    """(words, UTF-8 bytes) of decoded text, its markers left out."""
    parts = [p.strip() for p in self._markers.split(text)]
    return sum(len(p.split()) for p in parts), sum(len(p.encode("utf-8")) for p in parts)

  def sizes(self) -> tuple[np.ndarray, np.ndarray]:
    """([n_kinds] words, [n_kinds] bytes) of the text of the scored tokens."""
    words, n_bytes = np.zeros(N_KINDS, np.int64), np.zeros(N_KINDS, np.int64)
    for k, chunks in enumerate(self.ids):
      ids = np.concatenate(chunks) if chunks else np.zeros(0, np.int32)
      ids = ids[ids != self.vocabulary.eos_id]
      if len(ids):
        words[k], n_bytes[k] = self.text_sizes(self.vocabulary.decode(ids.tolist()))
    return words, n_bytes


def figures(nll_sum: float, tokens: float, words: int, n_bytes: int) -> dict[str, Any]:
  """The figures of one book set (module docstring) from its totals: None where nothing was scored
  (no token, or no word or byte of text in the tokens scored)."""
  nll_sum, tokens, words, n_bytes = float(nll_sum), float(tokens), int(words), int(n_bytes)
  per_token = nll_sum / tokens if tokens else None
  per_word = nll_sum / words if tokens and words else None
  return {"tokens": int(tokens), "nll_sum": round(nll_sum, 4) if tokens else None, "words": words,
          "bytes": n_bytes, "scored": bool(tokens),
          "nll_per_token": per_token, "ppl_per_token": _exp(per_token),
          "nll_per_word": per_word, "ppl_per_word": _exp(per_word),
          "bits_per_byte": nll_sum / n_bytes / math.log(2) if tokens and n_bytes else None}


def _exp(value: float | None) -> float | None:
  return None if value is None else math.exp(min(value, 700.0))


# Scaffold files.

def segment_text_sizes(records: Sequence[Mapping[str, Any]], plan_order: str, marker_style: str
                       ) -> dict[str, tuple[int, int]]:
  """{kind: (words, UTF-8 bytes)} of the whole segment bodies (markers left out) of the records'
  trajectories: what ScoredText counts when every token is scored (coverage 1), more when plans were cut."""
  sizes = {kind: [0, 0] for kind in trajectory.SEGMENT_KINDS}
  end = trajectory.markers(marker_style)[1]
  for record in records:
    for segment in trajectory.scaffold_to_segments(record, plan_order, marker_style):
      body = trajectory.split_marker(segment)[1].replace(end, "")
      sizes[segment.kind][0] += len(body.split())
      sizes[segment.kind][1] += len(body.strip().encode("utf-8"))
  return {kind: (w, b) for kind, (w, b) in sizes.items()}


def trajectory_tokens(records: Sequence[Mapping[str, Any]], vocabulary: Any, plan_order: str
                      ) -> dict[str, int]:
  """{kind: tokens} of the records' trajectories, each token once (xbook.data.pieces.encode_book)."""
  counts = {kind: 0 for kind in trajectory.SEGMENT_KINDS}
  for record in records:
    for encoded in pieces.encode_book(record, vocabulary.encode, vocabulary.eos_id, plan_order=plan_order,
                                      marker_style=vocabulary.marker_style):
      counts[encoded.segment.kind] += len(encoded.ids)
  return counts


def scored_data(scaffold_files: Sequence[str | Path], vocabulary: Vocabulary, *, seq_len: int,
                trajectory_format: TrajectoryFormat) -> DataSpec:
  """The windows that held-out perplexity scores: every kind weighted 1, repeated plans 0.

  Raises:
    ValueError: for the paper's stage stream (not made of segments), or a bad scaffold record (named).
  """
  if trajectory_format.is_paper:
    raise ValueError(f"held-out perplexity scores xbook's plan orders {trajectory.PLAN_ORDERS}, not "
                     f"{trajectory_format.plan_order!r}")
  return DataSpec.build([str(f) for f in scaffold_files], vocabulary, seq_len, trajectory_format=trajectory_format,
                        loss_weights={kind: 1.0 for kind in trajectory.SEGMENT_KINDS}, repeat_weight=0.0)


def eval_batches(data: DataSpec, *, split: str, batch_size: int, sequence_shards: int = 1
                 ) -> Iterator[Mapping[str, np.ndarray]]:
  """Batches of `data`'s `split` records, in book order, each window once."""
  return trajectory_batches(data, split=split, global_batch_size=batch_size, seed=0, sequence_shards=sequence_shards,
                            repeat=False, shuffle=False)


def scaffold_perplexity(scorer: Scorer, data: DataSpec, *, split: str) -> dict[str, dict[str, Any]]:
  """{"scaffolds/<kind>": figures, "scaffolds/all": figures} of the `split` records of `data`
  (`scored_data`, at the scorer's window length; module docstring).

  Raises:
    ValueError: when the files hold no record of `split`.
  """
  books = read_split(list(data.scaffold_files), split)
  if not books:
    raise ValueError(f"--scaffolds {', '.join(data.scaffold_files)}: no record of split {split!r}; "
                     "choose another --split (train, validation, test)")
  trainer, vocabulary = scorer.trainer, scorer.vocabulary
  batches = eval_batches(data, split=split, batch_size=trainer.batch_size, sequence_shards=trainer.mesh.shape["sequence"])
  text = ScoredText(vocabulary)
  sums = score_batches(scorer, batches, desc=f"perplexity {split}", text=text)
  nll, count = sums["kind_weighted_nll"], sums["kind_weight"]
  words, n_bytes = text.sizes()
  expected = trajectory_tokens(books, vocabulary, data.trajectory_format.plan_order)
  results = {}
  for k, kind in enumerate(trajectory.SEGMENT_KINDS):
    if count[k] or expected[kind]:
      results[f"scaffolds/{kind}"] = {**figures(nll[k], count[k], words[k], n_bytes[k]),
                                      **_coverage(count[k], expected[kind])}
  results["scaffolds/all"] = {**figures(nll.sum(), count.sum(), words.sum(), n_bytes.sum()),
                              **_coverage(count.sum(), sum(expected.values())), "books": len(books)}
  if results["scaffolds/all"]["coverage"] < 1:
    log.warning("held-out perplexity: the windows view scored %d of %d trajectory tokens (long plans "
                "cut at sequence length %d); per word and per byte count the scored part only",
                count.sum(), sum(expected.values()), trainer.seq_len)
  return results


def _coverage(scored: float, expected: int) -> dict[str, Any]:
  return {"expected_tokens": int(expected), "coverage": round(scored / expected, 6) if expected else None}


# Plain held-out novels.

def novel_stream(path: str | Path, vocabulary: Any) -> tuple[list[int], int, int]:
  """(token ids, words, UTF-8 bytes) of a .txt novel's prose: one text segment per scene, EOS at the end."""
  book = load_book(path)
  ids: list[int] = []
  words = n_bytes = 0
  for chapter in book.chapters:
    for scene in chapter.scenes:
      segment = trajectory.make_segment("text", scene.text, vocabulary.marker_style)
      ids += pieces.encode_segment(vocabulary.encode, segment)
      words += len(scene.text.split())
      n_bytes += len(scene.text.strip().encode("utf-8"))
  return ids + [vocabulary.eos_id], words, n_bytes


def stream_batches(ids: Sequence[int], *, bos_id: int, seq_len: int, batch_size: int
                   ) -> Iterator[dict[str, np.ndarray]]:
  """Consecutive windows of `seq_len` tokens of `ids` (the last one shorter, padded), each input
  starting from BOS, as batches of example features (xbook.data.features; every token once, weight 1,
  kind text)."""
  windows = [ids[i:i + seq_len] for i in range(0, len(ids), seq_len)]
  for start in range(0, len(windows), batch_size):
    rows = windows[start:start + batch_size]
    batch = pad_batch(None, len(rows), seq_len)
    for r, window in enumerate(rows):
      n = len(window)
      batch["decoder_target_tokens"][r, :n] = window
      batch["decoder_input_tokens"][r, :n] = [bos_id, *window[:-1]]
      batch["decoder_segment_ids"][r, :n] = 1
      batch["decoder_positions"][r, :n] = np.arange(n)
      batch["decoder_segment_kinds"][r, :n] = trajectory.KIND_ID["text"]
      batch["decoder_loss_weights"][r, :n] = 1.0
    yield batch


def novel_perplexity(scorer: Scorer, path: str | Path) -> dict[str, Any]:
  """The figures of one plain novel's prose (module docstring), in windows of the scorer's length."""
  ids, _, _ = novel_stream(path, scorer.vocabulary)
  batches = stream_batches(ids, bos_id=scorer.vocabulary.bos_id, seq_len=scorer.trainer.seq_len,
                           batch_size=scorer.trainer.batch_size)
  text = ScoredText(scorer.vocabulary)
  sums = score_batches(scorer, batches, desc=f"perplexity {Path(path).stem}", text=text)
  words, n_bytes = text.sizes()
  return figures(sums["kind_weighted_nll"].sum(), sums["kind_weight"].sum(), words.sum(), n_bytes.sum())


# A run.

def run_perplexity(run_dir: RunInfo | str | Path, *, scaffold_files: Sequence[str | Path] = (),
                   novels: Sequence[str | Path] = (), split: str = "test", step: int | None = None,
                   batch_size: int = 8, seq_len: int | None = None, mesh_config: MeshConfig | None = None
                   ) -> dict[str, Any]:
  """eval.json's `perplexity` of a run (its RunInfo, xbook.train.run_info) on held-out books.

  Args:
    run_dir: a run directory of `xbook train`, or its RunInfo.
    scaffold_files: scaffold JSONL whose `split` records are scored per kind.
    novels: plain .txt novels scored as prose (a folder: its .txt files).
    split: the scaffold split to score.
    step: checkpoint step (None: the latest).
    batch_size: windows per eval step (a multiple of the mesh's data * fsdp).
    seq_len: window length (None: the run's training length, RunInfo.seq_len).
    mesh_config: the mesh over every device that scores (parameters sharded by the trainer's logical
      axis rules); None: one device.

  Returns:
    {"run_dir", "step", "seq_len", "plan_order", "split", "mesh", "results": {name: figures}}; names are
    "scaffolds/<kind>", "scaffolds/all" and "novel/<file stem>"; "mesh" is {axis: size}.

  Raises:
    ValueError: nothing to score, no sequence length known for the run, or a mesh the batch or the
      windows do not split over.
  """
  novel_paths = [p for n in novels for p in (sorted(Path(n).glob("*.txt")) if Path(n).is_dir() else [Path(n)])]
  if not scaffold_files and not novel_paths:
    raise ValueError("held-out perplexity needs books: give --scaffolds FILE (scaffold JSONL) and/or "
                     "--heldout NOVEL.txt")
  run = run_dir if isinstance(run_dir, RunInfo) else RunInfo.read(run_dir)
  seq_len = seq_len or run.seq_len
  if not seq_len:
    raise ValueError(f"{run.run_dir}: neither model.json nor config.gin records the sequence length; pass it")
  scorer = Scorer.of_run(run, step=step, batch_size=batch_size, seq_len=seq_len, mesh_config=mesh_config)
  results: dict[str, Any] = {}
  if scaffold_files:
    data = scored_data(scaffold_files, scorer.vocabulary, seq_len=seq_len, trajectory_format=run.trajectory_format)
    results.update(scaffold_perplexity(scorer, data, split=split))
  for path in novel_paths:
    results[f"novel/{path.stem}"] = novel_perplexity(scorer, path)
  return {"run_dir": str(run.run_dir), "step": scorer.step, "seq_len": seq_len, "plan_order": run.plan_order,
          "split": split, "mesh": scorer.mesh_shape, "results": results}
