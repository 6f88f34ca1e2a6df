"""Grammars of the paper's stages (xbook.scaffold.stage_protocol) for constrained decoding with llguidance.

`stage_grammar(profile, role, stages)` is a Lark grammar in llguidance's dialect (the library behind vLLM's
`guidance` structured-outputs backend, which the paper authors' tool uses): upper-case names are lexemes
(compiled to one regular expression each, with llguidance's `&` and `~` operators), lower-case names are
context-free rules, `x{m,n}` is bounded repetition. It is built from the definitions that `render`, `parse`
and `check_stage` use (section names, limits, embedding axes, word-count bins, preview words, framing
tokens), so that the three cannot drift apart; `check_stage` stays the final judge.

What a grammar covers: the text the writer samples for one stage (xbook.infer.paper_writer), from the first
token after the stage's header `<|start_header_id|>{role}<|stop_header_id|>\\n\\n` up to and including the
stage's end marker `<|eot_id|>`, written as text (`end="text"`, the default: xbook's vocabularies spell the
framing tokens as text). The content is the canonical layout `render` writes (no blank line before the first
line, one blank line between blocks, no trailing spaces, nothing after the last line but the end marker),
so a matched stage is exactly what the stream keeps (`trim_stage_text` changes nothing). Once the end marker
is written the grammar is complete: a matcher admits nothing but end of sequence. `end="special"` ends the
grammar with the special token `<|eot_id|>` (a tokenizer that has it as one special token); `end=None` ends
it at the content's last character (the engine then ends the stage when the matcher stops).

Every string a grammar matches passes `check_stage` (content without the end marker) in the context of the
earlier stages, and is stricter where the format leaves freedom the renderer never uses: word counts are
bin values (`bin_word_count`), embedding scores have no leading zero, lines have no leading or trailing
spaces. Instantiated from the earlier stages (`stages`, the prompt first, as the writer holds them):
  - 14b: the book plan's chapters (name, binned word count, embedding space) fix the first chapter plan's
    block, every block of `full_book_chapters_plan` (and their number), and the `### name` of every scene
    breakdown and chapter text (the chapter after the texts written so far);
  - 24b: the first chapter plan's name fixes the scene breakdown's and the text's `### name` (check_stage
    has no book plan chapters to compare in this profile; render writes the same name).
What no context-free grammar of the whole stage can say: in the 14b book plan, that the arc titles of the
seven arc sections repeat the short story arcs' titles, that the chapter names of the embedding-space and
word-count sections repeat the `## Chapter Names` bullets, and that each arc's `* K` equals its number of
chapter names (copies of earlier text, not context-free). `book_plan_section_grammar(profile, written)` says
them: sampled one section at a time, each section's grammar instantiated from the sections written so far,
a book plan passes check_stage whole. Not said at all: the number of scenes when a caller knows it
(`StageContext.n_scenes`, `scene_word_counts`); check_stage (with retries) judges it.

Standard library only, like stage_protocol: a grammar is text. xbook.infer.guidance compiles and matches it.
"""

from __future__ import annotations

import dataclasses
import json
import re
import sys
from typing import Any, Mapping, Sequence

from xbook.scaffold.stage_protocol import checks, framing, measures, parsing, profiles

END_MARKERS = ("text", "special", None)


@dataclasses.dataclass(frozen=True)
class Grammar:
  """One stage's grammar.

  Attributes:
    kind: "lark" (llguidance's Lark dialect; vLLM takes it as `structured_outputs: {"grammar": text}` with the
      guidance backend).
    text: the grammar.
    role: the stage it constrains.
    end: how its text ends (module docstring): "text", "special" or None.
    closers: the texts that end the stage from where its last field may end (a chapter text's closing
      fence and end marker; the end marker), which a writer closing the stage within its token budget
      writes out (xbook.infer.structured.closing_tokens); empty unless `end` is "text".
  """

  kind: str
  text: str
  role: str
  end: str | None
  closers: tuple[str, ...] = ()

  def structured_outputs(self) -> dict[str, str]:
    """The vLLM request field that asks for this grammar."""
    return {"grammar": self.text}


# ----------------------------------------------------------------------------------- regex fragments
def _escape(text: str) -> str:
  """`text` as a literal inside a /.../ regex of llguidance (Rust regex syntax)."""
  out = []
  for ch in text:
    if ch in "\\.+*?()|[]{}^$#&-~/":
      out.append("\\" + ch)
    elif ch == "\n":
      out.append("\\n")
    elif ord(ch) < 0x20 or ch == "\x7f":
      out.append(f"\\x{{{ord(ch):x}}}")
    else:
      out.append(ch)
  return "".join(out)


def _class(chars: Sequence[int]) -> str:
  """A regex class body for the code points `chars` (sorted ranges, every character escaped)."""
  points = sorted(set(chars))
  parts, i = [], 0
  while i < len(points):
    j = i
    while j + 1 < len(points) and points[j + 1] == points[j] + 1:
      j += 1
    low, high = points[i], points[j]
    parts.append(f"\\x{{{low:x}}}" if low == high else f"\\x{{{low:x}}}-\\x{{{high:x}}}")
    i = j + 1
  return "".join(parts)


def _python_class(pattern: str, limit: int = 0x10000) -> list[int]:
  """The code points (of the Basic Multilingual Plane, where the format's classes lie) that the Python class body `pattern` matches."""
  compiled = re.compile(f"[{pattern}]")
  return [c for c in range(limit) if compiled.fullmatch(chr(c))]


# Python's str.split()/strip() whitespace (what the parser strips), which is wider than Unicode White_Space.
_SPACE = _class([c for c in range(sys.maxunicode + 1) if chr(c).isspace()])
_SOLID = f"[^{_SPACE}]"  # one character that is not whitespace (no newline either)


def _without_framing(excluded: str) -> str:
  """A regex of the strings over all characters but `excluded` (a class body) that hold no framing token.

  Written without llguidance's `~` (whose emptiness checks give out on long bounded lines): every framing
  token starts with `<` and holds no other `<`, so a string is free of them when no `<` in it is followed
  by the rest of one (`|eot_id|>`, ...) before the next `<`; the rests form a trie, spelled out here.
  """
  rests = [token[1:] for token in framing.FRAMING_TOKENS]
  if not all(token.startswith("<") and "<" not in rest for token, rest in zip(framing.FRAMING_TOKENS, rests)):
    raise AssertionError("the framing tokens changed shape: rewrite _without_framing")

  def after(prefix: str) -> str | None:
    if prefix in rests:
      return None  # a whole framing token: no way on
    following = sorted({rest[len(prefix)] for rest in rests if rest.startswith(prefix) and len(rest) > len(prefix)})
    branches = ["", f"[^<{''.join(_escape(c) for c in following)}{excluded}][^<{excluded}]*"]
    branches += [_escape(c) + tail for c in following if (tail := after(prefix + c)) is not None]
    return "(" + "|".join(branches) + ")"

  return f"[^<{excluded}]*(<{after('')})*"

_LATIN = _class(_python_class(measures._LATIN))
_TEXT_PUNCT = _class(_python_class(measures._TEXT_PUNCT))
_TAG_PUNCT = _class(_python_class(measures._TAG_PUNCT))
_LONE = _class(_python_class(measures._LONE))


def _word_regex(punct: str) -> str:
  """stage_protocol's preview word (`_word_pattern`) in llguidance's regex syntax."""
  return f"[{_LATIN}][{_LATIN}{punct}]*|[{punct}][{_LATIN}][{_LATIN}{punct}]*|[{_LONE}]"


def _digit_trie(values: Sequence[str]) -> str:
  """A regex matching exactly the digit strings `values`."""
  trie: dict[str, Any] = {}
  for value in values:
    node = trie
    for ch in value:
      node = node.setdefault(ch, {})
    node[""] = {}

  def emit(node: Mapping[str, Any]) -> str:
    branches = [ch + emit(child) if ch else "" for ch, child in sorted(node.items())]
    if branches == [""]:
      return ""
    optional = "" in branches
    branches = [b for b in branches if b]
    body = branches[0] if len(branches) == 1 and len(branches[0]) == 1 else "(" + "|".join(branches) + ")"
    return f"({body})?" if optional else body

  return emit(trie)


def _bin_values() -> list[str]:
  """Every value `bin_word_count` can give (10 .. 99,999)."""
  return sorted({str(measures.bin_word_count(n)) for n in range(0, 100_001)}, key=int)


_WORD_COUNT = _digit_trie(_bin_values())
_SCORE = "([0-9]|[1-9][0-9])"
_EMBEDDING = ", ".join(f"{axis}: {_SCORE}" for axis in profiles.EMBEDDING_AXES)


# ------------------------------------------------------------------------------------------ the builder
class _Lark:
  """Collects a grammar's lexemes and rules; `line` makes the lexeme of one line with its terminator."""

  def __init__(self, end: str | None) -> None:
    if end not in END_MARKERS:
      raise ValueError(f"end must be one of {END_MARKERS}, got {end!r}")
    self.end = end
    self.terminals: dict[str, str] = {}
    self.rules: dict[str, str] = {}
    self.terminal("NOFRAME", f"/{_without_framing(chr(92) + 'n')}/")

  def terminal(self, name: str, body: str) -> str:
    if self.terminals.get(name, body) != body:
      raise AssertionError(f"lexeme {name} defined twice differently")
    self.terminals[name] = body
    return name

  def rule(self, name: str, body: str) -> str:
    self.rules[name] = body
    return name

  def text(self, name: str, low: int, high: int, forbid: str = "") -> str:
    """A lexeme of one line's free text: low..high characters, no framing token, not starting or ending
    with whitespace, none of the characters `forbid`."""
    solid = f"[^{_SPACE}{_escape(forbid)}]" if forbid else _SOLID
    any_char = f"[^\\n{_escape(forbid)}]" if forbid else "[^\\n]"
    return self.terminal(name, f"/{solid}({any_char}*{solid})?/ & /.{{{low},{high}}}/ & NOFRAME")

  def line(self, name: str, body: str, last: bool = False) -> str:
    """The lexeme of a line `body` (lexeme syntax) ending with a newline, or, when `last`, with the end
    marker; returns what a rule writes for it."""
    if not last:
      return self.terminal(f"{name}_NL", f'{body} "\\n"')
    if self.end == "text":
      return self.terminal(f"{name}_END", f"{body} {_literal(framing.EOT)}")
    lexeme = self.terminal(f"{name}_LAST", body)
    return f"{lexeme} {framing.EOT}" if self.end == "special" else lexeme

  def render(self, start: str) -> str:
    lines = ["%llguidance {}", f"start: {start}"]
    lines += [f"{name}: {body}" for name, body in self.rules.items()]
    lines += [f"{name}: {body}" for name, body in self.terminals.items()]
    return "\n".join(lines) + "\n"


def _literal(text: str) -> str:
  """`text` as a lexeme: a Lark string, or a regex when it holds characters a string cannot spell."""
  if all(ch.isprintable() or ch == "\n" for ch in text):
    return json.dumps(text, ensure_ascii=False)
  return f"/{_escape(text)}/"


_BLANK = '"\\n"'


def _fixed(text: str) -> str:
  """One line of fixed text, newline included (never a stage's last line)."""
  return _literal(text + "\n")


def _bullets(g: _Lark, name: str, limits: tuple[int, int], last: bool, text: str = "BULLET_TEXT") -> str:
  """`- item` lines, limits[0]..limits[1] of them; `text` is the item's lexeme."""
  if text == "BULLET_TEXT":
    g.text("BULLET_TEXT", 1, profiles.MAX_BULLET_CHARS)
  low, high = limits
  item = f'"- " {text}'
  middle = g.line(name, item)
  if not last:
    return f"{middle}{{{low},{high}}}"
  return f"{middle}{{{low - 1},{high - 1}}} {g.line(name, item, last=True)}"


def _blocks(g: _Lark, name: str, count: tuple[int, int], block, last: bool) -> str:
  """count[0]..count[1] blocks a blank line apart; block(last) is the rule text of one block."""
  low, high = count
  middle = g.rule(f"{name}_mid", block(False))
  if not last:
    return g.rule(f"{name}_all", f"{middle} ({_BLANK} {middle}){{{low - 1},{high - 1}}}")
  final = g.rule(f"{name}_last", block(True))
  return g.rule(f"{name}_all", f"({middle} {_BLANK}){{{low - 1},{high - 1}}} {final}")


def _numbered(g: _Lark, name: str, count: int, head, body, last: bool) -> str:
  """Blocks numbered 1..n (n in 1..count) a blank line apart: head(k) (rule text) then body(last)."""
  suffix = "last" if last else "mid"
  following = None
  for k in range(count, 0, -1):
    final = f"{head(k)} {body(last)}"
    rest = f" | {head(k)} {body(False)} {_BLANK} {following}" if following else ""
    following = g.rule(f"{name}_{k}_{suffix}", f"{final}{rest}")
  return following


def _name_line(g: _Lark, prefix: str, name: str | None, lexeme: str) -> str:
  """A `prefix name` line: the given name, or any name of 1..MAX_NAME_CHARS characters."""
  if name is not None:
    return _fixed(prefix + name)
  g.text("NAME", 1, profiles.MAX_NAME_CHARS)
  return g.line(lexeme, f"{_literal(prefix)} NAME")


# --------------------------------------------------------------------------------------------- sections
def _preview_sections(g: _Lark) -> list[tuple[str, Any]]:
  """(title, body(last)) of the four preview sections (book_preview; the start of the 24b book plan)."""
  g.terminal("WORD", f"/{_word_regex(_TEXT_PUNCT)}/")
  g.terminal("TAG_WORD", f"/{_word_regex(_TAG_PUNCT)}/")
  g.terminal("TAG", f'(TAG_WORD (" " TAG_WORD){{{profiles.TAG_WORDS[0] - 1},{profiles.TAG_WORDS[1] - 1}}}) '
                    f"& /.{{1,{profiles.MAX_BULLET_CHARS}}}/")

  def words(name: str, limits: tuple[int, int]):
    return lambda last: g.line(name, f'WORD (" " WORD){{{limits[0] - 1},{limits[1] - 1}}}', last)

  highlight, title, tags, archetype = profiles.PREVIEW_SECTIONS
  return [(highlight, words("HIGHLIGHT", profiles.HIGHLIGHT_WORDS)), (title, words("TITLE", profiles.TITLE_WORDS)),
          (tags, lambda last: _bullets(g, "TAG_BULLET", (profiles.N_TAGS, profiles.N_TAGS), last, text="TAG")),
          (archetype, words("ARCHETYPE", profiles.ARCHETYPE_WORDS))]


def _join_sections(sections: Sequence[tuple[str, Any]], last: bool) -> str:
  """The sections a blank line apart; the last one ends the stage when `last`."""
  return f" {_BLANK} ".join(_section(title, body(last and i == len(sections) - 1))
                            for i, (title, body) in enumerate(sections))


def _section(title: str, body: str) -> str:
  return f"{_fixed('## ' + title)} {body}"


def _arc_head(g: _Lark, k: int, name: str | None = None) -> str:
  if name is not None:
    return _fixed(f"### Arc {k}: {name}")
  g.text("NAME", 1, profiles.MAX_NAME_CHARS)
  return g.line(f"ARC_{k}", f'"### Arc {k}: " NAME')


def _arc_section(g: _Lark, name: str, body, last: bool, arcs: Sequence[str] | None = None) -> str:
  """Arcs `### Arc k: name` numbered in order, each followed by body(k, last): the given `arcs`, else 1..MAX_ARCS
  arcs of any names."""
  if arcs is None:
    return _numbered(g, name, profiles.MAX_ARCS, lambda k: _arc_head(g, k), lambda final: body(None, final), last)
  return f" {_BLANK} ".join(f"{_arc_head(g, k, arc)} {body(k, last and k == len(arcs))}"
                            for k, arc in enumerate(arcs, start=1))


def _archetypes(g: _Lark, last: bool) -> str:
  return _blocks(g, "archetype", (1, profiles.MAX_ARCHETYPES), lambda final: (
      f"{_name_line(g, '### ', None, 'H3_NAME')} {_bullets(g, 'BULLET', profiles.BULLETS['archetype'], final)}"), last)


def _chapter_values(g: _Lark, name: str, value: str, last: bool, chapters: Sequence[str] | None = None) -> str:
  """Per chapter `#### name` then a value line: the given `chapters`, else 1..MAX_CHAPTERS_PER_ARC of any
  names."""
  if chapters is not None:
    return " ".join(f"{_fixed('#### ' + c)} {g.line(name, value, last and i == len(chapters) - 1)}"
                    for i, c in enumerate(chapters))
  head = _name_line(g, "#### ", None, "H4_NAME")
  middle = f"{head} {g.line(name, value)}"
  if not last:
    return f"({middle}){{1,{profiles.MAX_CHAPTERS_PER_ARC}}}"
  return f"({middle}){{0,{profiles.MAX_CHAPTERS_PER_ARC - 1}}} {head} {g.line(name, value, last=True)}"


@dataclasses.dataclass(frozen=True)
class _PlanSoFar:
  """What the book plan's written sections fix for the later ones (None: not written yet)."""

  arcs: Sequence[str] | None = None
  counts: Sequence[int] | None = None
  names: Sequence[Sequence[str]] | None = None


def _plan_sections(g: _Lark, profile: profiles.Profile, known: _PlanSoFar) -> list[tuple[str, Any]]:
  """(title, body(last)) of every section of `profile`'s book plan, in order."""
  bullets = lambda field: (lambda k, last: _bullets(g, "BULLET", profiles.BULLETS[field], last))  # noqa: E731
  common = {"World Rules": lambda last: _bullets(g, "BULLET", profiles.BULLETS["world_rules"], last),
            "Character Archetypes": lambda last: _archetypes(g, last),
            "Writing Style": lambda last: _bullets(g, "BULLET", profiles.BULLETS["writing_style"], last)}
  if not profile.full_book:
    common["Story Arcs"] = lambda last: _arc_section(g, "story_arc", bullets("short"), last)
    return _preview_sections(g) + [(title, common[title]) for title in profiles.PLAN_SECTIONS_24B[4:]]
  arcs = known.arcs
  g.text("CHAPTER_NAME", 1, profiles.MAX_NAME_CHARS)

  def names(k: int | None, last: bool) -> str:
    count = known.counts[k - 1] if k is not None and known.counts is not None else None
    limits = (count, count) if count else (1, profiles.MAX_CHAPTERS_PER_ARC)
    return _bullets(g, "CHAPTER_NAME_BULLET", limits, last, text="CHAPTER_NAME")

  def values(name: str, value: str):
    return lambda k, last: _chapter_values(g, name, value, last, None if k is None or known.names is None
                                           else known.names[k - 1])

  per_arc = {"Short Story Arcs": ("short_arc", bullets("short")), "Medium Story Arcs": ("medium_arc", bullets("medium")),
             "Long Story Arcs": ("long_arc", bullets("long")),
             "Number of Chapters": ("count_arc", lambda k, last: g.line("CHAPTER_COUNT", '/\\* [1-9][0-9]?/', last)),
             "Chapter Names": ("names_arc", names),
             "Chapters Embedding Space": ("embedding_arc", values("EMBEDDING", f"/{_EMBEDDING}/")),
             "Chapters Word Count": ("words_arc", values("WORD_COUNT", f"/{_WORD_COUNT}/"))}
  sections = []
  for title in profiles.PLAN_SECTIONS_14B:
    if title in common:
      sections.append((title, common[title]))
    else:
      rule, body = per_arc[title]
      fixed = arcs if title != "Short Story Arcs" else None
      sections.append((title, lambda last, rule=rule, body=body, fixed=fixed: _arc_section(g, rule, body, last, fixed)))
  return sections


def _book_plan(g: _Lark, profile: profiles.Profile) -> str:
  return _join_sections(_plan_sections(g, profile, _PlanSoFar()), True)


def _focuses(g: _Lark) -> str:
  g.text("FOCUS", 1, profiles.MAX_FOCUS_CHARS, forbid=";")
  return f'FOCUS ("; " FOCUS){{0,{profiles.MAX_FOCUSES - 1}}}'


def _chapter_block(g: _Lark, plan: Mapping[str, Any] | None, max_bullets: int, last: bool) -> str:
  """A chapter plan block; `plan` ({"name", "word_count", "embedding"}) fixes what it gives."""
  plan = plan or {}
  word_count = plan.get("word_count")
  embedding = plan.get("embedding")
  lines = [
      _name_line(g, "### ", plan.get("name"), "H3_NAME"),
      _fixed(f"**Word Count:** {word_count}") if word_count is not None else
      g.line("BLOCK_WORD_COUNT", f'"**Word Count:** " /{_WORD_COUNT}/'),
      _fixed(f"**Embedding Space:** {measures.format_embedding(embedding)}") if embedding else
      g.line("BLOCK_EMBEDDING", f'"**Embedding Space:** " /{_EMBEDDING}/'),
      g.line("FOCUSES", f'"**Narrative Focuses:** " {_focuses(g)}'),
      _fixed("**Chapter Summary:**"),
      _bullets(g, "BULLET", (1, max_bullets), last)]
  return " ".join(lines)


def _scene_blocks(g: _Lark, last: bool) -> str:
  g.text("PERSPECTIVE", 1, profiles.MAX_PERSPECTIVE_CHARS)

  def head(k: int) -> str:
    g.text("NAME", 1, profiles.MAX_NAME_CHARS)
    return " ".join([
        g.line(f"SCENE_{k}", f'"#### Scene {k}: " NAME'),
        g.line("BLOCK_WORD_COUNT", f'"**Word Count:** " /{_WORD_COUNT}/'),
        g.line("BLOCK_EMBEDDING", f'"**Embedding Space:** " /{_EMBEDDING}/'),
        g.line("FOCUS_LINE", f'"**Narrative Focus:** " {_focuses(g)}'),
        g.line("PERSPECTIVE_LINE", '"**Narrative Perspective:** " PERSPECTIVE'),
        _fixed("**Scene Summary:**")])

  return _numbered(g, "scene", profiles.MAX_SCENES, head,
                   lambda final: _bullets(g, "BULLET", profiles.BULLETS["scene_summary"], final), last)


def _characters(g: _Lark) -> str:
  def section(title: str, name: str, last: bool) -> str:
    blocks = _blocks(g, name, (1, profiles.MAX_CHARACTERS), lambda final: (
        f"{_name_line(g, '#### ', None, 'H4_NAME')} {_bullets(g, 'BULLET', profiles.BULLETS['character'], final)}"), last)
    return f"{_fixed('### ' + title)} {blocks}"

  return f"{section('Main Characters', 'main', False)} {_BLANK} {section('Side Characters', 'side', True)}"


# What ends a chapter text's prose: a newline and the closing fence.
TEXT_CLOSE = "\n```"


def _chapter_text(g: _Lark, name: str | None) -> str:
  """`### name`, a fence line, prose with a non-space character and no framing token, a fence line."""
  g.terminal("PROSE", f"/(?s:.*){_SOLID}(?s:.*)/ & /{_without_framing('')}/")
  head = _literal(f"### {name}\n") if name is not None else None
  if head is None:
    g.text("NAME", 1, profiles.MAX_NAME_CHARS)
    head = '"### " NAME "\\n"'
  return g.line("CHAPTER_TEXT", f'{head} "```\\n" PROSE {_literal(TEXT_CLOSE)}', last=True)


# ------------------------------------------------------------------------------------------ the stages
def _planned(stages: Sequence[tuple[str, str]], profile: profiles.Profile) -> list[Mapping[str, Any]] | None:
  """The book plan's chapters when the stream has a valid 14b book plan, else None."""
  return checks.context_from_stages(stages, profile).chapters if stages else None


def _chapter_name(stages: Sequence[tuple[str, str]], profile: profiles.Profile, role: str) -> str | None:
  """The `### name` a scene breakdown or chapter text of `role` must carry, when the earlier stages say it.

  Raises:
    ValueError: when the book plan has no chapter at the position the stage is about.
  """
  if not profile.full_book:
    plan = next((content for r, content in stages if r == "first_chapter_plan"), None)
    if plan is None:
      return None
    try:
      return parsing.parse_stage("first_chapter_plan", plan, profile)["name"]
    except framing.StageFormatError:
      return None
  planned = _planned(stages, profile)
  if planned is None:
    return None
  chapter = 0 if role.startswith("first_chapter") else checks.context_from_stages(stages, profile).chapter
  if chapter >= len(planned):
    raise ValueError(f"{role}: the book plan has {len(planned)} chapters and the stream already holds "
                     f"{chapter} chapter texts; there is no chapter {chapter + 1} to write")
  return planned[chapter]["name"]


def _content(g: _Lark, profile: profiles.Profile, role: str, stages: Sequence[tuple[str, str]]) -> str:
  """The start rule's body for `role`'s content (module docstring: what it fixes from `stages`)."""
  if role == "book_preview":
    return _join_sections(_preview_sections(g), True)
  if role == "book_plan":
    return _book_plan(g, profile)
  planned = _planned(stages, profile) if profile.full_book else None
  if role == "first_chapter_plan":
    if not profile.full_book:
      return _blocks(g, "chapter", (1, profile.first_chapter_plan_blocks),
                     lambda last: _chapter_block(g, None, profile.chapter_summary_bullets, last), True)
    first = planned[0] if planned else None
    return " ".join([_chapter_block(g, first, profile.chapter_summary_bullets, False), _BLANK,
                     _fixed("### Scene Breakdown"), _scene_blocks(g, True)])
  if role in ("first_chapter_scene_breakdown", "scene_breakdown"):
    return f"{_name_line(g, '### ', _chapter_name(stages, profile, role), 'H3_NAME')} {_scene_blocks(g, True)}"
  if role in profiles.TEXT_ROLES:
    return _chapter_text(g, _chapter_name(stages, profile, role))
  if role == "full_book_chapters_plan":
    return _chapters_plan(g, profile, planned)
  if role == "book_characters_list":
    return _characters(g)
  raise ValueError(f"{role}: the prompt is given, not written: it has no grammar")


def _chapters_plan(g: _Lark, profile: profiles.Profile, planned: list[Mapping[str, Any]] | None) -> str:
  """The blocks of chapters 2..N: those of the book plan, in order, when it is known; else 1 or more."""
  bullets = profile.chapter_summary_bullets
  if planned is None:
    return g.rule("plan_blocks", f"({_chapter_block(g, None, bullets, False)} {_BLANK})* "
                                 f"{_chapter_block(g, None, bullets, True)}")
  later = planned[1:]
  if not later:
    return g.line("EMPTY", '""', last=True)
  blocks = [_chapter_block(g, plan, bullets, i == len(later) - 1) for i, plan in enumerate(later)]
  return f" {_BLANK} ".join(blocks)


def stage_grammar(profile: str | profiles.Profile, role: str, stages: Sequence[tuple[str, str]] = (), *,
                  end: str | None = "text") -> Grammar:
  """The grammar of what a writer samples for stage `role` (module docstring: from the first content token
  to the end marker, and what it takes from the earlier stages).

  Args:
    profile: a stage-protocol profile (name or Profile).
    role: the stage to write (any of the profile's roles but the prompt).
    stages: the (role, content) stages written so far, the prompt first (the writer's list); empty: a
      grammar that fixes nothing from earlier stages.
    end: "text" (the content then `<|eot_id|>` as text), "special" (then the special token `<|eot_id|>`)
      or None (the content alone).

  Raises:
    ValueError: for a role the profile does not write, an unknown `end`, or a per-chapter stage past the
      book plan's last chapter.
  """
  profile = profiles.get_profile(profile)
  if role not in profile.roles:
    raise ValueError(f"profile {profile.name} has no stage {role!r}; its stages are {profile.roles}")
  g = _Lark(end)
  closers = ((TEXT_CLOSE + framing.EOT,) if role in profiles.TEXT_ROLES else ()) + (framing.EOT,) if end == "text" else ()
  return Grammar(kind="lark", text=g.render(_content(g, profile, role, list(stages))), role=role, end=end,
                 closers=closers)


def _plan_so_far(written: str, profile: profiles.Profile, titles: Sequence[str]) -> _PlanSoFar:
  """What the complete sections `written` fix for the later ones (arc names, chapter counts, names)."""
  if not profile.full_book or not titles:
    return _PlanSoFar()
  fields, _ = parsing._parse_book_plan(written, profile)  # noqa: SLF001 - the parser of the same format
  arcs = [a["name"] for a in fields.get("arcs", [])] if "Short Story Arcs" in titles else None
  counts = [a["chapters"] for a in fields.get("arcs", [])] if "Number of Chapters" in titles else None
  names = None
  if "Chapter Names" in titles and counts is not None:
    flat, names = [c["name"] for c in fields.get("chapters", [])], []
    for count in counts:
      names.append(flat[:count])
      flat = flat[count:]
  return _PlanSoFar(arcs=arcs, counts=counts, names=names)


def book_plan_section_grammar(profile: str | profiles.Profile, written: str = "", *, end: str | None = "text") -> Grammar:
  """The grammar of the book plan's next section, after the complete sections `written` so far.

  Sampling the book plan one section at a time, each under this grammar, gives a plan that check_stage
  accepts in full: the later sections repeat what the written ones chose (14b: the short story arcs' titles
  in every arc section, each arc's `* K` as its number of chapter names, the chapter names in the embedding
  and word-count sections), which one grammar for the whole stage cannot say. A section's text is its
  `## Title` line, its body and the blank line after it (ending in "\\n\\n"); the last section's ends with
  the end marker as `stage_grammar`'s does (`end`). The plan is `written` plus the sections' texts.

  Raises:
    ValueError: when `written` is not whole sections of the profile's book plan in order (or is all of them).
  """
  profile = profiles.get_profile(profile)
  order = profiles.PLAN_SECTIONS_14B if profile.full_book else profiles.PLAN_SECTIONS_24B
  titles = [line[3:] for line in written.split("\n") if line.startswith("## ")]
  if titles != list(order[:len(titles)]) or (written and not written.endswith("\n\n")) or (
      written and not written.startswith("## ")):
    raise ValueError(f"book_plan: the written part must be whole sections {list(order)} in order, each ending "
                     f"with a blank line; it holds sections {titles}")
  if len(titles) == len(order):
    raise ValueError("book_plan: every section is written; the stage is complete")
  g = _Lark(end)
  title, body = _plan_sections(g, profile, _plan_so_far(written.rstrip("\n"), profile, titles))[len(titles)]
  last = len(titles) == len(order) - 1
  start = _section(title, body(last)) + ("" if last else f" {_BLANK}")
  return Grammar(kind="lark", text=g.render(start), role="book_plan", end=end if last else None)
