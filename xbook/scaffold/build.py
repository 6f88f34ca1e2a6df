"""Build scaffolds bottom-up, from the scene texts up to the prompt.

Scene text -> scene summaries -> chapter summaries -> synopsis -> premise -> prompt. Each level is
summarized from the level below it, never from the raw book, so every plan the model learns to write
is grounded in the plans beneath it. With a `SummaryCache` every summarizer call is made once: a
rebuild, or a run resumed after a crash, pays only for what is new.

Builds run on an asyncio event loop: books concurrently (`concurrent_books`), and within a book the
scenes of every chapter at once, each chapter as soon as its scenes are done. How many requests are
in flight is the backend's to bound (`OpenAISummarizer.max_concurrency`). A book that fails is
reported with its reason (`BookReport`) while the others go on.

Plan formats (`plan_format`): "xbook" writes xbook's levels; "paper" also writes the record's `paper`
field, the plans in the format of the paper's released models (xbook.scaffold.paper): measured fields
from the text, the rest from the backend (a chat backend's answers checked and asked again when
malformed, the extractive backend's approximation otherwise).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterable, Mapping, Sequence

import gin
from tqdm import tqdm

from xbook.books.types import Book
from xbook.scaffold.cache import SummaryCache, cache_key
from xbook.scaffold import entities
from xbook.scaffold import paper as paper_lib
from xbook.scaffold.checks import n_words, scaffold_checks
from xbook.scaffold.schema import (SCHEMA, SPLITS, read_scaffolds, record_provenance, validate_scaffold,
                                   write_scaffolds)
from xbook.scaffold.summarizer import (Summarizer, SummaryCall, book_source, chapter_source, prompt_input,
                                      summarizer_metadata, summarizer_session)

log = logging.getLogger(__name__)

PLAN_FORMATS = ("xbook", "paper")


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


# `ScaffoldTargets.<field> = ...` in gin; entry points build it with xbook.gin_flags.configured(ScaffoldTargets),
# and `ScaffoldTargets()` here or in any library code is the plain defaults.
gin.external_configurable(ScaffoldTargets, module=__name__)


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


@dataclasses.dataclass
class BookReport:
  """How building one book went: a row of the build's summary table.

  Attributes:
    book_id: the book.
    status: "built", "kept" (its record in the output was already current) or "failed".
    calls: summarizer calls made for it (cache misses).
    cache_hits: summaries found in the cache, or shared with an identical call already in flight.
    prompt_tokens: tokens the backend read for its calls (0 for a backend that is no model).
    completion_tokens: tokens the backend wrote.
    seconds: wall time from its first call to its record (or failure).
    reason: why it failed ("" unless failed).
  """

  book_id: str
  status: str = "built"
  calls: int = 0
  cache_hits: int = 0
  prompt_tokens: int = 0
  completion_tokens: int = 0
  seconds: float = 0.0
  reason: str = ""

  @property
  def tokens(self) -> int:
    return self.prompt_tokens + self.completion_tokens


class ScaffoldBuildError(RuntimeError):
  """Some books failed; the others were built and written. `reports` has one BookReport per book."""

  def __init__(self, reports: Sequence[BookReport]) -> None:
    self.reports = list(reports)
    failed = [r for r in self.reports if r.status == "failed"]
    super().__init__(f"{len(failed)} of {len(self.reports)} books failed:\n"
                     + "\n".join(f"  {r.book_id}: {r.reason}" for r in failed))


@dataclasses.dataclass
class ScaffoldBuild:
  """The outcome of `run_scaffold_build`: the records now in the output file, a report per book, and
  the wall time of the build in seconds."""

  records: list[dict[str, Any]]
  reports: list[BookReport]
  seconds: float


def calls_to_build(book: Book, paper_calls: bool = False) -> int:
  """Summarizer calls that building `book` takes: its scenes, its chapters, synopsis, premise, prompt;
  with `paper_calls` (the paper format from a chat backend) also a plan and a scene breakdown per
  chapter, the preview, the book plan and the characters list (re-asks not counted)."""
  paper = 2 * len(book.chapters) + 3 if paper_calls else 0
  return sum(len(c.scenes) + 1 for c in book.chapters) + 3 + paper


class _Progress:
  """A tqdm bar over the summaries of a build: rate, ETA, books, last level, cache hit rate, tokens."""

  def __init__(self, books: Sequence[Book], enabled: bool, paper_calls: bool = False) -> None:
    self.bar = tqdm(total=sum(calls_to_build(b, paper_calls) for b in books), unit="summary",
                    desc="scaffold", disable=not enabled)
    self.n_books = len(books)
    self.books_done = self.failed = self.calls = self.hits = self.tokens = 0
    self.level = ""
    self.start = time.monotonic()

  def summary_done(self, level: str, hit: bool, tokens: int) -> None:
    self.level = level
    self.hits += hit
    self.calls += not hit
    self.tokens += tokens
    self.bar.update(1)
    self._show()

  def book_done(self, report: BookReport, summaries_left: int) -> None:
    self.books_done += 1
    if report.status == "failed":
      self.failed += 1
      self.bar.total -= summaries_left
      self.bar.refresh()
      tqdm.write(f"scaffold: {report.book_id} failed: {report.reason}")
    self._show()

  def _show(self) -> None:
    seconds = max(time.monotonic() - self.start, 1e-9)
    lookups = self.calls + self.hits
    self.bar.set_postfix_str(
        f"books {self.books_done}/{self.n_books} ({self.failed} failed), {self.level}, "
        f"cache hits {self.hits / max(lookups, 1):.0%}, {self.calls / seconds:.1f} calls/s, "
        f"{self.tokens:,} tokens", refresh=False)

  def close(self) -> None:
    self.bar.close()


class _CachedCalls:
  """The summarizer calls of a build, each made once.

  A call is looked up in the cache first and stored there as soon as it is answered (even if the book
  that asked for it has failed meanwhile, so nothing paid for is lost). Two books asking for the same
  call at the same time share one request. Counts go to the asking book's BookReport and the progress.
  """

  def __init__(self, summarizer: Summarizer, call: SummaryCall, cache: SummaryCache | None,
               progress: _Progress | None = None) -> None:
    self.summarizer = summarizer
    self.call = call
    self.cache = cache
    self.progress = progress
    self.in_flight: dict[str, asyncio.Future[str]] = {}

  async def summarize(self, report: BookReport, text: str, level: str, target_words: int) -> str:
    key = cache_key(self.summarizer, level, target_words, text)
    shared = self.in_flight.get(key)
    cached = self.cache.get(key) if shared is None and self.cache is not None else None
    if shared is not None or cached is not None:
      summary = cached if cached is not None else await asyncio.shield(shared)
      report.cache_hits += 1
      if self.progress:
        self.progress.summary_done(level, hit=True, tokens=0)
      return summary
    task = asyncio.ensure_future(self._call_and_store(report, key, text, level, target_words))
    self.in_flight[key] = task

    def forget(done: asyncio.Future[str]) -> None:
      self.in_flight.pop(key, None)
      if not done.cancelled():
        done.exception()  # marked as retrieved: the books awaiting it report it, if any are left

    task.add_done_callback(forget)
    return await asyncio.shield(task)

  async def _call_and_store(self, report: BookReport, key: str, text: str, level: str,
                            target_words: int) -> str:
    summary = await self.call(text, level, target_words)
    if self.cache is not None:
      self.cache.put(key, level, summary.text)
    report.calls += 1
    report.prompt_tokens += summary.prompt_tokens
    report.completion_tokens += summary.completion_tokens
    if self.progress:
      self.progress.summary_done(level, hit=False, tokens=summary.prompt_tokens + summary.completion_tokens)
    return summary.text


async def _all(awaitables: Iterable[Awaitable[Any]]) -> list[Any]:
  """`asyncio.gather`, except that the first failure cancels the rest."""
  tasks = [asyncio.ensure_future(a) for a in awaitables]
  try:
    return await asyncio.gather(*tasks)
  except BaseException:
    for task in tasks:
      task.cancel()
    raise


PaperBuilder = Callable[[Book, Mapping[str, Any]], Awaitable[dict[str, Any]]]


def _paper_builder(summarizer: Summarizer, call: Any, cache: SummaryCache | None, report: BookReport,
                   progress: _Progress | None) -> PaperBuilder:
  """How the `paper` field of a book is written with this backend (xbook.scaffold.paper)."""
  ask_raw = getattr(call, "ask", None)
  if ask_raw is None:
    if summarizer.name != "extractive":
      raise ValueError(f"backend {summarizer.name!r} cannot write the paper format: it has no chat session "
                       "(use the extractive, openai or xbook backend)")

    async def extractive(book: Book, record: Mapping[str, Any]) -> dict[str, Any]:
      return paper_lib.extractive_paper(book, record)

    return extractive

  def counted(stage: str, hit: bool, summary: Any) -> None:
    report.cache_hits += hit
    report.calls += not hit
    tokens = 0 if summary is None else summary.prompt_tokens + summary.completion_tokens
    if summary is not None:
      report.prompt_tokens += summary.prompt_tokens
      report.completion_tokens += summary.completion_tokens
    if progress:
      progress.summary_done(f"paper/{stage}", hit=hit, tokens=tokens)

  checked = paper_lib.CheckedAsk(summarizer, ask_raw, cache, on_call=counted)
  return lambda book, record: paper_lib.model_paper(book, record, checked, summarizer.model)


async def _build_record(book: Book, summarize: Callable[[str, str, int], Awaitable[str]],
                        identity: Mapping[str, Any], split: str, targets: ScaffoldTargets,
                        summarizer: Summarizer, paper: PaperBuilder | None = None) -> dict[str, Any]:
  """The record of `book`; the scenes of all chapters are summarized concurrently, then each chapter
  as soon as its scenes are, then synopsis, premise and prompt; then, with `paper`, its paper field.
  What chapter plans, synopsis, premise and prompt are summarized from is the backend's choice
  (xbook.scaffold.summarizer.chapter_source, book_source and prompt_input)."""
  _check_buildable(book, split)

  async def chapter_record(chapter) -> dict[str, Any]:
    summaries = await _all(summarize(scene.text, "scene", targets.scene_words(scene.n_words))
                           for scene in chapter.scenes)
    scenes = [{"index": scene.index, "summary": summary, "text": scene.text, "n_words": scene.n_words}
              for scene, summary in zip(chapter.scenes, summaries)]
    scene_plans = "\n\n".join(summaries)
    summary = await summarize(chapter_source(summarizer, chapter.text, summaries), "chapter",
                              min(targets.chapter_words, n_words(scene_plans)))
    return {"index": chapter.index, "title": chapter.title, "summary": summary, "scenes": scenes}

  chapters = await _all(chapter_record(chapter) for chapter in book.chapters)
  outline = "\n\n".join(c["summary"] for c in chapters)
  scene_plans = [s["summary"] for c in chapters for s in c["scenes"]]
  synopsis = await summarize(book_source(summarizer, outline, scene_plans, taken=()), "synopsis",
                             min(targets.synopsis_words, n_words(outline)))
  premise = await summarize(book_source(summarizer, synopsis, scene_plans, taken=(synopsis,)), "premise",
                            min(targets.premise_words, n_words(synopsis)))
  characters, settings = entities.extract_entities(book)
  brief = premise if prompt_input(summarizer) == "premise" else entities.prompt_brief(characters, settings)
  prompt = await summarize(brief, "prompt", targets.prompt_words)
  record = {"schema": SCHEMA, "book": book.metadata(), "split": split, "summarizer": dict(identity),
            "provenance": record_provenance(entities.ALGORITHM),
            "prompt": prompt, "premise": premise, "synopsis": synopsis,
            "characters": characters, "settings": settings, "chapters": chapters}
  record["checks"] = scaffold_checks(book, record)
  if paper is not None:
    record = paper_lib.finish(record, await paper(book, record))
  validate_scaffold(record, where="built scaffold")
  return record


def build_scaffold(book: Book, summarizer: Summarizer, cache: SummaryCache | None = None,
                   split: str = "train", targets: ScaffoldTargets | None = None,
                   plan_format: str = "xbook") -> dict[str, Any]:
  """The scaffold record of one book (an event loop of its own: not for use inside a running loop).

  Args:
    book: a segmented book.
    summarizer: the backend that writes every summary.
    cache: where summarizer calls are looked up first and stored after (None: no caching).
    split: the book's split ("train", "validation" or "test"), decided by the caller.
    targets: target lengths per level (None: the defaults; `xbook scaffold build` passes gin's).
    plan_format: "xbook", or "paper" to add the `paper` field (module docstring).

  Returns:
    A record that passes `validate_scaffold`.

  Raises:
    ValueError: for a book that cannot be built (no chapters, an empty scene ...) or a bad split.
    SummarizerError: for a call that failed for good.
  """
  targets = targets or ScaffoldTargets()
  _check_format(plan_format)

  async def build() -> dict[str, Any]:
    async with summarizer_session(summarizer) as call:
      calls = _CachedCalls(summarizer, call, cache)
      report = BookReport(book.id)
      paper = _paper_builder(summarizer, call, cache, report, None) if plan_format == "paper" else None
      return await _build_record(book, functools.partial(calls.summarize, report),
                                 record_summarizer(summarizer, targets), split, targets, summarizer, paper)

  return asyncio.run(build())


def _check_format(plan_format: str) -> None:
  if plan_format not in PLAN_FORMATS:
    raise ValueError(f"unknown plan format {plan_format!r}; expected one of {PLAN_FORMATS}")


def _is_current(record: Mapping[str, Any] | None, book: Book, split: str,
                summarizer: Mapping[str, Any], plan_format: str = "xbook") -> bool:
  """Whether an existing record is what building `book` now would produce (in `plan_format`)."""
  if plan_format == "paper":
    paper = record.get("paper") if record is not None else None
    if paper is None or paper["builder"]["version"] != paper_lib.VERSION:
      return False
  elif record is not None and "paper" in record:
    return False
  return (record is not None and record["book"]["sha256"] == book.sha256 and record["split"] == split
          and record["summarizer"] == summarizer)


def run_scaffold_build(books: Sequence[Book], summarizer: Summarizer, out_path: str | os.PathLike[str],
                       *, cache: SummaryCache | None = None, splits: Mapping[str, str] | None = None,
                       targets: ScaffoldTargets | None = None, concurrent_books: int = 1,
                       progress: bool = True, plan_format: str = "xbook") -> ScaffoldBuild:
  """Build the scaffolds of `books` into the JSONL file `out_path`, resuming what is already there.

  A book whose record in `out_path` has the same id, text (sha256), split, summarizer and targets is
  kept as it is and not rebuilt; any other record already in the file is kept too. Up to
  `concurrent_books` books are built at once (a backend with a `session()` also makes the calls of
  one book concurrently). A book that fails (it cannot be built, or a call failed for good) is
  reported with its reason and the others go on. After each book the whole file is rewritten
  atomically (records already there in their order, then new books in the order of `books`), so an
  interrupted run leaves every finished book on disk, and the cache keeps every call answered.

  Args:
    books: the books, each id once.
    summarizer: the backend that writes every summary.
    out_path: the scaffold JSONL file (created if missing).
    cache: summarizer call cache (None: no caching).
    splits: split of each book by id (None: every book is "train"); a book missing from it is an error.
    targets: target lengths per level (None: the defaults; `xbook scaffold build` passes gin's).
    concurrent_books: books built at the same time.
    progress: show a progress bar over the summaries on stderr.
    plan_format: "xbook", or "paper" to add each record's `paper` field (module docstring); a record
      kept from `out_path` must be of the same format (and paper builder version).

  Returns:
    The records now in `out_path`, in file order, and one report per book of `books`, in order.
  """
  targets = targets or ScaffoldTargets()
  _check_format(plan_format)
  split_of = _split_of_books(books, splits, concurrent_books)
  state = _read_build_state(books, split_of, Path(out_path), record_summarizer(summarizer, targets), plan_format)
  settings = _BuildSettings(summarizer, cache, targets, state.identity, plan_format, concurrent_books)
  bar = _Progress(state.todo, progress, settings.paper_calls)
  try:
    asyncio.run(_build_all(state, settings, bar))
  finally:
    bar.close()
  return ScaffoldBuild(records=state.ordered_records(), reports=[state.reports[book.id] for book in books],
                       seconds=time.monotonic() - bar.start)


def _split_of_books(books: Sequence[Book], splits: Mapping[str, str] | None,
                    concurrent_books: int) -> dict[str, str]:
  """The split of each book by id (every book "train" when `splits` is None).

  Raises:
    ValueError: for `concurrent_books` under 1, a book id given twice, or a book missing from `splits`.
  """
  if concurrent_books < 1:
    raise ValueError(f"concurrent_books must be at least 1, got {concurrent_books}")
  ids = [book.id for book in books]
  if len(set(ids)) != len(ids):
    repeated = sorted({i for i in ids if ids.count(i) > 1})
    raise ValueError(f"book ids must be unique; repeated: {repeated}")
  if splits is not None and (missing := [i for i in ids if i not in splits]):
    raise ValueError(f"no split given for book(s) {missing}")
  return {i: splits[i] if splits is not None else "train" for i in ids}


@dataclasses.dataclass
class _BuildState:
  """Where a build stands: the output file's records by book id (those read from it, then those built),
  the order the file is written in (records already there in their order, then new books in the order
  given), each book's split and report, the `summarizer` field every record is built with, and the books
  left to build (those whose record is not current)."""

  out_path: Path
  records: dict[str, dict[str, Any]]
  order: list[str]
  split_of: dict[str, str]
  reports: dict[str, BookReport]
  identity: dict[str, Any]
  todo: list[Book]

  def ordered_records(self) -> list[dict[str, Any]]:
    """The records now held, in file order."""
    return [self.records[i] for i in self.order if i in self.records]

  def save(self) -> None:
    """Rewrite the output file atomically with the records now held."""
    write_scaffolds(self.out_path, self.ordered_records())


def _read_build_state(books: Sequence[Book], split_of: Mapping[str, str], out_path: Path,
                      identity: dict[str, Any], plan_format: str) -> _BuildState:
  """The state of a build of `books` into `out_path` before any book is built: the records already in
  `out_path` (none if it is missing), the books whose record is current marked "kept" and the others to
  build (logged)."""
  records = {r["book"]["id"]: r for r in read_scaffolds(out_path)} if out_path.exists() else {}
  ids = [book.id for book in books]
  order = list(records) + [i for i in ids if i not in records]
  reports = {i: BookReport(i) for i in ids}
  todo = [b for b in books if not _is_current(records.get(b.id), b, split_of[b.id], identity, plan_format)]
  for kept in set(ids) - {b.id for b in todo}:
    reports[kept].status = "kept"
  log.info("scaffolds: %d of %d books to build, %d kept from %s",
           len(todo), len(books), len(books) - len(todo), out_path)
  return _BuildState(out_path, records, order, dict(split_of), reports, identity, todo)


@dataclasses.dataclass(frozen=True)
class _BuildSettings:
  """What every book of one build is built with (the arguments of `run_scaffold_build`)."""

  summarizer: Summarizer
  cache: SummaryCache | None
  targets: ScaffoldTargets
  identity: dict[str, Any]
  plan_format: str
  concurrent_books: int

  @property
  def paper_calls(self) -> bool:
    """Whether each book also takes the paper format's calls (the paper format from a chat backend)."""
    return self.plan_format == "paper" and hasattr(self.summarizer, "session")


async def _build_all(state: _BuildState, settings: _BuildSettings, bar: _Progress) -> None:
  """Build `state.todo`, up to `settings.concurrent_books` at a time in one summarizer session, each
  through `_build_and_save`; then wait for the calls still answering for a book that failed meanwhile,
  so that the cache keeps what they were paid for."""
  book_slots = asyncio.Semaphore(settings.concurrent_books)
  async with summarizer_session(settings.summarizer) as call:
    calls = _CachedCalls(settings.summarizer, call, settings.cache, bar)

    async def build_one(book: Book) -> None:
      async with book_slots:
        await _build_and_save(book, state, settings, call, calls, bar)

    await _all(build_one(book) for book in state.todo)
    await asyncio.gather(*calls.in_flight.values(), return_exceptions=True)


async def _build_and_save(book: Book, state: _BuildState, settings: _BuildSettings, call: Any,
                          calls: _CachedCalls, bar: _Progress) -> None:
  """Build `book`'s record into `state` and rewrite the output file; a failure (any Exception) is
  recorded in the book's report, not raised, so that the other books go on. The report gets the book's
  wall time and the progress bar the book's end (and the summaries it will no longer ask for)."""
  report = state.reports[book.id]
  start = time.monotonic()
  try:
    paper = (_paper_builder(settings.summarizer, call, settings.cache, report, bar)
             if settings.plan_format == "paper" else None)
    state.records[book.id] = await _build_record(book, functools.partial(calls.summarize, report),
                                                 settings.identity, state.split_of[book.id], settings.targets,
                                                 settings.summarizer, paper)
    state.save()
  except Exception as error:  # noqa: BLE001 - reported per book; the other books go on
    report.status, report.reason = "failed", f"{type(error).__name__}: {error}"
    log.debug("book %s failed", book.id, exc_info=True)
  report.seconds = time.monotonic() - start
  bar.book_done(report, calls_to_build(book, settings.paper_calls) - report.calls - report.cache_hits)


def build_scaffolds(books: Sequence[Book], summarizer: Summarizer, out_path: str | os.PathLike[str],
                    **kwargs: Any) -> list[dict[str, Any]]:
  """`run_scaffold_build(...)`'s records; raises ScaffoldBuildError (after building all the others)
  if any book failed."""
  build = run_scaffold_build(books, summarizer, out_path, **kwargs)
  if any(r.status == "failed" for r in build.reports):
    raise ScaffoldBuildError(build.reports)
  return build.records


def format_reports(reports: Sequence[BookReport], seconds: float | None = None) -> str:
  """The summary table of a build: a row per book, then the totals (with `seconds`, the build's wall
  time, in place of the sum of the books' times, which overlap)."""
  header = f"{'book':<16} {'status':<7} {'calls':>6} {'hits':>6} {'tokens':>10} {'seconds':>8}  reason"
  rows = [f"{r.book_id:<16} {r.status:<7} {r.calls:>6} {r.cache_hits:>6} {r.tokens:>10,} "
          f"{r.seconds:>8.1f}  {r.reason}" for r in reports]
  counts = {status: sum(r.status == status for r in reports) for status in ("built", "kept", "failed")}
  total = (f"{'total':<16} {len(reports):>7} {sum(r.calls for r in reports):>6} "
           f"{sum(r.cache_hits for r in reports):>6} {sum(r.tokens for r in reports):>10,} "
           f"{sum(r.seconds for r in reports) if seconds is None else seconds:>8.1f}  "
           + ", ".join(f"{n} {status}" for status, n in counts.items()))
  return "\n".join([header, *rows, total])
