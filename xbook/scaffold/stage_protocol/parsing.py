"""Parsing: the fields of one stage's content (`parse_stage`) and of a stream's stages (`to_document`).

Problems are collected, not raised one at a time, so that an error or a check (checks.py) lists them all;
the parser accepts blank lines anywhere and ignores trailing spaces (the package docstring's formats).
"""

from __future__ import annotations

import re
from typing import Any, Mapping, NamedTuple, Sequence

from xbook.scaffold.stage_protocol.framing import StageFormatError, _check_order
from xbook.scaffold.stage_protocol.measures import bin_word_count, parse_embedding, preview_words
from xbook.scaffold.stage_protocol.profiles import (
    ARCHETYPE_WORDS, BULLETS, DEFAULT_PROFILE, HIGHLIGHT_WORDS, MAX_ARCHETYPES, MAX_ARCS, MAX_BULLET_CHARS,
    MAX_CHAPTERS_PER_ARC, MAX_CHARACTERS, MAX_FOCUSES, MAX_FOCUS_CHARS, MAX_NAME_CHARS, MAX_PERSPECTIVE_CHARS,
    MAX_SCENES, N_TAGS, PLAN_SECTIONS_14B, PLAN_SECTIONS_24B, PREVIEW_SECTIONS, PROFILES, Profile, ROLES, TAG_WORDS,
    TEXT_ROLES, TITLE_WORDS, get_profile)


class _Reader:
  """The lines of one stage's content, read with problems collected (not raised)."""

  def __init__(self, text: str, role: str) -> None:
    self.lines = [line.rstrip() for line in text.split("\n")]
    self.i = 0
    self.role = role
    self.problems: list[str] = []

  def skip_blank(self) -> None:
    while self.i < len(self.lines) and not self.lines[self.i]:
      self.i += 1

  def peek(self) -> str | None:
    self.skip_blank()
    return self.lines[self.i] if self.i < len(self.lines) else None

  def take(self) -> str | None:
    line = self.peek()
    if line is not None:
      self.i += 1
    return line

  def problem(self, message: str) -> None:
    self.problems.append(f"{self.role}: line {min(self.i, len(self.lines))}: {message}"
                         if self.lines else f"{self.role}: {message}")

  def expect(self, wanted: str) -> bool:
    line = self.take()
    if line != wanted:
      self.problem(f"expected {wanted!r}, found {line!r}")
      return False
    return True

  def field(self, label: str) -> str | None:
    """The value of a `**Label:** value` line."""
    line = self.take()
    prefix = f"**{label}:** "
    if line is None or not line.startswith(prefix):
      self.problem(f"expected a line {prefix!r}..., found {line!r}")
      return None
    return line[len(prefix):].strip()

  def bullets(self, what: str, limits: tuple[int, int]) -> list[str]:
    items = []
    while (line := self.peek()) is not None and line.startswith("- "):
      self.i += 1
      item = line[2:].strip()
      if not item or len(line) - 2 > MAX_BULLET_CHARS:
        self.problem(f"a bullet of {what} must have 1-{MAX_BULLET_CHARS} characters, got {len(line) - 2}")
      items.append(item)
    if not limits[0] <= len(items) <= limits[1]:
      self.problem(f"{what} must have {limits[0]}-{limits[1]} bullets, got {len(items)}")
    return items

  def header(self, level: int) -> str | None:
    """The text of the next line if it is a header of exactly `level` hashes, else None (not consumed)."""
    line = self.peek()
    prefix = "#" * level + " "
    if line is not None and line.startswith(prefix):
      self.i += 1
      return line[len(prefix):].strip()
    return None

  def end(self) -> None:
    line = self.peek()
    if line is not None:
      self.problem(f"unexpected text after the stage's last section: {line[:80]!r}")


def _check_name(reader: _Reader, name: str, what: str) -> None:
  if not name or len(name) > MAX_NAME_CHARS:
    reader.problem(f"{what} must have 1-{MAX_NAME_CHARS} characters, got {len(name)}")


def _read_focuses(reader: _Reader, value: str | None, what: str) -> list[str]:
  if value is None:
    return []
  items = [item.strip() for item in value.split(";")]
  if not 1 <= len(items) <= MAX_FOCUSES or any(not item or len(item) > MAX_FOCUS_CHARS for item in items):
    reader.problem(f"{what} must be 1-{MAX_FOCUSES} items of 1-{MAX_FOCUS_CHARS} characters separated by "
                   f"'; ', got {value[:120]!r}")
  return items


def _read_embedding(reader: _Reader, value: str | None) -> dict[str, int]:
  if value is None:
    return {}
  try:
    return parse_embedding(value)
  except StageFormatError as error:
    reader.problem(str(error))
    return {}


def _read_word_count(reader: _Reader, value: str | None) -> int | None:
  if value is None:
    return None
  if not re.fullmatch(r"[0-9]{2,5}", value):
    reader.problem(f"a word count is 2-5 digits, got {value!r}")
    return None
  if bin_word_count(int(value)) != int(value):
    reader.problem(f"a word count is a bin value (tens below 100, fifties below 1,000, hundreds below 10,000, "
                   f"five hundreds above), got {value!r}; the nearest is {bin_word_count(int(value))}")
  return int(value)


def _read_chapter_block(reader: _Reader, max_bullets: int) -> dict[str, Any] | None:
  name = reader.header(3)
  if name is None:
    reader.problem(f"expected a chapter block '### <chapter name>', found {reader.peek()!r}")
    return None
  _check_name(reader, name, "a chapter name")
  word_count = _read_word_count(reader, reader.field("Word Count"))
  embedding = _read_embedding(reader, reader.field("Embedding Space"))
  focuses = _read_focuses(reader, reader.field("Narrative Focuses"), "narrative focuses")
  reader.expect("**Chapter Summary:**")
  summary = reader.bullets(f"the summary of chapter {name!r}", (1, max_bullets))
  return {"name": name, "word_count": word_count, "embedding": embedding, "focuses": focuses,
          "summary": summary}


def _read_scene_blocks(reader: _Reader) -> list[dict[str, Any]]:
  scenes = []
  while (line := reader.peek()) is not None and line.startswith("#### "):
    reader.take()
    match = re.fullmatch(r"#### Scene ([0-9]+): (.*)", line)
    if not match or int(match.group(1)) != len(scenes) + 1:
      reader.problem(f"expected '#### Scene {len(scenes) + 1}: <title>', found {line!r}")
      title = line[5:]
    else:
      title = match.group(2).strip()
    _check_name(reader, title, "a scene title")
    word_count = _read_word_count(reader, reader.field("Word Count"))
    embedding = _read_embedding(reader, reader.field("Embedding Space"))
    focus = _read_focuses(reader, reader.field("Narrative Focus"), "a narrative focus")
    perspective = reader.field("Narrative Perspective") or ""
    if not 1 <= len(perspective) <= MAX_PERSPECTIVE_CHARS:
      reader.problem(f"a narrative perspective has 1-{MAX_PERSPECTIVE_CHARS} characters, got {len(perspective)}")
    reader.expect("**Scene Summary:**")
    summary = reader.bullets(f"the summary of scene {len(scenes) + 1}", BULLETS["scene_summary"])
    scenes.append({"title": title, "word_count": word_count, "embedding": embedding, "focus": focus,
                   "perspective": perspective, "summary": summary})
  if not 1 <= len(scenes) <= MAX_SCENES:
    reader.problem(f"a scene breakdown has 1-{MAX_SCENES} scenes, got {len(scenes)}")
  return scenes


def _read_sections(reader: _Reader, names: Sequence[str]) -> dict[str, _Reader]:
  """Split the content at its `## ` headers into one reader per section; problems for missing,
  unknown or out-of-order sections."""
  found: list[tuple[str, list[str]]] = []
  preamble = []
  for line in reader.lines:
    if line.startswith("## "):
      found.append((line[3:].strip(), []))
    elif found:
      found[-1][1].append(line)
    elif line:
      preamble.append(line)
  if preamble:
    reader.problem(f"text before the first section: {preamble[0][:80]!r}")
  got = [name for name, _ in found]
  if got != list(names):
    missing = [n for n in names if n not in got]
    unknown = [n for n in got if n not in names]
    detail = []
    if missing:
      detail.append(f"missing {missing}")
    if unknown:
      detail.append(f"unknown {unknown}")
    if not missing and not unknown:
      detail.append(f"out of order: {got}")
    reader.problem(f"sections must be {list(names)}: " + "; ".join(detail))
  sections = {}
  for name, lines in found:
    if name in names and name not in sections:
      sub = _Reader("\n".join(lines), f"{reader.role} / {name}")
      sub.problems = reader.problems
      sections[name] = sub
  return sections


def _one_line(reader: _Reader, what: str, words: tuple[int, int], tag: bool = False) -> str:
  lines = []
  while reader.peek() is not None:
    lines.append(reader.take())
  if len(lines) != 1:
    reader.problem(f"{what} must be one line, got {len(lines)}")
  text = " ".join(lines)
  _check_preview_words(reader, text, what, words, tag)
  return text


def _check_preview_words(reader: _Reader, text: str, what: str, words: tuple[int, int], tag: bool) -> None:
  n, bad = preview_words(text, tag)
  if not words[0] <= n <= words[1]:
    reader.problem(f"{what} must have {words[0]}-{words[1]} words, got {n}")
  if bad:
    reader.problem(f"{what} has words outside the format's letters and punctuation: {bad[:5]}")


def _read_preview(sections: Mapping[str, _Reader]) -> dict[str, Any]:
  preview: dict[str, Any] = {}
  if "Book Highlight" in sections:
    preview["highlight"] = _one_line(sections["Book Highlight"], "the book highlight", HIGHLIGHT_WORDS)
  if "Book Title" in sections:
    preview["title"] = _one_line(sections["Book Title"], "the book title", TITLE_WORDS)
  if "Book Tags" in sections:
    tags_reader = sections["Book Tags"]
    tags = tags_reader.bullets("the book tags", (N_TAGS, N_TAGS))
    for tag in tags:
      _check_preview_words(tags_reader, tag, f"tag {tag!r}", TAG_WORDS, tag=True)
    tags_reader.end()
    preview["tags"] = tags
  if "Book Archetype" in sections:
    preview["archetype"] = _one_line(sections["Book Archetype"], "the book archetype", ARCHETYPE_WORDS)
  return preview


def _read_arcs(reader: _Reader, limits: tuple[int, int], body) -> list[tuple[str, Any]]:
  """[(arc name, body(reader))] of an arc section; arcs are numbered 1.. in order."""
  arcs = []
  while (line := reader.peek()) is not None:
    reader.take()
    match = re.fullmatch(r"### Arc ([0-9]+): (.+)", line)
    if not match or int(match.group(1)) != len(arcs) + 1:
      reader.problem(f"expected '### Arc {len(arcs) + 1}: <name>', found {line!r}")
      break
    name = match.group(2).strip()
    _check_name(reader, name, "an arc name")
    arcs.append((name, body(reader, name)))
  if not 1 <= len(arcs) <= limits[1]:
    reader.problem(f"an arc section has 1-{limits[1]} arcs, got {len(arcs)}")
  return arcs


def _read_arc_bullets(reader: _Reader, limits: tuple[int, int]) -> list[tuple[str, list[str]]]:
  return _read_arcs(reader, (1, MAX_ARCS), lambda r, name: r.bullets(f"arc {name!r}", limits))


def _read_named_blocks(reader: _Reader, level: int, what: str, count: tuple[int, int],
                       bullets: tuple[int, int], stop: str | None = None) -> list[dict[str, Any]]:
  blocks = []
  while (line := reader.peek()) is not None and line != stop:
    name = reader.header(level)
    if name is None:
      reader.problem(f"expected '{'#' * level} <name>' of {what}, found {line!r}")
      reader.take()
      continue
    _check_name(reader, name, f"a name of {what}")
    blocks.append({"name": name, "bullets": reader.bullets(f"{what} {name!r}", bullets)})
  if not count[0] <= len(blocks) <= count[1]:
    reader.problem(f"{what} must have {count[0]}-{count[1]} entries, got {len(blocks)}")
  return blocks


def _parse_book_plan(text: str, profile: Profile) -> tuple[dict[str, Any], list[str]]:
  """The fields of a book plan and the problems found; the 14b's chapter lists are returned as
  `chapters` ([{name, word_count, embedding}], in order)."""
  reader = _Reader(text, "book_plan")
  sections = _read_sections(reader, PLAN_SECTIONS_14B if profile.full_book else PLAN_SECTIONS_24B)
  out = _read_plan_lists(sections, profile)
  if not profile.full_book:
    if "Story Arcs" in sections:
      out["arcs"] = [{"name": n, "short": b} for n, b in _read_arc_bullets(sections["Story Arcs"], BULLETS["short"])]
    return out, reader.problems
  arc_sections = _read_arc_sections_14b(sections)
  out["arcs"] = _arcs_14b(reader, arc_sections)
  out["chapters"] = _plan_chapters_14b(reader, arc_sections)
  return out, reader.problems


def _read_plan_lists(sections: Mapping[str, _Reader], profile: Profile) -> dict[str, Any]:
  """The fields of a book plan that both profiles have, from its `sections` present (a 24b plan's preview
  first), in the order they are read: preview, world rules, character archetypes, writing style."""
  out: dict[str, Any] = {}
  if not profile.full_book:
    out["preview"] = _read_preview(sections)
  if "World Rules" in sections:
    out["world_rules"] = sections["World Rules"].bullets("the world rules", BULLETS["world_rules"])
    sections["World Rules"].end()
  if "Character Archetypes" in sections:
    out["character_archetypes"] = _read_named_blocks(sections["Character Archetypes"], 3,
                                                     "character archetypes", (1, MAX_ARCHETYPES),
                                                     BULLETS["archetype"])
  if "Writing Style" in sections:
    out["writing_style"] = sections["Writing Style"].bullets("the writing style", BULLETS["writing_style"])
    sections["Writing Style"].end()
  return out


class _ArcSections14b(NamedTuple):
  """The per-arc sections of a 14b book plan as read, each [(arc name, value)] in order ([] if absent).

  Attributes:
    bullets: {"short", "medium", "long": [(arc name, bullets)]} of the story arc sections present.
    counts: Number of Chapters, [(arc name, chapter count)].
    names: Chapter Names, [(arc name, [chapter name])].
    embeddings: Chapters Embedding Space, [(arc name, [(chapter name, embedding)])].
    words: Chapters Word Count, [(arc name, [(chapter name, word count)])].
  """

  bullets: dict[str, list[tuple[str, list[str]]]]
  counts: list[tuple[str, int]]
  names: list[tuple[str, list[str]]]
  embeddings: list[tuple[str, list[tuple[str, Any]]]]
  words: list[tuple[str, list[tuple[str, Any]]]]


def _read_arc_sections_14b(sections: Mapping[str, _Reader]) -> _ArcSections14b:
  """Read the per-arc sections of a 14b book plan present in `sections` (problems go to their readers)."""
  bullets = {}
  for field, title in (("short", "Short Story Arcs"), ("medium", "Medium Story Arcs"), ("long", "Long Story Arcs")):
    if title in sections:
      bullets[field] = _read_arc_bullets(sections[title], BULLETS[field])
  counts = []
  if "Number of Chapters" in sections:
    counts = _read_arcs(sections["Number of Chapters"], (1, MAX_ARCS), _read_arc_count)
  names = embeddings = words = []
  if "Chapter Names" in sections:
    names = _read_arcs(sections["Chapter Names"], (1, MAX_ARCS), lambda r, name: [
        item for item in r.bullets(f"the chapter names of arc {name!r}", (1, MAX_CHAPTERS_PER_ARC))])
  if "Chapters Embedding Space" in sections:
    embeddings = _read_arcs(sections["Chapters Embedding Space"], (1, MAX_ARCS),
                            lambda r, name: _read_arc_chapter_values(r, name, "embedding", _read_embedding))
  if "Chapters Word Count" in sections:
    words = _read_arcs(sections["Chapters Word Count"], (1, MAX_ARCS),
                       lambda r, name: _read_arc_chapter_values(r, name, "word count", _read_bare_word_count))
  return _ArcSections14b(bullets, counts, names, embeddings, words)


def _arcs_14b(reader: _Reader, read: _ArcSections14b) -> list[dict[str, Any]]:
  """The `arcs` of a 14b plan ([{name, short, medium, long, chapters}], in the short story arcs' order);
  a section whose arcs differ from the short story arcs' is a problem."""
  titles = {field: [n for n, _ in arcs] for field, arcs in
            [*read.bullets.items(), ("count", read.counts), ("names", read.names), ("embedding", read.embeddings),
             ("word_count", read.words)]}
  reference = titles.get("short", [])
  for field, got in titles.items():
    if got != reference:
      reader.problem(f"the arcs of the {field} section {got} differ from the short story arcs {reference}")
  arcs = []
  for i, name in enumerate(reference):
    arc: dict[str, Any] = {"name": name}
    for field in ("short", "medium", "long"):
      arc[field] = read.bullets[field][i][1] if field in read.bullets and i < len(read.bullets[field]) else []
    arc["chapters"] = read.counts[i][1] if i < len(read.counts) else 0
    arcs.append(arc)
  return arcs


def _plan_chapters_14b(reader: _Reader, read: _ArcSections14b) -> list[dict[str, Any]]:
  """The chapters of a 14b plan ([{name, embedding, word_count}], arc by arc in the Chapter Names order); an
  arc whose chapter count, embeddings or word counts do not match its chapter names is a problem."""
  names, embeddings, words, counts = read.names, read.embeddings, read.words, read.counts
  plan_chapters = []
  for i in range(len(names)):
    arc_names = names[i][1]
    arc_embeddings = embeddings[i][1] if i < len(embeddings) else []
    arc_words = words[i][1] if i < len(words) else []
    count = counts[i][1] if i < len(counts) else None
    if count is not None and len(arc_names) != count:
      reader.problem(f"arc {names[i][0]!r} names {len(arc_names)} chapters; its Number of Chapters says {count}")
    for field, values in (("embedding", arc_embeddings), ("word count", arc_words)):
      if [n for n, _ in values] != arc_names:
        reader.problem(f"the chapters of arc {names[i][0]!r} in its {field} section "
                       f"{[n for n, _ in values]} differ from its chapter names {arc_names}")
    for j, chapter_name in enumerate(arc_names):
      plan_chapters.append({"name": chapter_name,
                            "embedding": arc_embeddings[j][1] if j < len(arc_embeddings) else {},
                            "word_count": arc_words[j][1] if j < len(arc_words) else None})
  return plan_chapters


def _read_arc_count(reader: _Reader, name: str) -> int:
  line = reader.take()
  match = re.fullmatch(r"\* ([0-9]+)", line or "")
  if not match or not 1 <= int(match.group(1)) <= MAX_CHAPTERS_PER_ARC:
    reader.problem(f"the chapter count of arc {name!r} must read '* K' with K 1-{MAX_CHAPTERS_PER_ARC}, "
                   f"found {line!r}")
    return 0
  return int(match.group(1))


def _read_bare_word_count(reader: _Reader, value: str) -> int | None:
  return _read_word_count(reader, value)


def _read_arc_chapter_values(reader: _Reader, arc: str, what: str, read_value) -> list[tuple[str, Any]]:
  values = []
  while (name := reader.header(4)) is not None:
    value = reader.take()
    values.append((name, read_value(reader, value or "")))
  if not values:
    reader.problem(f"arc {arc!r} lists no chapter {what}")
  return values


def _parse_characters(text: str) -> tuple[dict[str, Any], list[str]]:
  reader = _Reader(text, "book_characters_list")
  out = {}
  if reader.expect("### Main Characters"):
    out["main"] = _read_named_blocks(reader, 4, "main characters", (1, MAX_CHARACTERS),
                                     BULLETS["character"], stop="### Side Characters")
  if reader.expect("### Side Characters"):
    out["side"] = _read_named_blocks(reader, 4, "side characters", (1, MAX_CHARACTERS), BULLETS["character"])
  reader.end()
  return out, reader.problems


def _parse_scene_breakdown(text: str, role: str) -> tuple[dict[str, Any], list[str]]:
  reader = _Reader(text, role)
  name = reader.header(3)
  if name is None:
    reader.problem(f"expected '### <chapter name>', found {reader.peek()!r}")
  else:
    _check_name(reader, name, "a chapter name")
  scenes = _read_scene_blocks(reader)
  reader.end()
  return {"name": name, "scenes": scenes}, reader.problems


def _parse_first_chapter_plan(text: str, profile: Profile) -> tuple[dict[str, Any], list[str]]:
  reader = _Reader(text, "first_chapter_plan")
  blocks = [_read_chapter_block(reader, profile.chapter_summary_bullets)]
  if profile.full_book:
    reader.expect("### Scene Breakdown")
    if blocks[0] is not None:
      blocks[0]["scenes"] = _read_scene_blocks(reader)
  else:
    while reader.peek() is not None and len(blocks) < profile.first_chapter_plan_blocks:
      blocks.append(_read_chapter_block(reader, profile.chapter_summary_bullets))
  reader.end()
  return (blocks[0] or {}), reader.problems


def _parse_chapters_plan(text: str) -> tuple[list[dict[str, Any]], list[str]]:
  reader = _Reader(text, "full_book_chapters_plan")
  chapters = []
  while reader.peek() is not None:
    block = _read_chapter_block(reader, PROFILES["14b_full_book"].chapter_summary_bullets)
    if block is None:
      break
    chapters.append(block)
  reader.end()
  return chapters, reader.problems


def _parse_chapter_text(text: str, role: str) -> tuple[dict[str, Any], list[str]]:
  problems = []
  head, _, rest = text.partition("\n")
  opening, _, body = rest.partition("\n")
  if not head.startswith("### ") or not head[4:].strip():
    problems.append(f"{role}: the first line must be '### <chapter name>', found {head[:80]!r}")
  if opening != "```":
    problems.append(f"{role}: the second line must be ``` (the prose sits in a fenced block), found "
                    f"{opening[:80]!r}")
  if body.endswith("\n```"):
    body = body[:-4]
  elif body == "```":
    body = ""
  else:
    problems.append(f"{role}: the prose must end with a line ``` (closing its block)")
  if not body.strip():
    problems.append(f"{role}: the chapter has no prose")
  return {"name": head[4:].strip(), "text": body}, problems


def parse_stage(role: str, text: str, profile: str | Profile = DEFAULT_PROFILE) -> dict[str, Any]:
  """The fields of one stage's content (as in a document).

  Raises:
    StageFormatError: listing every problem found (sections, lines, limits).
  """
  fields, problems = _parse_stage(role, text, get_profile(profile))
  if problems:
    raise StageFormatError("; ".join(problems))
  return fields


def _parse_stage(role: str, text: str, profile: Profile) -> tuple[Any, list[str]]:
  if role == "prompt":
    return {"prompt": text}, ([] if text.strip() else ["prompt: empty"])
  if role == "book_preview":
    reader = _Reader(text, role)
    preview = _read_preview(_read_sections(reader, PREVIEW_SECTIONS))
    return {"preview": preview}, reader.problems
  if role == "book_plan":
    return _parse_book_plan(text, profile)
  if role == "first_chapter_plan":
    return _parse_first_chapter_plan(text, profile)
  if role in ("first_chapter_scene_breakdown", "scene_breakdown"):
    return _parse_scene_breakdown(text, role)
  if role in TEXT_ROLES:
    return _parse_chapter_text(text, role)
  if role == "full_book_chapters_plan":
    return _parse_chapters_plan(text)
  if role == "book_characters_list":
    return _parse_characters(text)
  raise ValueError(f"unknown stage role {role!r}; roles are {ROLES}")


def to_document(stages: Sequence[tuple[str, str]], profile: str | Profile) -> dict[str, Any]:
  """The document (module docstring) of a complete stream's stages; `render_document` gives the same
  stages back.

  Raises:
    StageFormatError: for stages out of the profile's order or with malformed content.
  """
  profile = get_profile(profile)
  _check_order([role for role, _ in stages], profile)
  document: dict[str, Any] = {"chapters": []}
  problems: list[str] = []
  for role, content in stages:
    fields, found = _parse_stage(role, content, profile)
    problems += found
    _merge(document, role, fields, profile)
  if problems:
    raise StageFormatError("; ".join(problems))
  return document


def _merge(document: dict[str, Any], role: str, fields: Any, profile: Profile) -> None:
  chapters = document["chapters"]
  if role in ("prompt", "book_preview"):
    document.update(fields)
  elif role == "book_plan":
    plan = dict(fields)
    planned = plan.pop("chapters", [])
    document.update(plan)
    for entry in planned:
      chapters.append({"name": entry["name"], "word_count": entry["word_count"],
                       "embedding": entry["embedding"]})
  elif role == "first_chapter_plan":
    if not chapters:
      chapters.append({})
    chapters[0].update(fields)
  elif role == "first_chapter_scene_breakdown":
    chapters[0]["scenes"] = fields["scenes"]
  elif role == "full_book_chapters_plan":
    for i, block in enumerate(fields, start=1):
      while len(chapters) <= i:
        chapters.append({})
      chapters[i].update(block)
  elif role == "book_characters_list":
    document["characters"] = fields
  elif role in TEXT_ROLES:
    _next_chapter(chapters, "text")["text"] = fields["text"]
  elif role == "scene_breakdown":
    _next_chapter(chapters, "scenes")["scenes"] = fields["scenes"]


def _next_chapter(chapters: list[dict[str, Any]], field: str) -> dict[str, Any]:
  for chapter in chapters:
    if field not in chapter:
      return chapter
  chapters.append({})
  return chapters[-1]
