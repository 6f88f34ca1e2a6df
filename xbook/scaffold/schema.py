"""The scaffold record `xbook.scaffold/1`: its validation and its JSONL files.

One record per book (DESIGN.md, "Scaffold"):

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
              "max_copied_ngram": {"scene", "chapter", "synopsis", "premise"}}}  # longest verbatim run

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
"""

from __future__ import annotations

import datetime
import json
import math
import os
import re
import time
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

from xbook import __version__
from xbook.atomic import atomic_open

SCHEMA = "xbook.scaffold/1"
SPLITS: tuple[str, ...] = ("train", "validation", "test")
# Levels whose compression (summary words / input words) and copying a record's checks report.
COMPRESSION_LEVELS: tuple[str, ...] = ("scene", "chapter", "synopsis", "premise")

CHARACTER_ROLES: tuple[str, ...] = ("protagonist", "major", "minor")
SETTING_ROLES: tuple[str, ...] = ("primary", "secondary")

RECORD_KEYS = frozenset({"schema", "book", "split", "summarizer", "provenance", "prompt", "premise",
                         "synopsis", "characters", "settings", "chapters", "checks"})
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
    self.mapping(record, "record", RECORD_KEYS)
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


def read_scaffolds(path: str | os.PathLike[str]) -> Iterator[dict[str, Any]]:
  """The validated records of a scaffold JSONL file, in order (blank lines are skipped).

  Raises:
    ScaffoldError: for a line that is not JSON or not a valid record, naming the file and line number.
  """
  with open(path, encoding="utf-8") as f:
    for line_number, line in enumerate(f, start=1):
      if not line.strip():
        continue
      try:
        record = json.loads(line)
      except json.JSONDecodeError as error:
        raise ScaffoldError(f"{path}:{line_number}: not a JSON line: {error}") from None
      validate_scaffold(record, where=f"{path}:{line_number}")
      yield record
