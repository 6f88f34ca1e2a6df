"""`xbook serve`: an OpenAI-compatible HTTP server over a trained xbook run, on the KV-cache decoder.

Endpoints: `POST /v1/completions`, `POST /v1/chat/completions`, `GET /v1/models`, `GET /health`.
An ASGI app (Starlette) on uvicorn; `xbook serve` stops cleanly on SIGTERM or Ctrl-C (exit status 0).

Prompts. `/v1/completions` takes a raw `prompt` string, encoded as it is after the vocabulary's BOS (as a
staged client such as the paper's stage protocol sends it). `/v1/chat/completions` joins the contents
of its messages (any role, in order) by blank lines into the trajectory's `prompt` segment and the model
writes what follows the premise marker (`generate.prompt_ids`, after the BOS): an xbook model continues
trajectories, so its answer is the plan a writer starts from; a joined prompt longer than
`max_prompt_tokens` keeps its first tokens. Answers stop at the vocabulary's EOS (unless `ignore_eos`)
and ids beyond the tokenizer's size (padded embedding rows) are never sampled.

Request fields: `model` (the served name, default it), `max_tokens` / `max_completion_tokens` (>= 1;
above the server's `--max_tokens` it is lowered to it; a prompt plus its max_tokens longer than the
context is lowered to fit), `temperature` (>= 0, 0 greedy; default 1), `top_p`, `seed` (default 0),
`stop` (a string or a list of strings, not returned), `stream` (server-sent events in OpenAI's chunk
format, `data: [DONE]` last; `stream_options.include_usage` adds a usage chunk), and as extra fields
`top_k` (default 40), `min_p` and `ignore_eos`. Other fields are ignored; `n` must be 1. `usage` counts
the model input (BOS included) and the answer's tokens. A bad request (malformed JSON, a field of the
wrong type or out of range, an unknown model, a prompt that leaves no room in the context) gets a 4xx
answer with an OpenAI-style `{"error": {"message", "type", "param"}}` body.

Batching. A single decode worker thread takes every waiting request (at most `--max_batch`, those
with the same stop tokens as the first; after waiting `--batch_window_ms` for more) and decodes them
together in one `decode.generate` call; requests arriving meanwhile wait for the next batch. Streams
are fed by generate's `on_tokens` every `--sync_every` decode steps; a stream's last text (up to a stop
string) and its finish reason are sent when its batch ends. A client that disconnects, mid-stream or
while waiting for a whole answer, cancels its request (on_tokens returns False), which frees its row.
`/health` counts the batches by size, the requests and the cancelled ones.

`start_server_process` runs `xbook serve` as a child process on a free port of 127.0.0.1, for a
caller (a scaffold build with `--backend xbook`, a test) that needs an endpoint for a run directory.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any, AsyncIterator, Iterator

from xbook.infer import decode, structured
from xbook.infer.chat_template import ChatTemplateError, load_chat_template
from xbook.infer.decode import SamplingParams
from xbook.infer.engine import Engine, EngineRequest
from xbook.infer.generate import load_run, prompt_ids
from xbook.infer.listen import bind_or_report
from xbook.infer.placement import inference_mesh
from xbook.infer.serve_engine import ContinuousBatcher
from xbook.infer.serve_metrics import CONTENT_TYPE, ServeMetrics
from xbook.train.run_info import RunInfo

log = logging.getLogger(__name__)

TOP_K = 40
# The line `xbook serve` prints once it accepts requests; start_server_process reads the URL from it.
READY_LINE = "xbook serve: ready at "
MAX_STOP_STRINGS = 16


class RequestError(ValueError):
  """A request the server cannot answer; `status` is its HTTP status, `param` the field at fault."""

  def __init__(self, status: int, message: str, param: str | None = None) -> None:
    super().__init__(message)
    self.status, self.param = status, param


# ------------------------------------------------------------------------------------------------- model
@dataclasses.dataclass
class ServedModel:
  """A run's parameters placed for decoding, its vocabulary and the server's bounds.

  Attributes:
    context_len: the most tokens of a prompt plus its answer (the run's trained sequence length).
    max_prompt_tokens: chat prompts longer than this keep their first tokens.
    max_tokens: the most tokens of one answer.
  """

  name: str
  step: int
  config: Any
  params: Any
  vocabulary: Any
  context_len: int
  max_prompt_tokens: int
  max_tokens: int
  mesh: Any = None
  rules: Any = None
  chat_template: Any = None  # xbook.infer.chat_template.ChatTemplate of an imported model's vocabulary, or None
  grammars: Any = None  # xbook.infer.structured.GrammarCompiler of the vocabulary (set in __post_init__)

  def __post_init__(self) -> None:
    if self.grammars is None:
      self.grammars = structured.GrammarCompiler(self.vocabulary)


def load_model(run_dir: str | os.PathLike[str], *, step: int | None = None, name: str | None = None,
               max_prompt_tokens: int = 1024, max_tokens: int = 256, context_len: int | None = None,
               mesh: Any = None, rules: Any = None) -> ServedModel:
  """Load and place the run in `run_dir` (context_len None: its trained sequence length, else
  max_prompt_tokens + max_tokens), sharded over `mesh` by `rules` when given (xbook.infer.placement).
  The run directory is read once, here (xbook.train.run_info.RunInfo); what follows takes its record."""
  info = RunInfo.read(run_dir)
  rules = rules or decode.inference_rules()
  run = load_run(info, step=step, mesh=mesh, rules=rules)
  context_len = context_len or info.seq_len or max_prompt_tokens + max_tokens
  params = decode.place_params(run.params, run.model.config, mesh=mesh, rules=rules)
  return ServedModel(name=name or f"{Path(run_dir).resolve().name}@{run.step}", step=run.step,
                     config=run.model.config, params=params, vocabulary=run.vocabulary,
                     context_len=int(context_len), max_prompt_tokens=max_prompt_tokens, max_tokens=max_tokens,
                     mesh=mesh, rules=rules, chat_template=_chat_template(run.vocabulary))


def _chat_template(vocabulary: Any) -> Any:
  """The chat template beside the run's tokenizer files (an instruct model's tokenizer_config.json), or None."""
  path = Path(str(vocabulary.path))
  try:
    template = load_chat_template(path if path.is_dir() else path.parent)
  except (ChatTemplateError, OSError):
    return None
  log.info("chat requests are rendered with the model's chat template (%s)", template.origin)
  return template


# ---------------------------------------------------------------------------------------------- requests
def _field(body: dict[str, Any], name: str, kinds: tuple[type, ...], default: Any, what: str) -> Any:
  """body[name] if it is of `kinds` (bool is not a number), else `default` when absent or null."""
  value = body.get(name)
  if value is None:
    return default
  if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
    raise RequestError(400, f"{name}: expected {what}, got {json.dumps(value)[:80]}", name)
  return value


def _in_range(name: str, value: float, low: float, high: float, fix: str) -> None:
  if not low <= value <= high:
    raise RequestError(400, f"{name}={value} is out of range: {fix}", name)


def _stops(body: dict[str, Any]) -> tuple[str, ...]:
  stop = body.get("stop")
  stops = [stop] if isinstance(stop, str) else stop if stop is not None else []
  if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
    raise RequestError(400, "stop: expected a non-empty string or a list of them", "stop")
  if len(stops) > MAX_STOP_STRINGS:
    raise RequestError(400, f"stop: {len(stops)} strings, at most {MAX_STOP_STRINGS}", "stop")
  return tuple(stops)


@dataclasses.dataclass
class Request:
  """A validated request: the model input, its sampling and how to answer it."""

  kind: str  # "completion" or "chat"
  ids: list[int]
  sampling: Any  # decode.SamplingParams
  stream: bool
  include_usage: bool
  stop_token_ids: tuple[int, ...]
  grammar: str | None = None  # llguidance's serialized grammar (xbook.infer.structured), or None


def parse_request(kind: str, body: Any, model: ServedModel) -> Request:
  """The Request of a decoded JSON body of /v1/completions (`kind` "completion") or
  /v1/chat/completions ("chat"). Raises RequestError (4xx) saying what is wrong."""
  if not isinstance(body, dict):
    raise RequestError(400, "the request body must be a JSON object")
  name = _field(body, "model", (str,), model.name, "a string")
  if name != model.name:
    raise RequestError(404, f"model {name!r} is not served here; this server serves {model.name!r}", "model")
  ids = _chat_ids(body, model) if kind == "chat" else _completion_ids(body, model)
  room = model.context_len - len(ids)
  if room < 1:
    raise RequestError(400, f"the prompt has {len(ids)} tokens but the model's context is {model.context_len} "
                            "tokens, with room for at least one answer token; shorten the prompt", "prompt")
  if _field(body, "n", (int,), 1, "an integer") != 1:
    raise RequestError(400, "n: only n=1 is served (one choice per request); send n requests with their "
                            "own seeds instead", "n")
  for unsupported in ("logprobs", "top_logprobs", "echo", "best_of", "suffix"):
    if body.get(unsupported) not in (None, False, 0) and not (unsupported == "best_of" and body[unsupported] == 1):
      raise RequestError(400, f"{unsupported}: not supported by xbook serve; leave it out", unsupported)
  field = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
  max_tokens = _field(body, field, (int,), model.max_tokens, "an integer")
  _in_range(field, max_tokens, 1, 2**31 - 1, "give at least 1")
  temperature = _field(body, "temperature", (int, float), 1.0, "a number")
  _in_range("temperature", temperature, 0, 1e6, "give a number >= 0 (0 is greedy)")
  top_p = _field(body, "top_p", (int, float), 1.0, "a number")
  if not 0 < top_p <= 1:
    raise RequestError(400, f"top_p={top_p} is out of range: give a number in (0, 1]", "top_p")
  top_k = _field(body, "top_k", (int,), TOP_K, "an integer")
  _in_range("top_k", top_k, 0, 2**31 - 1, "give an integer >= 0 (0 keeps every id)")
  min_p = _field(body, "min_p", (int, float), 0.0, "a number")
  _in_range("min_p", min_p, 0, 1, "give a number in [0, 1]")
  seed = _field(body, "seed", (int,), 0, "an integer")
  stream = _field(body, "stream", (bool,), False, "true or false")
  options = _field(body, "stream_options", (dict,), {}, "an object")
  ignore_eos = _field(body, "ignore_eos", (bool,), False, "true or false")
  sampling = SamplingParams(temperature=float(temperature), top_k=top_k, top_p=float(top_p),
                            min_p=float(min_p), seed=seed,
                            max_tokens=max(1, min(max_tokens, model.max_tokens, room)), stop=_stops(body))
  eos = model.vocabulary.eos_id
  stop_ids = _field(body, "stop_token_ids", (list,), [], "a list of token ids")
  if not all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in stop_ids) or len(stop_ids) > 15:
    raise RequestError(400, "stop_token_ids: expected at most 15 token ids (integers >= 0)", "stop_token_ids")
  stop_token_ids = tuple(sorted(set(stop_ids) | (set() if ignore_eos or eos is None else {eos})))
  return Request(kind=kind, ids=ids, sampling=sampling, stream=stream,
                 include_usage=bool(options.get("include_usage")),
                 stop_token_ids=stop_token_ids, grammar=_grammar(body, model))


def _grammar(body: dict[str, Any], model: ServedModel) -> str | None:
  """The request's structured-outputs grammar, compiled for the model's vocabulary (None: none asked)."""
  try:
    spec = structured.spec_from_request(body)
    return None if spec is None else model.grammars.compile(spec)
  except structured.GrammarError as error:
    raise RequestError(400, f"invalid grammar: {error}", "structured_outputs") from error


def _completion_ids(body: dict[str, Any], model: ServedModel) -> list[int]:
  """A string prompt encoded after the vocabulary's BOS; a list of token ids (OpenAI's and vLLM's token
  prompt) taken as the exact model input."""
  prompt = body.get("prompt")
  if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
    prompt = prompt[0]
  if isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
    if not all(0 <= t < model.vocabulary.size for t in prompt):
      raise RequestError(400, f"prompt: token ids must be in [0, {model.vocabulary.size})", "prompt")
    return list(prompt)
  if not isinstance(prompt, str):
    raise RequestError(400, "prompt: expected a string or a list of token ids (one prompt per request)", "prompt")
  return [model.vocabulary.bos_id, *model.vocabulary.encode(prompt)]


def _chat_ids(body: dict[str, Any], model: ServedModel) -> list[int]:
  messages = body.get("messages")
  if (not isinstance(messages, list) or not messages
      or not all(isinstance(m, dict) and isinstance(m.get("content"), str) for m in messages)):
    raise RequestError(400, "messages: expected a non-empty list of {role, content} objects with string "
                            "content", "messages")
  if model.chat_template is not None:
    return _templated_ids(messages, model)
  prompt = "\n\n".join(m["content"].strip() for m in messages)
  vocabulary = model.vocabulary
  overhead = len(prompt_ids("", vocabulary))
  body_ids = vocabulary.encode(prompt)
  if len(body_ids) + overhead > model.max_prompt_tokens:
    prompt = vocabulary.decode(body_ids[:max(1, model.max_prompt_tokens - overhead)])
  return [vocabulary.bos_id, *prompt_ids(prompt, vocabulary)]


def _templated_ids(messages: list[dict[str, Any]], model: ServedModel) -> list[int]:
  """The model's own chat template rendered as transformers renders it, then encoded (its special tokens,
  BOS included, come from the template's text)."""
  try:
    text = model.chat_template.render([{"role": m.get("role", "user"), "content": m["content"]} for m in messages],
                                      add_generation_prompt=True)
  except ChatTemplateError as error:
    raise RequestError(400, f"messages: the model's chat template refused them ({error})", "messages") from error
  ids = encode_with_special_tokens(model.vocabulary, text)
  if len(ids) > model.max_prompt_tokens:
    raise RequestError(400, f"messages: {len(ids)} tokens after the chat template, more than the server's "
                            f"--max_prompt_tokens {model.max_prompt_tokens}; shorten them", "messages")
  return ids


def encode_with_special_tokens(vocabulary: Any, text: str) -> list[int]:
  """`text` encoded as transformers encodes a rendered chat template: the tokenizer's added special tokens
  written in it (`<s>`, `[INST]`, ...) become their ids, the text between them is encoded as usual.
  (The vocabulary's own `encode` spells special-token text out, so that a user's text can never forge one.)"""
  backend = getattr(vocabulary, "_tokenizer", None)
  specials: dict[str, int] = {}
  if backend is not None and hasattr(backend, "get_added_tokens_decoder"):
    specials = {t.content: i for i, t in backend.get_added_tokens_decoder().items() if t.special}
  elif getattr(vocabulary, "_processor", None) is not None:  # SentencePiece: its control pieces
    processor = vocabulary._processor  # noqa: SLF001
    specials = {processor.id_to_piece(i): i for i in range(processor.get_piece_size())
                if processor.is_control(i) and processor.id_to_piece(i)}
  if not specials:
    return list(vocabulary.encode(text))
  pattern = re.compile("(" + "|".join(re.escape(t) for t in sorted(specials, key=len, reverse=True)) + ")")
  ids: list[int] = []
  for part in pattern.split(text):
    if part in specials:
      ids.append(specials[part])
    elif part:
      ids += vocabulary.encode(part)
  return ids


# ----------------------------------------------------------------------------------------------- batcher
class Job:
  """One request on its way through the decode worker. The worker posts events to the request's
  event loop: ("text", the answer's settled text so far), ("done", Completion) or ("error", exception).
  `cancelled` (set by the request's side when its client went away) makes on_tokens return False."""

  def __init__(self, request: Request, loop: asyncio.AbstractEventLoop) -> None:
    self.request, self.loop = request, loop
    self.events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
    self._cancelled = False
    self.handle: Any = None  # the engine's Handle (continuous batching)
    self.ids: list[int] = []
    self.text = ""

  @property
  def cancelled(self) -> bool:
    return self._cancelled

  @cancelled.setter
  def cancelled(self, value: bool) -> None:
    self._cancelled = value
    if value and self.handle is not None:
      self.handle.cancel()

  def post(self, kind: str, value: Any) -> None:
    with contextlib.suppress(RuntimeError):  # the request's loop has closed (server shutting down)
      self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, value))

  def settled(self, ids: list[int], decode: Any) -> bool:
    """on_tokens for this job: post the new text (not one that ends in a partial character)."""
    if ids and self.request.stream:
      self.ids += ids
      text = decode(self.ids)
      if text.startswith(self.text) and not text.endswith("\ufffd") and len(text) > len(self.text):
        self.text = text
        self.post("text", text)
    return not self.cancelled


class Batcher:
  """The decode worker: one thread running one decode.generate over every waiting request at a time
  (see the module docstring). `stats()` counts batches by size, requests and cancellations."""

  def __init__(self, model: ServedModel, *, max_batch: int = 8, batch_window_s: float = 0.0,
               sync_every: int = 16) -> None:
    self.model, self.max_batch, self.batch_window_s = model, max_batch, batch_window_s
    self.sync_every = sync_every
    self.pending: list[Job] = []
    self.running: list[Job] = []
    self.batch_sizes: collections.Counter[int] = collections.Counter()
    self.requests = self.cancelled = 0
    self.metrics: Any = None  # ServeMetrics, set by make_batcher
    self.stopping = False
    self.condition = threading.Condition()
    self.thread = threading.Thread(target=self._work, name="xbook-decode", daemon=True)
    self.thread.start()

  def submit(self, job: Job) -> None:
    with self.condition:
      if self.stopping:
        raise RequestError(503, "the server is shutting down; retry on another server")
      self.pending.append(job)
      self.requests += 1
      self.condition.notify_all()

  def stop(self, timeout_s: float = 10.0) -> None:
    """Cancel what runs, fail what waits, and end the worker."""
    with self.condition:
      self.stopping = True
      for job in self.running:
        job.cancelled = True
      for job in self.pending:
        job.post("error", RequestError(503, "the server is shutting down; retry on another server"))
      self.pending.clear()
      self.condition.notify_all()
    self.thread.join(timeout=timeout_s)

  def stats(self) -> dict[str, Any]:
    with self.condition:
      return {"requests": self.requests, "cancelled": self.cancelled, "waiting": len(self.pending),
              "running": len(self.running), "batches": sum(self.batch_sizes.values()),
              "batch_sizes": {str(k): v for k, v in sorted(self.batch_sizes.items())},
              "max_batch_seen": max(self.batch_sizes, default=0)}

  def _take(self) -> list[Job] | None:
    """The next batch: waiting jobs with the first one's stop tokens (None once stopping)."""
    with self.condition:
      while not self.pending and not self.stopping:
        self.condition.wait()
      deadline = time.monotonic() + self.batch_window_s
      while len(self.pending) < self.max_batch and not self.stopping and time.monotonic() < deadline:
        self.condition.wait(timeout=deadline - time.monotonic())
      if self.stopping:
        return None
      live = [job for job in self.pending if not job.cancelled]
      self.cancelled += len(self.pending) - len(live)
      key = live[0].request.stop_token_ids if live else None
      batch = [job for job in live if job.request.stop_token_ids == key][:self.max_batch]
      self.pending = [job for job in live if job not in batch]
      self.running = batch
      if batch:
        self.batch_sizes[len(batch)] += 1
      return batch

  def _work(self) -> None:
    while (batch := self._take()) is not None:
      if batch:
        self._decode(batch)
      with self.condition:
        self.running = []

  def _decode(self, batch: list[Job]) -> None:
    model = self.model
    started = time.perf_counter()
    try:
      completions = decode.generate(
          model.params, model.config, [job.request.ids for job in batch], [job.request.sampling for job in batch],
          stop_token_ids=batch[0].request.stop_token_ids, decode=model.vocabulary.decode,
          vocab_size_limit=model.vocabulary.size, sync_every=self.sync_every,
          on_tokens=lambda index, ids, _reason: batch[index].settled(ids, model.vocabulary.decode))
    except Exception as error:  # noqa: BLE001 - answered as a 500; the worker goes on
      log.exception("decoding a batch of %d failed", len(batch))
      for job in batch:
        job.post("error", error)
      return
    with self.condition:
      self.cancelled += sum(c.finish_reason == "cancelled" for c in completions)
    elapsed = time.perf_counter() - started
    log.info("batch of %d: %d prompt tokens, %d generated, %.2f s", len(batch),
             sum(c.prompt_tokens for c in completions), sum(len(c.token_ids) for c in completions), elapsed)
    for job, completion in zip(batch, completions):
      if self.metrics is not None:
        self.metrics.record(completion, None, elapsed)
      job.post("done", completion)


# ----------------------------------------------------------------------------------------------- answers
def _answer_id(kind: str) -> str:
  return f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex}"


def _usage(completion: Any) -> dict[str, Any]:
  """OpenAI's usage, with the prompt tokens served from the prefix cache as vLLM reports them."""
  done = len(completion.token_ids)
  return {"prompt_tokens": completion.prompt_tokens, "completion_tokens": done,
          "total_tokens": completion.prompt_tokens + done,
          "prompt_tokens_details": {"cached_tokens": getattr(completion, "cached_tokens", 0)}}


def _finish_reason(completion: Any) -> str:
  return "length" if completion.finish_reason == "length" else "stop"


def answer(request: Request, completion: Any, name: str) -> dict[str, Any]:
  """The non-streamed answer to a request."""
  text = completion.text or ""
  if request.kind == "chat":
    choice = {"index": 0, "message": {"role": "assistant", "content": text}}
    kind = "chat.completion"
  else:
    choice, kind = {"index": 0, "text": text, "logprobs": None}, "text_completion"
  return {"id": _answer_id(request.kind), "object": kind, "created": int(time.time()), "model": name,
          "choices": [choice | {"finish_reason": _finish_reason(completion)}], "usage": _usage(completion)}


def _chunk(request: Request, answer_id: str, name: str, text: str | None, finish: str | None,
           first: bool = False) -> dict[str, Any]:
  if request.kind == "chat":
    delta = {"role": "assistant", "content": text or ""} if first else {} if text is None else {"content": text}
    choice, kind = {"index": 0, "delta": delta}, "chat.completion.chunk"
  else:
    choice, kind = {"index": 0, "text": text or "", "logprobs": None}, "text_completion"
  return {"id": answer_id, "object": kind, "created": int(time.time()), "model": name,
          "choices": [choice | {"finish_reason": finish}]}


def _event(payload: dict[str, Any] | str) -> bytes:
  data = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)
  return f"data: {data}\n\n".encode("utf-8")


async def stream_events(job: Job, name: str) -> AsyncIterator[bytes]:
  """Server-sent events of a streamed request: OpenAI chunks as its text settles, then `[DONE]`.
  Ending early (the client went away) cancels the job."""
  request, answer_id, sent = job.request, _answer_id(job.request.kind), ""
  try:
    if request.kind == "chat":
      yield _event(_chunk(request, answer_id, name, "", None, first=True))
    while True:
      kind, value = await job.events.get()
      if kind == "error":
        yield _event({"error": _error_body(value)})
        break
      text = value if kind == "text" else (value.text or "")
      if text.startswith(sent) and len(text) > len(sent):
        yield _event(_chunk(request, answer_id, name, text[len(sent):], None))
        sent = text
      if kind == "done":
        yield _event(_chunk(request, answer_id, name, None, _finish_reason(value)))
        if request.include_usage:
          yield _event({"id": answer_id, "object": _chunk(request, answer_id, name, None, None)["object"],
                        "created": int(time.time()), "model": name, "choices": [], "usage": _usage(value)})
        break
    yield _event("[DONE]")
  finally:
    job.cancelled = True  # a no-op once done; else the client left: free the row


async def _final_event(job: Job) -> tuple[str, Any]:
  """The ("done", Completion) or ("error", exception) event of a request that is not streamed."""
  while (event := await job.events.get())[0] == "text":
    pass
  return event


async def _client_left(http_request: Any) -> None:
  """Returns once the client of a request whose body has been read disconnects (ASGI `http.disconnect`)."""
  while (await http_request.receive())["type"] != "http.disconnect":
    pass


# ------------------------------------------------------------------------------------------------- app
def _error_body(error: Exception) -> dict[str, Any]:
  status = getattr(error, "status", 500)
  return {"message": str(error) if isinstance(error, RequestError) else f"{type(error).__name__}: {error}",
          "type": "invalid_request_error" if status < 500 else "server_error",
          "param": getattr(error, "param", None), "code": None}


def _error(status: int, message: str, param: str | None = None) -> Any:
  from starlette.responses import JSONResponse  # noqa: PLC0415
  return JSONResponse({"error": _error_body(RequestError(status, message, param))}, status_code=status)


@dataclasses.dataclass(frozen=True)
class BatchingConfig:
  """How the server batches requests (`xbook serve` flags of the same names).

  Attributes:
    batching: "continuous" (xbook.infer.engine: a request joins the running rows at the next step) or
      "static" (one decode.generate per batch; a batch runs to its end before the next starts).
    max_batch: the most requests decoded together (the engine's slots).
    batch_window_ms: static: how long the worker waits for more requests before a batch.
    sync_every: decode steps between the host's looks at the rows (streamed chunks, stop strings).
    max_waiting: continuous: the most requests waiting for a slot; beyond it, 503 with Retry-After.
    prefill_chunk: continuous: the most prompt tokens of a request prefilled per engine step.
    prefix_reuse: continuous: serve a prompt's longest cached prefix from the cache.
  """

  batching: str = "continuous"
  max_batch: int = 8
  batch_window_ms: float = 0.0
  sync_every: int = 16
  max_waiting: int = 256
  prefill_chunk: int = 512
  prefix_reuse: bool = True

  def __post_init__(self) -> None:
    if self.batching not in ("continuous", "static"):
      raise ValueError(f"batching={self.batching!r}: expected 'continuous' or 'static'")


def make_batcher(model: ServedModel, batching: BatchingConfig) -> Any:
  """The decode worker of `batching.batching` kind, started, with its /metrics."""
  if batching.batching == "static":
    batcher = Batcher(model, max_batch=batching.max_batch, batch_window_s=batching.batch_window_ms / 1000,
                      sync_every=batching.sync_every)
    batcher.metrics = ServeMetrics(batcher.stats)
    return batcher
  engine = Engine(model.params, model.config, slots=batching.max_batch, max_len=model.context_len,
                  mesh=model.mesh, rules=model.rules, vocab_size_limit=model.vocabulary.size,
                  decode=model.vocabulary.decode, prefill_chunk=batching.prefill_chunk,
                  sync_every=batching.sync_every, prefix_reuse=batching.prefix_reuse,
                  max_waiting=batching.max_waiting)
  holder: dict[str, Any] = {}
  metrics = ServeMetrics(lambda: holder["batcher"].stats())
  holder["batcher"] = ContinuousBatcher(model, engine, metrics)
  return holder["batcher"]


def make_app(model: ServedModel, batching: BatchingConfig = BatchingConfig(), *, on_ready: Any = None) -> Any:
  """The Starlette app serving `model` (see the module docstring); its decode worker starts with the app's
  lifespan and stops with it. `on_ready()` is called once the app accepts requests."""
  from starlette.applications import Starlette  # noqa: PLC0415
  from starlette.exceptions import HTTPException  # noqa: PLC0415
  from starlette.responses import JSONResponse, Response, StreamingResponse  # noqa: PLC0415
  from starlette.routing import Route  # noqa: PLC0415
  state: dict[str, Any] = {}

  async def complete(kind: str, http_request: Any) -> Any:
    try:
      body = json.loads(await http_request.body())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
      return _error(400, f"the request body is not valid JSON ({error}); send a JSON object")
    try:
      request = parse_request(kind, body, model)
      if request.grammar is not None and batching.batching == "static":
        raise RequestError(400, "structured outputs need the continuous batcher: restart xbook serve without "
                                "--batching static", "structured_outputs")
      job = Job(request, asyncio.get_running_loop())
      state["batcher"].submit(job)
    except (RequestError, ValueError, RuntimeError) as error:
      status = getattr(error, "status", 400 if isinstance(error, ValueError) else 500)
      response = _error(status, str(error), getattr(error, "param", None))
      if getattr(error, "retry_after", None):
        response.headers["Retry-After"] = str(error.retry_after)
      return response
    if request.stream:
      return StreamingResponse(stream_events(job, model.name), media_type="text/event-stream",
                               headers={"Cache-Control": "no-cache"})
    answered = asyncio.ensure_future(_final_event(job))
    left = asyncio.ensure_future(_client_left(http_request))
    try:
      await asyncio.wait({answered, left}, return_when=asyncio.FIRST_COMPLETED)
    finally:
      job.cancelled = True  # a no-op once answered; else the client left: free the row
      left.cancel()
    if not answered.done():
      answered.cancel()
      return Response(status_code=499)  # nobody reads it: nginx's "client closed request"
    kind_, value = answered.result()
    if kind_ == "error":
      return JSONResponse({"error": _error_body(value)}, status_code=getattr(value, "status", 500))
    return JSONResponse(answer(request, value, model.name))

  async def completions(http_request: Any) -> Any:
    return await complete("completion", http_request)

  async def chat(http_request: Any) -> Any:
    return await complete("chat", http_request)

  async def models(_: Any) -> Any:
    return JSONResponse({"object": "list", "data": [{"id": model.name, "object": "model", "created": 0,
                                                     "owned_by": "xbook"}]})

  async def health(_: Any) -> Any:
    return JSONResponse({"status": "ok", "model": model.name, "step": model.step,
                         "context_len": model.context_len, **state["batcher"].stats()})

  async def metrics(_: Any) -> Any:
    return Response(state["batcher"].metrics.exposition(), media_type=CONTENT_TYPE)

  async def http_error(http_request: Any, error: HTTPException) -> Any:
    return _error(error.status_code, f"{error.detail}: {http_request.method} {http_request.url.path}")

  @contextlib.asynccontextmanager
  async def lifespan(_: Any) -> AsyncIterator[None]:
    state["batcher"] = make_batcher(model, batching)
    if on_ready is not None:
      on_ready()
    try:
      yield
    finally:
      await asyncio.to_thread(state["batcher"].stop)

  routes = [Route("/v1/completions", completions, methods=["POST"]),
            Route("/v1/chat/completions", chat, methods=["POST"]),
            Route("/v1/models", models, methods=["GET"]), Route("/health", health, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"])]
  return Starlette(routes=routes, lifespan=lifespan, exception_handlers={HTTPException: http_error})


# ------------------------------------------------------------------------------------------------ serve
def warm_up(model: ServedModel, batching: BatchingConfig) -> None:
  """Compile the programs the first requests need before they come, so that no client times out on a
  compile: static batching, the prefill and decode of every batch size a batch of up to `max_batch`
  requests pads to (powers of two), at the smallest cache length; continuous, the engine's at its
  smallest cache (its programs do not depend on how many requests run). Longer contexts compile on
  first use."""
  started, batch, max_batch = time.perf_counter(), 1, batching.max_batch
  if batching.batching == "continuous":
    engine = Engine(model.params, model.config, slots=max_batch, max_len=model.context_len, mesh=model.mesh,
                    rules=model.rules, vocab_size_limit=model.vocabulary.size,
                    prefill_chunk=batching.prefill_chunk, sync_every=batching.sync_every)
    engine.generate([EngineRequest([model.vocabulary.bos_id], decode.SamplingParams(temperature=0.0, max_tokens=2))])
    log.info("compiled the engine's programs in %.1f s", time.perf_counter() - started)
    return
  while True:
    decode.generate(model.params, model.config, [[model.vocabulary.bos_id]] * batch, decode.GREEDY,
                    max_tokens=2, vocab_size_limit=model.vocabulary.size, on_tokens=lambda *_: True)
    if batch >= max_batch:
      break
    batch *= 2
  log.info("compiled batches of 1 to %d in %.1f s", batch, time.perf_counter() - started)


def serve(run_dir: str | os.PathLike[str], *, host: str = "127.0.0.1", port: int = 8000,
          batching: BatchingConfig = BatchingConfig(), mesh_config: Any = None, shard_cache_length: bool = False,
          sock: socket.socket | None = None, **model_args: Any) -> int:
  """Serve the run in `run_dir` until SIGTERM or Ctrl-C; returns the exit status (2: the port is taken,
  reported before the model loads). `sock`: a socket already bound (xbook.infer.listen.bind, as `xbook serve`
  binds it before importing this module), else host:port is bound here. `model_args` go to `load_model`; with
  a `mesh_config` (xbook.train.mesh.MeshConfig) the model and cache are sharded over its mesh
  (xbook.infer.placement)."""
  if sock is None and (sock := bind_or_report(host, port)) is None:
    return 2
  import uvicorn  # noqa: PLC0415

  bound_host, bound_port = sock.getsockname()[:2]
  try:
    with _stop_on_sigterm():  # until uvicorn takes the signals over: a stop while loading is clean too
      if mesh_config is not None:
        model_args["mesh"], model_args["rules"] = inference_mesh(mesh_config, shard_cache_length)
      model = load_model(run_dir, **model_args)
      warm_up(model, batching)
  except _Stopped:
    sock.close()
    log.info("stopped by SIGTERM before the server was ready")
    return 0
  sock.listen(128)
  app = make_app(model, batching,
                 on_ready=lambda: print(f"{READY_LINE}http://{bound_host}:{bound_port}/v1", flush=True))
  config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=5, lifespan="on")
  _quiet_server(config).run(sockets=[sock])
  return 0


class _Stopped(Exception):
  """SIGTERM arrived before the server was ready."""


@contextlib.contextmanager
def _stop_on_sigterm() -> Iterator[None]:
  """Within the block, SIGTERM raises _Stopped (in the main thread; elsewhere signals stay as they are)."""
  if threading.current_thread() is not threading.main_thread():
    yield
    return

  def stop(signum: int, frame: Any) -> None:
    raise _Stopped()

  previous = signal.signal(signal.SIGTERM, stop)
  try:
    yield
  finally:
    signal.signal(signal.SIGTERM, previous)


def _quiet_server(config: Any) -> Any:
  """A uvicorn.Server that stops on SIGTERM or SIGINT without raising the signal again once stopped
  (uvicorn's default), so that a clean stop exits 0."""
  import uvicorn  # noqa: PLC0415

  class Server(uvicorn.Server):

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
      if threading.current_thread() is not threading.main_thread():
        yield
        return
      previous = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
      try:
        yield
      finally:
        for sig, handler in previous.items():
          signal.signal(sig, handler)

  return Server(config)


@contextlib.contextmanager
def start_server_process(run_dir: str | os.PathLike[str], *, port: int = 0, args: tuple[str, ...] = (),
                         startup_timeout_s: float = 300.0) -> Iterator[tuple[subprocess.Popen, str]]:
  """Run `xbook serve --run_dir run_dir` on 127.0.0.1 in a child process until the block ends (then
  SIGTERM, SIGKILL after 10 s).

  Yields:
    The process and its API root URL (`http://127.0.0.1:PORT/v1`), once it accepts requests.

  Raises:
    RuntimeError: if the server exits or is not ready within `startup_timeout_s`, with its output.
  """
  command = [sys.executable, "-m", "xbook.cli", "serve", "--run_dir", str(run_dir), "--host", "127.0.0.1",
             "--port", str(port), *args]
  process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  try:
    output: list[str] = []
    deadline = time.monotonic() + startup_timeout_s
    reader = threading.Thread(target=lambda: output.extend(iter(process.stdout.readline, "")), daemon=True)
    reader.start()
    while not any(line.startswith(READY_LINE) for line in output):
      if process.poll() is not None or time.monotonic() > deadline:
        reader.join(timeout=1)
        raise RuntimeError(f"`{' '.join(command)}` did not start (exit status {process.poll()}):\n"
                           + "".join(output[-40:]))
      time.sleep(0.05)
    url = next(line for line in output if line.startswith(READY_LINE))[len(READY_LINE):].strip()
    yield process, url
  finally:
    if process.poll() is None:
      process.terminate()
      try:
        process.wait(timeout=10)
      except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
