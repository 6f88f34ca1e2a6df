"""Build scaffolds bottom-up, from the scene texts up to the prompt.

Scene text -> scene summaries -> chapter summaries -> synopsis -> premise -> prompt. Each level is
summarized from the level below it, never from the raw book, so every plan the model learns to write
is grounded in the plans beneath it. With a `SummaryCache` every summarizer call is made once: a
rebuild, or a run resumed after a crash, pays only for what is new.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import gin
from tqdm import tqdm

from xbook.books.types import Book
from xbook.scaffold.cache import SummaryCache
from xbook.scaffold.checks import n_words, scaffold_checks
from xbook.scaffold.schema import SCHEMA, SPLITS, read_scaffolds, validate_scaffold, write_scaffolds
from xbook.scaffold.summarizer import Summarizer, summarizer_metadata

log = logging.getLogger(__name__)


@gin.configurable
@dataclasses.dataclass(frozen=True)
class ScaffoldTargets:
  """Target lengths, in words, of each scaffold level. No summary is asked to be longer than its input.

  Attributes:
    scene_fraction: a scene summary's share of its scene's words.
    scene_min_words: the shortest scene summary asked for.
    chapter_words: a chapter summary (150-300 words reads as a chapter plan).
    synopsis_words: the synopsis, from the chapter summaries.
    premise_words: the premise, from the synopsis.
    prompt_words: the prompt, from the premise (a template backend ignores it).
  """

  scene_fraction: float = 0.1
  scene_min_words: int = 20
  chapter_words: int = 200
  synopsis_words: int = 600
  premise_words: int = 80
  prompt_words: int = 60

  def __post_init__(self) -> None:
    if not 0 < self.scene_fraction <= 1:
      raise ValueError(f"scene_fraction must be in (0, 1], got {self.scene_fraction}")
    for field in ("scene_min_words", "chapter_words", "synopsis_words", "premise_words", "prompt_words"):
      if getattr(self, field) < 1:
        raise ValueError(f"{field} must be at least 1, got {getattr(self, field)}")

  def scene_words(self, scene_n_words: int) -> int:
    """Target of the summary of a scene of `scene_n_words` words."""
    return min(scene_n_words, max(self.scene_min_words, round(self.scene_fraction * scene_n_words)))


def record_summarizer(summarizer: Summarizer, targets: ScaffoldTargets) -> dict[str, Any]:
  """The `summarizer` field of a record: the backend's identity, with the targets added to its params.

  It is returned as JSON would read it back (tuples become lists), so that it compares equal to the
  same field of a record read from a file.
  """
  metadata = summarizer_metadata(summarizer)
  metadata["params"] = {**metadata["params"], "targets": dataclasses.asdict(targets)}
  return json.loads(json.dumps(metadata))


def _check_buildable(book: Book, split: str) -> None:
  if split not in SPLITS:
    raise ValueError(f"book {book.id}: split must be one of {SPLITS}, got {split!r}")
  if not book.chapters:
    raise ValueError(f"book {book.id} has no chapters")
  for i, chapter in enumerate(book.chapters):
    if chapter.index != i or not chapter.scenes:
      raise ValueError(f"book {book.id}: chapter {i} ({chapter.title!r}) has index {chapter.index} "
                       f"and {len(chapter.scenes)} scenes; expected index {i} and at least one scene")
    for j, scene in enumerate(chapter.scenes):
      if scene.index != j or scene.n_words == 0:
        raise ValueError(f"book {book.id}: chapter {i} scene {j} has index {scene.index} and "
                         f"{scene.n_words} words; expected index {j} and some text")


def build_scaffold(book: Book, summarizer: Summarizer, cache: SummaryCache | None = None,
                   split: str = "train", targets: ScaffoldTargets | None = None, *,
                   on_scene: Callable[[], None] | None = None) -> dict[str, Any]:
  """The scaffold record of one book.

  Args:
    book: a segmented book.
    summarizer: the backend that writes every summary.
    cache: where summarizer calls are looked up first and stored after (None: no caching).
    split: the book's split ("train", "validation" or "test"), decided by the caller.
    targets: target lengths per level (None: `ScaffoldTargets()`, with any gin bindings).
    on_scene: called after each scene is summarized (progress reporting).

  Returns:
    A record that passes `validate_scaffold`.
  """
  targets = targets or ScaffoldTargets()
  _check_buildable(book, split)
  summarize = (functools.partial(cache.summarize, summarizer) if cache is not None
               else summarizer.summarize)

  chapters = []
  for chapter in book.chapters:
    scenes = []
    for scene in chapter.scenes:
      summary = summarize(scene.text, "scene", targets.scene_words(scene.n_words))
      scenes.append({"index": scene.index, "summary": summary, "text": scene.text,
                     "n_words": scene.n_words})
      if on_scene:
        on_scene()
    scene_plans = "\n\n".join(s["summary"] for s in scenes)
    summary = summarize(scene_plans, "chapter", min(targets.chapter_words, n_words(scene_plans)))
    chapters.append({"index": chapter.index, "title": chapter.title, "summary": summary,
                     "scenes": scenes})
  outline = "\n\n".join(c["summary"] for c in chapters)
  synopsis = summarize(outline, "synopsis", min(targets.synopsis_words, n_words(outline)))
  premise = summarize(synopsis, "premise", min(targets.premise_words, n_words(synopsis)))
  prompt = summarize(premise, "prompt", targets.prompt_words)

  record = {"schema": SCHEMA, "book": book.metadata(), "split": split,
            "summarizer": record_summarizer(summarizer, targets),
            "prompt": prompt, "premise": premise, "synopsis": synopsis, "chapters": chapters}
  record["checks"] = scaffold_checks(book, record)
  validate_scaffold(record, where="built scaffold")
  return record


def _is_current(record: Mapping[str, Any] | None, book: Book, split: str,
                summarizer: Mapping[str, Any]) -> bool:
  """Whether an existing record is what building `book` now would produce."""
  return (record is not None and record["book"]["sha256"] == book.sha256 and record["split"] == split
          and record["summarizer"] == summarizer)


def build_scaffolds(books: Sequence[Book], summarizer: Summarizer, out_path: str | os.PathLike[str],
                    *, cache: SummaryCache | None = None, splits: Mapping[str, str] | None = None,
                    targets: ScaffoldTargets | None = None, progress: bool = True
                    ) -> list[dict[str, Any]]:
  """Build the scaffolds of `books` into the JSONL file `out_path`, resuming what is already there.

  A book whose record in `out_path` has the same id, text (sha256), split, summarizer and targets is
  kept as it is and not rebuilt; any other record already in the file is kept too. After each book the
  whole file is rewritten atomically, so an interrupted run leaves every finished book on disk.

  Args:
    books: the books, each id once.
    summarizer: the backend that writes every summary.
    out_path: the scaffold JSONL file (created if missing).
    cache: summarizer call cache (None: no caching).
    splits: split of each book by id (None: every book is "train"); a book missing from it is an error.
    targets: target lengths per level (None: `ScaffoldTargets()`, with any gin bindings).
    progress: show a progress bar over scenes (rate and time left) on stderr.

  Returns:
    The records now in `out_path`, in file order.
  """
  targets = targets or ScaffoldTargets()
  ids = [book.id for book in books]
  if len(set(ids)) != len(ids):
    repeated = sorted({i for i in ids if ids.count(i) > 1})
    raise ValueError(f"book ids must be unique; repeated: {repeated}")
  if splits is not None and (missing := [i for i in ids if i not in splits]):
    raise ValueError(f"no split given for book(s) {missing}")
  split_of = {i: splits[i] if splits is not None else "train" for i in ids}

  out_path = Path(out_path)
  records = {r["book"]["id"]: r for r in read_scaffolds(out_path)} if out_path.exists() else {}
  identity = record_summarizer(summarizer, targets)
  todo = [b for b in books if not _is_current(records.get(b.id), b, split_of[b.id], identity)]
  log.info("scaffolds: %d of %d books to build, %d kept from %s",
           len(todo), len(books), len(books) - len(todo), out_path)
  total_scenes = sum(len(c.scenes) for book in todo for c in book.chapters)
  with tqdm(total=total_scenes, unit="scene", desc="scaffold", disable=not progress) as bar:
    for book in todo:
      bar.set_postfix_str(book.id)
      records[book.id] = build_scaffold(book, summarizer, cache, split_of[book.id], targets,
                                        on_scene=lambda: bar.update(1))
      write_scaffolds(out_path, records.values())
  return list(records.values())
