"""The `openai` summarizer backend: any OpenAI-compatible chat-completions endpoint.

vLLM, SGLang, llama.cpp's server, hosted APIs and `xbook serve` all answer
`POST {base_url}/chat/completions`. Each summary is one request whose single user message is the
level's template (`templates/<prompt_version>/<level>.txt`, with the fields `{text}` and
`{target_words}`) filled in; the plans it asks for are intentions for the writer, in one style at every
level ("Elizabeth refuses Darcy's proposal and ...").

Within a `session()` requests run concurrently, at most `max_concurrency` at a time, each with a
deadline of `timeout_s`. A request that times out, cannot connect, or is answered 429 or 5xx is retried
up to `retry.max_retries` times, after the server's `Retry-After` when it gives one and otherwise after
an exponential backoff with full jitter (a uniform wait between 0 and `base_delay_s * 2**attempt`, at
most `max_delay_s`). Answers that are unusable (not JSON, no choices, empty text, a summary with more
words than its source) raise `SummarizerError` without retrying: with the same request a deterministic
endpoint would answer the same.

The API key is read from the environment variable named by `api_key_env` when a session opens; it is
sent as a bearer token and never stored, logged or put in a message.

A session also answers free-form requests (`await call.ask(prompt, max_tokens)`), with the same
concurrency bound, retries and token counts: the paper format's artifacts (xbook.scaffold.paper), whose
answers are checked for their format by the caller rather than against a source length.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import email.utils
import functools
import json
import logging
import math
import os
import random
import time
from importlib import resources
from typing import Any, AsyncIterator, Mapping

import httpx

from xbook.scaffold.checks import n_words
from xbook.scaffold.summarizer import LEVELS, Summary, SummarizerError, check_level

log = logging.getLogger(__name__)

TEMPLATE_FIELDS = ("{text}", "{target_words}")


@functools.cache
def load_level_templates(version: str) -> dict[str, str]:
  """The template of every level, `templates/<version>/<level>.txt`, by level.

  Raises:
    FileNotFoundError: naming the missing file.
    ValueError: for a template without `{text}` or `{target_words}` exactly once.
  """
  folder = resources.files("xbook.scaffold").joinpath(f"templates/{version}")
  templates = {}
  for level in LEVELS:
    path = folder.joinpath(f"{level}.txt")
    if not path.is_file():
      raise FileNotFoundError(f"prompt template version {version!r} has no {level}.txt (looked in {folder})")
    template = path.read_text("utf-8").strip()
    for field in TEMPLATE_FIELDS:
      if template.count(field) != 1:
        raise ValueError(f"prompt template {version}/{level}.txt must contain {field} exactly once")
    templates[level] = template
  return templates


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
  """When and how long to wait before retrying a request.

  Attributes:
    max_retries: retries after the first attempt; then the call fails.
    base_delay_s: the backoff cap of the first retry; it doubles with every retry.
    max_delay_s: the largest backoff cap.
  """

  max_retries: int = 6
  base_delay_s: float = 0.5
  max_delay_s: float = 30.0

  def delay_s(self, attempt: int, retry_after_s: float | None) -> float:
    """Seconds to wait before retry `attempt` (0-based): `Retry-After` if given, else full jitter."""
    if retry_after_s is not None:
      return retry_after_s
    return random.uniform(0.0, min(self.max_delay_s, self.base_delay_s * 2 ** attempt))


def retry_after_seconds(value: str | None) -> float | None:
  """A `Retry-After` header (seconds, or an HTTP date) as seconds from now; None if absent or unreadable."""
  if not value:
    return None
  try:
    return max(0.0, float(value))
  except ValueError:
    pass
  try:
    return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
  except (TypeError, ValueError):
    return None


def _shown(value: Any, limit: int = 120) -> str:
  text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
  return repr(text if len(text) <= limit else text[:limit - 3] + "...")


def answer_text(answer: Any, where: str) -> str:
  """The text of `choices[0].message.content` of a chat-completions answer.

  Raises:
    SummarizerError: naming `where` and what is wrong, for an answer without choices or text.
  """
  choices = answer.get("choices") if isinstance(answer, dict) else None
  if not isinstance(choices, list) or not choices:
    raise SummarizerError(f"{where}: answer has no choices: {_shown(answer)}")
  message = choices[0].get("message") if isinstance(choices[0], dict) else None
  content = message.get("content") if isinstance(message, dict) else None
  if not isinstance(content, str) or not content.strip():
    raise SummarizerError(f"{where}: empty answer: choices[0].message.content is {_shown(content)}")
  return content.strip()


def _token_count(usage: Any, field: str) -> int:
  value = usage.get(field) if isinstance(usage, dict) else None
  return value if isinstance(value, int) and value >= 0 else 0


@dataclasses.dataclass(frozen=True)
class OpenAISummarizer:
  """Summaries from an OpenAI-compatible chat-completions endpoint (see the module docstring).

  Attributes:
    base_url: the API root, e.g. `http://127.0.0.1:8000/v1` (requests go to `{base_url}/chat/completions`).
    model: the served model's name, sent with every request.
    prompt_version: the folder of level templates under `xbook/scaffold/templates/`.
    temperature: sampling temperature (0: greedy).
    max_tokens: the most tokens a summary may take.
    tokens_per_word: `max_tokens` of a call is also at most `ceil(tokens_per_word * target_words)`.
    seed: sampling seed sent with every request (None: not sent).
    name: the backend name in records and cache keys ("openai"; "xbook" for `xbook serve`).
    api_key_env: environment variable holding the API key (unset or empty: no Authorization header).
    max_concurrency: requests in flight at once within a session.
    timeout_s: deadline of one request attempt, connection included.
    retry: retries after timeouts, connection errors, 429 and 5xx answers.
  """

  base_url: str
  model: str
  prompt_version: str = "plan_v1"
  temperature: float = 0.0
  max_tokens: int = 512
  tokens_per_word: float = 2.0
  seed: int | None = 0
  name: str = "openai"
  api_key_env: str = "OPENAI_API_KEY"
  max_concurrency: int = 8
  timeout_s: float = 120.0
  retry: RetryPolicy = RetryPolicy()

  def __post_init__(self) -> None:
    for field in ("max_tokens", "max_concurrency"):
      if getattr(self, field) < 1:
        raise ValueError(f"OpenAISummarizer.{field} must be at least 1, got {getattr(self, field)}")
    if self.tokens_per_word <= 0 or self.timeout_s <= 0:
      raise ValueError(f"OpenAISummarizer.tokens_per_word and timeout_s must be > 0, got "
                       f"{self.tokens_per_word} and {self.timeout_s}")
    load_level_templates(self.prompt_version)

  @property
  def params(self) -> Mapping[str, Any]:
    """The sampling settings: what changes an answer (the endpoint and its limits do not)."""
    return {"temperature": self.temperature, "max_tokens": self.max_tokens,
            "tokens_per_word": self.tokens_per_word, "seed": self.seed}

  @property
  def endpoint(self) -> str:
    return self.base_url.rstrip("/") + "/chat/completions"

  def request_body(self, text: str, level: str, target_words: int) -> dict[str, Any]:
    """The chat-completions request of one summary."""
    check_level(level)
    prompt = load_level_templates(self.prompt_version)[level].format(
        text=text.strip(), target_words=target_words)
    body: dict[str, Any] = {
        "model": self.model, "messages": [{"role": "user", "content": prompt}],
        "temperature": self.temperature,
        "max_tokens": max(1, min(self.max_tokens, math.ceil(self.tokens_per_word * target_words)))}
    if self.seed is not None:
      body["seed"] = self.seed
    return body

  def ask_body(self, prompt: str, max_tokens: int) -> dict[str, Any]:
    """The chat-completions request of a free-form `prompt` (one user message)."""
    body: dict[str, Any] = {"model": self.model, "messages": [{"role": "user", "content": prompt}],
                            "temperature": self.temperature, "max_tokens": max(1, max_tokens)}
    if self.seed is not None:
      body["seed"] = self.seed
    return body

  @contextlib.asynccontextmanager
  async def session(self) -> AsyncIterator["OpenAISession"]:
    """A connection pool and concurrency bound; yields a session: `await call(text, level,
    target_words)` for a summary, `await call.ask(prompt, max_tokens)` for a free-form answer."""
    headers = {"Content-Type": "application/json"}
    if api_key := os.environ.get(self.api_key_env):
      headers["Authorization"] = f"Bearer {api_key}"
    limits = httpx.Limits(max_connections=self.max_concurrency,
                          max_keepalive_connections=self.max_concurrency)
    async with httpx.AsyncClient(headers=headers, limits=limits, timeout=self.timeout_s) as client:
      yield OpenAISession(self, client, asyncio.Semaphore(self.max_concurrency))

  async def _post(self, client: httpx.AsyncClient, slots: asyncio.Semaphore,
                  body: Mapping[str, Any]) -> Any:
    """POST `body`, retrying per `self.retry`; the decoded JSON answer of the first 200."""
    attempts = self.retry.max_retries + 1
    for attempt in range(attempts):
      retry_after_s = None
      async with slots:
        try:
          async with asyncio.timeout(self.timeout_s):
            response = await client.post(self.endpoint, json=body)
        except (TimeoutError, httpx.TimeoutException):
          failure = f"no answer within {self.timeout_s:g} s"
        except httpx.TransportError as error:
          failure = f"{type(error).__name__}: {error}"
        else:
          if response.status_code == 200:
            try:
              return response.json()
            except ValueError:
              raise SummarizerError(f"{self.endpoint}: answer is not JSON: {_shown(response.text)}") from None
          if response.status_code != 429 and response.status_code < 500:
            raise SummarizerError(f"{self.endpoint}: HTTP {response.status_code} (not retried): "
                                  f"{_shown(response.text)}")
          failure = f"HTTP {response.status_code}"
          retry_after_s = retry_after_seconds(response.headers.get("Retry-After"))
      if attempt + 1 == attempts:
        break
      delay_s = self.retry.delay_s(attempt, retry_after_s)
      log.info("%s: %s; retry %d of %d in %.2f s", self.endpoint, failure, attempt + 1,
               self.retry.max_retries, delay_s)
      await asyncio.sleep(delay_s)
    raise SummarizerError(f"{self.endpoint}: gave up after {attempts} attempts; last: {failure}")

  def summarize(self, text: str, level: str, target_words: int) -> str:
    """One summary, in a session of its own (see `Summarizer.summarize`); not within a running loop."""

    async def one() -> str:
      async with self.session() as call:
        return (await call(text, level, target_words)).text

    return asyncio.run(one())


class OpenAISession:
  """The calls of one `OpenAISummarizer.session()`: summaries (`__call__`) and free-form answers
  (`ask`), sharing its connections and concurrency bound."""

  def __init__(self, backend: OpenAISummarizer, client: httpx.AsyncClient, slots: asyncio.Semaphore) -> None:
    self.backend, self.client, self.slots = backend, client, slots

  async def __call__(self, text: str, level: str, target_words: int) -> Summary:
    backend = self.backend
    answer = await backend._post(self.client, self.slots, backend.request_body(text, level, target_words))
    where = f"{backend.endpoint} ({level})"
    summary = answer_text(answer, where)
    if level != "prompt" and n_words(summary) > n_words(text):
      raise SummarizerError(f"{where}: the {level} summary has {n_words(summary)} words, more than "
                            f"its {n_words(text)}-word source: {_shown(summary)}")
    usage = answer.get("usage")
    return Summary(summary, _token_count(usage, "prompt_tokens"), _token_count(usage, "completion_tokens"))

  async def ask(self, prompt: str, max_tokens: int) -> Summary:
    """The answer to a free-form request (its format is the caller's to check)."""
    backend = self.backend
    answer = await backend._post(self.client, self.slots, backend.ask_body(prompt, max_tokens))
    text = answer_text(answer, f"{backend.endpoint} (free-form request)")
    usage = answer.get("usage")
    return Summary(text, _token_count(usage, "prompt_tokens"), _token_count(usage, "completion_tokens"))
