"""`xbook eval` on books: every figure of every book against the human baseline, into eval.json.

eval.json (schema "xbook.eval/1"):
  {"schema", "created", "baseline": {"source", "books", "metrics": {m: {"values", "median", "p10", "p90"}}},
   "metrics": {m: {"label", "worse": +1 higher is worse | -1 lower is worse | 0 neither}},
   "books": {name: {"source", "figures": {m: value}, "percentiles": {m: % of human books below},
                    "chapters": [{m: value}], "plans": {...}, "overrepresented": [...],
                    "examples": {...}}},
   "perplexity": {...}, "judges": {...}}   (the last two when asked for)
"""

from __future__ import annotations

import logging
import time
from typing import Any, Sequence

from tqdm import tqdm

from xbook.evals import overrep, plans
from xbook.evals.baseline import HumanBaseline, Measured, add_overrep, measure, percentile
from xbook.evals.metrics import METRICS, words
from xbook.evals.texts import EvalBook

log = logging.getLogger(__name__)
SCHEMA = "xbook.eval/1"


def worst_chapter_repeat(measured: Measured) -> dict[str, Any]:
  """The chapter with the most repeated 4-grams, and its most repeated 4-gram."""
  if not measured.chapters:
    return {}
  worst = max(range(len(measured.chapters)), key=lambda i: measured.chapters[i]["repeat_rate_within"])
  tokens = words(measured.book.chapters[worst].text)
  grams: dict[str, int] = {}
  for i in range(len(tokens) - 3):
    key = " ".join(tokens[i:i + 4])
    grams[key] = grams.get(key, 0) + 1
  gram, count = max(grams.items(), key=lambda kv: kv[1]) if grams else ("", 0)
  return {"chapter": worst + 1, "title": measured.book.chapters[worst].title,
          "rate": measured.chapters[worst]["repeat_rate_within"], "ngram": gram, "count": count}


def book_entry(measured: Measured, baseline: HumanBaseline) -> dict[str, Any]:
  """The eval.json entry of one measured book (see the module docstring)."""
  found = add_overrep(measured, overrep.Reference(baseline.pooled))
  plan_book, plan_chapters = plans.plan_figures(measured.book)
  for figures, extra in zip(measured.chapters, plan_chapters):
    figures.update(extra)
  text = measured.book.text
  offenders = [{**f, "example": overrep.example(text, f["phrase"])} for f in found[:overrep.TOP]]
  return {"source": measured.book.source, "figures": measured.figures,
          "percentiles": {m: percentile(measured.figures.get(m), baseline.distribution(m)) for m in METRICS},
          "chapters": measured.chapters, "plans": plan_book, "overrepresented": offenders,
          "examples": {**measured.examples, "most_repetitive_chapter": worst_chapter_repeat(measured)}}


def evaluate_books(books: Sequence[EvalBook], baseline: HumanBaseline, baseline_source: str
                   ) -> dict[str, Any]:
  """The eval.json record of `books` against `baseline`."""
  entries = {}
  for book in tqdm(books, desc="evaluate", unit="book"):
    began = time.perf_counter()
    entries[book.name] = book_entry(measure(book), baseline)
    log.info("%s: measured in %.1f s", book.name, time.perf_counter() - began)
  return {"schema": SCHEMA, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
          "baseline": {"source": baseline_source, **baseline.summary()},
          "metrics": {m: {"label": label, "worse": worse} for m, (label, worse) in METRICS.items()},
          "books": entries}



