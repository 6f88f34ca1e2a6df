"""The stage protocol of the paper's released models: framing, profiles, rendering, parsing, checks.

The authors of arXiv 2605.17064 drive their released models with a tool of their own (the public
repository `Pageshift-ai/pagestorm`, which has no licence file: xbook reads it for the format and
copies nothing). A book is a stream of *stages*. Each stage is framed as

    <|start_header_id|>{role}<|stop_header_id|>\\n\\n{content}<|eot_id|>

and the stream is the frames of the stages one after another, nothing between them (per pagestorm,
`protocol.py` and `artifacts.py`). The context of a stage is the prompt plus every completed stage, then
the header of the stage to write (`render_context`); generation of a stage stops at `<|eot_id|>`.

Profiles (`PROFILES`; per pagestorm `protocol.py`, `profiles.py` and `orchestrator.py`):
  24b_first_chapter  prompt, book_plan, first_chapter_plan, first_chapter_scene_breakdown,
                     first_chapter_text; 32,768 tokens of context.
  14b_full_book      prompt, book_preview, book_plan, first_chapter_plan, first_chapter_text,
                     full_book_chapters_plan, book_characters_list, then for every later chapter
                     scene_breakdown and chapter_text; 262,144 tokens of context.
Each `StageSpec` carries its role, the segment kind xbook trains it as (xbook.data.trajectory), and
pagestorm's generation budget (max tokens) and sampling temperature.

Content of each stage (Markdown with fixed sections; the limits are those pagestorm's output checks
enforce, per pagestorm `artifacts_14b.py` and `artifacts_24b.py`):
  book_preview     `## Book Highlight` (one line, 55-140 words), `## Book Title` (1-8 words),
                   `## Book Tags` (exactly 7 bullets of 1-8 words), `## Book Archetype` (one line,
                   45-190 words).
  book_plan (14b)  `## World Rules` (1-90 bullets), `## Short Story Arcs`, `## Character Archetypes`,
                   `## Writing Style` (1-40 bullets), `## Medium Story Arcs`, `## Long Story Arcs`
                   (each arc `### Arc N: name` with 1-20 / 1-40 / 1-80 bullets; 1-12 arcs, the same
                   titles in every arc section), `## Number of Chapters` (`* K` per arc),
                   `## Chapter Names` (K bullets per arc), `## Chapters Embedding Space` and
                   `## Chapters Word Count` (`#### chapter name` then its value, per arc).
  book_plan (24b)  the four preview sections, then `## World Rules`, `## Story Arcs`,
                   `## Character Archetypes`, `## Writing Style`.
  chapter plan     `### name`, `**Word Count:** N`, `**Embedding Space:** ...`,
                   `**Narrative Focuses:** a; b`, `**Chapter Summary:**` and 1-80 bullets (1-32 for
                   the 24b). `first_chapter_plan` is one such block (the 24b's format allows two; xbook
                   writes one), followed in the 14b by `### Scene Breakdown` and the scene blocks;
                   `full_book_chapters_plan` is the blocks of chapters 2..N, a blank line apart, their
                   word counts and embedding spaces those of the book plan.
  scene breakdown  `### chapter name`, then 1-12 blocks `#### Scene k: title`, `**Word Count:** N`,
                   `**Embedding Space:** ...`, `**Narrative Focus:** ...`,
                   `**Narrative Perspective:** ...`, `**Scene Summary:**` and 1-20 bullets.
  characters list  `### Main Characters` then 1-20 blocks `#### name` with 1-20 bullets, and the same
                   under `### Side Characters`.
  chapter text     `### chapter name`, a line ```` ``` ````, the chapter's prose, a line ```` ``` ````.
                   The header and the opening fence are what pagestorm pre-fills before the model
                   writes a chapter (`orchestrator.py`); the closing fence is xbook's reading of the
                   format (pagestorm does not show it), so that the prose sits in a closed block.
An *embedding space* scores a chapter or scene 0-99 on seven axes (`EMBEDDING_AXES`), written
`action: 12, dialog: 40, world_building: 5, exposition: 20, romantic: 0, erotic: 0, pacing: 55`. Word
counts are binned (`bin_word_count`): tens below 100, fifties below 1,000, hundreds below 10,000, five
hundreds above, each written with 2-5 digits. Bullets are `- ` and 1-300 characters, names 1-120.
Blank lines between blocks are what pagestorm's guided generation writes (`render` writes them so);
the parser accepts blank lines anywhere and ignores trailing spaces.

The API, for the scaffold builder (xbook.scaffold.paper), the seqio view (xbook.data.paper_stages) and
the book writer:
  frame(role, content) -> str                      one framed stage
  stage_header(role) -> str                        what precedes a stage's content
  render(record, profile) -> str                   a scaffold record's whole stream
  render_stages(record, profile) -> [(role, content)]
  render_context(stages, next_role) -> str         the prompt a writer sends for the next stage
  parse(stream, profile=None) -> [(role, content)] the stages of a stream (framing checked)
  to_document(stages, profile) -> dict             the stages' fields (`document`, below)
  render_document(document, profile) -> [(role, content)]
  stage_document(record, profile) -> dict          what a record's stream holds, as a document
  check_stage(role, text, context) -> [str]        what is wrong with one generated stage
  context_from_stages(stages, profile) -> StageContext   the context check_stage needs, from a stream
  trim_stage_text(text) -> str                     a generated stage cut at <|eot_id|> and tidied
  bin_word_count(n), word_count_range(binned), chapter_text_max_tokens(binned)

A *document* is the fields a stream carries, as plain JSON types:
  {"prompt": str,
   "preview": {"highlight", "title", "tags": [7 str], "archetype"},
   "world_rules": [str], "writing_style": [str],
   "arcs": [{"name", "short": [str], "medium": [str], "long": [str], "chapters": int}],
   "character_archetypes": [{"name", "bullets": [str]}],
   "characters": {"main": [{"name", "bullets"}], "side": [...]},
   "chapters": [{"name", "word_count" (binned), "embedding": {axis: int}, "focuses": [str],
                 "summary": [str], "text": str,
                 "scenes": [{"title", "word_count", "embedding", "focus": [str], "perspective",
                             "summary": [str]}]}]}
The 24b profile's stream holds a subset: arcs carry only `name` and `short` (its `## Story Arcs`), no
`characters`, and only the first chapter. A scaffold record keeps these fields in its `paper` field
(xbook.scaffold.schema) with raw word counts, which `stage_document` bins.

This module uses the standard library only, so that the scaffold layer can check generated stages
with it without loading TensorFlow.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Iterable, Mapping, Sequence

START_HEADER = "<|start_header_id|>"
STOP_HEADER = "<|stop_header_id|>"
EOT = "<|eot_id|>"
FRAMING_TOKENS = (START_HEADER, STOP_HEADER, EOT)

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


class StageFormatError(ValueError):
  """A stream or a stage that does not follow the protocol; the message names where and what."""


# ------------------------------------------------------------------------------------------ profiles
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


# ------------------------------------------------------------------------------------------- framing
def stage_header(role: str) -> str:
  """The header that opens a stage, blank line included: a writer appends it and generates after it."""
  if not role or any(t in role for t in FRAMING_TOKENS) or "\n" in role:
    raise ValueError(f"a stage role must be one line without framing tokens, got {role!r}")
  return f"{START_HEADER}{role}{STOP_HEADER}\n\n"


def frame(role: str, content: str) -> str:
  """One stage as the stream holds it: header, blank line, content, `<|eot_id|>`.

  Raises:
    ValueError: if the content holds a framing token (it would end or open a stage early).
  """
  for token in FRAMING_TOKENS:
    if token in content:
      raise ValueError(f"the content of stage {role!r} contains the framing token {token}: remove it "
                       f"(at character {content.index(token)})")
  return stage_header(role) + content + EOT


def render_context(stages: Sequence[tuple[str, str]], next_role: str) -> str:
  """The prompt of the next stage: the framed stages so far (the prompt first), then its header."""
  if not stages or stages[0][0] != "prompt":
    raise ValueError("a stage context starts with the prompt stage")
  return "".join(frame(role, content) for role, content in stages) + stage_header(next_role)


def parse(stream: str, profile: str | Profile | None = None) -> list[tuple[str, str]]:
  """The (role, content) stages of a stream.

  Args:
    stream: framed stages, nothing before, between or after them.
    profile: if given, each role must be one of its roles, in its order.

  Raises:
    StageFormatError: naming the character offset and what was expected there.
  """
  stages, position = [], 0
  while position < len(stream):
    if not stream.startswith(START_HEADER, position):
      raise StageFormatError(f"stream offset {position}: expected {START_HEADER}, found "
                             f"{stream[position:position + 40]!r}")
    stop = stream.find(STOP_HEADER, position)
    if stop < 0:
      raise StageFormatError(f"stream offset {position}: a header without {STOP_HEADER}")
    role = stream[position + len(START_HEADER):stop]
    body = stop + len(STOP_HEADER)
    if not stream.startswith("\n\n", body):
      raise StageFormatError(f"stream offset {body}: the header of stage {role!r} must be followed by "
                             "a blank line")
    end = stream.find(EOT, body)
    if end < 0:
      raise StageFormatError(f"stream offset {body}: stage {role!r} is not closed by {EOT}")
    content = stream[body + 2:end]
    if START_HEADER in content or STOP_HEADER in content:
      raise StageFormatError(f"stream offset {body}: stage {role!r} holds a header token before its {EOT}")
    stages.append((role, content))
    position = end + len(EOT)
  if profile is not None:
    _check_order([role for role, _ in stages], get_profile(profile))
  return stages


def _check_order(roles: Sequence[str], profile: Profile) -> None:
  """StageFormatError unless `roles` follow the profile's order (a book of one chapter has no
  full_book_chapters_plan)."""
  expected = _expected_roles(profile, n_chapters=None)
  for i, role in enumerate(roles):
    want = next(expected)
    if role != want and want == "full_book_chapters_plan":
      want = next(expected)
    if role != want:
      raise StageFormatError(f"stage {i} is {role!r}; profile {profile.name} expects {want!r} there")


def _expected_roles(profile: Profile, n_chapters: int | None) -> Iterable[str]:
  """The roles of a stream in order; per-chapter stages repeat for n_chapters - 1 chapters (forever
  when n_chapters is None)."""
  fixed = [s.role for s in profile.stages if not s.per_chapter]
  repeated = [s.role for s in profile.stages if s.per_chapter]
  yield from fixed
  k = 1
  while repeated and (n_chapters is None or k < n_chapters):
    yield from repeated
    k += 1


def trim_stage_text(text: str) -> str:
  """A generated stage as the stream keeps it: cut at the first `<|eot_id|>`, trailing spaces of
  every line and blank lines at both ends removed (pagestorm tidies generated stages the same way)."""
  lines = [line.rstrip() for line in text.split(EOT, 1)[0].split("\n")]
  while lines and not lines[0]:
    lines.pop(0)
  while lines and not lines[-1]:
    lines.pop()
  return "\n".join(lines)


# ------------------------------------------------------------------------------------------ measures
def _word_count_step(n: int) -> int:
  return 10 if n < 100 else 50 if n < 1_000 else 100 if n < 10_000 else 500


def bin_word_count(n_words: int) -> int:
  """`n_words` rounded to its bin: to tens below 100, fifties below 1,000, hundreds below 10,000,
  five hundreds above (ties to the even multiple), kept within 10..99,999 (2-5 digits)."""
  if n_words < 0:
    raise ValueError(f"a word count is >= 0, got {n_words}")
  step = _word_count_step(n_words)
  return min(99_999, max(10, round(n_words / step) * step))


def word_count_range(binned: int) -> tuple[int, int]:
  """The (lowest, highest) raw word counts that `bin_word_count` maps to `binned`.

  Raises:
    ValueError: for a value that is no bin.
  """
  hits = [n for n in _bin_candidates(binned) if bin_word_count(n) == binned]
  if not hits:
    raise ValueError(f"{binned} is not a binned word count (tens below 100, fifties below 1,000, "
                     "hundreds below 10,000, five hundreds above)")
  return min(hits), max(hits)


def _bin_candidates(binned: int) -> range:
  step = _word_count_step(max(binned - 1, 0))
  return range(max(0, binned - 3 * step), binned + 3 * step + 1)


def chapter_text_max_tokens(binned_words: int, tokens_per_word: float = 2.0) -> int:
  """A chapter text's generation budget: the highest raw count of its bin plus a margin (50% below
  100 words, 25% below 1,000, 15% below 10,000, 8% above), times `tokens_per_word` (pagestorm's rule,
  `orchestrator_14b.py`); a writer takes the smaller of this and the stage's max_tokens."""
  _, high = word_count_range(binned_words)
  margin = 0.5 if high < 100 else 0.25 if high < 1_000 else 0.15 if high < 10_000 else 0.08
  return math.ceil(math.ceil(high * (1 + margin)) * tokens_per_word)


def format_embedding(embedding: Mapping[str, int]) -> str:
  """`action: 12, dialog: 40, ...` in EMBEDDING_AXES order."""
  return ", ".join(f"{axis}: {int(embedding[axis])}" for axis in EMBEDDING_AXES)


_EMBEDDING = re.compile(", ".join(rf"{axis}: ([0-9]{{1,2}})" for axis in EMBEDDING_AXES))


def parse_embedding(line: str) -> dict[str, int]:
  """The scores of an embedding-space line; StageFormatError unless it is exactly the seven axes in
  order, each 0-99."""
  match = _EMBEDDING.fullmatch(line.strip())
  if not match:
    raise StageFormatError(f"an embedding space must read {format_embedding(dict.fromkeys(EMBEDDING_AXES, 0))!r} "
                           f"(each 0-99), got {line.strip()[:120]!r}")
  return {axis: int(value) for axis, value in zip(EMBEDDING_AXES, match.groups())}


# Preview words (per pagestorm's preview checks): a word is letters (Latin, with Latin-1 and Latin
# Extended-A accents) or digits with common punctuation; a word made of punctuation alone is one dash,
# quote mark, ellipsis or ampersand. Tags admit fewer punctuation marks (no , ; ! ?).
_LATIN = "A-Za-z0-9\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u00ff\u0100-\u017f"
_TEXT_PUNCT = "&'\"`\u00b4/().,:;!?+\u2014\u2013\u201c\u201d\u2018\u2019\u2026\\-"
_TAG_PUNCT = "&'\"`\u00b4/().:+\u2014\u2013\u201c\u201d\u2018\u2019\u2026\\-"
_LONE = "&\u2014\u2013\u201c\u201d\u2018\u2019\u2026"


def _word_pattern(punctuation: str) -> re.Pattern[str]:
  return re.compile(rf"[{_LATIN}][{_LATIN}{punctuation}]*|[{punctuation}][{_LATIN}][{_LATIN}{punctuation}]*|[{_LONE}]")


_TEXT_WORD = _word_pattern(_TEXT_PUNCT)
_TAG_WORD = _word_pattern(_TAG_PUNCT)


def preview_words(text: str, tag: bool = False) -> tuple[int, list[str]]:
  """(number of words, the words that are not preview words) of one line of a preview section."""
  pattern = _TAG_WORD if tag else _TEXT_WORD
  words = text.split()
  return len(words), [w for w in words if not pattern.fullmatch(w)]


# ---------------------------------------------------------------------------------------- rendering
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


# ------------------------------------------------------------------------------------------- parsing
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
  if not profile.full_book:
    if "Story Arcs" in sections:
      out["arcs"] = [{"name": n, "short": b} for n, b in _read_arc_bullets(sections["Story Arcs"], BULLETS["short"])]
    return out, reader.problems
  arc_sections = {}
  for field, title in (("short", "Short Story Arcs"), ("medium", "Medium Story Arcs"), ("long", "Long Story Arcs")):
    if title in sections:
      arc_sections[field] = _read_arc_bullets(sections[title], BULLETS[field])
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
  titles = {field: [n for n, _ in arcs] for field, arcs in
            [*arc_sections.items(), ("count", counts), ("names", names), ("embedding", embeddings),
             ("word_count", words)]}
  reference = titles.get("short", [])
  for field, got in titles.items():
    if got != reference:
      reader.problem(f"the arcs of the {field} section {got} differ from the short story arcs {reference}")
  arcs = []
  for i, name in enumerate(reference):
    arc: dict[str, Any] = {"name": name}
    for field in ("short", "medium", "long"):
      arc[field] = arc_sections[field][i][1] if field in arc_sections and i < len(arc_sections[field]) else []
    arc["chapters"] = counts[i][1] if i < len(counts) else 0
    arcs.append(arc)
  out["arcs"] = arcs
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
  out["chapters"] = plan_chapters
  return out, reader.problems


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


# -------------------------------------------------------------------------------------------- checks
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
