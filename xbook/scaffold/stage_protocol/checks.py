"""Checks of one generated stage against the format and the book (`check_stage`, `StageContext`).

Each problem names the stage, the line or section and what is required, so that it can be shown to a model
that is asked again (xbook.infer.paper_writer).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

from xbook.scaffold.stage_protocol.framing import FRAMING_TOKENS
from xbook.scaffold.stage_protocol.parsing import _parse_book_plan, _parse_stage
from xbook.scaffold.stage_protocol.profiles import DEFAULT_PROFILE, Profile, TEXT_ROLES, get_profile


@dataclasses.dataclass(frozen=True)
class StageContext:
  """What a stage must agree with; every field is optional (None: not checked).

  Attributes:
    profile: the profile whose formats apply.
    n_chapters: the book's number of chapters (book_plan: the arcs' chapter counts must sum to it).
    chapters: the book plan's chapters, each {"name", "word_count", "embedding"}: chapter plans, scene
      breakdowns and chapter texts must name them (and plans repeat their word count and embedding).
    chapter: the index (0 = first) of the chapter a scene breakdown or chapter text is about.
    n_scenes: the number of scenes a scene breakdown (or the 14b first chapter plan) must have.
    scene_word_counts: the binned word count of each of those scenes.
  """

  profile: str = DEFAULT_PROFILE
  n_chapters: int | None = None
  chapters: Sequence[Mapping[str, Any]] | None = None
  chapter: int | None = None
  n_scenes: int | None = None
  scene_word_counts: Sequence[int] | None = None


def context_from_stages(stages: Sequence[tuple[str, str]], profile: str | Profile,
                        n_chapters: int | None = None) -> StageContext:
  """The context in which the next stage of a stream is checked: the book plan's chapters (when the
  stream has a valid book plan) and the chapter the next per-chapter stage is about."""
  profile = get_profile(profile)
  planned = None
  for role, content in stages:
    if role == "book_plan" and profile.full_book:
      fields, problems = _parse_book_plan(content, profile)
      planned = fields["chapters"] if not problems else None
  texts = sum(role in TEXT_ROLES for role, _ in stages)
  return StageContext(profile=profile.name, n_chapters=n_chapters, chapters=planned, chapter=texts)


def check_stage(role: str, text: str, context: StageContext | Mapping[str, Any] | None = None) -> list[str]:
  """What is malformed in one generated stage; [] when it is well formed and agrees with `context`.

  Each problem names the stage, the line or section and what the format or the book requires (a
  missing section, a count of bullets out of range, an arc count that does not sum to the book's
  chapters, a chapter name or word count that differs from the book plan, ...), so that it can be
  shown to a model that is asked again.

  Args:
    role: the stage's role (ROLES).
    text: its content, as the stream would hold it (see `trim_stage_text`).
    context: a StageContext, a mapping of its fields, or None.
  """
  if context is None:
    context = StageContext()
  elif not isinstance(context, StageContext):
    context = StageContext(**context)
  profile = get_profile(context.profile)
  if role not in profile.roles:
    return [f"{role}: profile {profile.name} has no such stage; its stages are {profile.roles}"]
  for token in FRAMING_TOKENS:
    if token in text:
      return [f"{role}: the content holds the framing token {token}"]
  fields, problems = _parse_stage(role, text, profile)
  return problems + _agreement(role, fields, context, profile)


def _agreement(role: str, fields: Any, context: StageContext, profile: Profile) -> list[str]:
  """Problems of a parsed stage against the book (counts, names, word counts)."""
  problems = []
  planned = list(context.chapters) if context.chapters is not None else None
  if role == "book_plan" and profile.full_book:
    total = sum(a["chapters"] for a in fields.get("arcs", []))
    names = [c["name"] for c in fields.get("chapters", [])]
    if context.n_chapters is not None:
      if total != context.n_chapters:
        problems.append(f"book_plan: the arcs' chapter counts sum to {total}; the book has "
                        f"{context.n_chapters} chapters")
      if len(names) != context.n_chapters:
        problems.append(f"book_plan: Chapter Names lists {len(names)} chapters; the book has "
                        f"{context.n_chapters}")
    if planned is not None and names != [c["name"] for c in planned]:
      problems.append(f"book_plan: the chapter names {names[:5]}... differ from the book's chapters "
                      f"{[c['name'] for c in planned][:5]}...")
  if role == "full_book_chapters_plan" and planned is not None:
    expected = planned[1:]
    if len(fields) != len(expected):
      problems.append(f"full_book_chapters_plan: {len(fields)} chapter blocks; the book plan has "
                      f"{len(expected)} chapters after the first")
    for block, plan in zip(fields, expected):
      problems += _block_agrees("full_book_chapters_plan", block, plan)
  if role == "first_chapter_plan" and planned:
    problems += _block_agrees(role, fields, planned[0])
  chapter = 0 if role.startswith("first_chapter") else context.chapter
  if role in ("first_chapter_scene_breakdown", "scene_breakdown") + TEXT_ROLES:
    if planned is not None and chapter is not None:
      if chapter >= len(planned):
        problems.append(f"{role}: the book plan has {len(planned)} chapters, none at position {chapter + 1}")
      elif fields.get("name") != planned[chapter]["name"]:
        problems.append(f"{role}: chapter {fields.get('name')!r}; the book plan's chapter "
                        f"{chapter + 1} is {planned[chapter]['name']!r}")
  scenes = fields.get("scenes") if isinstance(fields, Mapping) else None
  if scenes is not None:
    if context.n_scenes is not None and len(scenes) != context.n_scenes:
      problems.append(f"{role}: {len(scenes)} scenes; the chapter has {context.n_scenes}")
    if context.scene_word_counts is not None:
      got = [s["word_count"] for s in scenes]
      if got != list(context.scene_word_counts)[:len(got)] or len(got) != len(context.scene_word_counts):
        problems.append(f"{role}: scene word counts {got}; the scenes measure {list(context.scene_word_counts)}")
  return problems


def _block_agrees(role: str, block: Mapping[str, Any], plan: Mapping[str, Any]) -> list[str]:
  problems = []
  for field in ("name", "word_count", "embedding"):
    if plan.get(field) not in (None, {}) and block.get(field) != plan[field]:
      problems.append(f"{role}: chapter {block.get('name')!r}: {field} {block.get(field)!r} differs from the "
                      f"book plan's {plan[field]!r}")
  return problems
