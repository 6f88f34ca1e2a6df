"""Rendering: a document (the package docstring) or a scaffold record as the stages of a profile.

Blank lines between blocks are what pagestorm's guided generation writes; `render` writes them so, and
`to_document` (xbook.scaffold.stage_protocol.parsing) gives a rendered document back.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from xbook.scaffold.stage_protocol.framing import frame
from xbook.scaffold.stage_protocol.measures import bin_word_count, format_embedding
from xbook.scaffold.stage_protocol.profiles import Profile, get_profile


def _bullets(items: Sequence[str]) -> list[str]:
  return [f"- {item}" for item in items]


def _chapter_block(chapter: Mapping[str, Any]) -> list[str]:
  return [f"### {chapter['name']}", f"**Word Count:** {chapter['word_count']}",
          f"**Embedding Space:** {format_embedding(chapter['embedding'])}",
          f"**Narrative Focuses:** {'; '.join(chapter['focuses'])}", "**Chapter Summary:**",
          *_bullets(chapter["summary"])]


def _scene_blocks(scenes: Sequence[Mapping[str, Any]]) -> list[str]:
  lines = []
  for k, scene in enumerate(scenes, start=1):
    if k > 1:
      lines.append("")
    lines += [f"#### Scene {k}: {scene['title']}", f"**Word Count:** {scene['word_count']}",
              f"**Embedding Space:** {format_embedding(scene['embedding'])}",
              f"**Narrative Focus:** {'; '.join(scene['focus'])}",
              f"**Narrative Perspective:** {scene['perspective']}", "**Scene Summary:**",
              *_bullets(scene["summary"])]
  return lines


def _preview_lines(preview: Mapping[str, Any]) -> list[str]:
  return ["## Book Highlight", preview["highlight"], "", "## Book Title", preview["title"], "",
          "## Book Tags", *_bullets(preview["tags"]), "", "## Book Archetype", preview["archetype"]]


def _arc_section(title: str, arcs: Sequence[Mapping[str, Any]], field: str) -> list[str]:
  lines = [f"## {title}"]
  for n, arc in enumerate(arcs, start=1):
    if n > 1:
      lines.append("")
    lines += [f"### Arc {n}: {arc['name']}", *_bullets(arc[field])]
  return lines


def _named_blocks(blocks: Sequence[Mapping[str, Any]], level: str) -> list[str]:
  lines = []
  for i, block in enumerate(blocks):
    if i:
      lines.append("")
    lines += [f"{level} {block['name']}", *_bullets(block["bullets"])]
  return lines


def _arc_chapters(document: Mapping[str, Any]) -> list[tuple[int, Mapping[str, Any], list[Mapping[str, Any]]]]:
  """(arc number, arc, its chapters) in order; arcs tile the chapters."""
  out, start = [], 0
  for n, arc in enumerate(document["arcs"], start=1):
    out.append((n, arc, list(document["chapters"][start:start + arc["chapters"]])))
    start += arc["chapters"]
  return out


def _per_arc_section(title: str, document: Mapping[str, Any], lines_of_arc) -> list[str]:
  lines = [f"## {title}"]
  for n, arc, chapters in _arc_chapters(document):
    if n > 1:
      lines.append("")
    lines += [f"### Arc {n}: {arc['name']}", *lines_of_arc(chapters, arc)]
  return lines


def render_book_preview(document: Mapping[str, Any]) -> str:
  return "\n".join(_preview_lines(document["preview"]))


def render_book_plan(document: Mapping[str, Any], profile: str | Profile) -> str:
  """The book plan of `profile` (the 24b's begins with the preview; the 14b's ends with the chapter
  names, embedding spaces and word counts per arc)."""
  profile = get_profile(profile)
  archetypes = ["## Character Archetypes", *_named_blocks(document["character_archetypes"], "###")]
  style = ["## Writing Style", *_bullets(document["writing_style"])]
  rules = ["## World Rules", *_bullets(document["world_rules"])]
  if not profile.full_book:
    sections = [_preview_lines(document["preview"]), rules,
                _arc_section("Story Arcs", document["arcs"], "short"), archetypes, style]
  else:
    sections = [
        rules, _arc_section("Short Story Arcs", document["arcs"], "short"), archetypes, style,
        _arc_section("Medium Story Arcs", document["arcs"], "medium"),
        _arc_section("Long Story Arcs", document["arcs"], "long"),
        _per_arc_section("Number of Chapters", document, lambda chapters, arc: [f"* {arc['chapters']}"]),
    ]
  text = "\n\n".join("\n".join(section) for section in sections)
  return text + "\n\n" + render_book_plan_chapter_sections(document) if profile.full_book else text


def render_book_plan_chapter_sections(document: Mapping[str, Any]) -> str:
  """The 14b book plan's last three sections (Chapter Names, Chapters Embedding Space, Chapters Word
  Count), from the document's arcs (their names and chapter counts) and chapters (name, embedding,
  word count): what the scaffold builder measures itself rather than asks a model for."""
  sections = [
      _per_arc_section("Chapter Names", document, lambda chapters, arc: _bullets([c["name"] for c in chapters])),
      _per_arc_section("Chapters Embedding Space", document, lambda chapters, arc: [
          line for c in chapters for line in (f"#### {c['name']}", format_embedding(c["embedding"]))]),
      _per_arc_section("Chapters Word Count", document, lambda chapters, arc: [
          line for c in chapters for line in (f"#### {c['name']}", str(c["word_count"]))]),
  ]
  return "\n\n".join("\n".join(section) for section in sections)


def render_first_chapter_plan(document: Mapping[str, Any], profile: str | Profile) -> str:
  """The first chapter's plan block (the 14b adds its scene breakdown under `### Scene Breakdown`)."""
  chapter = document["chapters"][0]
  lines = _chapter_block(chapter)
  if get_profile(profile).full_book:
    lines += ["", "### Scene Breakdown", *_scene_blocks(chapter["scenes"])]
  return "\n".join(lines)


def render_scene_breakdown(chapter: Mapping[str, Any]) -> str:
  return "\n".join([f"### {chapter['name']}", *_scene_blocks(chapter["scenes"])])


def render_chapter_text(chapter: Mapping[str, Any]) -> str:
  return f"### {chapter['name']}\n```\n{chapter['text']}\n```"


def render_full_book_chapters_plan(document: Mapping[str, Any]) -> str:
  return "\n\n".join("\n".join(_chapter_block(c)) for c in document["chapters"][1:])


def render_characters_list(document: Mapping[str, Any]) -> str:
  characters = document["characters"]
  return "\n".join(["### Main Characters", *_named_blocks(characters["main"], "####"), "",
                    "### Side Characters", *_named_blocks(characters["side"], "####")])


def render_document(document: Mapping[str, Any], profile: str | Profile) -> list[tuple[str, str]]:
  """The (role, content) stages of a document in `profile`'s order (module docstring)."""
  profile = get_profile(profile)
  chapters = document["chapters"]
  first = chapters[0]
  if not profile.full_book:
    return [("prompt", document["prompt"]), ("book_plan", render_book_plan(document, profile)),
            ("first_chapter_plan", render_first_chapter_plan(document, profile)),
            ("first_chapter_scene_breakdown", render_scene_breakdown(first)),
            ("first_chapter_text", render_chapter_text(first))]
  stages = [("prompt", document["prompt"]), ("book_preview", render_book_preview(document)),
            ("book_plan", render_book_plan(document, profile)),
            ("first_chapter_plan", render_first_chapter_plan(document, profile)),
            ("first_chapter_text", render_chapter_text(first))]
  if len(chapters) > 1:
    stages.append(("full_book_chapters_plan", render_full_book_chapters_plan(document)))
  stages.append(("book_characters_list", render_characters_list(document)))
  for chapter in chapters[1:]:
    stages += [("scene_breakdown", render_scene_breakdown(chapter)), ("chapter_text", render_chapter_text(chapter))]
  return stages


def stage_document(record: Mapping[str, Any], profile: str | Profile) -> dict[str, Any]:
  """What `profile`'s stream of a scaffold record holds, as a document (module docstring): the record's
  `paper` field with word counts binned, the prompt, and each chapter's text (its scenes' texts, a
  blank line apart); the 24b's subset for that profile.

  Raises:
    ValueError: for a record without a `paper` field (build it with `xbook scaffold build --format paper`).
  """
  profile = get_profile(profile)
  paper = record.get("paper")
  if not isinstance(paper, Mapping):
    raise ValueError(f"scaffold record of book {record.get('book', {}).get('id')!r} has no `paper` field: "
                     "build it with `xbook scaffold build --format paper` or import it with "
                     "`xbook scaffold import`")
  chapters = []
  for chapter, source in zip(paper["chapters"], record["chapters"]):
    scenes = [{"title": s["title"], "word_count": bin_word_count(s["n_words"]),
               "embedding": dict(s["embedding"]), "focus": list(s["focus"]),
               "perspective": s["perspective"], "summary": list(s["summary"])} for s in chapter["scenes"]]
    chapters.append({"name": chapter["name"], "word_count": bin_word_count(chapter["n_words"]),
                     "embedding": dict(chapter["embedding"]), "focuses": list(chapter["focuses"]),
                     "summary": list(chapter["summary"]), "scenes": scenes,
                     "text": "\n\n".join(s["text"] for s in source["scenes"])})
  document = {"prompt": record["prompt"], "preview": dict(paper["preview"]),
              "world_rules": list(paper["world_rules"]),
              "arcs": [dict(a) for a in paper["arcs"]],
              "character_archetypes": [dict(a) for a in paper["character_archetypes"]],
              "writing_style": list(paper["writing_style"]),
              "characters": {k: [dict(c) for c in v] for k, v in paper["characters"].items()},
              "chapters": chapters}
  return _profile_subset(document, profile)


def _profile_subset(document: dict[str, Any], profile: Profile) -> dict[str, Any]:
  if profile.full_book:
    return document
  subset = {k: v for k, v in document.items() if k != "characters"}
  subset["arcs"] = [{"name": a["name"], "short": a["short"]} for a in document["arcs"]]
  subset["chapters"] = document["chapters"][:1]
  return subset


def render_stages(record: Mapping[str, Any], profile: str | Profile) -> list[tuple[str, str]]:
  """The (role, content) stages of a scaffold record with a `paper` field, in `profile`'s order."""
  return render_document(stage_document(record, profile), profile)


def render(record: Mapping[str, Any], profile: str | Profile) -> str:
  """The whole stream of a scaffold record in `profile`, byte for byte as the released models read it."""
  return "".join(frame(role, content) for role, content in render_stages(record, profile))
