"""Plan adherence of generated books: how much of each plan its text carries out, and at what length.

For a chapter (its outline summary against its whole text) and for each scene (its scene plan against
its text), adherence is the share of the plan's content words (names, places, events: words of three
or more letters that are not stopwords) that appear in the text. A plan that states a length ("about
800 words") is compared with the text's word count: length control is actual / planned words.
"""

from __future__ import annotations

import re
from typing import Any, Sequence

import numpy as np

from xbook.evals.metrics import STOPWORDS, words
from xbook.evals.texts import EvalBook

PLANNED_WORDS = re.compile(r"(\d[\d,]*)\s*(?:-|to)?\s*(?:\d[\d,]*\s*)?words", re.IGNORECASE)


STEM = 5  # words are compared by their first letters, a crude stem: "climbs" matches "climbed"


def content_words(text: str) -> set[str]:
  """Stems of the words of three or more letters that are not stopwords."""
  return {w[:STEM] for w in words(text) if len(w) > 2 and w not in STOPWORDS}


def adherence(plan: str, text: str) -> float | None:
  """Share of the plan's content words found in the text, its length request left out (None for a
  plan without any)."""
  wanted = content_words(PLANNED_WORDS.sub(" ", plan).replace("about", " "))
  return len(wanted & {w[:STEM] for w in words(text)}) / len(wanted) if wanted else None


def planned_words(plan: str) -> int | None:
  """The length a plan asks for ("about 1,200 words"), or None."""
  match = PLANNED_WORDS.search(plan)
  return int(match.group(1).replace(",", "")) if match else None


def _mean(values: Sequence[float | None]) -> float | None:
  kept = [v for v in values if v is not None]
  return float(np.mean(kept)) if kept else None


def plan_figures(book: EvalBook) -> tuple[dict[str, Any], list[dict[str, Any]]]:
  """(book figures, per-chapter figures) of a planned book; ({}, []) for a book without plans."""
  if not book.planned:
    return {}, []
  chapters, scene_scores, ratios, planned_scenes, written_scenes = [], [], [], 0, 0
  for chapter in book.chapters:
    plans = list(chapter.scene_plans or [])
    scenes = [adherence(p, t) for p, t in zip(plans, chapter.scenes)]
    for plan, text in zip(plans, chapter.scenes):
      if (planned := planned_words(plan)):
        ratios.append(len(words(text)) / planned)
    planned_scenes += len(plans)
    written_scenes += len(chapter.scenes)
    scene_scores += scenes
    chapters.append({"plan_adherence": adherence(chapter.summary or "", chapter.text),
                     "scene_plan_adherence": _mean(scenes), "scenes_planned": len(plans),
                     "scenes_written": len(chapter.scenes)})
  figures = {"plan_adherence": _mean([c["plan_adherence"] for c in chapters]),
             "scene_plan_adherence": _mean(scene_scores), "scenes_planned": planned_scenes,
             "scenes_written": written_scenes,
             "length_control": _mean(ratios) if ratios else None}
  return figures, chapters
