"""Held-out perplexity of a run: per segment kind, per token, per word and per byte.

Two kinds of held-out books:
  scaffolds  the `split` records (default "test") of scaffold JSONL files, cut into windows exactly as
             training cuts them (the `windows` view at the run's sequence length and plan order), with
             every kind weighted 1 and repeats weighted 0 (`repeat_weight=0`): a token's weight is 1 at
             its first occurrence and 0 where a window repeats it (the global plan of later windows,
             "Previously", a continued chapter's plan), so the tokens of weight > 0 are every token of
             the trajectory once, the prompt included. Reported per kind and for all kinds together.
  novels     plain `.txt` novels (xbook.books.load_book), prose only: each scene is a `text` segment
             (its marker then its text, as in a trajectory), the segments follow one another and EOS
             closes the book; the token stream is cut into consecutive windows of the sequence length,
             each starting afresh from BOS, and every token is scored once.

Figures of a book set (eval.json `perplexity.results[name]`):
  tokens         tokens scored;   nll_sum  their total NLL (nats)
  nll_per_token  nll_sum / tokens, ppl_per_token = exp of it
  words, bytes   whitespace words and UTF-8 bytes of the text of the tokens scored (ScoredText: the
                 scored tokens of each kind decoded in stream order, markers and EOS left out), so a plan
                 cut by the windows view counts only the part that was scored
  nll_per_word   nll_sum / words, ppl_per_word = exp of it
  bits_per_byte  nll_sum / bytes / ln 2
  scored         False for a kind of which no token was scored: every figure above is then None
                 ("not scored"), never a perplexity of 1
  expected_tokens, coverage   scaffolds only: tokens of the trajectories encoded once
                 (xbook.data.pieces.encode_book) and tokens / expected_tokens (below 1 when the windows
                 view had to cut long plans; the figures are then of the tokens scored)
The per-word and per-byte figures divide a total over the same tokens' text, so runs with different
tokenizers compare on them; per-token figures compare runs that share a vocabulary.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import re
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from xbook.data import pieces, trajectory
from xbook.data.features import EXAMPLE_FEATURES, padding_batch
from xbook.model import Decoder

log = logging.getLogger(__name__)
N_KINDS = len(trajectory.SEGMENT_KINDS)
TASK_NAME = "xbook_eval_perplexity"
# Sums of one batch, each [n_kinds]: over tokens of weight > 0 (`nll`, `count`), weighted by the
# batch's loss weights (`weighted_nll`, `weight`), and over every real token (`present_nll`, `present`).
SUMS = ("nll", "count", "weighted_nll", "weight", "present_nll", "present")


@functools.partial(jax.jit, static_argnums=0)
def _batch_sums(model: Decoder, params: Any, batch: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
  """The SUMS of one batch of example features (xbook.data.features)."""
  logits = model.apply({"params": params}, batch["decoder_input_tokens"], batch["decoder_segment_ids"],
                       batch["decoder_positions"]).astype(jnp.float32)
  log_z = jax.nn.logsumexp(logits, axis=-1)
  targets = batch["decoder_target_tokens"]
  nll = log_z - jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
  kinds = jax.nn.one_hot(batch["decoder_segment_kinds"], N_KINDS, dtype=jnp.float32)
  weights = batch["decoder_loss_weights"].astype(jnp.float32)
  present = (batch["decoder_segment_ids"] > 0).astype(jnp.float32)
  scored = (weights > 0).astype(jnp.float32) * present
  per_kind = lambda values: jnp.einsum("bl,blk->k", values, kinds)  # noqa: E731
  return {"nll": per_kind(nll * scored), "count": per_kind(scored),
          "weighted_nll": per_kind(nll * weights), "weight": per_kind(weights),
          "present_nll": per_kind(nll * present), "present": per_kind(present)}


def _padded(batch: Mapping[str, np.ndarray], rows: int) -> dict[str, np.ndarray]:
  """`batch` with zero rows (padding: segment id 0, weight 0) up to `rows`, so one shape compiles once."""
  missing = rows - len(batch["decoder_target_tokens"])
  if missing <= 0:
    return dict(batch)
  padding = padding_batch(missing, batch["decoder_target_tokens"].shape[1])
  return {k: np.concatenate([v, padding[k]]) for k, v in batch.items()}


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


def score_batches(model: Decoder, params: Any, batches: Iterable[Mapping[str, np.ndarray]],
                  batch_size: int, desc: str = "perplexity", text: ScoredText | None = None
                  ) -> dict[str, np.ndarray]:
  """The SUMS (each [n_kinds] float64) over `batches` ({feature: [rows <= batch_size, length]}); the
  scored tokens go to `text` too when given."""
  totals = {name: np.zeros(N_KINDS, np.float64) for name in SUMS}
  for batch in tqdm(batches, desc=desc, unit="batch", leave=False):
    batch = _padded({k: np.asarray(batch[k], dtype) for k, dtype in EXAMPLE_FEATURES.items()}, batch_size)
    if text is not None:
      text.add(batch)
    out = jax.device_get(_batch_sums(model, params, batch))
    for name in SUMS:
      totals[name] += np.asarray(out[name], np.float64)
  return totals


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

def split_records(scaffold_files: Sequence[str | Path], split: str) -> list[dict[str, Any]]:
  """The records of `split` (field `split`, default "train") in JSONL scaffold files, in file order.

  Raises:
    FileNotFoundError: naming a missing file.
    ValueError: naming the file and line of a line that is not JSON.
  """
  records = []
  for name in scaffold_files:
    path = Path(name)
    if not path.is_file():
      raise FileNotFoundError(f"--scaffolds {path}: no such file (give scaffold JSONL of `xbook scaffold`)")
    with path.open(encoding="utf-8") as f:
      for number, line in enumerate(f, 1):
        if not line.strip():
          continue
        try:
          record = json.loads(line)
        except ValueError as error:
          raise ValueError(f"{path}:{number}: not a JSON scaffold record ({error})") from None
        if record.get("split", "train") == split:
          records.append(record)
  return records


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


def eval_batches(scaffold_files: Sequence[str | Path], vocabulary: Any, *, split: str, seq_len: int,
                 batch_size: int, plan_order: str = "interleaved") -> Iterator[Mapping[str, np.ndarray]]:
  """Batches of the windows view of the `split` records, every kind weighted 1 and repeats 0, in book
  order, each window once (the task TASK_NAME, registered anew)."""
  from xbook.data.tasks import register_task
  from xbook.train.input_pipeline import trajectory_batches
  register_task(TASK_NAME, "windows", [str(f) for f in scaffold_files], vocabulary, plan_order=plan_order,
                loss_weights={kind: 1.0 for kind in trajectory.SEGMENT_KINDS}, repeat_weight=0.0)
  return trajectory_batches(TASK_NAME, split=split, global_batch_size=batch_size, seq_len=seq_len, seed=0,
                            repeat=False, shuffle=False)


def scaffold_perplexity(model: Decoder, params: Any, vocabulary: Any, scaffold_files: Sequence[str | Path],
                        *, split: str, seq_len: int, batch_size: int, plan_order: str = "interleaved"
                        ) -> dict[str, dict[str, Any]]:
  """{"scaffolds/<kind>": figures, "scaffolds/all": figures} of the `split` records (module docstring).

  Raises:
    ValueError: when the files hold no record of `split`, or the plan order has no segments.
  """
  if plan_order not in trajectory.PLAN_ORDERS:
    raise ValueError(f"held-out perplexity scores xbook's plan orders {trajectory.PLAN_ORDERS}, not {plan_order!r}")
  records = split_records(scaffold_files, split)
  if not records:
    raise ValueError(f"--scaffolds {', '.join(map(str, scaffold_files))}: no record of split {split!r}; "
                     "choose another --split (train, validation, test)")
  batches = eval_batches(scaffold_files, vocabulary, split=split, seq_len=seq_len, batch_size=batch_size,
                         plan_order=plan_order)
  text = ScoredText(vocabulary)
  sums = score_batches(model, params, batches, batch_size, desc=f"perplexity {split}", text=text)
  words, n_bytes = text.sizes()
  expected = trajectory_tokens(records, vocabulary, plan_order)
  results = {}
  for k, kind in enumerate(trajectory.SEGMENT_KINDS):
    if sums["count"][k] or expected[kind]:
      results[f"scaffolds/{kind}"] = {**figures(sums["nll"][k], sums["count"][k], words[k], n_bytes[k]),
                                      **_coverage(sums["count"][k], expected[kind])}
  results["scaffolds/all"] = {**figures(sums["nll"].sum(), sums["count"].sum(), words.sum(), n_bytes.sum()),
                              **_coverage(sums["count"].sum(), sum(expected.values())),
                              "books": len(records)}
  if results["scaffolds/all"]["coverage"] < 1:
    log.warning("held-out perplexity: the windows view scored %d of %d trajectory tokens (long plans "
                "cut at sequence length %d); per word and per byte count the scored part only",
                sums["count"].sum(), sum(expected.values()), seq_len)
  return results


def _coverage(scored: float, expected: int) -> dict[str, Any]:
  return {"expected_tokens": int(expected), "coverage": round(scored / expected, 6) if expected else None}


# Plain held-out novels.

def novel_stream(path: str | Path, vocabulary: Any) -> tuple[list[int], int, int]:
  """(token ids, words, UTF-8 bytes) of a .txt novel's prose: one text segment per scene, EOS at the end."""
  from xbook.books import load_book
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
    batch = padding_batch(len(rows), seq_len)
    for r, window in enumerate(rows):
      n = len(window)
      batch["decoder_target_tokens"][r, :n] = window
      batch["decoder_input_tokens"][r, :n] = [bos_id, *window[:-1]]
      batch["decoder_segment_ids"][r, :n] = 1
      batch["decoder_positions"][r, :n] = np.arange(n)
      batch["decoder_segment_kinds"][r, :n] = trajectory.KIND_ID["text"]
      batch["decoder_loss_weights"][r, :n] = 1.0
    yield batch


def novel_perplexity(model: Decoder, params: Any, vocabulary: Any, path: str | Path, *, seq_len: int,
                     batch_size: int) -> dict[str, Any]:
  """The figures of one plain novel's prose (module docstring)."""
  ids, _, _ = novel_stream(path, vocabulary)
  batches = stream_batches(ids, bos_id=vocabulary.bos_id, seq_len=seq_len, batch_size=batch_size)
  text = ScoredText(vocabulary)
  sums = score_batches(model, params, batches, batch_size, desc=f"perplexity {Path(path).stem}", text=text)
  words, n_bytes = text.sizes()
  return figures(sums["nll"].sum(), sums["count"].sum(), words.sum(), n_bytes.sum())


# A run.

def run_perplexity(run_dir: str | Path, *, scaffold_files: Sequence[str | Path] = (),
                   novels: Sequence[str | Path] = (), split: str = "test", step: int | None = None,
                   batch_size: int = 8, seq_len: int | None = None) -> dict[str, Any]:
  """eval.json's `perplexity` of a run (xbook.infer.generate.load_run) on held-out books.

  Args:
    run_dir: a run directory of `xbook train`.
    scaffold_files: scaffold JSONL whose `split` records are scored per kind.
    novels: plain .txt novels scored as prose (a folder: its .txt files).
    split: the scaffold split to score.
    step: checkpoint step (None: the latest).
    batch_size: windows per forward pass.
    seq_len: window length (None: the run's training length, xbook.infer.generate.run_seq_len).

  Returns:
    {"run_dir", "step", "seq_len", "plan_order", "split", "results": {name: figures}}; names are
    "scaffolds/<kind>", "scaffolds/all" and "novel/<file stem>".

  Raises:
    ValueError: nothing to score, or no sequence length known for the run.
  """
  from xbook.infer.generate import load_run, run_plan_order, run_seq_len
  novel_paths = [p for n in novels for p in (sorted(Path(n).glob("*.txt")) if Path(n).is_dir() else [Path(n)])]
  if not scaffold_files and not novel_paths:
    raise ValueError("held-out perplexity needs books: give --scaffolds FILE (scaffold JSONL) and/or "
                     "--heldout NOVEL.txt")
  seq_len = seq_len or run_seq_len(run_dir)
  if not seq_len:
    raise ValueError(f"{run_dir}: neither model.json nor config.gin records the sequence length; pass it")
  run = load_run(run_dir, step)
  plan_order, _ = run_plan_order(run_dir)
  results: dict[str, Any] = {}
  if scaffold_files:
    results.update(scaffold_perplexity(run.model, run.params, run.vocabulary, scaffold_files, split=split,
                                       seq_len=seq_len, batch_size=batch_size, plan_order=plan_order))
  for path in novel_paths:
    results[f"novel/{path.stem}"] = novel_perplexity(run.model, run.params, run.vocabulary, path,
                                                     seq_len=seq_len, batch_size=batch_size)
  return {"run_dir": str(run_dir), "step": run.step, "seq_len": seq_len, "plan_order": plan_order, "split": split,
          "results": results}
