"""The `paper` field of a scaffold record: the plans in the format of the paper's released models.

`xbook scaffold build --format paper` adds to each record (schema in xbook.scaffold.schema) the book
preview, the book plan, per chapter a plan and a scene breakdown, and the characters list that the
paper's models read and write (xbook.scaffold.stage_protocol renders them as their stage stream).

Measured, never invented, whatever the backend (xbook.scaffold.measures): chapter names (the book's
headings), word counts (binned when rendered), scene boundaries (xbook's scenes merged to at most 12
per chapter at scene boundaries), the share of quoted words (the `dialog` axis is checked against it)
and the book's title. What needs reading comprehension is written by the backend:
  extractive  offline; its best approximation, marked "approximation" in `paper.sources`: sentences
              of xbook's own summaries as bullets (arcs, chapter and scene summaries), the book's
              parts or word-balanced thirds as arcs, the characters and settings found in the text as
              archetypes, world rules and characters list, measured prose statistics as the writing
              style, word-list scores for the other embedding axes, and the narration's person as
              each scene's perspective.
  openai / xbook (any chat endpoint)  one request per artifact from the versioned templates
              `templates/paper_v1/`: the book preview, the book plan's sections up to Number of
              Chapters (the chapter names, embedding spaces and word counts per arc are filled in
              from the chapters), each chapter's plan and scene breakdown, the characters list. Every
              answer is checked with `stage_protocol.check_stage` (sections present, counts that agree
              with the book: arcs summing to its chapters, as many scenes as measured with their word
              counts, the chapter's name) and its dialog score against the measured quoted share
              (within DIALOG_TOLERANCE); a malformed answer is asked again with its problems listed,
              at most `max_reasks` times, and only an accepted answer is cached, so a rerun pays for
              nothing.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import re
from collections import Counter
from importlib import resources
from typing import Any, Awaitable, Callable, Mapping, Sequence

from xbook.books.types import Book
from xbook.scaffold import stage_protocol as sp
from xbook.scaffold import extractive, measures
from xbook.scaffold.cache import SummaryCache, cache_key
from xbook.scaffold.schema import PAPER_SCHEMA, PAPER_SOURCE_FIELDS
from xbook.scaffold.summarizer import Summary, SummarizerError

TEMPLATES = "paper_v1"
# Part of every paper record's identity (`paper.builder.version`): bump when the output would change.
VERSION = f"{TEMPLATES}+{measures.ALGORITHM}+paper-extractive/1"
TEMPLATE_STAGES = ("book_preview", "book_plan", "chapter_plan", "scene_breakdown", "characters")
# Most tokens a model may take to write each artifact (its format's size with room to spare).
MAX_TOKENS = {"book_preview": 1_500, "book_plan": 8_000, "chapter_plan": 2_500, "scene_breakdown": 3_000,
              "characters": 4_000}
# A model's dialog score may differ from the measured percentage of quoted words by this much.
DIALOG_TOLERANCE = 20
CHAPTER_SUMMARY_BULLETS = 32  # what the 24b's first chapter plan allows (the 14b allows 80)

MEASURED = ("preview.title", "chapters.name", "chapters.n_words", "scenes.boundaries", "scenes.n_words")


# ------------------------------------------------------------------------------------------- helpers
def _one_line(text: str) -> str:
  return " ".join(text.split())


def bullet(text: str, max_chars: int = sp.MAX_BULLET_CHARS) -> str:
  """`text` on one line, cut at a word boundary (with an ellipsis) to at most `max_chars` characters."""
  text = _one_line(text).replace(sp.EOT, "").replace(sp.START_HEADER, "").replace(sp.STOP_HEADER, "")
  if len(text) <= max_chars:
    return text
  cut = text[:max_chars - 1].rsplit(" ", 1)[0] if " " in text[:max_chars - 1] else text[:max_chars - 1]
  return cut.rstrip(" ,;:") + "\u2026"


def bullets(sentences: Sequence[str], limit: int) -> list[str]:
  """Up to `limit` non-empty one-line bullets."""
  out = [b for b in (bullet(s) for s in sentences) if b]
  return out[:limit]


def summary_bullets(text: str, limit: int) -> list[str]:
  """The sentences of an xbook summary as bullets (at most `limit`; the last ones merged if more)."""
  sentences = extractive.split_sentences(text) or [text]
  if len(sentences) > limit:
    sentences = sentences[:limit - 1] + [" ".join(sentences[limit - 1:])]
  return bullets(sentences, limit) or [bullet(text) or "(no summary)"]


_PREVIEW_FIXES = (("--", "\u2014"), ("...", "\u2026"), ("_", ""), ("*", ""), ("[", ""), ("]", ""),
                  ("{", ""), ("}", ""), ("<", ""), (">", ""), ("#", ""), ("|", ""))


def preview_text(text: str, tag: bool = False) -> str:
  """`text` with only words the preview format admits (module stage_protocol, `preview_words`):
  Gutenberg's `--` and `...` become a dash and an ellipsis, markup characters go, other words are
  dropped."""
  for old, new in _PREVIEW_FIXES:
    text = text.replace(old, new)
  if tag:
    text = re.sub(r"[,;!?]", "", text)
  words = text.split()
  _, bad = sp.preview_words(" ".join(words), tag)
  bad_set = set(bad)
  return " ".join(w for w in words if w not in bad_set)


def _fill_words(sentences: Sequence[str], low: int, high: int, target: int) -> str:
  """Sentences (cleaned for the preview) joined on one line: taken in order until `target` words,
  never past `high`, and at least `low` words when the sentences have them (a last sentence is cut to
  fit)."""
  words: list[str] = []
  for sentence in sentences:
    clean = preview_text(sentence).split()
    if len(words) >= target:
      break
    room = high - len(words)
    if len(clean) > room:
      if len(words) < low:
        words += clean[:room]
      break
    words += clean
  return " ".join(words)


def _mention_counter(entities: Sequence[Mapping[str, Any]]) -> Callable[[str], Counter]:
  """text -> Counter of entity names by how often the text mentions them (name or alias; one regex
  over every form, longest first)."""
  owner = {}
  for entity in entities:
    for form in (entity["name"], *entity["aliases"]):
      owner.setdefault(form, entity["name"])
  if not owner:
    return lambda text: Counter()
  pattern = re.compile(r"\b(?:" + "|".join(map(re.escape, sorted(owner, key=len, reverse=True))) + r")\b")

  def count(text: str) -> Counter:
    return Counter(owner[form] for form in pattern.findall(text))

  return count


def _focus(counter: Counter, k: int, fallback: str) -> list[str]:
  names = [bullet(name, sp.MAX_FOCUS_CHARS).replace(";", ",") for name, _ in counter.most_common(k)]
  return names or [bullet(fallback, sp.MAX_FOCUS_CHARS).replace(";", ",") or "The story"]


def _title_of(summary: str) -> str:
  """A scene title approximated from its summary: the first sentence's first words."""
  first = (extractive.split_sentences(summary) or [summary])[0]
  words = first.split()
  title = " ".join(words[:10]).rstrip(".,;:!?\u2014-\"'\u201d\u2019")
  return bullet(title + ("\u2026" if len(words) > 10 else ""), sp.MAX_NAME_CHARS) or "Scene"


# ---------------------------------------------------------------------------------------- skeleton
def measured_chapters(book: Book, record: Mapping[str, Any]) -> list[dict[str, Any]]:
  """Per chapter what is measured: name, words, quoted share, dialog, and its merged scenes (their
  xbook scene ranges, words, quoted share, dialog, text and xbook summaries)."""
  chapters = []
  for chapter, source in zip(book.chapters, record["chapters"]):
    embedding, quoted = measures.embedding(chapter.text)
    scenes = []
    for start, end in measures.merge_scenes([s.n_words for s in chapter.scenes]):
      text = "\n\n".join(s.text for s in chapter.scenes[start:end])
      scene_embedding, scene_quoted = measures.embedding(text)
      scenes.append({"xbook_scenes": [start, end], "n_words": sum(s.n_words for s in chapter.scenes[start:end]),
                     "quoted_share": scene_quoted, "embedding": scene_embedding, "text": text,
                     "summaries": [s["summary"] for s in source["scenes"][start:end]]})
    chapters.append({"name": measures.chapter_name(chapter), "n_words": chapter.n_words,
                     "quoted_share": quoted, "embedding": embedding, "scenes": scenes,
                     "summary_text": source["summary"]})
  return chapters


def _sources(method: str, partition_measured: bool) -> dict[str, str]:
  written = {"extractive": "approximation", "model": "model"}[method]
  sources = {field: written for field in PAPER_SOURCE_FIELDS}
  sources.update({field: "measured" for field in MEASURED})
  if method == "extractive":
    sources["chapters.embedding.dialog"] = sources["scenes.embedding.dialog"] = "measured"
  if partition_measured:
    sources["arcs.partition"] = "measured"
  return sources


# ---------------------------------------------------------------------------------------- extractive
def extractive_paper(book: Book, record: Mapping[str, Any]) -> dict[str, Any]:
  """The `paper` field of `record` (built from `book`) by the offline extractive approximation."""
  measured = measured_chapters(book, record)
  people = _mention_counter(record["characters"])
  places = _mention_counter(record["settings"])
  person = measures.narration_person("\n\n".join(c.text for c in book.chapters))
  chapters = []
  for m in measured:
    scenes = []
    for s in m["scenes"]:
      summary = "\n\n".join(s["summaries"])
      mentions = people(s["text"]) + places(s["text"])
      scenes.append({"title": _title_of(summary), "n_words": s["n_words"], "quoted_share": s["quoted_share"],
                     "embedding": s["embedding"], "focus": _focus(mentions, 3, _title_of(summary)),
                     "perspective": _perspective(s["text"], person),
                     "summary": summary_bullets(summary, sp.BULLETS["scene_summary"][1]),
                     "xbook_scenes": s["xbook_scenes"]})
    chapter_text = "\n\n".join(s["text"] for s in m["scenes"])
    chapters.append({"name": m["name"], "n_words": m["n_words"], "quoted_share": m["quoted_share"],
                     "embedding": m["embedding"],
                     "focuses": _focus(people(chapter_text) + places(chapter_text), 4, m["name"]),
                     "summary": summary_bullets(m["summary_text"], CHAPTER_SUMMARY_BULLETS), "scenes": scenes})
  arcs, partition_measured = _extractive_arcs(book, record)
  return {"schema": PAPER_SCHEMA,
          "builder": {"method": "extractive", "version": VERSION, "model": extractive.ALGORITHM},
          "sources": _sources("extractive", partition_measured),
          "preview": _extractive_preview(book, record), "world_rules": _world_rules(record),
          "writing_style": bullets(measures.style_bullets(book), sp.BULLETS["writing_style"][1]),
          "arcs": arcs, "character_archetypes": _archetypes(record), "characters": _characters(record),
          "chapters": chapters}


def _perspective(text: str, book_person: str) -> str:
  person = measures.narration_person(text) if len(text.split()) >= 200 else book_person
  return "First person, a narrator inside the story" if person == "first" else "Third person narration"


def _extractive_preview(book: Book, record: Mapping[str, Any]) -> dict[str, Any]:
  synopsis = extractive.split_sentences(record["synopsis"])
  central = extractive.split_sentences(extractive.summarize(record["synopsis"], 110))
  highlight = _fill_words(central + [s for s in synopsis if s not in central], *sp.HIGHLIGHT_WORDS, 100)
  premise = extractive.split_sentences(record["premise"])
  rest = [s for s in synopsis if s not in central]
  archetype = _fill_words(premise + rest + central, *sp.ARCHETYPE_WORDS, 90)
  return {"highlight": highlight, "title": preview_text(measures.book_title(book.title)) or "Untitled",
          "tags": _tags(record), "archetype": archetype}


def _tags(record: Mapping[str, Any]) -> list[str]:
  """The 7 most frequent content words of the chapter summaries that are no character's name."""
  names = {w.lower() for e in record["characters"] + record["settings"] for n in [e["name"], *e["aliases"]]
           for w in n.split()}
  text = " ".join(c["summary"] for c in record["chapters"])
  counts = Counter(t for t in extractive.content_terms(text)
                   if len(t) > 3 and t.isalpha() and t not in names and t.lower() == t)
  tags = [preview_text(t, tag=True) for t, _ in counts.most_common(40)]
  tags = [t for t in tags if t][:sp.N_TAGS]
  for filler in ("novel", "fiction", "story", "narrative", "prose", "book", "tale"):
    if len(tags) == sp.N_TAGS:
      break
    if filler not in tags:
      tags.append(filler)
  return tags


def _world_rules(record: Mapping[str, Any]) -> list[str]:
  rules = [bullet(f"{s['name']}: {s['description']}" if s["description"] else s["name"]) for s in record["settings"]]
  if not rules:
    rules = bullets(extractive.split_sentences(extractive.summarize(record["synopsis"], 60)), 3)
  return rules[:sp.BULLETS["world_rules"][1]] or ["The story keeps to the world its text describes"]


def _archetypes(record: Mapping[str, Any]) -> list[dict[str, Any]]:
  out = []
  for c in record["characters"][:sp.MAX_ARCHETYPES]:
    lines = [f"Role in the story: {c['role']}"]
    if c["description"]:
      lines.append(c["description"])
    if c["aliases"]:
      lines.append("Also called " + ", ".join(c["aliases"]))
    lines.append(f"Named {c['mentions']} times in the text")
    out.append({"name": bullet(c["name"], sp.MAX_NAME_CHARS), "bullets": bullets(lines, 10)})
  return out or [{"name": "The narrator", "bullets": ["No recurring named character was found in the text"]}]


def _characters(record: Mapping[str, Any]) -> dict[str, Any]:
  def entry(c: Mapping[str, Any]) -> dict[str, Any]:
    lines = [c["description"]] if c["description"] else []
    lines.append(f"A {c['role']} character, named {c['mentions']} times")
    return {"name": bullet(c["name"], sp.MAX_NAME_CHARS), "bullets": bullets(lines, 20)}

  main = [entry(c) for c in record["characters"] if c["role"] in ("protagonist", "major")]
  side = [entry(c) for c in record["characters"] if c["role"] == "minor"]
  if not side and len(main) > 1:
    side = [main.pop()]
  if not main and side:
    main = [side.pop(0)]
  other = {"name": "Others", "bullets": ["No other recurring named character was found in the text"]}
  return {"main": main[:sp.MAX_CHARACTERS] or [dict(other, name="The narrator")],
          "side": side[:sp.MAX_CHARACTERS] or [other]}


def _extractive_arcs(book: Book, record: Mapping[str, Any]) -> tuple[list[dict[str, Any]], bool]:
  arcs, start, from_parts = [], 0, True
  for name, count, measured_name in measures.arc_partition(book):
    summaries = "\n\n".join(c["summary"] for c in record["chapters"][start:start + count])
    arc = {"name": bullet(name, sp.MAX_NAME_CHARS), "chapters": count}
    for field, words in (("short", 60), ("medium", 150), ("long", 300)):
      limit = sp.BULLETS[field][1]
      text = extractive.summarize(summaries, min(words, max(1, len(summaries.split()))))
      arc[field] = summary_bullets(text, limit)
    arcs.append(arc)
    from_parts &= measured_name
    start += count
  return arcs, from_parts


# ------------------------------------------------------------------------------------------- checks
def _half_width(n_words: int) -> int:
  binned = sp.bin_word_count(n_words)
  low, high = sp.word_count_range(binned)
  return max(binned - low, high - binned)


def paper_checks(record: Mapping[str, Any]) -> dict[str, Any]:
  """The `paper.checks` of a record whose `paper` field is otherwise complete.

  scene_words_within_binning: in every chapter the binned scene word counts sum to the chapter's
    words within the sum of the scenes' bin widths.
  max_dialog_gap: the largest difference between a dialog score and the measured percentage of quoted
    words (null when nothing was measured).
  format_problems: what `check_stage` finds in the record's rendered stages, in both profiles.
  """
  paper = record["paper"]
  within = all(
      abs(sum(sp.bin_word_count(s["n_words"]) for s in c["scenes"]) - c["n_words"])
      <= sum(_half_width(s["n_words"]) for s in c["scenes"]) for c in paper["chapters"])
  gaps = [abs(x["embedding"]["dialog"] - measures.dialog_score(x["quoted_share"]))
          for c in paper["chapters"] for x in [c, *c["scenes"]] if x["quoted_share"] is not None]
  return {"scene_words_within_binning": within, "max_dialog_gap": max(gaps) if gaps else None,
          "format_problems": format_problems(record)}


def format_problems(record: Mapping[str, Any]) -> list[str]:
  """`check_stage` on every rendered stage of `record` in each profile, in the context of the stages
  before it; problems are prefixed with the profile."""
  problems = []
  n_chapters = len(record["chapters"])
  for name in sp.PROFILES:
    try:
      stages = sp.render_stages(record, name)
    except (KeyError, ValueError) as error:
      problems.append(f"{name}: cannot render: {error}")
      continue
    document = sp.stage_document(record, name)
    plan_end = [role for role, _ in stages].index("book_plan") + 1
    base = sp.context_from_stages(stages[:plan_end], name, n_chapters)
    texts = 0
    for role, content in stages:
      context = _with(base, chapter=texts)
      if role in ("first_chapter_plan", "first_chapter_scene_breakdown", "scene_breakdown"):
        k = 0 if role.startswith("first") else texts
        scenes = document["chapters"][k]["scenes"] if k < len(document["chapters"]) else []
        if role != "first_chapter_plan" or sp.get_profile(name).full_book:
          context = _with(context, n_scenes=len(scenes), scene_word_counts=[s["word_count"] for s in scenes])
      problems += [f"{name}: {p}" for p in sp.check_stage(role, content, context)]
      texts += role in sp.TEXT_ROLES
  return problems


def _with(context: sp.StageContext, **changes: Any) -> sp.StageContext:
  return dataclasses.replace(context, **changes)


def finish(record: dict[str, Any], paper: dict[str, Any]) -> dict[str, Any]:
  """`record` with its `paper` field (checks computed)."""
  record = dict(record, paper=dict(paper, checks={"scene_words_within_binning": True, "max_dialog_gap": None,
                                                  "format_problems": []}))
  record["paper"]["checks"] = paper_checks(record)
  return record


# ------------------------------------------------------------------------------------------ backends
@functools.cache
def load_templates(version: str = TEMPLATES) -> dict[str, str]:
  """The paper templates `templates/<version>/<stage>.txt` by stage (TEMPLATE_STAGES)."""
  folder = resources.files("xbook.scaffold").joinpath(f"templates/{version}")
  templates = {}
  for stage in TEMPLATE_STAGES:
    path = folder.joinpath(f"{stage}.txt")
    if not path.is_file():
      raise FileNotFoundError(f"paper template version {version!r} has no {stage}.txt (looked in {folder})")
    templates[stage] = path.read_text("utf-8").strip()
  return templates


AskRaw = Callable[[str, int], Awaitable[Summary]]
Check = Callable[[str], list[str]]


def clean_answer(text: str) -> str:
  """A model's answer as a stage: without a Markdown fence around the whole of it, tidied as
  `stage_protocol.trim_stage_text` tidies generated stages."""
  text = sp.trim_stage_text(text)
  lines = text.split("\n")
  if len(lines) >= 2 and lines[0].startswith("```") and lines[-1] == "```":
    text = sp.trim_stage_text("\n".join(lines[1:-1]))
  return text


def reask_prompt(prompt: str, answer: str, problems: Sequence[str]) -> str:
  """The request after a malformed answer: the original request, the answer and what is wrong."""
  listed = "\n".join(f"- {p}" for p in problems[:20])
  return (f"{prompt}\n\n(Your previous answer, below, was rejected for these problems:\n{listed}\n\n"
          f"PREVIOUS ANSWER:\n{answer}\n\nWrite the whole answer again in the required form, corrected.)\n")


class CheckedAsk:
  """Requests to a chat backend whose answers must pass a check, asked again until they do, cached.

  `await ask(stage, prompt, check)` returns the first answer (cleaned) for which `check` finds no
  problem; a malformed one is asked again with `reask_prompt`, at most `max_reasks` times, then
  SummarizerError names the problems. Accepted answers are cached under the key of the original
  request (level `paper/<stage>`), and a cached answer is checked again before it is used.
  `on_call(stage, hit, summary)` is told of every cache hit and every answer.
  """

  def __init__(self, summarizer: Any, ask_raw: AskRaw, cache: SummaryCache | None,
               on_call: Callable[[str, bool, Summary | None], None] | None = None,
               max_reasks: int = 2) -> None:
    self.summarizer, self.ask_raw, self.cache = summarizer, ask_raw, cache
    self.on_call = on_call or (lambda stage, hit, summary: None)
    self.max_reasks = max_reasks

  async def __call__(self, stage: str, prompt: str, check: Check) -> str:
    level = f"paper/{stage}"
    key = cache_key(self.summarizer, level, 0, prompt)
    cached = self.cache.get(key) if self.cache is not None else None
    if cached is not None and not check(cached):
      self.on_call(stage, True, None)
      return cached
    request, problems = prompt, []
    for _ in range(self.max_reasks + 1):
      summary = await self.ask_raw(request, MAX_TOKENS[stage])
      self.on_call(stage, False, summary)
      answer = clean_answer(summary.text)
      problems = check(answer)
      if not problems:
        if self.cache is not None:
          self.cache.put(key, level, answer)
        return answer
      request = reask_prompt(prompt, answer, problems)
    raise SummarizerError(f"paper {stage}: still malformed after {self.max_reasks + 1} answers: "
                          + "; ".join(problems[:5]))


def _dialog_problems(what: str, scores: Sequence[Mapping[str, int]], shares: Sequence[float]) -> list[str]:
  problems = []
  for i, (embedding, share) in enumerate(zip(scores, shares)):
    if not embedding:
      continue
    measured = measures.dialog_score(share)
    if abs(embedding["dialog"] - measured) > DIALOG_TOLERANCE:
      problems.append(f"{what}{f' scene {i + 1}' if len(shares) > 1 else ''}: dialog {embedding['dialog']}, but "
                      f"{measured}% of its words are quoted dialogue (keep within {DIALOG_TOLERANCE})")
  return problems


async def model_paper(book: Book, record: Mapping[str, Any], ask: CheckedAsk,
                      model: str) -> dict[str, Any]:
  """The `paper` field of `record` written by a chat backend through `ask` (module docstring): a plan and a
  scene breakdown per chapter, the preview and the characters asked for at once, then the book plan."""
  templates = load_templates()
  measured = measured_chapters(book, record)
  names = [{"name": m["name"]} for m in measured]
  plans, breakdowns, book_preview, cast = await asyncio.gather(
      asyncio.gather(*(_model_chapter_plan(m, ask, templates["chapter_plan"]) for m in measured)),
      asyncio.gather(*(_model_scene_breakdown(i, m, names, ask, templates["scene_breakdown"])
                       for i, m in enumerate(measured))),
      _model_preview(book, record, ask, templates["book_preview"]),
      _model_characters(record, ask, templates["characters"]))
  chapters = [_paper_chapter(m, plan, scenes) for m, plan, scenes in zip(measured, plans, breakdowns)]
  plan = await _model_book_plan(record, chapters, ask, templates)
  return {"schema": PAPER_SCHEMA, "builder": {"method": "model", "version": VERSION, "model": model},
          "sources": _sources("model", False), "preview": book_preview, "characters": cast,
          "chapters": chapters, **plan}


async def _model_chapter_plan(m: Mapping[str, Any], ask: CheckedAsk, template: str) -> dict[str, Any]:
  """The parsed plan of measured chapter `m` (one 24b first-chapter-plan block, its dialog score within
  DIALOG_TOLERANCE of the measured one), asked for with the chapter_plan `template`."""
  word_count = sp.bin_word_count(m["n_words"])
  prompt = template.format(
      name=m["name"], word_count=word_count, dialog_percent=round(100 * m["quoted_share"]),
      dialog=measures.dialog_score(m["quoted_share"]),
      scenes="\n\n".join(s for scene in m["scenes"] for s in scene["summaries"]))
  context = sp.StageContext(profile="24b_first_chapter",
                            chapters=[{"name": m["name"], "word_count": word_count, "embedding": None}])

  def check(text: str) -> list[str]:
    problems = sp.check_stage("first_chapter_plan", text, context)
    if problems:
      return problems
    if sum(line.startswith("### ") for line in text.split("\n")) != 1:
      return ["chapter_plan: write exactly one chapter block (one '### ' line)"]
    block = sp.parse_stage("first_chapter_plan", text, "24b_first_chapter")
    return _dialog_problems(f"chapter {m['name']!r}", [block["embedding"]], [m["quoted_share"]])

  return sp.parse_stage("first_chapter_plan", await ask("chapter_plan", prompt, check), "24b_first_chapter")


async def _model_scene_breakdown(i: int, m: Mapping[str, Any], names: list[dict[str, Any]],
                                 ask: CheckedAsk, template: str) -> list[dict[str, Any]]:
  """The parsed scenes of measured chapter `m` (the `i`th of the chapters `names`), one per measured scene,
  each dialog score within DIALOG_TOLERANCE of the measured one, asked for with the scene_breakdown
  `template`."""
  scenes = m["scenes"]
  listed = "\n\n".join(
      f"SCENE {k}: {sp.bin_word_count(s['n_words'])} words, {round(100 * s['quoted_share'])}% dialogue\n"
      + "\n".join(s["summaries"]) for k, s in enumerate(scenes, start=1))
  prompt = template.format(name=m["name"], n_scenes=len(scenes), scenes=listed)
  context = sp.StageContext(chapters=names, chapter=i, n_scenes=len(scenes),
                            scene_word_counts=[sp.bin_word_count(s["n_words"]) for s in scenes])

  def check(text: str) -> list[str]:
    problems = sp.check_stage("scene_breakdown", text, context)
    if problems:
      return problems
    parsed = sp.parse_stage("scene_breakdown", text)["scenes"]
    return _dialog_problems(f"chapter {m['name']!r}", [s["embedding"] for s in parsed],
                            [s["quoted_share"] for s in scenes])

  return sp.parse_stage("scene_breakdown", await ask("scene_breakdown", prompt, check))["scenes"]


async def _model_preview(book: Book, record: Mapping[str, Any], ask: CheckedAsk, template: str) -> dict[str, Any]:
  """The parsed book preview from the record's synopsis, under the title measured from `book` (the
  model's title line replaced by it), asked for with the book_preview `template`."""
  title = preview_text(measures.book_title(book.title)) or "Untitled"
  prompt = template.format(title=title, synopsis=record["synopsis"])

  def check(text: str) -> list[str]:
    return sp.check_stage("book_preview", _with_title(text, title), sp.StageContext())

  return sp.parse_stage("book_preview", _with_title(await ask("book_preview", prompt, check), title))["preview"]


async def _model_characters(record: Mapping[str, Any], ask: CheckedAsk, template: str) -> dict[str, Any]:
  """The parsed characters list from the record's synopsis and extracted characters, asked for with the
  characters `template`."""
  listed = "\n".join(f"- {c['name']} ({c['role']}, named {c['mentions']} times)"
                     + (f": {c['description']}" if c["description"] else "") for c in record["characters"])
  prompt = template.format(synopsis=record["synopsis"], characters=listed or "(none found)")
  check = functools.partial(sp.check_stage, "book_characters_list", context=sp.StageContext())
  return sp.parse_stage("book_characters_list", await ask("characters", prompt, check))


def _paper_chapter(m: Mapping[str, Any], plan: Mapping[str, Any],
                   scenes: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
  """A chapter of the paper field: measured chapter `m`'s figures with the model's `plan` of it and its
  `scenes` (the scene breakdown, one per measured scene)."""
  return {"name": m["name"], "n_words": m["n_words"], "quoted_share": m["quoted_share"],
          "embedding": plan["embedding"], "focuses": plan["focuses"], "summary": plan["summary"],
          "scenes": [{"title": s["title"], "n_words": ms["n_words"], "quoted_share": ms["quoted_share"],
                      "embedding": s["embedding"], "focus": s["focus"], "perspective": s["perspective"],
                      "summary": s["summary"], "xbook_scenes": ms["xbook_scenes"]}
                     for s, ms in zip(scenes, m["scenes"])]}


def _with_title(text: str, title: str) -> str:
  """The preview `text` with its Book Title section's line replaced by the measured title."""
  return re.sub(r"(?m)^(## Book Title\n)[^\n]*$", lambda m: m.group(1) + title, text, count=1)


_ARC_COUNT = re.compile(r"(?m)^### Arc ([0-9]+): ([^\n]+)\n\* ([0-9]+)\s*$")


async def _model_book_plan(record: Mapping[str, Any], chapters: list[dict[str, Any]], ask: CheckedAsk,
                           templates: Mapping[str, str]) -> dict[str, Any]:
  """World rules, arcs, archetypes and writing style from a model; the per-arc chapter names,
  embedding spaces and word counts added from the chapters, the whole checked as a 14b book plan."""
  n = len(chapters)
  listed = "\n".join(f"{i + 1}. {c['name']}: {' '.join(c['summary'])}" for i, c in enumerate(chapters))
  characters = "\n".join(f"- {c['name']} ({c['role']})" for c in record["characters"]) or "(none found)"
  prompt = templates["book_plan"].format(n_chapters=n, synopsis=record["synopsis"], characters=characters,
                                         chapters=listed)
  document_chapters = [{"name": c["name"], "embedding": c["embedding"],
                        "word_count": sp.bin_word_count(c["n_words"])} for c in chapters]

  def composed(text: str) -> str:
    counts = _ARC_COUNT.findall(text.split("## Number of Chapters", 1)[-1]) if "## Number of Chapters" in text else []
    arcs = [{"name": name.strip(), "chapters": int(k)} for _, name, k in counts]
    if not arcs or sum(a["chapters"] for a in arcs) != n:
      return text  # the check reports the counts
    return text + "\n\n" + sp.render_book_plan_chapter_sections({"arcs": arcs, "chapters": document_chapters})

  context = sp.StageContext(n_chapters=n, chapters=document_chapters)

  def check(text: str) -> list[str]:
    return sp.check_stage("book_plan", composed(text), context)

  fields = sp.parse_stage("book_plan", composed(await ask("book_plan", prompt, check)))
  return {"world_rules": fields["world_rules"], "writing_style": fields["writing_style"],
          "character_archetypes": fields["character_archetypes"],
          "arcs": [{k: a[k] for k in ("name", "short", "medium", "long", "chapters")} for a in fields["arcs"]]}
