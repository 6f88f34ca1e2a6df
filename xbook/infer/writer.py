"""The staged book writer: a whole book from a prompt, plans first, then the text, chapter by chapter.

In xbook's own trajectory format (xbook.data.trajectory, plan order `interleaved`) a book is written in the
order training showed it:

  premise -> synopsis -> outline (numbered chapters "N. Title: summary")
  per chapter: its scene plans (one stage: the plans up to the first text marker), then each scene's text

Each stage's context is built the way the `windows` view builds a training window (xbook.data.windows):
the global plan (prompt, premise, synopsis, outline; at most 3/8 of the context), when that cut the
outline a "Previously" segment of the summaries of the chapters before this one (up to half of the
context with the global plan), then
the current chapter: its plan (the outline's entry, exactly as training data renders it), its scene
plans and the scene texts written so far, the oldest texts dropped first when the chapter outgrows the
context. So a book can be much longer than the context the model was trained at.

Segments are encoded as training encodes them (xbook.data.pieces.encode_segment), the context starts
with the vocabulary's BOS, and generation of a stage stops at the next segment marker (or EOS).

A plan that comes out malformed (an empty premise, an outline without numbered chapters or with more
than `max_chapters`, no scene plan or more than `max_scenes`) is generated again with the next seed, at
most `retries` times; then the last attempt is kept, its problems are logged and recorded with the stage
in book.json, and the book goes on with the nearest reading of it (an outline's non-empty lines as
chapters, at most `max_chapters`; the first `max_scenes` scene plans, or the whole text as one), so that
even a barely trained model writes a complete book.

Every completed stage is appended to `journal.jsonl` in the output folder (flushed and fsynced). A write
that is killed and started again replays the journal and continues with the first missing stage; every
stage's seed is derived from the book's seed and the stage's name, so the book is the same as an
uninterrupted write's.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
import sys
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import gin
from tqdm import tqdm

from xbook.atomic import atomic_open
from xbook.data import trajectory
from xbook.data.pieces import encode_segment
from xbook.data.vocab import Vocabulary
from xbook.infer.decode import SamplingParams

log = logging.getLogger(__name__)

JOURNAL = "journal.jsonl"
OUTLINE_LINE = re.compile(r"^\s*(\d+)\.\s*(.*?)\s*:\s+(.*\S)\s*$")


@dataclasses.dataclass(frozen=True)
class WriteConfig:
  """How `xbook write` samples and bounds a book (gin: `WriteConfig.text_temperature = 0.7`, ...).

  Attributes:
    context_len: the most tokens a stage's context plus its output may take (0: the length the run was
      trained at, its `train.seq_len`).
    plan_temperature, text_temperature: sampling temperature of plan stages and of scene texts.
    top_p, min_p, top_k: the filters of every stage (xbook.infer.decode.SamplingParams).
    premise_tokens, synopsis_tokens, outline_tokens, scene_plans_tokens, text_tokens: each stage
      kind's token budget.
    max_chapters: an outline with more chapters is malformed.
    max_scenes: a chapter's scene plans beyond this many are malformed.
    retries: how many times a malformed plan is generated again (with the next seed).
    paper_temperature_scale: the paper's stage protocol (xbook.infer.paper_writer): a factor on each
      stage's temperature from the profile (1: the released models' settings).
    paper_max_tokens: the paper's protocol: a cap on every stage's token budget (0: the profile's).
    grammars: the paper's protocol: decode every stage under its grammar
      (xbook.scaffold.stage_grammar, llguidance through the engine's structured outputs), as the
      authors' tool does; False samples freely (check_stage and retries still judge every stage).
  """

  context_len: int = 0
  plan_temperature: float = 0.7
  text_temperature: float = 0.8
  top_p: float = 0.95
  min_p: float = 0.05
  top_k: int = 0
  premise_tokens: int = 160
  synopsis_tokens: int = 768
  outline_tokens: int = 2048
  scene_plans_tokens: int = 768
  text_tokens: int = 2048
  max_chapters: int = 60
  max_scenes: int = 12
  retries: int = 3
  paper_temperature_scale: float = 1.0
  paper_max_tokens: int = 0
  grammars: bool = True

  def __post_init__(self) -> None:
    check_write_config(self)

  def sampling(self, kind: str, seed: int) -> SamplingParams:
    """The SamplingParams of a stage of `kind` (a segment kind) with its seed and budget."""
    budgets = {"premise": self.premise_tokens, "synopsis": self.synopsis_tokens,
               "outline": self.outline_tokens, "scene_plan": self.scene_plans_tokens,
               "text": self.text_tokens}
    temperature = self.text_temperature if kind == "text" else self.plan_temperature
    return SamplingParams(temperature=temperature, top_k=self.top_k, top_p=self.top_p,
                          min_p=self.min_p, seed=seed, max_tokens=budgets[kind])


# The valid range of each WriteConfig number: (least, most, whether the least is excluded); None: no bound.
_WRITE_CONFIG_RANGES = {
    "context_len": (0, None, False), "plan_temperature": (0, None, False), "text_temperature": (0, None, False),
    "top_p": (0, 1, True), "min_p": (0, 1, False), "top_k": (0, None, False),
    **{name: (1, None, False) for name in ("premise_tokens", "synopsis_tokens", "outline_tokens",
                                          "scene_plans_tokens", "text_tokens", "max_chapters", "max_scenes")},
    "retries": (0, None, False), "paper_temperature_scale": (0, None, False), "paper_max_tokens": (0, None, False)}


def check_write_config(config: WriteConfig) -> None:
  """ValueError naming the first WriteConfig field outside its range (before anything is written)."""
  for name, (least, most, open_below) in _WRITE_CONFIG_RANGES.items():
    value = getattr(config, name)
    low = value <= least if open_below else value < least
    if low or (most is not None and value > most):
      bound = f"> {least}" if open_below else f">= {least}"
      shown = f"{bound} and <= {most}" if most is not None else bound
      raise ValueError(f"WriteConfig.{name} = {value!r}: expected a number {shown} "
                       f"(--gin.WriteConfig.{name}=...)")


# `WriteConfig.<field> = ...` in gin; entry points build it with xbook.gin_flags.configured(WriteConfig),
# and `WriteConfig()` here or in any library code is the plain defaults.
gin.external_configurable(WriteConfig, module=__name__)


@dataclasses.dataclass(frozen=True)
class StageResult:
  """What a completer returns for one stage: the generated text (stop marker excluded) and its ids, and
  how many context tokens were prefilled (-1: unknown) or served from the cache, and how many of its
  tokens were chosen to close its grammar within the budget (xbook.infer.structured; 0: none)."""

  text: str
  token_ids: list[int]
  finish_reason: str
  seconds: float
  prefill_tokens: int = -1
  cached_tokens: int = 0
  closed_by_budget: int = 0


# (context ids, sampling, stop token ids, stop strings, grammar=None, closers=()) -> StageResult; `grammar` is
# a Lark grammar in llguidance's dialect (xbook.scaffold.stage_grammar) the output must match, or None;
# `closers` the texts that end it, which a completer that closes grammars within the budget writes out
# (xbook.infer.structured; a remote server ignores them).
Completer = Callable[..., StageResult]


def stage_seed(seed: int, stage: str, attempt: int) -> int:
  """A stage's own seed: from the book's seed, the stage's name and the attempt (stable across runs)."""
  digest = hashlib.sha256(f"{seed}/{stage}/{attempt}".encode()).digest()
  return int.from_bytes(digest[:4], "little")


def parse_outline(text: str) -> list[dict[str, Any]]:
  """Chapters of an outline as training renders it (trajectory.outline_text): "N. Title: summary" lines.

  Returns:
    [{"index", "title", "summary"}] in order; lines that are not chapter lines are ignored.
  """
  chapters = []
  for line in text.splitlines():
    match = OUTLINE_LINE.match(line)
    if match:
      chapters.append({"index": len(chapters), "title": match.group(2), "summary": match.group(3)})
  return chapters


def outline_chapters(text: str, max_chapters: int) -> list[dict[str, Any]]:
  """The chapters of an outline (`parse_outline`), or, when it has no chapter line, one chapter per
  non-empty line (at least one), at most `max_chapters`."""
  chapters = parse_outline(text)
  if not chapters:
    lines = [line.strip() for line in text.splitlines() if line.strip()] or [text.strip()]
    chapters = [{"index": i, "title": f"Chapter {i + 1}", "summary": line} for i, line in enumerate(lines)]
  return chapters[:max_chapters]


def outline_problems(text: str, max_chapters: int) -> list[str]:
  chapters = parse_outline(text)
  if not chapters:
    return ["the outline has no chapter line of the form 'N. Title: summary'"]
  problems = []
  numbers = [int(OUTLINE_LINE.match(line).group(1)) for line in text.splitlines() if OUTLINE_LINE.match(line)]
  if numbers != list(range(1, len(numbers) + 1)):
    problems.append(f"the chapters are numbered {numbers[:12]}, not 1, 2, 3, ...")
  if len(chapters) > max_chapters:
    problems.append(f"{len(chapters)} chapters, more than WriteConfig.max_chapters={max_chapters}")
  return problems


def split_scene_plans(text: str, style: str) -> list[str]:
  """The scene plans of one scene-plans stage (the plans are separated by the scene plan marker)."""
  marker = trajectory.markers(style)[0]["scene_plan"]
  return [part.strip() for part in text.split(marker) if part.strip()]


def stage_entry(name: str, text: str, result: StageResult, sampling: SamplingParams, context_tokens: int,
                attempt: int, **fields: Any) -> dict[str, Any]:
  """The journal and book.json record of one generated stage (`problems` is set by `sample_stage`)."""
  return {"stage": name, **fields, "text": text, "attempts": attempt + 1, "context_tokens": context_tokens,
          "prefill_tokens": result.prefill_tokens, "cached_tokens": result.cached_tokens,
          "tokens": len(result.token_ids), "finish_reason": result.finish_reason,
          "closed_by_budget": result.closed_by_budget, "seconds": round(result.seconds, 3),
          "sampling": {**dataclasses.asdict(sampling), "stop": list(sampling.stop)}, "problems": []}


def sample_stage(journal: Journal, name: str, retries: int,
                 attempt: Callable[[int], tuple[dict[str, Any], list[str]]]) -> dict[str, Any]:
  """Stage `name`: its journal entry when it has one; else `attempt(0)`, `attempt(1)`, ... (each an
  entry and its problems) until one is well formed, at most `retries` + 1 times, the last kept with its
  problems. The entry is appended to the journal and returned."""
  if name in journal.stages:
    return journal.stages[name]
  for i in range(retries + 1):
    entry, found = attempt(i)
    entry["problems"] = found
    if not found:
      break
    log.warning("stage %s, attempt %d: %s; generating it again with the next seed", name, i + 1,
                "; ".join(found[:3]))
  else:
    log.warning("stage %s came out malformed %d times; keeping the last attempt (its problems are in "
                "book.json) and going on with the nearest reading of it (raise WriteConfig.retries, or "
                "train the run longer)", name, retries + 1)
  journal.append(entry)
  return entry


class Journal:
  """The completed stages of one write, appended one JSON line each (the write's resume point)."""

  def __init__(self, path: Path) -> None:
    self.path = path
    self.stages: dict[str, dict[str, Any]] = {}
    lines = path.read_text(encoding="utf-8").splitlines() if path.is_file() else []
    for number, line in enumerate(lines, 1):
      try:
        entry = json.loads(line)
      except json.JSONDecodeError:
        if number == len(lines):
          log.warning("%s: line %d is cut short (a write killed mid-line); that stage is written again",
                      path, number)
          break
        raise ValueError(f"{path}: line {number} is not JSON; the journal is damaged (move it away "
                         "to write the book from the start)") from None
      self.stages[entry["stage"]] = entry

  def check_header(self, header: Mapping[str, Any]) -> None:
    """Refuse to continue a journal of another book (other prompt, seed, run or settings)."""
    recorded = self.stages.get("header")
    if recorded is None:
      self.append({"stage": "header", **header})
      return
    different = sorted(k for k in header if recorded.get(k) != header[k])
    if different:
      raise ValueError(f"{self.path} belongs to another write ({', '.join(different)} differ): use "
                       "another --out folder, or delete the folder to start this book again")

  def append(self, entry: Mapping[str, Any]) -> None:
    with open(self.path, "a", encoding="utf-8") as f:
      f.write(json.dumps(entry, ensure_ascii=False) + "\n")
      f.flush()
      os.fsync(f.fileno())
    self.stages[entry["stage"]] = dict(entry)


class StageProgress:
  """The progress bar of a write. Stages replayed from the journal are left out of its tokens/s, and a
  resumed write says so, once, before its first new stage: "resuming: N of M stages done" (M: the stages
  known by then; a chapter's scenes are known once its scene plans are)."""

  def __init__(self, journal: Journal, total: int, *, disable: bool = False,
               on_stage: Callable[[Mapping[str, Any], bool], None] | None = None) -> None:
    """disable: no bar and no note (many books at once show one bar of their own); on_stage(entry,
    replayed) is called after every stage."""
    self.journal = journal
    self.replayed = {name for name in journal.stages if name != "header"}
    self.pending_note = bool(self.replayed) and not disable
    self.on_stage = on_stage
    self.bar = tqdm(total=total, desc="write", unit="stage", disable=disable)
    self.tokens, self.began = 0, None

  def before(self, name: str) -> None:
    """Called before stage `name` is run (replayed from the journal, or generated)."""
    if name not in self.journal.stages:
      self._note()
      if self.began is None:
        self.began = time.perf_counter()

  def _note(self) -> None:
    if self.pending_note:
      self.pending_note = False
      complete = " (the book is complete)" if self.bar.n == self.bar.total else ""
      tqdm.write(f"resuming: {self.bar.n} of {self.bar.total} stages done{complete}, from {self.journal.path}",
                 file=sys.stderr)

  def done(self, entry: Mapping[str, Any], label: str) -> None:
    self.bar.update(1)
    if self.on_stage is not None:
      self.on_stage(entry, entry["stage"] in self.replayed)
    if entry["stage"] in self.replayed:
      self.bar.set_postfix_str(f"{label} (from the journal)")
      return
    self.tokens += entry["tokens"]
    elapsed = time.perf_counter() - (self.began or time.perf_counter())
    self.bar.set_postfix_str(f"{label}, {self.tokens:,} new tokens, {self.tokens / max(elapsed, 1e-9):.1f} tokens/s")

  def close(self) -> None:
    self._note()
    self.bar.close()


def check_out_folder(out_dir: Path, overwrite: bool) -> None:
  """Refuse an output folder that holds files but no journal of a write (so not this command's own
  resumable work: book.md and book.json would be replaced), unless `overwrite`. A journal is continued
  (Journal.check_header refuses one of another book)."""
  if not out_dir.exists() or (out_dir / JOURNAL).is_file():
    return
  if not out_dir.is_dir():
    raise ValueError(f"--out {out_dir} is a file: pass a folder for book.md, book.json and {JOURNAL}")
  present = sorted(p.name for p in out_dir.iterdir())
  if present and not overwrite:
    shown = ", ".join(present[:4]) + (f" and {len(present) - 4} more" if len(present) > 4 else "")
    raise ValueError(f"--out {out_dir} holds {shown} but no {JOURNAL} of a write to continue: pass "
                     "--overwrite to write this book over them (book.md and book.json are replaced), or "
                     "give an empty or new --out folder")


class BookWriter:
  """Writes one book in xbook's format with a completer (xbook.infer.decode behind it, or a test's).

  Args:
    vocabulary: the run's vocabulary (its marker style decides how stages are delimited).
    complete: the completer.
    config: sampling and bounds.
    context_len: the most tokens of context plus output of a stage.
    out_dir: the output folder (journal, book.md, book.json).
  """

  def __init__(self, vocabulary: Vocabulary, complete: Completer, config: WriteConfig, context_len: int,
               out_dir: Path, progress: Mapping[str, Any] | None = None) -> None:
    self.vocabulary, self.complete, self.config = vocabulary, complete, config
    self.progress_options = dict(progress or {})  # StageProgress's disable and on_stage
    self.context_len = context_len
    self.style = vocabulary.marker_style
    self.out_dir = out_dir
    kind_markers, end = trajectory.markers(self.style)
    self.all_markers = list(kind_markers.values()) + [end]
    if self.style == "symbols":
      self.stop_ids = [vocabulary.encode(m)[0] for m in self.all_markers] + [vocabulary.eos_id]
      self.stop_strings: list[str] = []
    else:
      self.stop_ids, self.stop_strings = [vocabulary.eos_id], self.all_markers
    self._encoded: dict[tuple[str, str], list[int]] = {}

  # ------------------------------------------------------------------------------------------ context
  def _segment(self, kind: str, body: str) -> list[int]:
    key = (kind, body)
    if key not in self._encoded:
      self._encoded[key] = tuple(encode_segment(self.vocabulary.encode,
                                                trajectory.make_segment(kind, body, self.style)))
    return list(self._encoded[key])

  def _open(self, kind: str) -> list[int]:
    """The ids of `kind`'s marker alone: the context ends with it, and the model writes the body."""
    return list(self.vocabulary.encode(trajectory.markers(self.style)[0][kind]))

  def _global(self, book: Mapping[str, Any], budget: int) -> tuple[list[int], bool]:
    """The global plan's ids, cut to `budget`, and whether it was cut."""
    ids: list[int] = []
    for kind in ("prompt", "premise", "synopsis", "outline"):
      if kind in book:
        ids += self._segment(kind, book[kind])
    return ids[:budget], len(ids) > budget

  def _previously(self, book: Mapping[str, Any], chapter: int, room: int) -> list[int]:
    for first in range(chapter):
      body = "Previously:\n" + trajectory.outline_text(book["chapters"][first:chapter])
      ids = self._segment(trajectory.PREVIOUSLY, body)
      if len(ids) <= room:
        return ids
    return []

  def sampling(self, kind: str, seed: int) -> SamplingParams:
    """The stage's sampling, its token budget at most half the context (the rest is its context)."""
    sampling = self.config.sampling(kind, seed)
    return dataclasses.replace(sampling, max_tokens=min(sampling.max_tokens, self.context_len // 2))

  def context(self, book: Mapping[str, Any], kind: str, chapter: int | None = None,
              scene: int | None = None) -> list[int]:
    """The ids a stage of `kind` continues from (module docstring), BOS first, the kind's marker last."""
    budget = self.context_len - self.sampling(kind, 0).max_tokens
    global_plan, cut = self._global(book, 3 * self.context_len // 8)
    head = [self.vocabulary.bos_id] + global_plan
    if chapter is None:
      return (head + self._open(kind))[-budget:]
    if cut:  # as the windows view: "Previously" only brings back summaries the cut outline lost
      head += self._previously(book, chapter, self.context_len // 2 - len(head))
    entry = book["chapters"][chapter]
    plans = list(self._segment("chapter_plan", f"{entry['title']}\n{entry['summary']}"))
    for plan in entry.get("scene_plans", []):
      plans += self._segment("scene_plan", plan)
    texts = [self._segment("text", t) for t in entry.get("texts", [])[:scene]]
    room = budget - len(head) - len(plans) - len(self._open(kind))
    while texts and sum(map(len, texts)) > room:
      texts.pop(0)  # the oldest scene text of the chapter goes first, as a split chapter's window
    body = plans + [i for t in texts for i in t] + self._open(kind)
    return (head + body)[-budget:]

  # ------------------------------------------------------------------------------------------- stages
  def _run_stage(self, journal: Journal, name: str, kind: str, context: Callable[[], list[int]],
                 seed: int, problems: Callable[[str], list[str]]) -> dict[str, Any]:
    self.progress.before(name)
    ids = context() if name not in journal.stages else []

    def attempt(i: int) -> tuple[dict[str, Any], list[str]]:
      sampling = self.sampling(kind, stage_seed(seed, name, i))
      result = self.complete(ids, sampling, self.stop_ids, self.stop_strings)
      entry = stage_entry(name, result.text.strip(), result, sampling, len(ids), i, kind=kind)
      return entry, problems(result.text)

    return sample_stage(journal, name, self.config.retries, attempt)

  def write(self, prompt: str, seed: int, header: Mapping[str, Any]) -> dict[str, Any]:
    """Write (or continue) the book; returns the book dict that book.json holds."""
    self.out_dir.mkdir(parents=True, exist_ok=True)
    journal = Journal(self.out_dir / JOURNAL)
    journal.check_header({"prompt": prompt, "seed": seed, **header})
    book: dict[str, Any] = {"prompt": prompt.strip()}
    nonempty = lambda text: [] if text.strip() else ["it is empty"]  # noqa: E731
    self.progress = progress = StageProgress(journal, total=3, **self.progress_options)
    done = progress.done
    for kind in ("premise", "synopsis"):
      entry = self._run_stage(journal, kind, kind, lambda k=kind: self.context(book, k), seed, nonempty)
      book[kind] = entry["text"]
      done(entry, kind)
    entry = self._run_stage(journal, "outline", "outline", lambda: self.context(book, "outline"), seed,
                            lambda text: outline_problems(text, self.config.max_chapters))
    book["outline"] = entry["text"]
    book["chapters"] = outline_chapters(entry["text"], self.config.max_chapters)
    done(entry, "outline")
    progress.bar.total = 3 + 2 * len(book["chapters"])
    for c, chapter in enumerate(book["chapters"]):
      name = f"chapter {c + 1}"
      entry = self._run_stage(
          journal, f"chapter/{c + 1}/scene_plans", "scene_plan",
          lambda c=c: self.context(book, "scene_plan", c), seed, self._scene_plan_problems)
      chapter["scene_plans"] = (split_scene_plans(entry["text"], self.style)
                                or [entry["text"]])[:self.config.max_scenes]
      chapter["texts"] = []
      progress.bar.total += len(chapter["scene_plans"]) - 1
      done(entry, f"{name}: scene plans")
      for s in range(len(chapter["scene_plans"])):
        entry = self._run_stage(
            journal, f"chapter/{c + 1}/text/{s + 1}", "text",
            lambda c=c, s=s: self.context(book, "text", c, s), seed, nonempty)
        chapter["texts"].append(entry["text"])
        done(entry, f"{name}, scene {s + 1}/{len(chapter['scene_plans'])}")
    progress.close()
    book["stages"] = [e for name, e in journal.stages.items() if name != "header"]
    return book

  def _scene_plan_problems(self, text: str) -> list[str]:
    plans = split_scene_plans(text, self.style)
    if not plans:
      return ["no scene plan"]
    if len(plans) > self.config.max_scenes:
      return [f"{len(plans)} scene plans, more than WriteConfig.max_scenes={self.config.max_scenes}"]
    return []


def render_markdown(book: Mapping[str, Any]) -> str:
  """The book as Markdown: its plans in a front section, then the chapters' texts."""
  lines = [f"# {book['prompt']}", ""]
  for section in ("premise", "synopsis"):
    if book.get(section):
      lines += [f"## {section.capitalize()}", "", book[section], ""]
  for chapter in book.get("chapters", []):
    lines += [f"## Chapter {chapter['index'] + 1}: {chapter['title']}", ""]
    lines += ["\n\n".join(chapter.get("texts", [])), ""]
  return "\n".join(lines).rstrip() + "\n"


def save_book(book: Mapping[str, Any], out_dir: Path) -> tuple[Path, Path]:
  """book.md and book.json (every stage with its sampling, token counts and timings), atomically."""
  markdown, data = out_dir / "book.md", out_dir / "book.json"
  with atomic_open(markdown) as f:
    f.write(render_markdown(book))
  with atomic_open(data) as f:
    json.dump(book, f, indent=2, ensure_ascii=False)
  return markdown, data
