"""The book writer in the paper's stage protocol (xbook.scaffold.stage_protocol), for runs trained on the
`paper_stages` plan order.

Stages follow the profile's order (`24b_first_chapter`: book plan, first chapter plan, its scene
breakdown and text; `14b_full_book`: preview, book plan, first chapter plan and text, the later
chapters' plan, the characters list, then for every later chapter its scene breakdown and text). A
stage's context is the prompt plus every completed stage, framed and tokenized as the `paper_stages`
view tokenizes them (xbook.data.paper_stages.encode_stages), then the next stage's header; generation
stops at `<|eot_id|>`. Each stage samples at the profile's temperature (and top-k) with the profile's
token budget, both overridable with WriteConfig (`paper_temperature_scale`, the budgets' cap
`paper_max_tokens`) and never more than half the context.

When the stream outgrows the context, as the view's per-chapter examples do, the context keeps the
prompt and every plan stage and drops the earliest chapter texts first; if that is not enough, it keeps
the latest tokens.

Each generated stage is checked (stage_protocol.check_stage, against the book plan when it parses) and
generated again with the next seed when malformed, at most WriteConfig.retries times; then the last
attempt is kept with its problems recorded. The number of later chapters comes from the book plan, else
from the later chapters' plan (its `### name` blocks), at most WriteConfig.max_chapters in all.
The journal, resume and output files are those of xbook.infer.writer.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from pathlib import Path
from typing import Any, Mapping, Sequence


from xbook.data import paper_stages
from xbook.scaffold import stage_protocol as sp
from xbook.scaffold.stage_grammar import stage_grammar
from xbook.data.vocab import Vocabulary
from xbook.infer.decode import SamplingParams
from xbook.infer.writer import (JOURNAL, Completer, Journal, StageProgress, WriteConfig, sample_stage,
                                stage_entry, stage_seed)

log = logging.getLogger(__name__)

_CHAPTER_BLOCK = re.compile(r"^### (?!Scene Breakdown)(.+?)\s*$", re.MULTILINE)


class PaperBookWriter:
  """Writes one book in a profile of the paper's stage protocol with a completer."""

  def __init__(self, vocabulary: Vocabulary, complete: Completer, config: WriteConfig, context_len: int,
               out_dir: Path, profile: str, progress: Mapping[str, Any] | None = None) -> None:
    self.vocabulary, self.complete, self.config = vocabulary, complete, config
    self.progress_options = dict(progress or {})  # StageProgress's disable and on_stage
    self.context_len, self.out_dir = context_len, out_dir
    self.profile = sp.get_profile(profile)
    self._header_ids = {role: list(vocabulary.encode(sp.stage_header(role))) for role in self.profile.roles}

  def sampling(self, spec: sp.StageSpec, seed: int) -> SamplingParams:
    budget = min(spec.max_tokens or 1, self.config.paper_max_tokens or spec.max_tokens or 1,
                 self.context_len // 2)
    return SamplingParams(temperature=(spec.temperature or 0.0) * self.config.paper_temperature_scale,
                          top_k=spec.top_k or self.config.top_k, top_p=self.config.top_p,
                          min_p=self.config.min_p, seed=seed, max_tokens=budget)

  def context(self, stages: Sequence[tuple[str, str]], role: str, max_tokens: int,
              sampled: Mapping[int, Sequence[int]] | None = None) -> list[int]:
    """BOS, the completed stages (plans always; the latest texts that fit), then `role`'s header.

    `sampled` maps a stage's index in `stages` to the ids the model wrote for its content, when they spell
    its text exactly: those ids stand for the content (rather than its text encoded again), so the
    context extends the previous stage's cache token for token and prefix reuse prefills only the new
    header."""
    budget = self.context_len - max_tokens - 1 - len(self._header_ids[role])
    encoded = paper_stages.encode_stages(stages, self.vocabulary.encode, self.profile)
    eot = tuple(self.vocabulary.encode(sp.EOT))
    for index, ids in (sampled or {}).items():
      header = self._header_ids[encoded[index].role]
      encoded[index] = dataclasses.replace(encoded[index], ids=(*header, *ids, *eot))
    keep = [True] * len(encoded)
    texts = [i for i, (r, _) in enumerate(stages) if r in sp.TEXT_ROLES]
    while texts and sum(len(s.ids) for s, k in zip(encoded, keep) if k) > budget:
      keep[texts.pop(0)] = False  # the earliest chapter text goes first
    ids = [i for s, k in zip(encoded, keep) if k for i in s.ids][-budget:]
    return [self.vocabulary.bos_id] + ids + self._header_ids[role]

  def _stage(self, journal: Journal, stages: list[tuple[str, str]], name: str, spec: sp.StageSpec,
             seed: int) -> dict[str, Any]:

    def attempt(i: int) -> tuple[dict[str, Any], list[str]]:
      sampling = self.sampling(spec, stage_seed(seed, name, i))
      ids = self.context(stages, spec.role, sampling.max_tokens, self._sampled)
      grammar = stage_grammar(self.profile, spec.role, stages) if self.config.grammars else None
      result = self.complete(ids, sampling, [self.vocabulary.eos_id], [sp.EOT],
                             **({"grammar": grammar.text, "closers": grammar.closers} if grammar else {}))
      text = sp.trim_stage_text(result.text)
      entry = stage_entry(name, text, result, sampling, len(ids), i, role=spec.role, kind=spec.kind,
                          token_ids=list(result.token_ids))
      return entry, sp.check_stage(spec.role, text, sp.context_from_stages(stages, self.profile))

    self.progress.before(name)
    return sample_stage(journal, name, self.config.retries, attempt)

  def _later_chapters(self, stages: Sequence[tuple[str, str]]) -> int:
    """How many chapters follow the first: the book plan's, else the later chapters' plan's blocks."""
    planned = sp.context_from_stages(stages, self.profile).chapters
    if planned:
      n = len(planned) - 1
    else:
      plan = next((c for r, c in stages if r == "full_book_chapters_plan"), "")
      n = len(_CHAPTER_BLOCK.findall(plan))
    return max(0, min(n, self.config.max_chapters - 1))

  def write(self, prompt: str, seed: int, header: Mapping[str, Any]) -> dict[str, Any]:
    """Write (or continue) the book; returns the book dict that book.json holds."""
    self.out_dir.mkdir(parents=True, exist_ok=True)
    journal = Journal(self.out_dir / JOURNAL)
    journal.check_header({"prompt": prompt, "seed": seed, **header})
    stages: list[tuple[str, str]] = [("prompt", prompt.strip())]
    self._sampled: dict[int, list[int]] = {}
    once = [s for s in self.profile.stages[1:] if not s.per_chapter]
    per_chapter = [s for s in self.profile.stages if s.per_chapter]
    self.progress = progress = StageProgress(journal, total=len(once), **self.progress_options)
    plan: list[tuple[str, sp.StageSpec]] = [(s.role, s) for s in once]
    i = 0
    while i < len(plan):
      name, spec = plan[i]
      entry = self._stage(journal, stages, name, spec, seed)
      ids = _spelling(self.vocabulary, entry.get("token_ids"), entry["text"])
      if ids is not None:
        self._sampled[len(stages)] = ids
      stages.append((spec.role, entry["text"]))
      progress.done(entry, name)
      if i == len(once) - 1 and per_chapter:  # the plans are done: the later chapters follow
        later = self._later_chapters(stages)
        plan += [(f"chapter/{c + 2}/{s.role}", s) for c in range(later) for s in per_chapter]
        progress.bar.total = len(plan)
      i += 1
    progress.close()
    book = {"prompt": prompt.strip(), "profile": self.profile.name,
            "stream": "".join(sp.frame(role, content) for role, content in stages),
            "chapters": _chapters(stages),
            "stages": [e for name, e in journal.stages.items() if name != "header"]}
    return book


def _spelling(vocabulary: Vocabulary, ids: Sequence[int] | None, text: str, slack: int = 8) -> list[int] | None:
  """The longest prefix of the sampled `ids` that decodes to `text` exactly (the stage as kept: trimming
  drops at most a few trailing tokens of spaces and newlines), or None."""
  if not ids:
    return None
  for n in range(len(ids), max(len(ids) - slack, 0) - 1, -1):
    if vocabulary.decode(list(ids[:n])) == text:
      return list(ids[:n])
  return None


def _chapters(stages: Sequence[tuple[str, str]]) -> list[dict[str, Any]]:
  """The chapters of a stream: each text stage's name (its `### name` line) and prose."""
  chapters = []
  for role, content in stages:
    if role in sp.TEXT_ROLES:
      lines = content.splitlines()
      title = lines[0][4:].strip() if lines and lines[0].startswith("### ") else f"Chapter {len(chapters) + 1}"
      body = "\n".join(line for line in lines[1:] if line.strip() != "```").strip()
      chapters.append({"index": len(chapters), "title": title, "texts": [body], "scene_plans": []})
  return chapters
