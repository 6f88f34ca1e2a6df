"""Completers of the book writer (xbook.infer.writer.Completer): where a stage is decoded.

  engine_completer   on xbook's inference engine (xbook.infer.engine) in this process: continuous
                     batching (many books at once share its slots), prefix reuse (a book's next stage
                     prefills only what the previous stage's context and output did not already hold)
                     and grammars through llguidance;
  remote_completer   on any OpenAI-compatible server that honours vLLM's extra fields (vLLM itself, or
                     `xbook serve`): the context is sent as token ids (`prompt: [ids]`, which both take
                     as the exact model input), with `stop`, `stop_token_ids`, `seed`, `top_k`, `min_p` and
                     the stage's grammar as `structured_outputs: {"grammar": ...}` (vLLM's field: its
                     docs say the older `guided_*` fields were removed in v0.12.0).

A completer takes (context ids, SamplingParams, stop token ids, stop strings, grammar=None, closers=()) and
returns a StageResult with the stage's text (up to a stop string), ids, finish reason, seconds, and how
many context tokens were prefilled and served from a cache. On the engine a grammar is closed within the
stage's budget, its closers (else its stop strings) written out (xbook.infer.structured); a remote server
cuts at max_tokens.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Sequence

from xbook.data.vocab import Vocabulary
from xbook.infer.decode import SamplingParams
from xbook.infer.engine import EngineRequest
from xbook.infer.structured import GrammarCompiler, GrammarSpec
from xbook.infer.writer import Completer, StageResult


def engine_completer(engine: Any, vocabulary: Vocabulary) -> Completer:
  """A completer on `engine` (an xbook.infer.engine.Engine, started or not; thread-safe when started)."""
  grammars = GrammarCompiler(vocabulary)

  def complete(ids: list[int], sampling: SamplingParams, stop_ids: Sequence[int], stop_strings: Sequence[str],
               grammar: str | None = None, closers: Sequence[str] = ()) -> StageResult:
    began = time.perf_counter()
    constraint = None
    if grammar:  # closed within the stage's budget, its end marker (a stop string) written out
      constraint = grammars.constraint(grammars.compile(GrammarSpec("grammar", grammar)),
                                       budget=sampling.max_tokens, closers=tuple(closers) or tuple(stop_strings))
    request = EngineRequest(prompt=list(ids), sampling=dataclasses.replace(sampling, stop=tuple(stop_strings)),
                            stop_token_ids=tuple(stop_ids), constraint=constraint)
    [completion] = engine.generate([request])
    return StageResult(text=completion.text or "", token_ids=completion.token_ids,
                       finish_reason=completion.finish_reason, seconds=time.perf_counter() - began,
                       prefill_tokens=completion.prompt_tokens - completion.cached_tokens,
                       cached_tokens=completion.cached_tokens,
                       closed_by_budget=constraint.closed_by_budget if constraint is not None else 0)

  return complete


def remote_completer(base_url: str, model: str, vocabulary: Vocabulary, *, api_key: str | None = None,
                     timeout_s: float = 3600.0, retries: int = 3) -> Completer:
  """A completer on the OpenAI-compatible server at `base_url` (e.g. http://127.0.0.1:8000/v1) serving
  `model` (see the module docstring). Connection errors and 5xx answers are retried with a backoff."""
  import httpx  # noqa: PLC0415

  client = httpx.Client(base_url=base_url.rstrip("/"), timeout=timeout_s,
                        headers={"Authorization": f"Bearer {api_key}"} if api_key else {})

  def complete(ids: list[int], sampling: SamplingParams, stop_ids: Sequence[int], stop_strings: Sequence[str],
               grammar: str | None = None, closers: Sequence[str] = ()) -> StageResult:
    body: dict[str, Any] = {
        "model": model, "prompt": list(ids), "max_tokens": sampling.max_tokens, "temperature": sampling.temperature,
        "top_p": sampling.top_p, "top_k": sampling.top_k, "min_p": sampling.min_p, "seed": sampling.seed,
        "stop": list(stop_strings) or None, "stop_token_ids": list(stop_ids), "ignore_eos": not stop_ids}
    if grammar:
      body["structured_outputs"] = {"grammar": grammar}
    began = time.perf_counter()
    answer = _post(client, body, retries)
    choice, usage = answer["choices"][0], answer.get("usage") or {}
    text = choice.get("text") or ""
    details = usage.get("prompt_tokens_details") or {}
    cached = int(details.get("cached_tokens") or 0)
    return StageResult(text=text, token_ids=vocabulary.encode(text) if text else [],
                       finish_reason=choice.get("finish_reason") or "stop", seconds=time.perf_counter() - began,
                       prefill_tokens=int(usage.get("prompt_tokens", len(ids))) - cached, cached_tokens=cached)

  return complete


def _post(client: Any, body: dict[str, Any], retries: int) -> dict[str, Any]:
  """POST /completions, retrying connection errors and 5xx answers (1, 2, 4 s apart); a 4xx is an error
  that names the server's message."""
  import httpx  # noqa: PLC0415
  for attempt in range(retries + 1):
    try:
      answer = client.post("/completions", json=body)
    except httpx.TransportError as error:
      if attempt == retries:
        raise ConnectionError(f"{client.base_url}: {error}; is the server running?") from error
    else:
      if answer.status_code < 500 or attempt == retries:
        if answer.status_code != 200:
          raise RuntimeError(f"{client.base_url}/completions answered {answer.status_code}: {answer.text[:300]}")
        return answer.json()
    time.sleep(2 ** attempt)
  raise AssertionError("unreachable")
