"""The human baseline: held-out Gutenberg novels measured exactly as the evaluated books are.

`HumanBaseline.build(folder)` loads every novel of a corpus folder (xbook.books.load_book), measures
each (xbook.evals.metrics), and keeps their n-gram counts as the reference of over-represented
phrases; each human novel's own over-representation index is measured against the others
(leave-one-out), as a new book is measured against all of them. `percentile` places a value in the
human distribution.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any, Iterable, Sequence

from tqdm import tqdm

from xbook.books import load_book, read_manifest, split_for_author
from xbook.evals import overrep
from xbook.evals.metrics import METRICS, book_metrics, too_short, words
from xbook.evals.texts import EvalBook, from_book

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Measured:
  """A measured book: figures, per-chapter figures, examples and n-gram counts."""

  book: EvalBook
  figures: dict[str, float]
  chapters: list[dict[str, float]]
  examples: dict[str, Any]
  counts: dict


def measure(book: EvalBook) -> Measured:
  figures, chapters, examples = book_metrics(book)
  return Measured(book, figures, chapters, examples, overrep.ngram_counts(words(book.text)))


def add_overrep(measured: Measured, reference: overrep.Reference) -> list[dict[str, Any]]:
  """Set the over-representation index of the book and its chapters; returns the offenders."""
  tokens = words(measured.book.text)
  found = overrep.offenders(measured.book.text, reference, tokens, measured.counts)
  measured.figures["overrep_index"] = overrep.index(tokens, found)
  for chapter, figures in zip(measured.book.chapters, measured.chapters):
    figures["overrep_index"] = overrep.index(words(chapter.text), found)
  return found


def percentile(value: float, distribution: Sequence[float]) -> float | None:
  """Percent of the distribution below `value` (ties count half); None without a distribution."""
  if not distribution or value is None:
    return None
  below = sum(v < value for v in distribution) + 0.5 * sum(v == value for v in distribution)
  return 100.0 * below / len(distribution)


def corpus_files(folder: Path, split: str | None = None) -> list[Path]:
  """The novels of a corpus folder (its MANIFEST.tsv when it has one, else every .txt), optionally only
  those whose author falls in `split` (xbook.books.split_for_author)."""
  folder = Path(folder)
  if not folder.is_dir():
    raise FileNotFoundError(f"--baseline {folder}: no such folder; expected a folder of Gutenberg .txt "
                            "novels such as ../shared/corpus/gutenberg")
  if (folder / "MANIFEST.tsv").is_file():
    rows = read_manifest(folder)
    files = [(folder / r["file"], r.get("author", "")) for r in rows]
  else:
    files = [(p, "") for p in sorted(folder.glob("*.txt"))]
  if split:
    files = [(p, a) for p, a in files if a and split_for_author(a) == split]
  return [p for p, _ in files]


@dataclasses.dataclass
class HumanBaseline:
  """Measured human novels and their pooled n-gram counts."""

  books: list[Measured]
  pooled: dict

  @classmethod
  def build(cls, folder: str | Path, *, exclude: Iterable[str] = (), split: str | None = None,
            limit: int | None = None) -> "HumanBaseline":
    """Measure the novels of `folder` except those whose file stem or id is in `exclude`.

    Raises:
      FileNotFoundError: no folder, or no novel left to measure (naming the folder and the filters).
    """
    exclude = set(exclude)
    files = [p for p in corpus_files(Path(folder), split) if p.stem not in exclude][:limit]
    books = []
    for path in tqdm(files, desc="human baseline", unit="novel"):
      book = load_book(path)
      if book.id in exclude:
        continue
      books.append(measure(from_book(book, name=path.stem)))
    if not books:
      raise FileNotFoundError(f"--baseline {folder}: no novel to measure (split={split}, excluded "
                              f"{sorted(exclude)}); name a folder of held-out Gutenberg .txt novels")
    pooled = overrep.pooled(b.counts for b in books)
    for measured in books:
      add_overrep(measured, overrep.Reference(pooled, exclude=measured.counts))
    return cls(books, pooled)

  def distribution(self, metric: str) -> list[float]:
    """The human novels' values of `metric`, those too short to measure it left out."""
    return [b.figures[metric] for b in self.books
            if b.figures.get(metric) is not None and not too_short(metric, b.figures)]

  def summary(self) -> dict[str, Any]:
    """{"books": [...], "metrics": {metric: {"values", "median", "p5", "p10", "p90", "p95"}}} for eval.json."""
    import numpy as np
    out = {}
    for metric in METRICS:
      values = self.distribution(metric)
      if values:
        out[metric] = {"values": {b.book.name: b.figures[metric] for b in self.books
                                  if not too_short(metric, b.figures)},
                       "median": float(np.median(values)),
                       **{f"p{q}": float(np.percentile(values, q)) for q in (5, 10, 90, 95)}}
    return {"books": [b.book.name for b in self.books], "metrics": out}
