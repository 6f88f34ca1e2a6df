"""Pairwise LLM judges: which of two systems' chapters is better writing, and a ranking of the systems.

Systems are named folders (or files) of books (xbook.evals.texts.load_books): two runs' books, or a run's
book and the human novel it was planned from. For every two systems, their books are matched (by name
when both have a book of that name, else in order) and chapter i of one is compared with chapter i of
the other (at most `max_pairs` chapters per system pair, spread along the book; a chapter is cut to its
first `max_words` words).

Every comparison is asked in both orders (position swap: each system is shown first once), of every
judge model, `samples` times (sample s is sent with seed s; temperature 0 for one sample,
`sample_temperature` for several). The prompt is the rubric template RUBRIC (version RUBRIC_VERSION);
the answer must end with a line `WINNER: A`, `WINNER: B` or `WINNER: TIE`. An answer without one
(malformed) and a request that fails for good are recorded per comparison in `failures` and counted in
nothing else.

Requests go through xbook.scaffold.openai_backend (its connection pool, concurrency bound, timeouts and
retries with backoff). Answers are cached in SQLite (`cache_path`, table `judgements`) keyed by the
judge, the sample, its settings and the whole prompt: a rerun asks nothing it has an answer for
(malformed answers are cached too: the same request gets the same answer; failed requests are not).

Ranking: a Bradley-Terry model (Hunter's MM algorithm; a tie is half a win each way; every pair of
systems that met also gets `PRIOR` of a win each way, so that a system that never wins has a finite
score), scores as log-strengths centred on 0, with 95% intervals from `bootstrap` resamples of the
judgements (seeded).

eval.json `judges`: {"rubric", "judges", "samples", "systems", "comparisons": [{"pair", "a", "b",
"chapter", "a_wins", "b_wins", "ties", "failed", "consistent"}], "judgements", "valid", "calls",
"cached", "first_position_share", "failures": [{"pair", "order", "judge", "sample", "error"}],
"ranking": [{"system", "score", "low", "high", "wins", "games"}]}.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import itertools
import json
import re
import sqlite3
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from tqdm import tqdm

from xbook.evals.texts import EvalBook, load_books
from xbook.scaffold.openai_backend import OpenAISummarizer, RetryPolicy

RUBRIC_VERSION = "pairwise_v1"
RUBRIC = """You are judging fiction. Below are two passages, A and B, from two versions of the same \
book. Judge which one is better writing as a human reader of novels would: vivid, specific and \
surprising prose, natural dialogue, characters who act for their own reasons, a scene that moves; \
not generic, repetitive, over-explained or assistant-like. Length is not a merit. The order of the \
passages says nothing about their quality.

PASSAGE A:
{a}

PASSAGE B:
{b}

Explain your judgement in at most three sentences, then end with one line that is exactly \
"WINNER: A", "WINNER: B" or "WINNER: TIE"."""
VERDICT = re.compile(r"WINNER:\s*\**\s*\[?(A|B|TIE)\]?\**\s*$", re.IGNORECASE)
PRIOR = 0.1
ORDERS = ("AB", "BA")


@dataclasses.dataclass(frozen=True)
class JudgeConfig:
  """Judges and how to ask them.

  Attributes:
    base_url: OpenAI-compatible API root (requests go to `{base_url}/chat/completions`).
    models: judge model names (several: several judges, pooled in the ranking).
    api_key_env: environment variable holding the API key (unset: no Authorization header).
    samples: answers per ordered comparison and judge.
    sample_temperature: temperature when `samples` > 1 (one sample is greedy).
    max_words: a chapter is cut to its first `max_words` words.
    max_tokens: the most tokens of an answer.
    max_concurrency: requests in flight at once, per judge and sample.
    timeout_s: deadline of one request attempt.
    max_retries, base_delay_s: retries of timeouts, connection errors, 429 and 5xx (exponential backoff).
    bootstrap: resamples for the intervals.
  """

  base_url: str | None
  models: tuple[str, ...]
  api_key_env: str = "OPENAI_API_KEY"
  samples: int = 1
  sample_temperature: float = 0.7
  max_words: int = 1500
  max_tokens: int = 300
  max_concurrency: int = 8
  timeout_s: float = 120.0
  max_retries: int = 4
  base_delay_s: float = 0.5
  bootstrap: int = 500

  def __post_init__(self) -> None:
    if not self.base_url:
      raise ValueError("judges need --judge_url (an OpenAI-compatible API root, e.g. http://127.0.0.1:8000/v1)")
    if not self.models:
      raise ValueError("judges need at least one --judge_model")
    if self.samples < 1:
      raise ValueError(f"--judge_samples must be at least 1, got {self.samples}")

  @property
  def temperature(self) -> float:
    return 0.0 if self.samples == 1 else self.sample_temperature


@dataclasses.dataclass(frozen=True)
class Comparison:
  """Chapter `chapter` (0-based) of system `a`'s book against the same chapter of system `b`'s."""

  a: str
  b: str
  chapter: int
  text_a: str
  text_b: str

  @property
  def pair(self) -> str:
    return f"{self.a} vs {self.b}, chapter {self.chapter + 1}"


@dataclasses.dataclass(frozen=True)
class Request:
  """One question to one judge: a comparison in one order, one sample."""

  comparison: Comparison
  order: str
  judge: str
  sample: int

  def prompt(self, max_words: int) -> str:
    first, second = ((self.comparison.text_a, self.comparison.text_b) if self.order == "AB"
                     else (self.comparison.text_b, self.comparison.text_a))
    return RUBRIC.format(a=_cut(first, max_words), b=_cut(second, max_words))

  def winner(self, verdict: str) -> str | None:
    """The system a verdict ("A", "B", "TIE") names, None for a tie."""
    if verdict == "TIE":
      return None
    shown_first = self.comparison.a if self.order == "AB" else self.comparison.b
    shown_second = self.comparison.b if self.order == "AB" else self.comparison.a
    return shown_first if verdict == "A" else shown_second


def _cut(text: str, max_words: int) -> str:
  words = text.split()
  return text.strip() if len(words) <= max_words else " ".join(words[:max_words]) + " [...]"


def parse_verdict(answer: str) -> str | None:
  """"A", "B" or "TIE" from the answer's last non-empty line (`WINNER: X`); None when it has none."""
  lines = [line.strip() for line in answer.strip().splitlines() if line.strip()]
  match = VERDICT.search(lines[-1]) if lines else None
  return match.group(1).upper() if match else None


# Pairs.

def match_books(books_a: Sequence[EvalBook], books_b: Sequence[EvalBook]) -> list[tuple[EvalBook, EvalBook]]:
  """Books of two systems matched by name where both have it, the rest in order."""
  by_name = {b.name: b for b in books_b}
  matched = [(a, by_name[a.name]) for a in books_a if a.name in by_name]
  rest_a = [a for a in books_a if a.name not in by_name]
  rest_b = [b for b in books_b if b.name not in {a.name for a in books_a}]
  return matched + list(zip(rest_a, rest_b))


def comparisons(systems: Mapping[str, Sequence[EvalBook]], max_pairs: int | None = None) -> list[Comparison]:
  """Chapter-by-chapter comparisons of every two systems (module docstring)."""
  found = []
  for a, b in itertools.combinations(systems, 2):
    pairs = [(book_a.chapters[i].text, book_b.chapters[i].text)
             for book_a, book_b in match_books(systems[a], systems[b])
             for i in range(min(len(book_a.chapters), len(book_b.chapters)))]
    keep = range(len(pairs))
    if max_pairs is not None and len(pairs) > max_pairs:
      keep = sorted({round(j * (len(pairs) - 1) / max(max_pairs - 1, 1)) for j in range(max_pairs)})
    found += [Comparison(a, b, i, *pairs[i]) for i in keep if pairs[i][0].strip() and pairs[i][1].strip()]
  return found


# Cache.

class JudgeCache:
  """Answers by request key in SQLite (table `judgements`)."""

  def __init__(self, path: str | Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    self.db = sqlite3.connect(str(path))
    self.db.execute("CREATE TABLE IF NOT EXISTS judgements (key TEXT PRIMARY KEY, judge TEXT, "
                    "answer TEXT, created REAL)")

  def get(self, key: str) -> str | None:
    row = self.db.execute("SELECT answer FROM judgements WHERE key = ?", (key,)).fetchone()
    return row[0] if row else None

  def put(self, key: str, judge: str, answer: str) -> None:
    self.db.execute("INSERT OR REPLACE INTO judgements VALUES (?, ?, ?, ?)", (key, judge, answer, time.time()))
    self.db.commit()

  def close(self) -> None:
    self.db.close()


def request_key(config: JudgeConfig, request: Request) -> str:
  """What changes an answer: the rubric, the judge, its settings, the sample and the prompt."""
  fields = [RUBRIC_VERSION, request.judge, config.temperature, config.max_tokens, request.sample,
            request.prompt(config.max_words)]
  return hashlib.sha256(json.dumps(fields).encode("utf-8")).hexdigest()


# Asking.

def _backend(config: JudgeConfig, judge: str, sample: int):
  return OpenAISummarizer(base_url=config.base_url, model=judge, temperature=config.temperature,
                          max_tokens=config.max_tokens, seed=sample, name="judge",
                          api_key_env=config.api_key_env, max_concurrency=config.max_concurrency,
                          timeout_s=config.timeout_s,
                          retry=RetryPolicy(max_retries=config.max_retries, base_delay_s=config.base_delay_s))


async def _ask_all(config: JudgeConfig, requests: Sequence[Request], cache: JudgeCache
                   ) -> tuple[list[str | Exception], int]:
  """The answer (or the exception) of every request, from the cache or the judges; and the calls made."""
  answers: list[str | Exception | None] = [cache.get(request_key(config, r)) for r in requests]
  todo = [i for i, a in enumerate(answers) if a is None]
  async with contextlib.AsyncExitStack() as stack:
    sessions = {}
    for judge, sample in sorted({(requests[i].judge, requests[i].sample) for i in todo}):
      sessions[judge, sample] = await stack.enter_async_context(_backend(config, judge, sample).session())
    progress = tqdm(total=len(todo), desc="judges", unit="call", leave=False)

    async def one(i: int) -> None:
      request = requests[i]
      try:
        answer = (await sessions[request.judge, request.sample].ask(request.prompt(config.max_words),
                                                                   config.max_tokens)).text
        cache.put(request_key(config, request), request.judge, answer)
        answers[i] = answer
      except Exception as error:  # noqa: BLE001 - a failed judgement is recorded, never fatal
        answers[i] = error
      progress.update(1)

    await asyncio.gather(*(one(i) for i in todo))
    progress.close()
  return answers, len(todo)  # type: ignore[return-value]


# Ranking.

def bradley_terry(systems: Sequence[str], games: Sequence[tuple[str, str, float]], iterations: int = 500
                  ) -> np.ndarray:
  """Log-strengths (mean 0) of `systems` from games (first, second, first's score: 1, 0.5 or 0) by MM."""
  index = {s: i for i, s in enumerate(systems)}
  n = len(systems)
  wins = np.zeros((n, n))
  for first, second, score in games:
    wins[index[first], index[second]] += score
    wins[index[second], index[first]] += 1.0 - score
  played = (wins + wins.T) > 0
  wins = wins + PRIOR * played
  meetings = wins + wins.T
  strength = np.ones(n)
  for _ in range(iterations):
    denominator = (meetings / (strength[:, None] + strength[None, :])).sum(axis=1)
    updated = np.where(denominator > 0, wins.sum(axis=1) / np.maximum(denominator, 1e-12), strength)
    updated = updated / np.exp(np.mean(np.log(np.maximum(updated, 1e-12))))
    if np.allclose(updated, strength, rtol=1e-7, atol=1e-9):
      strength = updated
      break
    strength = updated
  log_strength = np.log(np.maximum(strength, 1e-12))
  return log_strength - log_strength.mean()


def ranking(systems: Sequence[str], games: Sequence[tuple[str, str, float]], *, bootstrap: int = 500,
            seed: int = 0) -> list[dict[str, Any]]:
  """Systems by Bradley-Terry score with 95% bootstrap intervals, best first."""
  scores = bradley_terry(systems, games)
  rng = np.random.default_rng(seed)
  resampled = np.array([bradley_terry(systems, [games[j] for j in rng.integers(0, len(games), len(games))])
                        for _ in range(bootstrap if games else 0)]).reshape(-1, len(systems))
  rows = []
  for i, system in enumerate(systems):
    low, high = (np.percentile(resampled[:, i], [2.5, 97.5]) if len(resampled) else (scores[i], scores[i]))
    won = sum(g[2] if g[0] == system else 1 - g[2] for g in games if system in g[:2])
    rows.append({"system": system, "score": round(float(scores[i]), 4), "low": round(float(low), 4),
                 "high": round(float(high), 4), "wins": won,
                 "games": sum(1 for g in games if system in g[:2])})
  return sorted(rows, key=lambda r: -r["score"])


# The whole part.

def _tally(comparison: Comparison, outcomes: Sequence[tuple[Request, str | None, str | None]]) -> dict[str, Any]:
  """One comparison's votes; `consistent`: both orders of every judge and sample agree."""
  mine = [(r, verdict, error) for r, verdict, error in outcomes if r.comparison == comparison]
  winners = [(r, r.winner(v)) for r, v, e in mine if e is None]
  by_key: dict[tuple[str, int], set] = {}
  for r, w in winners:
    by_key.setdefault((r.judge, r.sample), set()).add(w)
  return {"pair": comparison.pair, "a": comparison.a, "b": comparison.b, "chapter": comparison.chapter + 1,
          "a_wins": sum(w == comparison.a for _, w in winners),
          "b_wins": sum(w == comparison.b for _, w in winners),
          "ties": sum(w is None for _, w in winners), "failed": len(mine) - len(winners),
          "consistent": all(len(ws) == 1 for ws in by_key.values()) if by_key else None}


def judge_books(systems: Mapping[str, Sequence[EvalBook]], config: JudgeConfig, *, cache_path: str | Path,
                max_pairs: int | None = None, seed: int = 0) -> dict[str, Any]:
  """eval.json's `judges` for systems' books (module docstring).

  Raises:
    ValueError: fewer than two systems, or no chapter two systems share.
  """
  if len(systems) < 2:
    raise ValueError(f"judges compare at least two systems, got {list(systems)}; repeat --judge NAME=PATH")
  found = comparisons(systems, max_pairs)
  if not found:
    raise ValueError(f"the systems {list(systems)} have no chapter to compare (no book with a chapter)")
  requests = [Request(c, order, judge, s) for c in found for order in ORDERS for judge in config.models
              for s in range(config.samples)]
  cache = JudgeCache(cache_path)
  try:
    answers, calls = asyncio.run(_ask_all(config, requests, cache))
  finally:
    cache.close()
  outcomes, failures, games = [], [], []
  for request, answer in zip(requests, answers):
    verdict = parse_verdict(answer) if isinstance(answer, str) else None
    error = (f"{type(answer).__name__}: {answer}" if isinstance(answer, Exception) else
             None if verdict else f"malformed answer (no final 'WINNER: A|B|TIE' line): {answer[-200:]!r}")
    outcomes.append((request, verdict, error))
    if error:
      failures.append({"pair": request.comparison.pair, "order": request.order, "judge": request.judge,
                       "sample": request.sample, "error": error[:500]})
      continue
    winner = request.winner(verdict)
    score = 0.5 if winner is None else float(winner == request.comparison.a)
    games.append((request.comparison.a, request.comparison.b, score))
  valid = [(r, v) for r, v, e in outcomes if e is None]
  return {"rubric": RUBRIC_VERSION, "judges": list(config.models), "samples": config.samples,
          "systems": {name: [b.source for b in books] for name, books in systems.items()},
          "comparisons": [_tally(c, outcomes) for c in found],
          "judgements": len(requests), "valid": len(valid), "calls": calls, "cached": len(requests) - calls,
          "first_position_share": (round(sum(v == "A" for _, v in valid) / len(valid), 4) if valid else None),
          "failures": failures,
          "ranking": ranking(list(systems), games, bootstrap=config.bootstrap, seed=seed)}


def judge_systems(systems: Mapping[str, str | Path], config: JudgeConfig, *, cache_path: str | Path,
                  max_pairs: int | None = None, seed: int = 0) -> dict[str, Any]:
  """`judge_books` of systems given as {name: path of their books} (xbook.evals.texts.load_books)."""
  return judge_books({name: load_books(path) for name, path in systems.items()}, config,
                     cache_path=cache_path, max_pairs=max_pairs, seed=seed)
