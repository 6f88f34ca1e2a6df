"""The scaffold record `xbook.scaffold/1`: its validation and its JSONL files.

One record per book (docs/architecture.md, "Scaffold record"):

  {"schema": "xbook.scaffold/1",
   "book": Book.metadata(),
   "split": "train" | "validation" | "test",
   "summarizer": {"backend", "model", "prompt_version", "params"},
   "provenance": {"date", "xbook_version", "entities"},
   "prompt": str, "premise": str, "synopsis": str,
   "characters": [{"name", "aliases", "role", "description", "mentions"}],
   "settings":   [{"name", "aliases", "role", "description", "mentions"}],
   "chapters": [{"index", "title", "summary", "scenes": [{"index", "summary", "text", "n_words"}]}],
   "checks": {"scenes_tile_chapters": bool,
              "compression": {"scene", "chapter", "synopsis", "premise"},        # words out / words in
              "max_copied_ngram": {"scene", "chapter", "synopsis", "premise"}},  # longest verbatim run
   "paper": {...}}   # optional: the paper's plan format (below)

Indices are 0-based positions; `n_words` counts whitespace-separated words.

Provenance is two fields. `summarizer` says what wrote the summaries and is part of a record's identity
(a resumed build keeps a record only if it matches): the backend, its model, the version of its prompt
templates (`prompt_version`) and its sampling parameters and length targets (`params`). `provenance`
says when and by what the record was made: `date` (ISO 8601 UTC, `YYYY-MM-DDTHH:MM:SSZ`, from
$SOURCE_DATE_EPOCH when set, for reproducible builds), `xbook_version`, and `entities`, the extractor
(or backend) that listed the characters and settings. Compare records with `comparable`, which drops
the date.

`characters` and `settings` belong with the synopsis: who and where the book is about, most mentioned
first; `role` is one of CHARACTER_ROLES or SETTING_ROLES, `aliases` the other names the text uses, and
`description` one line about the entity (see `xbook.scaffold.entities`). Either list may be empty.

`checks` are measurements of the record (see `xbook.scaffold.checks`), recorded rather than enforced.
Every record is validated when written and when read; an error names the file or record, the book and
the field path (`chapters[3].scenes[1].summary`, `characters[0].role`).

The optional `paper` field (`xbook scaffold build --format paper`, `xbook scaffold import`) holds the
plans in the format of the paper's released models (xbook.scaffold.stage_protocol renders them as their
stage stream), schema `xbook.paper/1`:

  {"schema": "xbook.paper/1",
   "builder": {"method": "extractive" | "model" | "import", "version": str, "model": str},
   "sources": {field group: "measured" | "model" | "approximation" | "imported"},   # PAPER_SOURCE_FIELDS
   "preview": {"highlight": str, "title": str, "tags": [7 str], "archetype": str},
   "world_rules": [str], "writing_style": [str],
   "arcs": [{"name", "short": [str], "medium": [str], "long": [str], "chapters": int}],
   "character_archetypes": [{"name", "bullets": [str]}],
   "characters": {"main": [{"name", "bullets"}], "side": [{"name", "bullets"}]},
   "chapters": [{"name", "n_words", "quoted_share", "embedding": {axis: 0-99}, "focuses": [str],
                 "summary": [str],
                 "scenes": [{"title", "n_words", "quoted_share", "embedding", "focus": [str],
                             "perspective", "summary": [str], "xbook_scenes": [start, end] | null}]}],
   "checks": {"scene_words_within_binning": bool, "max_dialog_gap": int | null,
              "format_problems": [str]}}

`paper.chapters[i]` is `chapters[i]`: its name is the book's heading ("Chapter N" for a chapter cut by
length), `n_words` the sum of its scenes' words. Its scenes are xbook's scenes merged to at most 12 at
scene boundaries: `xbook_scenes` is the range of `chapters[i].scenes` a scene covers, null for an
imported breakdown that has no such boundaries. `quoted_share` is the measured share of words inside
quotation marks (null where no text was measured); `embedding.dialog` is checked against it
(`checks.max_dialog_gap`). Arcs tile the chapters in order: their `chapters` counts sum to the number of
chapters. `sources` says, per field group, whether a value was measured from the text, written by a
model, approximated by the offline extractive backend, or imported (LongPage). `checks.format_problems`
lists what `xbook.scaffold.stage_protocol.check_stage` found in the record's rendered stages (empty for a
well-formed record). The limits checked here are the format's (one-line names and bullets, 7 tags,
1-12 arcs and scenes, ...); word ranges of the preview are the stage checks'.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import re
import time
from pathlib import Path
from typing import IO, Any, Callable, ContextManager, Iterable, Iterator, Mapping

from xbook import __version__
from xbook.atomic import atomic_open
from xbook.books.splits import SPLITS
from xbook.scaffold import stage_protocol

SCHEMA = "xbook.scaffold/1"
# Levels whose compression (summary words / input words) and copying a record's checks report.
COMPRESSION_LEVELS: tuple[str, ...] = ("scene", "chapter", "synopsis", "premise")

CHARACTER_ROLES: tuple[str, ...] = ("protagonist", "major", "minor")
SETTING_ROLES: tuple[str, ...] = ("primary", "secondary")

RECORD_KEYS = frozenset({"schema", "book", "split", "summarizer", "provenance", "prompt", "premise",
                         "synopsis", "characters", "settings", "chapters", "checks"})
OPTIONAL_RECORD_KEYS = frozenset({"paper"})

PAPER_SCHEMA = "xbook.paper/1"
PAPER_KEYS = frozenset({"schema", "builder", "sources", "preview", "world_rules", "writing_style", "arcs",
                        "character_archetypes", "characters", "chapters", "checks"})
PAPER_METHODS = ("extractive", "model", "import")
PAPER_SOURCES = ("measured", "model", "approximation", "imported")
# Field groups whose origin a paper record states (`paper.sources`).
PAPER_SOURCE_FIELDS = (
    "preview.highlight", "preview.title", "preview.tags", "preview.archetype", "world_rules",
    "arcs.partition", "arcs.bullets", "character_archetypes", "writing_style", "characters",
    "chapters.name", "chapters.n_words", "chapters.embedding.dialog", "chapters.embedding",
    "chapters.focuses", "chapters.summary", "scenes.boundaries", "scenes.n_words", "scenes.title",
    "scenes.embedding.dialog", "scenes.embedding", "scenes.focus", "scenes.perspective",
    "scenes.summary")
PAPER_CHAPTER_KEYS = frozenset({"name", "n_words", "quoted_share", "embedding", "focuses", "summary",
                                "scenes"})
PAPER_SCENE_KEYS = frozenset({"title", "n_words", "quoted_share", "embedding", "focus", "perspective",
                              "summary", "xbook_scenes"})
PAPER_CHECKS_KEYS = frozenset({"scene_words_within_binning", "max_dialog_gap", "format_problems"})
SUMMARIZER_KEYS = frozenset({"backend", "model", "prompt_version", "params"})
PROVENANCE_KEYS = frozenset({"date", "xbook_version", "entities"})
ENTITY_KEYS = frozenset({"name", "aliases", "role", "description", "mentions"})
CHAPTER_KEYS = frozenset({"index", "title", "summary", "scenes"})
SCENE_KEYS = frozenset({"index", "summary", "text", "n_words"})
CHECKS_KEYS = frozenset({"scenes_tile_chapters", "compression", "max_copied_ngram"})

_SHA256 = re.compile(r"[0-9a-f]{64}")
_ISO_UTC = "%Y-%m-%dT%H:%M:%SZ"


class ScaffoldError(ValueError):
  """A scaffold record (or a line of a scaffold file) that does not follow the schema."""


def _shown(value: Any) -> str:
  text = repr(value)
  return f"{type(value).__name__} {text if len(text) <= 60 else text[:57] + '...'}"


class _Validator:
  """Checks one record, naming it and the field path in every error."""

  def __init__(self, record: Any, where: str) -> None:
    self.record = record
    book = record.get("book") if isinstance(record, dict) else None
    book_id = book.get("id") if isinstance(book, dict) else None
    self.name = f"{where} (book {book_id})" if isinstance(book_id, str) and book_id else where

  def fail(self, path: str, expected: str, got: Any) -> None:
    raise ScaffoldError(f"{self.name}: {path}: expected {expected}, got {_shown(got)}")

  def mapping(self, value: Any, path: str, keys: frozenset[str], exact: bool = True) -> None:
    if not isinstance(value, dict):
      self.fail(path, "an object", value)
    missing = sorted(keys - value.keys())
    if missing:
      raise ScaffoldError(f"{self.name}: {path}: missing field(s) {missing}")
    unknown = sorted(value.keys() - keys)
    if exact and unknown:
      raise ScaffoldError(f"{self.name}: {path}: unknown field(s) {unknown}; "
                          f"expected exactly {sorted(keys)}")

  def string(self, value: Any, path: str, non_empty: bool = False) -> None:
    if not isinstance(value, str):
      self.fail(path, "a string", value)
    if non_empty and not value.strip():
      self.fail(path, "a non-empty string", value)

  def integer(self, value: Any, path: str, equal_to: int | None = None, meaning: str = "") -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
      self.fail(path, "an integer >= 0", value)
    if equal_to is not None and value != equal_to:
      self.fail(path, f"{equal_to} ({meaning})", value)

  def items(self, value: Any, path: str, non_empty: bool = True) -> None:
    if not isinstance(value, list) or (non_empty and not value):
      self.fail(path, "a non-empty list" if non_empty else "a list", value)

  def validate(self) -> None:
    record = self.record
    self.mapping(record, "record", RECORD_KEYS, exact=False)
    unknown = sorted(record.keys() - RECORD_KEYS - OPTIONAL_RECORD_KEYS)
    if unknown:
      raise ScaffoldError(f"{self.name}: record: unknown field(s) {unknown}; expected exactly "
                          f"{sorted(RECORD_KEYS)} and optionally {sorted(OPTIONAL_RECORD_KEYS)}")
    if record["schema"] != SCHEMA:
      self.fail("schema", repr(SCHEMA), record["schema"])
    if record["split"] not in SPLITS:
      self.fail("split", f"one of {SPLITS}", record["split"])
    self.summarizer(record["summarizer"])
    self.provenance(record["provenance"])
    for field in ("prompt", "premise", "synopsis"):
      self.string(record[field], field, non_empty=True)
    self.entities(record["characters"], "characters", CHARACTER_ROLES)
    self.entities(record["settings"], "settings", SETTING_ROLES)
    self.chapters(record["chapters"])
    self.book(record["book"], record["chapters"])
    self.checks(record["checks"])
    if "paper" in record:
      _PaperValidator(self).validate(record["paper"], record["chapters"])

  def summarizer(self, summarizer: Any) -> None:
    self.mapping(summarizer, "summarizer", SUMMARIZER_KEYS)
    self.string(summarizer["backend"], "summarizer.backend", non_empty=True)
    self.string(summarizer["model"], "summarizer.model")
    self.string(summarizer["prompt_version"], "summarizer.prompt_version")
    if not isinstance(summarizer["params"], dict):
      self.fail("summarizer.params", "an object", summarizer["params"])

  def provenance(self, provenance: Any) -> None:
    self.mapping(provenance, "provenance", PROVENANCE_KEYS)
    date = provenance["date"]
    try:
      datetime.datetime.strptime(date, _ISO_UTC)
    except (TypeError, ValueError):
      self.fail("provenance.date", "an ISO 8601 UTC time like '2026-01-31T12:00:00Z'", date)
    self.string(provenance["xbook_version"], "provenance.xbook_version", non_empty=True)
    self.string(provenance["entities"], "provenance.entities", non_empty=True)

  def entities(self, entities: Any, path: str, roles: tuple[str, ...]) -> None:
    self.items(entities, path, non_empty=False)
    for i, entity in enumerate(entities):
      where = f"{path}[{i}]"
      self.mapping(entity, where, ENTITY_KEYS)
      self.string(entity["name"], f"{where}.name", non_empty=True)
      self.items(entity["aliases"], f"{where}.aliases", non_empty=False)
      for j, alias in enumerate(entity["aliases"]):
        self.string(alias, f"{where}.aliases[{j}]", non_empty=True)
      if entity["role"] not in roles:
        self.fail(f"{where}.role", f"one of {roles}", entity["role"])
      self.string(entity["description"], f"{where}.description")
      self.integer(entity["mentions"], f"{where}.mentions")

  def chapters(self, chapters: Any) -> None:
    self.items(chapters, "chapters")
    for i, chapter in enumerate(chapters):
      path = f"chapters[{i}]"
      self.mapping(chapter, path, CHAPTER_KEYS)
      self.integer(chapter["index"], f"{path}.index", equal_to=i, meaning="its position")
      self.string(chapter["title"], f"{path}.title")
      self.string(chapter["summary"], f"{path}.summary", non_empty=True)
      self.items(chapter["scenes"], f"{path}.scenes")
      for j, scene in enumerate(chapter["scenes"]):
        scene_path = f"{path}.scenes[{j}]"
        self.mapping(scene, scene_path, SCENE_KEYS)
        self.integer(scene["index"], f"{scene_path}.index", equal_to=j, meaning="its position")
        self.string(scene["summary"], f"{scene_path}.summary", non_empty=True)
        self.string(scene["text"], f"{scene_path}.text", non_empty=True)
        self.integer(scene["n_words"], f"{scene_path}.n_words", equal_to=len(scene["text"].split()),
                     meaning="the number of words in its text")

  def book(self, book: Any, chapters: list[dict[str, Any]]) -> None:
    # Book.metadata() belongs to the books layer: require what a scaffold relies on, allow additions.
    self.mapping(book, "book", frozenset({"id", "title", "author", "language", "source", "sha256",
                                          "n_chapters", "n_words", "chapters_by_length"}), exact=False)
    self.string(book["id"], "book.id", non_empty=True)
    for field in ("title", "author", "language", "source"):
      self.string(book[field], f"book.{field}")
    if not isinstance(book["sha256"], str) or not _SHA256.fullmatch(book["sha256"]):
      self.fail("book.sha256", "64 lowercase hex digits", book["sha256"])
    self.integer(book["n_chapters"], "book.n_chapters", equal_to=len(chapters),
                 meaning="the number of chapters")
    self.integer(book["n_words"], "book.n_words",
                 equal_to=sum(s["n_words"] for c in chapters for s in c["scenes"]),
                 meaning="the sum of the scenes' n_words")
    if not isinstance(book["chapters_by_length"], bool):
      self.fail("book.chapters_by_length", "a boolean", book["chapters_by_length"])

  def checks(self, checks: Any) -> None:
    self.mapping(checks, "checks", CHECKS_KEYS)
    if not isinstance(checks["scenes_tile_chapters"], bool):
      self.fail("checks.scenes_tile_chapters", "a boolean", checks["scenes_tile_chapters"])
    compression = checks["compression"]
    self.mapping(compression, "checks.compression", frozenset(COMPRESSION_LEVELS))
    for level in COMPRESSION_LEVELS:
      ratio = compression[level]
      if (not isinstance(ratio, (int, float)) or isinstance(ratio, bool) or not math.isfinite(ratio)
          or ratio < 0):
        self.fail(f"checks.compression.{level}", "a finite number >= 0", ratio)
    copied = checks["max_copied_ngram"]
    self.mapping(copied, "checks.max_copied_ngram", frozenset(COMPRESSION_LEVELS))
    for level in COMPRESSION_LEVELS:
      self.integer(copied[level], f"checks.max_copied_ngram.{level}")


class _PaperValidator:
  """Checks the `paper` field of a record against schema `xbook.paper/1` and the format's limits."""

  def __init__(self, validator: _Validator) -> None:
    self.v = validator

  def line(self, value: Any, path: str, max_chars: int | None = None) -> None:
    """A non-empty one-line string without framing tokens, of at most `max_chars` characters."""
    self.v.string(value, path, non_empty=True)
    if "\n" in value or value != value.strip():
      self.v.fail(path, "one line without surrounding spaces", value)
    if any(token in value for token in stage_protocol.FRAMING_TOKENS):
      self.v.fail(path, f"text without the framing tokens {stage_protocol.FRAMING_TOKENS}", value)
    if max_chars is not None and len(value) > max_chars:
      self.v.fail(path, f"at most {max_chars} characters ({len(value)})", value)

  def lines(self, value: Any, path: str, limits: tuple[int, int],
            max_chars: int = stage_protocol.MAX_BULLET_CHARS) -> None:
    self.v.items(value, path, non_empty=False)
    if not limits[0] <= len(value) <= limits[1]:
      self.v.fail(path, f"{limits[0]}-{limits[1]} items", value)
    for i, item in enumerate(value):
      self.line(item, f"{path}[{i}]", max_chars)

  def named(self, value: Any, path: str, count: tuple[int, int], bullets: tuple[int, int]) -> None:
    self.v.items(value, path, non_empty=False)
    if not count[0] <= len(value) <= count[1]:
      self.v.fail(path, f"{count[0]}-{count[1]} entries", value)
    for i, entry in enumerate(value):
      self.v.mapping(entry, f"{path}[{i}]", frozenset({"name", "bullets"}))
      self.line(entry["name"], f"{path}[{i}].name", stage_protocol.MAX_NAME_CHARS)
      self.lines(entry["bullets"], f"{path}[{i}].bullets", bullets)

  def embedding(self, value: Any, path: str) -> None:
    self.v.mapping(value, path, frozenset(stage_protocol.EMBEDDING_AXES))
    for axis in stage_protocol.EMBEDDING_AXES:
      score = value[axis]
      if not isinstance(score, int) or isinstance(score, bool) or not 0 <= score <= 99:
        self.v.fail(f"{path}.{axis}", "an integer 0-99", score)

  def share(self, value: Any, path: str) -> None:
    if value is not None and (not isinstance(value, (int, float)) or isinstance(value, bool)
                              or not 0 <= value <= 1):
      self.v.fail(path, "null or a number 0-1 (the share of quoted words)", value)

  def focus(self, value: Any, path: str) -> None:
    self.lines(value, path, (1, stage_protocol.MAX_FOCUSES), stage_protocol.MAX_FOCUS_CHARS)
    for i, item in enumerate(value):
      if ";" in item:
        self.v.fail(f"{path}[{i}]", "an item without ';' (it separates the items)", item)

  def validate(self, paper: Any, chapters: list[dict[str, Any]]) -> None:
    v = self.v
    v.mapping(paper, "paper", PAPER_KEYS)
    if paper["schema"] != PAPER_SCHEMA:
      v.fail("paper.schema", repr(PAPER_SCHEMA), paper["schema"])
    v.mapping(paper["builder"], "paper.builder", frozenset({"method", "version", "model"}))
    if paper["builder"]["method"] not in PAPER_METHODS:
      v.fail("paper.builder.method", f"one of {PAPER_METHODS}", paper["builder"]["method"])
    for field in ("version", "model"):
      v.string(paper["builder"][field], f"paper.builder.{field}")
    v.mapping(paper["sources"], "paper.sources", frozenset(PAPER_SOURCE_FIELDS))
    for field, source in paper["sources"].items():
      if source not in PAPER_SOURCES:
        v.fail(f"paper.sources.{field}", f"one of {PAPER_SOURCES}", source)
    self.preview(paper["preview"])
    self.lines(paper["world_rules"], "paper.world_rules", stage_protocol.BULLETS["world_rules"])
    self.lines(paper["writing_style"], "paper.writing_style", stage_protocol.BULLETS["writing_style"])
    self.named(paper["character_archetypes"], "paper.character_archetypes",
               (1, stage_protocol.MAX_ARCHETYPES), stage_protocol.BULLETS["archetype"])
    v.mapping(paper["characters"], "paper.characters", frozenset({"main", "side"}))
    for side in ("main", "side"):
      self.named(paper["characters"][side], f"paper.characters.{side}", (1, stage_protocol.MAX_CHARACTERS),
                 stage_protocol.BULLETS["character"])
    self.arcs(paper["arcs"], len(chapters))
    v.items(paper["chapters"], "paper.chapters")
    if len(paper["chapters"]) != len(chapters):
      v.fail("paper.chapters", f"{len(chapters)} chapters (one per record chapter)", paper["chapters"])
    for i, (chapter, source) in enumerate(zip(paper["chapters"], chapters)):
      self.chapter(chapter, f"paper.chapters[{i}]", source)
    self.checks(paper["checks"])

  def preview(self, preview: Any) -> None:
    self.v.mapping(preview, "paper.preview", frozenset({"highlight", "title", "tags", "archetype"}))
    for field in ("highlight", "title", "archetype"):
      self.line(preview[field], f"paper.preview.{field}")
    self.lines(preview["tags"], "paper.preview.tags", (stage_protocol.N_TAGS, stage_protocol.N_TAGS))

  def arcs(self, arcs: Any, n_chapters: int) -> None:
    self.v.items(arcs, "paper.arcs")
    if len(arcs) > stage_protocol.MAX_ARCS:
      self.v.fail("paper.arcs", f"1-{stage_protocol.MAX_ARCS} arcs", arcs)
    for i, arc in enumerate(arcs):
      path = f"paper.arcs[{i}]"
      self.v.mapping(arc, path, frozenset({"name", "short", "medium", "long", "chapters"}))
      self.line(arc["name"], f"{path}.name", stage_protocol.MAX_NAME_CHARS)
      for field in ("short", "medium", "long"):
        self.lines(arc[field], f"{path}.{field}", stage_protocol.BULLETS[field])
      count = arc["chapters"]
      if (not isinstance(count, int) or isinstance(count, bool)
          or not 1 <= count <= stage_protocol.MAX_CHAPTERS_PER_ARC):
        self.v.fail(f"{path}.chapters", f"an integer 1-{stage_protocol.MAX_CHAPTERS_PER_ARC}", count)
    total = sum(a["chapters"] for a in arcs)
    if total != n_chapters:
      raise ScaffoldError(f"{self.v.name}: paper.arcs: their chapter counts sum to {total}; the record has "
                          f"{n_chapters} chapters (arcs tile the chapters in order)")

  def chapter(self, chapter: Any, path: str, source: dict[str, Any]) -> None:
    v = self.v
    v.mapping(chapter, path, PAPER_CHAPTER_KEYS)
    self.line(chapter["name"], f"{path}.name", stage_protocol.MAX_NAME_CHARS)
    v.integer(chapter["n_words"], f"{path}.n_words", equal_to=sum(s["n_words"] for s in source["scenes"]),
              meaning="the words of its record chapter")
    self.share(chapter["quoted_share"], f"{path}.quoted_share")
    self.embedding(chapter["embedding"], f"{path}.embedding")
    self.focus(chapter["focuses"], f"{path}.focuses")
    self.lines(chapter["summary"], f"{path}.summary", (1, stage_protocol.PROFILES["14b_full_book"].chapter_summary_bullets))
    scenes = chapter["scenes"]
    v.items(scenes, f"{path}.scenes")
    if len(scenes) > stage_protocol.MAX_SCENES:
      v.fail(f"{path}.scenes", f"1-{stage_protocol.MAX_SCENES} scenes (merge xbook's scenes)", scenes)
    for j, scene in enumerate(scenes):
      self.scene(scene, f"{path}.scenes[{j}]")
    self.tiling(scenes, path, source)

  def scene(self, scene: Any, path: str) -> None:
    self.v.mapping(scene, path, PAPER_SCENE_KEYS)
    self.line(scene["title"], f"{path}.title", stage_protocol.MAX_NAME_CHARS)
    self.v.integer(scene["n_words"], f"{path}.n_words")
    self.share(scene["quoted_share"], f"{path}.quoted_share")
    self.embedding(scene["embedding"], f"{path}.embedding")
    self.focus(scene["focus"], f"{path}.focus")
    self.line(scene["perspective"], f"{path}.perspective", stage_protocol.MAX_PERSPECTIVE_CHARS)
    self.lines(scene["summary"], f"{path}.summary", stage_protocol.BULLETS["scene_summary"])

  def tiling(self, scenes: list[dict[str, Any]], path: str, source: dict[str, Any]) -> None:
    """Scenes with `xbook_scenes` must tile the record chapter's scenes, words matching."""
    ranges = [s["xbook_scenes"] for s in scenes]
    if all(r is None for r in ranges):
      return
    start = 0
    for j, (scene, span) in enumerate(zip(scenes, ranges)):
      where = f"{path}.scenes[{j}].xbook_scenes"
      if (not isinstance(span, list) or len(span) != 2 or span[0] != start or not span[0] < span[1]
          or span[1] > len(source["scenes"])):
        self.v.fail(where, f"[{start}, end) with end <= {len(source['scenes'])} (scenes tile the chapter's "
                    "xbook scenes in order; all or none null)", span)
      self.v.integer(scene["n_words"], f"{path}.scenes[{j}].n_words",
                     equal_to=sum(s["n_words"] for s in source["scenes"][span[0]:span[1]]),
                     meaning="the words of the xbook scenes it covers")
      start = span[1]
    if start != len(source["scenes"]):
      self.v.fail(f"{path}.scenes", f"scenes covering all {len(source['scenes'])} xbook scenes", ranges)

  def checks(self, checks: Any) -> None:
    self.v.mapping(checks, "paper.checks", PAPER_CHECKS_KEYS)
    if not isinstance(checks["scene_words_within_binning"], bool):
      self.v.fail("paper.checks.scene_words_within_binning", "a boolean", checks["scene_words_within_binning"])
    if checks["max_dialog_gap"] is not None:
      self.v.integer(checks["max_dialog_gap"], "paper.checks.max_dialog_gap")
    self.v.items(checks["format_problems"], "paper.checks.format_problems", non_empty=False)
    for i, problem in enumerate(checks["format_problems"]):
      self.v.string(problem, f"paper.checks.format_problems[{i}]", non_empty=True)


def record_provenance(entities: str) -> dict[str, str]:
  """The `provenance` field of a record made now, its characters and settings listed by `entities`.

  The date is $SOURCE_DATE_EPOCH (seconds since 1970, UTC) when that is set, else the current time.
  """
  epoch = os.environ.get("SOURCE_DATE_EPOCH")
  seconds = int(epoch) if epoch else time.time()
  date = datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc).strftime(_ISO_UTC)
  return {"date": date, "xbook_version": __version__, "entities": entities}


def comparable(record: Mapping[str, Any]) -> dict[str, Any]:
  """`record` without `provenance.date`: two builds of the same book compare equal this way."""
  provenance = {k: v for k, v in record["provenance"].items() if k != "date"}
  return {**record, "provenance": provenance}


def validate_scaffold(record: Any, where: str = "scaffold record") -> None:
  """Raise ScaffoldError unless `record` follows schema `xbook.scaffold/1`.

  Args:
    record: the decoded record.
    where: names the record in the message (a file and line, a position ...); the book id follows.

  Raises:
    ScaffoldError: naming the record, the field path (e.g. `chapters[3].scenes[1].summary`) and what
      was expected there.
  """
  _Validator(record, where).validate()


def write_scaffolds(path: str | os.PathLike[str], records: Iterable[Mapping[str, Any]]) -> Path:
  """Validate `records` and write them as JSONL to `path`, atomically (temporary file + rename).

  On any error the file at `path` is left as it was.

  Returns:
    The path written.
  """
  path = Path(path)
  with atomic_open(path) as f:
    for i, record in enumerate(records):
      validate_scaffold(record, where=f"{path} record {i}")
      f.write(json.dumps(record, ensure_ascii=False) + "\n")
  return path


def read_scaffolds(path: str | os.PathLike[str],
                   open_fn: Callable[[str], ContextManager[IO[str]]] | None = None) -> Iterator[dict[str, Any]]:
  """The validated records of a scaffold JSONL file, in order (blank lines are skipped).

  Args:
    path: the file.
    open_fn: opens `path` for reading text (default: the built-in open, UTF-8); e.g. tf.io.gfile.GFile
      for gs:// paths. Every reader of scaffold files (the CLI, the seqio tasks, the online input
      pipeline, held-out perplexity) reads through here or `scaffold_lines`, so each names a bad record
      the same way.

  Raises:
    ScaffoldError: for a line that is not JSON or not a valid record, naming the file and line number,
      the book (when the record names one) and the field path.
  """
  return (record for _, record in scaffold_lines(path, open_fn))


def scaffold_lines(path: str | os.PathLike[str], open_fn: Callable[[str], ContextManager[IO[str]]] | None = None,
                   *, validate: bool = True) -> Iterator[tuple[str, dict[str, Any]]]:
  """(the line without its surrounding whitespace, its record) of each non-blank line of a scaffold JSONL
  file, in order: the one reader of the files (read_scaffolds keeps the records).

  `validate=False` skips the schema check, for files the data path validated already this process
  (xbook.data.records.validate_scaffold_files); a line that is not JSON is still a ScaffoldError.
  """
  opened = open_fn(os.fspath(path)) if open_fn else open(path, encoding="utf-8")
  with opened as f:
    for line_number, line in enumerate(f, start=1):
      if isinstance(line, bytes):
        line = line.decode("utf-8")
      line = line.strip()
      if not line:
        continue
      try:
        record = json.loads(line)
      except json.JSONDecodeError as error:
        truncated = ("; the line ends before its record does (cut short by an interrupted write?)"
                     if not line.endswith("}") else "")
        raise ScaffoldError(f"{path}:{line_number}: not a JSON line: {error}{truncated}") from None
      if validate:
        validate_scaffold(record, where=f"{path}:{line_number}")
      yield line, record
