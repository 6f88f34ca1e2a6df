"""Summarizer backends: the interface a scaffold build calls, and the extractive backend.

A backend turns text into a shorter text at one level of the scaffold. Its `name`, `model`,
`prompt_version` and `params` identify what it would output: they go into the scaffold record and into
every cache key, so change one of them whenever the output would change.

A scaffold build calls backends from an asyncio event loop (`summarizer_session`): a backend with a
`session()` (a network endpoint) makes its calls concurrently there; any other backend's blocking
`summarize` runs on the loop, one call at a time.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from importlib import resources
from typing import Any, AsyncIterator, Awaitable, Callable, Mapping, Protocol, Sequence

from xbook.scaffold import extractive

# Scaffold levels, bottom-up: each is summarized from the one before it (scenes from scene text).
LEVELS: tuple[str, ...] = ("scene", "chapter", "synopsis", "premise", "prompt")


class Summarizer(Protocol):
  """What the scaffold builder needs from a backend."""

  @property
  def name(self) -> str:
    """The backend, e.g. "extractive" or "openai" (any OpenAI-compatible endpoint)."""

  @property
  def model(self) -> str:
    """The model (or algorithm) and its version."""

  @property
  def prompt_version(self) -> str:
    """Version of the prompts or templates the backend uses."""

  @property
  def params(self) -> Mapping[str, Any]:
    """JSON-serializable settings that change the output (temperature, thresholds ...)."""

  def summarize(self, text: str, level: str, target_words: int) -> str:
    """A summary of `text` for scaffold `level` (one of LEVELS) of about `target_words` words."""


# What a backend's prompt level is given as `text` (its optional attribute `prompt_input`): the premise
# (the default: a model turns it into a reader's request), or the book's `entities.prompt_brief` (who and
# where), for a backend that can only paste its input and would otherwise repeat the premise verbatim.
PROMPT_INPUTS: tuple[str, ...] = ("premise", "entities")


def chapter_source(summarizer: Any, chapter_text: str, scene_summaries: Sequence[str]) -> str:
  """What `summarizer` summarizes into a chapter plan: its scene plans (blank-line separated), unless
  the backend has a `chapter_source(chapter_text, scene_summaries)` of its own."""
  own = getattr(summarizer, "chapter_source", None)
  return own(chapter_text, scene_summaries) if own is not None else "\n\n".join(scene_summaries)


def book_source(summarizer: Any, level_below: str, scene_summaries: Sequence[str], taken: Sequence[str]) -> str:
  """What `summarizer` summarizes into the synopsis (from the outline) or the premise (from the
  synopsis): `level_below`, unless the backend has a `book_source(scene_summaries, taken)` of its own
  (`taken`: the summaries of the levels above the outline made so far)."""
  own = getattr(summarizer, "book_source", None)
  return own(scene_summaries, taken) if own is not None else level_below


def prompt_input(summarizer: Any) -> str:
  """What `summarizer`'s prompt level summarizes (one of PROMPT_INPUTS; default "premise")."""
  value = getattr(summarizer, "prompt_input", "premise")
  if value not in PROMPT_INPUTS:
    raise ValueError(f"summarizer {getattr(summarizer, 'name', summarizer)!r} has prompt_input={value!r}; "
                     f"expected one of {PROMPT_INPUTS}")
  return value


class SummarizerError(RuntimeError):
  """A call that failed for good: the endpoint stayed down, or its answer is unusable (empty, garbage,
  longer than its source). It fails the book being built, not the whole build."""


@dataclasses.dataclass(frozen=True)
class Summary:
  """One answer of a backend: the summary and the tokens it cost (0 for a backend that is no model)."""

  text: str
  prompt_tokens: int = 0
  completion_tokens: int = 0


# `await call(text, level, target_words)`: what a build calls within a session.
SummaryCall = Callable[[str, str, int], Awaitable[Summary]]


@contextlib.asynccontextmanager
async def summarizer_session(summarizer: Summarizer) -> AsyncIterator[SummaryCall]:
  """The calls of `summarizer` as a coroutine function, within a running event loop.

  A backend that has `session()` (an async context manager yielding such a function: connections,
  bounded concurrency, token usage) is used through it; any other backend's `summarize` is called
  directly on the loop, one call at a time.
  """
  if hasattr(summarizer, "session"):
    async with summarizer.session() as call:
      yield call
    return

  async def call(text: str, level: str, target_words: int) -> Summary:
    return Summary(summarizer.summarize(text, level, target_words))

  yield call


def summarizer_metadata(summarizer: Summarizer) -> dict[str, Any]:
  """The `summarizer` field of a scaffold record."""
  return {"backend": summarizer.name, "model": summarizer.model,
          "prompt_version": summarizer.prompt_version, "params": dict(summarizer.params)}


def check_level(level: str) -> None:
  """Raise ValueError unless `level` is one of LEVELS."""
  if level not in LEVELS:
    raise ValueError(f"unknown scaffold level {level!r}; expected one of {LEVELS}")


@functools.cache
def load_prompt_template(version: str, field: str = "premise") -> str:
  """The prompt template `templates/<version>.txt`, which must contain `{<field>}` once."""
  template = resources.files("xbook.scaffold").joinpath(f"templates/{version}.txt").read_text("utf-8")
  template = template.strip()
  if template.count("{" + field + "}") != 1:
    raise ValueError(f"prompt template {version!r} must contain {{{field}}} exactly once: {template!r}")
  return template


@dataclasses.dataclass(frozen=True)
class ExtractiveSummarizer:
  """Summaries made of the source's own most central sentences (see `xbook.scaffold.extractive`).

  Levels scene, chapter and synopsis take the most central sentences that fit `target_words`; the
  premise level also takes at most `premise_max_sentences` of them (a premise is 1-3 sentences).

  The prompt level is a fixed template, not a model: it is given the book's characters and settings
  (`prompt_input = "entities"`: the builder passes `entities.prompt_brief`) and pastes them into the
  versioned template `templates/<prompt_version>.txt` ("Write a novel about Scrooge, Bob Cratchit and
  Fred, in London."), whatever `target_words` says. Pasting the premise instead would make every
  window's premise a verbatim copy of its prompt.

  Attributes:
    damping: damping factor of the centrality random walk.
    redundancy: highest similarity a chosen sentence may have to one chosen before it.
    min_sentence_words: shorter sentences are chosen only into an otherwise empty summary.
    premise_max_sentences: the most sentences a premise may have.
  """

  damping: float = 0.85
  redundancy: float = 0.7
  min_sentence_words: int = 6
  premise_max_sentences: int = 3

  name = "extractive"
  model = extractive.ALGORITHM
  prompt_version = "extractive_prompt_v2"
  prompt_input = "entities"

  @property
  def params(self) -> Mapping[str, Any]:
    return dataclasses.asdict(self)

  def chapter_source(self, chapter_text: str, scene_summaries: Sequence[str]) -> str:
    """The chapter's own sentences that no scene summary took, one per paragraph.

    A chapter plan extracted from its scene plans would be a subset of them, so every window that
    shows a chapter plan and then a scene plan would repeat it; drawn from the rest of the chapter, it
    adds sentences the scene plans do not have.
    """
    taken = {sentence for summary in scene_summaries for sentence in extractive.split_sentences(summary)}
    rest = [sentence for sentence in extractive.split_sentences(chapter_text) if sentence not in taken]
    return "\n\n".join(rest or extractive.split_sentences(chapter_text))

  def book_source(self, scene_summaries: Sequence[str], taken: Sequence[str]) -> str:
    """The scene plans' sentences that `taken` (the synopsis, for the premise) does not hold, one per
    paragraph: the synopsis and the premise are drawn from the scene plans, which chapter plans share
    no sentence with (`chapter_source`), so that premise, synopsis and outline repeat none of each other."""
    used = {sentence for summary in taken for sentence in extractive.split_sentences(summary)}
    pool = [sentence for summary in scene_summaries for sentence in extractive.split_sentences(summary)]
    return "\n\n".join([sentence for sentence in pool if sentence not in used] or pool)

  def summarize(self, text: str, level: str, target_words: int) -> str:
    """See `Summarizer.summarize`; the prompt level fills the template with `text` (a prompt brief)."""
    check_level(level)
    if level == "prompt":
      return load_prompt_template(self.prompt_version, "brief").format(brief=" ".join(text.split()))
    return extractive.summarize(
        text, target_words, max_sentences=self.premise_max_sentences if level == "premise" else None,
        min_sentence_words=self.min_sentence_words, damping=self.damping, redundancy=self.redundancy)
