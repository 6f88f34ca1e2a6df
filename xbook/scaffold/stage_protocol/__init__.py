"""The stage protocol of the paper's released models: a package by concern.

The authors of arXiv 2605.17064 drive their released models with a tool of their own (the public
repository `Pageshift-ai/pagestorm`, which has no licence file: xbook reads it for the format and
copies nothing). A book is a stream of *stages* (framing.py) in the
order of a *profile* (profiles.py). What each stage holds:

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

The package's modules, each importing only those before it:
  profiles   the format's limits and roles, StageSpec, Profile, PROFILES, get_profile
  framing    framing tokens, StageFormatError, stage_header, frame, render_context, parse, trim_stage_text
  measures   word-count bins, embedding spaces, preview words
  rendering  a document or scaffold record as stages (render, render_stages, render_document, stage_document)
  parsing    the fields of a stage (parse_stage) and of a stream (to_document)
  checks     check_stage, StageContext, context_from_stages
  grammars   the stages' grammars for constrained decoding (stage_grammar, book_plan_section_grammar)
This package re-exports the names its callers use, so `from xbook.scaffold import stage_protocol as sp` and
`sp.<name>` keep working; xbook.scaffold.stage_grammar re-exports the grammars.

The package uses the standard library only, so that the scaffold layer can check generated stages
with it without loading TensorFlow.
"""

from __future__ import annotations

from xbook.scaffold.stage_protocol.profiles import (
    EMBEDDING_AXES, MAX_BULLET_CHARS, MAX_NAME_CHARS, MAX_PERSPECTIVE_CHARS, MAX_FOCUS_CHARS, MAX_FOCUSES, MAX_ARCS,
    MAX_CHAPTERS_PER_ARC, MAX_SCENES, N_TAGS, HIGHLIGHT_WORDS, ARCHETYPE_WORDS, TITLE_WORDS, TAG_WORDS, BULLETS,
    MAX_ARCHETYPES, MAX_CHARACTERS, PREVIEW_SECTIONS, PLAN_SECTIONS_24B, PLAN_SECTIONS_14B, ROLES, TEXT_ROLES,
    StageSpec, Profile, PROFILES, DEFAULT_PROFILE, get_profile)
from xbook.scaffold.stage_protocol.framing import (
    START_HEADER, STOP_HEADER, EOT, FRAMING_TOKENS, StageFormatError, stage_header, frame, render_context, parse,
    trim_stage_text)
from xbook.scaffold.stage_protocol.measures import (
    bin_word_count, word_count_range, chapter_text_max_tokens, format_embedding, parse_embedding, preview_words)
from xbook.scaffold.stage_protocol.rendering import (
    render_book_preview, render_book_plan, render_book_plan_chapter_sections, render_first_chapter_plan,
    render_scene_breakdown, render_chapter_text, render_full_book_chapters_plan, render_characters_list,
    render_document, stage_document, render_stages, render)
from xbook.scaffold.stage_protocol.parsing import parse_stage, to_document
from xbook.scaffold.stage_protocol.checks import StageContext, context_from_stages, check_stage

__all__ = [
    "EMBEDDING_AXES", "MAX_BULLET_CHARS", "MAX_NAME_CHARS", "MAX_PERSPECTIVE_CHARS", "MAX_FOCUS_CHARS", "MAX_FOCUSES",
    "MAX_ARCS", "MAX_CHAPTERS_PER_ARC", "MAX_SCENES", "N_TAGS", "HIGHLIGHT_WORDS", "ARCHETYPE_WORDS", "TITLE_WORDS",
    "TAG_WORDS", "BULLETS", "MAX_ARCHETYPES", "MAX_CHARACTERS", "PREVIEW_SECTIONS", "PLAN_SECTIONS_24B",
    "PLAN_SECTIONS_14B", "ROLES", "TEXT_ROLES", "StageSpec", "Profile", "PROFILES", "DEFAULT_PROFILE", "get_profile",
    "START_HEADER", "STOP_HEADER", "EOT", "FRAMING_TOKENS", "StageFormatError", "stage_header", "frame",
    "render_context", "parse", "trim_stage_text", "bin_word_count", "word_count_range", "chapter_text_max_tokens",
    "format_embedding", "parse_embedding", "preview_words", "render_book_preview", "render_book_plan",
    "render_book_plan_chapter_sections", "render_first_chapter_plan", "render_scene_breakdown", "render_chapter_text",
    "render_full_book_chapters_plan", "render_characters_list", "render_document", "stage_document", "render_stages",
    "render", "parse_stage", "to_document", "StageContext", "context_from_stages", "check_stage",
]
