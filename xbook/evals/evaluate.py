"""`xbook eval` on books: every figure of every book against the human baseline, into eval.json.

eval.json (schema "xbook.eval/1"):
  {"schema", "created", "baseline": {"source", "books", "metrics": {m: {"values", "median", "p5", "p10",
                                                                      "p90", "p95"}}},
   "metrics": {m: {"label", "worse": +1 higher is worse | -1 lower is worse | 2 either extreme}},
   "books": {name: {"source", "figures": {m: value}, "percentiles": {m: % of human books below},
                    "too_short": {m: "too short to measure: N words < 1,000"},
                    "beyond": {m: "high" | "low"},
                    "chapters": [{m: value}], "plans": {...}, "overrepresented": [...],
                    "examples": {...}}}}
A figure in `too_short` (xbook.evals.metrics.MINIMUM) has no percentile: it is not placed among the
human novels. `beyond` holds the figures past the human 95th percentile on their bad side (`beyond_human`:
the one rule the report marks red by). A run's perplexity and the judges are written apart
(xbook.evals.command.OUTPUTS).
"""

from __future__ import annotations

import logging
import time
from typing import Any, Sequence

from tqdm import tqdm

from xbook.evals import overrep, plans
from xbook.evals.baseline import HumanBaseline, Measured, add_overrep, measure, percentile
from xbook.evals.metrics import BOTH_WORSE, METRICS, too_short, words
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


# A figure is beyond the human range when at least this share (%) of the human novels lies below it (on
# the high side), or at most 100 minus it (on the low side).
BEYOND_PERCENTILE = 95.0


def beyond_human(pct: float | None, worse: int) -> str | None:
  """"high" or "low" when a figure at human percentile `pct` is beyond the 95th percentile on a side
  that is bad for it (`worse`: +1 high, -1 low, 2 either, 0 neither); else None."""
  if pct is None:
    return None
  if pct >= BEYOND_PERCENTILE and worse > 0:
    return "high"
  if pct <= 100 - BEYOND_PERCENTILE and worse in (-1, BOTH_WORSE):
    return "low"
  return None


def placed(figures: dict[str, Any], baseline: HumanBaseline) -> tuple[dict, dict, dict]:
  """(percentiles, too_short, beyond) of a book's figures: a figure too short to measure has no
  percentile and is never beyond."""
  short = {m: why for m in METRICS if (why := too_short(m, figures))}
  pcts = {m: None if m in short else percentile(figures.get(m), baseline.distribution(m)) for m in METRICS}
  beyond = {m: side for m, (_, worse) in METRICS.items() if (side := beyond_human(pcts[m], worse))}
  return pcts, short, beyond


def book_entry(measured: Measured, baseline: HumanBaseline) -> dict[str, Any]:
  """The eval.json entry of one measured book (see the module docstring)."""
  found = add_overrep(measured, overrep.Reference(baseline.pooled))
  plan_book, plan_chapters = plans.plan_figures(measured.book)
  for figures, extra in zip(measured.chapters, plan_chapters):
    figures.update(extra)
  text = measured.book.text
  offenders = [{**f, "example": overrep.example(text, f["phrase"])} for f in found[:overrep.TOP]]
  pcts, short, beyond = placed(measured.figures, baseline)
  worst = worst_chapter_repeat(measured)
  if worst:  # the chapter's rate placed among the human books' rates, by the same rule
    worst["beyond"] = beyond_human(percentile(worst["rate"], baseline.distribution("repeat_rate_within")),
                                   METRICS["repeat_rate_within"][1])
  return {"source": measured.book.source, "figures": measured.figures, "percentiles": pcts,
          "too_short": short, "beyond": beyond, "chapters": measured.chapters, "plans": plan_book,
          "overrepresented": offenders, "examples": {**measured.examples, "most_repetitive_chapter": worst}}


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



