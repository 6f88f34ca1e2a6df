"""`xbook scaffold import`: rows of the LongPage dataset (parquet) as scaffold records with a `paper` field.

LongPage (the paper's authors' dataset of about 6,000 books with plans of the released models' kind) is
distributed as parquet. This importer reads the row schema as we understand it; every column and nested
key it does not map is reported (`ImportReport.unmapped`, with how many rows had it), never dropped
silently. A nested value may be a parquet struct/list or a JSON string of one.

Row fields read (aliases after `|`):
  book_title, book_author | author, id | book_id,
  prompt | use_prompt | user_prompt                      -> the record's prompt
  book_highlight, book_tags (7), book_archetype           -> paper.preview (title: book_title)
  world_rules, writing_style                              -> paper.world_rules, paper.writing_style
  story_arcs: a list of arcs, or {"short"|"short_story_arcs", "medium"|..., "long"|...: [arcs]};
    an arc is {arc_name | name, arc_summary | summary | bullets: [str],
               chapters | number_of_chapters | chapter_count: int}
  character_archetypes: {name: [str] | str} or [{name, bullets | archetype | description}]
  book_characters: {main_characters, side_characters: [{name, description | bullets: [str] | str}]}
  book_chapters: {chapter name: chapter} or [chapter with chapter_name | name]; a chapter is
    {chapter | chapter_text | text: str, embedding_space: {axis: int} | "action: 1, ...",
     chapter_summary | summary: [str], narrative_focuses | narrative_focus: [str] | "a; b",
     scene_breakdown | scenes: [scene]},
    a scene {scene_name | name | title, scene_word_count | word_count,
             scene_embedding_space | embedding_space, narrative_focus | narrative_focuses,
             narrative_perspective, scene_summary | summary}
Derived, and stated so in `paper.sources` and the report: chapter word counts and quoted shares are
measured from the chapter texts; an arc without a chapter count gets an even share of the chapters
("approximation"); medium and long arcs missing from a single arc list repeat the short ones; more than
12 scenes in a chapter are merged pairwise (their bullets joined, at most 20); over-long bullets and
names are cut with an ellipsis. xbook's own levels are filled from the plans (premise: the highlight;
synopsis: the long arcs; chapter and scene summaries: their bullets), each chapter one xbook scene.
A row that cannot make a valid record (no chapters, not 7 tags, ...) is reported with its reason.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections import Counter
from typing import Any, Iterator, Mapping, Sequence

from xbook.books import split_for_author
from xbook.books.types import Book, Chapter, Scene, text_sha256
from xbook.scaffold import stage_protocol as sp
from xbook.scaffold import measures
from xbook.scaffold.checks import scaffold_checks
from xbook.scaffold.paper import bullet, finish
from xbook.scaffold.schema import (PAPER_SCHEMA, PAPER_SOURCE_FIELDS, SCHEMA, ScaffoldError, record_provenance,
                                   validate_scaffold)

VERSION = "longpage-import/1"

ALIASES = {
    "title": ("book_title",), "author": ("book_author", "author"), "id": ("id", "book_id"),
    "prompt": ("prompt", "use_prompt", "user_prompt"), "highlight": ("book_highlight",),
    "tags": ("book_tags",), "archetype": ("book_archetype",), "world_rules": ("world_rules",),
    "writing_style": ("writing_style",), "arcs": ("story_arcs",),
    "archetypes": ("character_archetypes",), "characters": ("book_characters",),
    "chapters": ("book_chapters",),
}
ARC_KEYS = {"name": ("arc_name", "name"), "bullets": ("arc_summary", "summary", "bullets"),
            "chapters": ("chapters", "number_of_chapters", "chapter_count")}
ARC_LEVELS = {"short": ("short", "short_story_arcs"), "medium": ("medium", "medium_story_arcs"),
              "long": ("long", "long_story_arcs")}
CHAPTER_KEYS = {"name": ("chapter_name", "name"), "text": ("chapter", "chapter_text", "text"),
                "embedding": ("embedding_space",), "summary": ("chapter_summary", "summary"),
                "focuses": ("narrative_focuses", "narrative_focus"), "scenes": ("scene_breakdown", "scenes"),
                "word_count": ("word_count", "chapter_word_count")}
SCENE_KEYS = {"title": ("scene_name", "name", "title"), "word_count": ("scene_word_count", "word_count"),
              "embedding": ("scene_embedding_space", "embedding_space"),
              "focus": ("narrative_focus", "narrative_focuses"), "perspective": ("narrative_perspective",),
              "summary": ("scene_summary", "summary")}
CHARACTER_KEYS = {"name": ("name",), "bullets": ("description", "bullets")}


class RowError(ValueError):
  """A LongPage row that cannot become a valid scaffold record."""


@dataclasses.dataclass
class ImportReport:
  """What an import did: rows read, records made, rows that failed (with why), fields not mapped
  (path -> rows that had it) and what was derived (note -> rows)."""

  rows: int = 0
  records: int = 0
  failed: list[tuple[int, str]] = dataclasses.field(default_factory=list)
  unmapped: Counter = dataclasses.field(default_factory=Counter)
  derived: Counter = dataclasses.field(default_factory=Counter)

  def format(self) -> str:
    lines = [f"longpage import: {self.records} records from {self.rows} rows, {len(self.failed)} failed"]
    lines += [f"  row {row}: {reason}" for row, reason in self.failed]
    if self.unmapped:
      lines.append("fields not mapped (rows that had them):")
      lines += [f"  {path}: {n}" for path, n in sorted(self.unmapped.items())]
    if self.derived:
      lines.append("derived rather than read (rows):")
      lines += [f"  {note}: {n}" for note, n in sorted(self.derived.items())]
    return "\n".join(lines)


def _decoded(value: Any) -> Any:
  """A JSON string of an object or list, decoded; anything else as it is."""
  if isinstance(value, str) and value.strip()[:1] in ("{", "["):
    try:
      return json.loads(value)
    except json.JSONDecodeError:
      return value
  return value


class _Row:
  """One row's values, read by alias, with the keys not read collected as unmapped."""

  def __init__(self, row: Mapping[str, Any], unmapped: set[str], derived: set[str]) -> None:
    self.row, self.unmapped, self.derived = row, unmapped, derived

  def take(self, mapping: Mapping[str, Any], aliases: Sequence[str], path: str, used: set[str]) -> Any:
    for alias in aliases:
      if alias in mapping and mapping[alias] is not None:
        used.add(alias)
        return _decoded(mapping[alias])
    return None

  def leftover(self, mapping: Mapping[str, Any], used: set[str], path: str) -> None:
    for key in mapping:
      if key not in used and mapping[key] is not None:
        self.unmapped.add(f"{path}{key}")


def _strings(value: Any, what: str) -> list[str]:
  value = _decoded(value)
  if value is None:
    return []
  if isinstance(value, str):
    return [line.lstrip("-* ").strip() for line in value.split("\n") if line.strip()]
  if isinstance(value, (list, tuple)) or hasattr(value, "tolist"):
    items = value.tolist() if hasattr(value, "tolist") else value
    return [" ".join(str(v).split()) for v in items if str(v).strip()]
  raise RowError(f"{what}: expected a list of strings, got {type(value).__name__}")


def _lines(value: Any, what: str, limits: tuple[int, int], derived: set[str]) -> list[str]:
  items = [bullet(s) for s in _strings(value, what)]
  items = [s for s in items if s]
  if len(items) > limits[1]:
    derived.add(f"{what}: kept the first {limits[1]} items")
    items = items[:limits[1]]
  if len(items) < limits[0]:
    raise RowError(f"{what}: {len(items)} items; the format needs {limits[0]}-{limits[1]}")
  return items


def _embedding(value: Any, what: str) -> dict[str, int]:
  value = _decoded(value)
  if isinstance(value, str):
    try:
      return sp.parse_embedding(value)
    except sp.StageFormatError as error:
      raise RowError(f"{what}: {error}") from None
  if not isinstance(value, Mapping):
    raise RowError(f"{what}: expected the seven axes {sp.EMBEDDING_AXES}, got {type(value).__name__}")
  missing = [a for a in sp.EMBEDDING_AXES if a not in value]
  if missing:
    raise RowError(f"{what}: missing axes {missing}")
  return {a: max(0, min(99, int(value[a]))) for a in sp.EMBEDDING_AXES}


def _focus(value: Any, what: str) -> list[str]:
  value = _decoded(value)
  items = [s.strip() for s in value.split(";")] if isinstance(value, str) else _strings(value, what)
  items = [bullet(s, sp.MAX_FOCUS_CHARS).replace(";", ",") for s in items if s.strip()][:sp.MAX_FOCUSES]
  if not items:
    raise RowError(f"{what}: no narrative focus")
  return items


def _named_entries(value: Any, what: str, row: _Row, bullet_limits: tuple[int, int]) -> list[dict[str, Any]]:
  value = _decoded(value)
  entries = []
  if isinstance(value, Mapping):
    for name, lines in value.items():
      entries.append({"name": bullet(str(name), sp.MAX_NAME_CHARS),
                      "bullets": _lines(lines, f"{what}.{name}", bullet_limits, row.derived)})
    return entries
  for i, item in enumerate(value or []):
    item = _decoded(item)
    if not isinstance(item, Mapping):
      raise RowError(f"{what}[{i}]: expected an object with a name")
    used: set[str] = set()
    name = row.take(item, ("name",), what, used)
    lines = row.take(item, ("bullets", "description", "archetype"), what, used)
    row.leftover(item, used, f"{what}[*].")
    if not name:
      raise RowError(f"{what}[{i}]: no name")
    entries.append({"name": bullet(str(name), sp.MAX_NAME_CHARS),
                    "bullets": _lines(lines, f"{what}[{i}]", bullet_limits, row.derived)})
  return entries


def _arcs(value: Any, n_chapters: int, row: _Row) -> tuple[list[dict[str, Any]], bool]:
  """(arcs, whether their chapter counts were read) of a story_arcs value."""
  value = _decoded(value)
  levels: dict[str, list[Any]] = {}
  if isinstance(value, Mapping):
    used: set[str] = set()
    for level, aliases in ARC_LEVELS.items():
      found = row.take(value, aliases, "story_arcs", used)
      if found is not None:
        levels[level] = list(found)
    row.leftover(value, used, "story_arcs.")
  else:
    levels["short"] = list(value or [])
  if not levels.get("short"):
    raise RowError("story_arcs: no arcs")
  parsed: dict[str, list[tuple[str, list[str], int | None]]] = {}
  for level, arcs in levels.items():
    parsed[level] = []
    for i, arc in enumerate(arcs):
      arc = _decoded(arc)
      if not isinstance(arc, Mapping):
        raise RowError(f"story_arcs.{level}[{i}]: expected an object")
      used = set()
      name = row.take(arc, ARC_KEYS["name"], "story_arcs", used) or f"Arc {i + 1}"
      lines = _lines(row.take(arc, ARC_KEYS["bullets"], "story_arcs", used), f"story_arcs.{level}[{i}]",
                     sp.BULLETS[level], row.derived)
      count = row.take(arc, ARC_KEYS["chapters"], "story_arcs", used)
      row.leftover(arc, used, f"story_arcs.{level}[*].")
      parsed[level].append((bullet(str(name), sp.MAX_NAME_CHARS), lines, int(count) if count else None))
  short = parsed["short"][:sp.MAX_ARCS]
  for level in ("medium", "long"):
    if level not in parsed:
      row.derived.add(f"story_arcs: {level} arcs repeat the short arcs")
      parsed[level] = short
  counts = [c for _, _, c in short]
  read = all(c is not None for c in counts) and sum(counts) == n_chapters
  if not read:
    row.derived.add("story_arcs: chapter counts shared evenly (no counts summing to the chapters)")
    base, extra = divmod(n_chapters, len(short))
    counts = [base + (k < extra) for k in range(len(short))]
  arcs = []
  for k, (name, lines, _) in enumerate(short):
    if counts[k] == 0:
      continue
    arcs.append({"name": name, "short": lines,
                 "medium": parsed["medium"][k][1] if k < len(parsed["medium"]) else lines,
                 "long": parsed["long"][k][1] if k < len(parsed["long"]) else lines, "chapters": counts[k]})
  return arcs, read


def _scenes(value: Any, chapter: str, row: _Row) -> list[dict[str, Any]]:
  scenes = []
  for i, scene in enumerate(_decoded(value) or []):
    scene = _decoded(scene)
    what = f"book_chapters[{chapter}].scene_breakdown[{i}]"
    if not isinstance(scene, Mapping):
      raise RowError(f"{what}: expected an object")
    used: set[str] = set()
    get = lambda key: row.take(scene, SCENE_KEYS[key], what, used)  # noqa: E731
    words = get("word_count")
    scenes.append({"title": bullet(str(get("title") or f"Scene {i + 1}"), sp.MAX_NAME_CHARS),
                   "n_words": int(words) if words is not None else 0,
                   "quoted_share": None, "embedding": _embedding(get("embedding"), f"{what}.embedding_space"),
                   "focus": _focus(get("focus"), f"{what}.narrative_focus"),
                   "perspective": bullet(str(get("perspective") or ""), sp.MAX_PERSPECTIVE_CHARS),
                   "summary": _lines(get("summary"), f"{what}.scene_summary", sp.BULLETS["scene_summary"],
                                     row.derived),
                   "xbook_scenes": None})
    row.leftover(scene, used, "book_chapters[*].scene_breakdown[*].")
    if not scenes[-1]["perspective"]:
      raise RowError(f"{what}: no narrative_perspective")
  if not scenes:
    raise RowError(f"book_chapters[{chapter}]: no scene_breakdown")
  while len(scenes) > sp.MAX_SCENES:
    row.derived.add(f"scene_breakdown: more than {sp.MAX_SCENES} scenes merged pairwise")
    j = min(range(len(scenes) - 1), key=lambda k: (scenes[k]["n_words"] + scenes[k + 1]["n_words"], k))
    a, b = scenes[j], scenes[j + 1]
    scenes[j:j + 2] = [dict(a, n_words=a["n_words"] + b["n_words"],
                            summary=(a["summary"] + b["summary"])[:sp.BULLETS["scene_summary"][1]])]
  return scenes


def _chapters(value: Any, row: _Row) -> list[dict[str, Any]]:
  value = _decoded(value)
  items = list(value.items()) if isinstance(value, Mapping) else [(None, c) for c in (value or [])]
  chapters = []
  for i, (key, chapter) in enumerate(items):
    chapter = _decoded(chapter)
    if not isinstance(chapter, Mapping):
      raise RowError(f"book_chapters[{i}]: expected an object")
    used: set[str] = set()
    get = lambda field: row.take(chapter, CHAPTER_KEYS[field], "book_chapters", used)  # noqa: E731
    named = get("name")
    name = bullet(str(key if key is not None else named or f"Chapter {i + 1}"), sp.MAX_NAME_CHARS)
    text = get("text")
    if not isinstance(text, str) or not text.split():
      raise RowError(f"book_chapters[{name!r}]: no chapter text")
    if get("word_count") is not None:
      row.derived.add("book_chapters: word counts measured from the text (the row's are not used)")
    text = "\n\n".join(p.strip("\n") for p in text.replace("\r\n", "\n").split("\n\n") if p.strip())
    chapters.append({"name": name, "text": text,
                     "embedding": _embedding(get("embedding"), f"book_chapters[{name!r}].embedding_space"),
                     "summary": _lines(get("summary"), f"book_chapters[{name!r}].chapter_summary",
                                       (1, 32), row.derived),
                     "focuses": _focus(get("focuses"), f"book_chapters[{name!r}].narrative_focuses"),
                     "scenes": _scenes(get("scenes"), name, row)})
    row.leftover(chapter, used, "book_chapters[*].")
  if not chapters:
    raise RowError("book_chapters: no chapters")
  return chapters


def row_record(row: Mapping[str, Any], where: str) -> tuple[dict[str, Any], set[str], set[str]]:
  """The scaffold record of one LongPage row, the fields it did not map and what was derived.

  Raises:
    RowError: for a row that cannot make a valid record, naming the field.
  """
  unmapped: set[str] = set()
  derived: set[str] = set()
  r = _Row(row, unmapped, derived)
  used: set[str] = set()
  get = lambda field: r.take(row, ALIASES[field], "", used)  # noqa: E731
  title = " ".join(str(get("title") or "").split())
  if not title:
    raise RowError("book_title: missing")
  chapters = _chapters(get("chapters"), r)
  tags = _strings(get("tags"), "book_tags")
  if len(tags) != sp.N_TAGS:
    raise RowError(f"book_tags: {len(tags)} tags; the format has exactly {sp.N_TAGS}")
  highlight, archetype = (" ".join(str(get(f) or "").split()) for f in ("highlight", "archetype"))
  if not highlight or not archetype:
    raise RowError("book_highlight and book_archetype: both needed")
  arcs, counts_read = _arcs(get("arcs"), len(chapters), r)
  archetypes = _named_entries(get("archetypes"), "character_archetypes", r, sp.BULLETS["archetype"])
  characters = _decoded(get("characters")) or {}
  cast = {}
  for side, key in (("main", "main_characters"), ("side", "side_characters")):
    cast[side] = _named_entries(characters.get(key), f"book_characters.{key}", r, sp.BULLETS["character"])
    if not cast[side]:
      raise RowError(f"book_characters.{key}: none (the format needs 1-{sp.MAX_CHARACTERS})")
  r.leftover(characters, {"main_characters", "side_characters"}, "book_characters.")
  author = " ".join(str(get("author") or "").split())
  prompt = " ".join(str(get("prompt") or "").split())
  if not prompt:
    derived.add("prompt: none in the row; 'Write the novel <title>.'")
    prompt = f"Write the novel {title}."
  row_id = get("id")
  world_rules = _lines(get("world_rules"), "world_rules", sp.BULLETS["world_rules"], derived)
  writing_style = _lines(get("writing_style"), "writing_style", sp.BULLETS["writing_style"], derived)
  r.leftover(row, used, "")

  book = _book(row_id, title, author, where, chapters)
  record = _xbook_fields(book, prompt, highlight, arcs, chapters, cast)
  paper_chapters = []
  for chapter, source in zip(chapters, book.chapters):
    quoted = round(measures.quoted_share(source.text), 4)
    paper_chapters.append({"name": chapter["name"], "n_words": source.n_words, "quoted_share": quoted,
                           "embedding": chapter["embedding"], "focuses": chapter["focuses"],
                           "summary": chapter["summary"], "scenes": chapter["scenes"]})
  sources = {field: "imported" for field in PAPER_SOURCE_FIELDS}
  sources.update({"chapters.n_words": "measured", "preview.title": "imported"})
  if not counts_read:
    sources["arcs.partition"] = "approximation"
  paper = {"schema": PAPER_SCHEMA, "builder": {"method": "import", "version": VERSION, "model": ""},
           "sources": sources,
           "preview": {"highlight": highlight, "title": title, "tags": [bullet(t) for t in tags],
                       "archetype": archetype},
           "world_rules": world_rules, "writing_style": writing_style, "arcs": arcs,
           "character_archetypes": archetypes or [{"name": "Unlisted", "bullets": ["No archetypes in the row"]}],
           "characters": cast, "chapters": paper_chapters}
  record = finish(record, paper)
  validate_scaffold(record, where=where)
  return record, unmapped, derived


def _book(row_id: Any, title: str, author: str, where: str, chapters: Sequence[Mapping[str, Any]]) -> Book:
  text = "\n\n".join(c["text"] for c in chapters)
  sha = text_sha256(text)
  book_id = f"longpage-{row_id}" if row_id not in (None, "") else f"longpage-{sha[:12]}"
  return Book(id=book_id, title=title, author=author, language="en", source=where, sha256=sha,
              chapters=tuple(Chapter(index=i, title=c["name"], scenes=(Scene(0, c["text"]),))
                             for i, c in enumerate(chapters)))


def _xbook_fields(book: Book, prompt: str, highlight: str, arcs: Sequence[Mapping[str, Any]],
                  chapters: Sequence[Mapping[str, Any]], cast: Mapping[str, Any]) -> dict[str, Any]:
  """The xbook levels of an imported book, from its plans (module docstring)."""
  text = "\n\n".join(c.text for c in book.chapters)
  characters = []
  for rank, entry in enumerate(cast["main"] + cast["side"]):
    role = "protagonist" if rank == 0 else "major" if rank < len(cast["main"]) else "minor"
    characters.append({"name": entry["name"], "aliases": [], "role": role, "description": entry["bullets"][0],
                       "mentions": text.count(entry["name"])})
  record = {"schema": SCHEMA, "book": book.metadata(),
            "split": split_for_author(book.author or book.title),
            "summarizer": {"backend": "longpage", "model": "", "prompt_version": VERSION, "params": {}},
            "provenance": record_provenance("longpage"), "prompt": prompt, "premise": highlight,
            "synopsis": " ".join(b for arc in arcs for b in arc["long"]),
            "characters": characters, "settings": [],
            "chapters": [{"index": i, "title": c["name"], "summary": " ".join(c["summary"]),
                          "scenes": [{"index": 0, "summary": " ".join(c["summary"]), "text": source.text,
                                      "n_words": source.n_words}]}
                         for i, (c, source) in enumerate(zip(chapters, book.chapters))]}
  record["checks"] = scaffold_checks(book, record)
  return record


def read_rows(path: str | os.PathLike[str], limit: int | None = None) -> Iterator[dict[str, Any]]:
  """The rows of a parquet file as dicts (nested values as Python lists and dicts), in batches."""
  import pyarrow.parquet as pq
  file = pq.ParquetFile(path)
  n = 0
  for batch in file.iter_batches(batch_size=64):
    for row in batch.to_pylist():
      if limit is not None and n >= limit:
        return
      n += 1
      yield row


def import_longpage(path: str | os.PathLike[str], limit: int | None = None
                    ) -> tuple[list[dict[str, Any]], ImportReport]:
  """Scaffold records of the rows of a LongPage parquet file, and a report of what did not map."""
  report, records = ImportReport(), []
  for i, row in enumerate(read_rows(path, limit)):
    report.rows += 1
    where = f"{os.fspath(path)}#row={i}"
    try:
      record, unmapped, derived = row_record(row, where)
    except (RowError, ScaffoldError, ValueError, TypeError) as error:
      report.failed.append((i, f"{type(error).__name__}: {error}"))
      continue
    records.append(record)
    report.records += 1
    report.unmapped.update(unmapped)
    report.derived.update(derived)
  ids = Counter(r["book"]["id"] for r in records)
  for book_id, n in ids.items():
    if n > 1:
      for k, record in enumerate(r for r in records if r["book"]["id"] == book_id):
        record["book"]["id"] = f"{book_id}-{k}"
  return records, report
