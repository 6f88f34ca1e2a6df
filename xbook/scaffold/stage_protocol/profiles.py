"""Profiles of the stage protocol and the limits of its format.

Profiles (`PROFILES`; per pagestorm `protocol.py`, `profiles.py` and `orchestrator.py`):
  24b_first_chapter  prompt, book_plan, first_chapter_plan, first_chapter_scene_breakdown,
                     first_chapter_text; 32,768 tokens of context.
  14b_full_book      prompt, book_preview, book_plan, first_chapter_plan, first_chapter_text,
                     full_book_chapters_plan, book_characters_list, then for every later chapter
                     scene_breakdown and chapter_text; 262,144 tokens of context.
Each `StageSpec` carries its role, the segment kind xbook trains it as (xbook.data.trajectory), and
pagestorm's generation budget (max tokens) and sampling temperature.
The limits below are those of the package docstring's formats (per pagestorm `artifacts_14b.py` and
`artifacts_24b.py`).
"""

from __future__ import annotations

import dataclasses
from typing import Mapping

EMBEDDING_AXES = ("action", "dialog", "world_building", "exposition", "romantic", "erotic", "pacing")

# Limits of the format (per pagestorm `artifacts_14b.py` / `artifacts_24b.py`).
MAX_BULLET_CHARS = 300
MAX_NAME_CHARS = 120
MAX_PERSPECTIVE_CHARS = 200
MAX_FOCUS_CHARS = 65
MAX_FOCUSES = 7
MAX_ARCS = 12
MAX_CHAPTERS_PER_ARC = 99
MAX_SCENES = 12
N_TAGS = 7
HIGHLIGHT_WORDS = (55, 140)
ARCHETYPE_WORDS = (45, 190)
TITLE_WORDS = (1, 8)
TAG_WORDS = (1, 8)
BULLETS = {"world_rules": (1, 90), "short": (1, 20), "medium": (1, 40), "long": (1, 80),
           "archetype": (1, 10), "writing_style": (1, 40), "scene_summary": (1, 20),
           "character": (1, 20)}
MAX_ARCHETYPES = 32
MAX_CHARACTERS = 20  # per section (main, side)

PREVIEW_SECTIONS = ("Book Highlight", "Book Title", "Book Tags", "Book Archetype")
PLAN_SECTIONS_24B = PREVIEW_SECTIONS + ("World Rules", "Story Arcs", "Character Archetypes",
                                        "Writing Style")
PLAN_SECTIONS_14B = ("World Rules", "Short Story Arcs", "Character Archetypes", "Writing Style",
                     "Medium Story Arcs", "Long Story Arcs", "Number of Chapters", "Chapter Names",
                     "Chapters Embedding Space", "Chapters Word Count")
ROLES = ("prompt", "book_preview", "book_plan", "first_chapter_plan", "first_chapter_scene_breakdown",
         "first_chapter_text", "full_book_chapters_plan", "book_characters_list", "scene_breakdown",
         "chapter_text")
TEXT_ROLES = ("first_chapter_text", "chapter_text")


@dataclasses.dataclass(frozen=True)
class StageSpec:
  """One stage of a profile.

  Attributes:
    role: the stage's role (the header's text).
    kind: the segment kind xbook trains it as (xbook.data.trajectory.SEGMENT_KINDS).
    max_tokens: pagestorm's generation budget for the stage (None: the prompt is given, not written).
    temperature: pagestorm's sampling temperature for it (None for the prompt).
    top_k: pagestorm's top-k for it (None: not set).
    per_chapter: the stage repeats for every chapter after the first (14b scene_breakdown and
      chapter_text).
    section_temperatures: temperatures pagestorm uses for parts of the stage that it generates as
      separate guided steps, by section.
  """

  role: str
  kind: str
  max_tokens: int | None
  temperature: float | None
  top_k: int | None = None
  per_chapter: bool = False
  section_temperatures: Mapping[str, float] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Profile:
  """A released model's stage protocol.

  Attributes:
    name: "24b_first_chapter" or "14b_full_book".
    released_model: the Hugging Face repository of the released model pagestorm drives.
    context_length: its context (pagestorm's default `max_model_len`).
    stages: the stages in stream order; `per_chapter` ones repeat, in order, for chapters 2..N.
    chapter_summary_bullets: most bullets of a chapter plan's summary.
    first_chapter_plan_blocks: most chapter blocks its first_chapter_plan may hold.
    full_book: whether the stream continues past the first chapter.
  """

  name: str
  released_model: str
  context_length: int
  stages: tuple[StageSpec, ...]
  chapter_summary_bullets: int
  first_chapter_plan_blocks: int
  full_book: bool

  @property
  def roles(self) -> tuple[str, ...]:
    return tuple(s.role for s in self.stages)

  def stage(self, role: str) -> StageSpec:
    """The spec of `role`; ValueError naming the profile's roles for any other."""
    for spec in self.stages:
      if spec.role == role:
        return spec
    raise ValueError(f"profile {self.name} has no stage {role!r}; its stages are {self.roles}")


# Temperatures per pagestorm `orchestrator.py`: 0.8 for the book preview (top-k 20) and chapter names,
# 0.6 for chapter plans, 0.45 for plan components (book plan, scene breakdowns, characters), 0.2 for
# everything else (the text, and the 24b's first-chapter scene breakdown, which is not in its 0.45 set).
# Budgets per pagestorm `profiles.py` (the 24b caps its first chapter plan at 2,500 tokens).
PROFILES: dict[str, Profile] = {
    "24b_first_chapter": Profile(
        name="24b_first_chapter",
        released_model="Pageshift-Entertainment/pagestorm-research-preview-24b-first-chapter-only",
        context_length=32_768,
        stages=(
            StageSpec("prompt", "prompt", None, None),
            # Generated in two guided steps: the preview sections at 0.8 (top-k 20), the rest at 0.2.
            StageSpec("book_plan", "book_plan", 50_000, 0.8, top_k=20,
                      section_temperatures={"preview": 0.8, "rest": 0.2}),
            StageSpec("first_chapter_plan", "chapter_plan", 2_500, 0.6),
            StageSpec("first_chapter_scene_breakdown", "scene_plan", 3_000, 0.2),
            StageSpec("first_chapter_text", "text", 12_000, 0.2),
        ),
        chapter_summary_bullets=32, first_chapter_plan_blocks=2, full_book=False),
    "14b_full_book": Profile(
        name="14b_full_book",
        released_model="Pageshift-Entertainment/pagestorm-research-preview-14b-full-book",
        context_length=262_144,
        stages=(
            StageSpec("prompt", "prompt", None, None),
            StageSpec("book_preview", "book_preview", 4_000, 0.8, top_k=20),
            StageSpec("book_plan", "book_plan", 50_000, 0.45, section_temperatures={"Chapter Names": 0.8}),
            StageSpec("first_chapter_plan", "chapter_plan", 9_000, 0.6),
            StageSpec("first_chapter_text", "text", 12_000, 0.2),
            StageSpec("full_book_chapters_plan", "chapter_plan", 60_000, 0.6),
            StageSpec("book_characters_list", "characters", 6_000, 0.45),
            StageSpec("scene_breakdown", "scene_plan", 3_000, 0.45, per_chapter=True),
            StageSpec("chapter_text", "text", 16_000, 0.2, per_chapter=True),
        ),
        chapter_summary_bullets=80, first_chapter_plan_blocks=1, full_book=True),
}
DEFAULT_PROFILE = "14b_full_book"


def get_profile(profile: str | Profile) -> Profile:
  """The Profile named `profile` (a Profile is returned as it is)."""
  if isinstance(profile, Profile):
    return profile
  if profile not in PROFILES:
    raise ValueError(f"unknown stage-protocol profile {profile!r}; expected one of {tuple(PROFILES)}")
  return PROFILES[profile]
