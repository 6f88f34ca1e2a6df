"""`xbook serve`: an OpenAI-compatible HTTP server over a trained xbook run.

Endpoints: `POST /v1/chat/completions`, `GET /v1/models`, `GET /health`.

From chat to trajectory: an xbook model is not a chat model; it continues trajectories. The contents of
a request's messages (any role, in order) are joined by blank lines into the `prompt` segment, and the
model writes what follows the premise marker (`generate.prompt_ids`, encoded as training encoded
trajectories): so its answer is the plan a writer would start from. A joined prompt longer than
`max_prompt_tokens` tokens keeps its first ones. The run's vocabulary may be any that xbook reads (xbook
SentencePiece, tokenizer.model, tokenizer.json, tekken.json): the first input is its BOS, answers stop at
its EOS, and ids beyond the tokenizer's size (padded embedding rows) are never sampled.

Sampling: `max_tokens` or `max_completion_tokens` (at most the server's `max_tokens`), `temperature` (0 is greedy; default 1 as
in the OpenAI API), `seed` (default 0), top-k 40. `usage` counts the tokens of the trajectory prefix and
of the answer. Requests are answered one at a time (one model, one device); every sampling window up
to `max_prompt_tokens + max_tokens` is compiled before the server accepts requests, so that no
request waits for a compilation.

`start_server_process` runs `xbook serve` as a child process on a free port of 127.0.0.1, for a
caller (a scaffold build with `--backend xbook`, a test) that needs an endpoint for a run directory.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import logging
import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

from xbook.infer.generate import WINDOW_MULTIPLE, LoadedRun, load_run, prompt_ids, sample_tokens

log = logging.getLogger(__name__)

TOP_K = 40
# The line `xbook serve` prints once it accepts requests; start_server_process reads the URL from it.
READY_LINE = "xbook serve: ready at "


class RequestError(ValueError):
  """A request the server cannot answer; `status` is its HTTP status."""

  def __init__(self, status: int, message: str) -> None:
    super().__init__(message)
    self.status = status


class ChatModel:
  """A loaded run answering chat-completions requests (see the module docstring)."""

  def __init__(self, run: LoadedRun, name: str, max_prompt_tokens: int, max_tokens: int) -> None:
    self.run = run
    self.name = name
    self.max_prompt_tokens = max_prompt_tokens
    self.max_tokens = max_tokens
    self.lock = threading.Lock()

  def prefix_ids(self, messages: Any) -> list[int]:
    """The trajectory prefix of a request's `messages`, as token ids."""
    if (not isinstance(messages, list) or not messages
        or not all(isinstance(m, dict) and isinstance(m.get("content"), str) for m in messages)):
      raise RequestError(400, "messages: expected a non-empty list of {role, content} objects with "
                              "string content")
    prompt = "\n\n".join(m["content"].strip() for m in messages)
    vocabulary = self.run.vocabulary
    overhead = len(prompt_ids("", vocabulary))
    body = vocabulary.encode(prompt)
    if len(body) + overhead > self.max_prompt_tokens:
      prompt = vocabulary.decode(body[:max(1, self.max_prompt_tokens - overhead)])
    return prompt_ids(prompt, vocabulary)

  def complete(self, request: Any) -> dict[str, Any]:
    """The chat-completions answer to a decoded request body."""
    if not isinstance(request, dict):
      raise RequestError(400, "the request body must be a JSON object")
    model = request.get("model", self.name)
    if model != self.name:
      raise RequestError(404, f"model {model!r} is not served here; this server serves {self.name!r}")
    ids = self.prefix_ids(request.get("messages"))
    max_tokens = request.get("max_completion_tokens") or request.get("max_tokens") or self.max_tokens
    temperature = request.get("temperature", 1.0)
    seed = request.get("seed", 0)
    if not isinstance(max_tokens, int) or max_tokens < 1:
      raise RequestError(400, f"max_tokens: expected an integer >= 1, got {max_tokens!r}")
    if not isinstance(temperature, (int, float)) or temperature < 0:
      raise RequestError(400, f"temperature: expected a number >= 0, got {temperature!r}")
    if not isinstance(seed, int):
      raise RequestError(400, f"seed: expected an integer, got {seed!r}")
    max_tokens = min(max_tokens, self.max_tokens)
    with self.lock:
      generated = sample_tokens(self.run, ids, max_new_tokens=max_tokens, temperature=float(temperature),
                                top_k=TOP_K, seed=seed)
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
        "model": self.name,
        "choices": [{"index": 0, "message": {"role": "assistant",
                                             "content": self.run.vocabulary.decode(generated)},
                     "finish_reason": "length" if len(generated) == max_tokens else "stop"}],
        "usage": {"prompt_tokens": len(ids), "completion_tokens": len(generated),
                  "total_tokens": len(ids) + len(generated)}}

  def warm_up(self) -> None:
    """Compile every sampling window a request can need, before the first request."""
    largest = self.max_prompt_tokens + self.max_tokens
    for window in range(WINDOW_MULTIPLE, largest + WINDOW_MULTIPLE, WINDOW_MULTIPLE):
      sample_tokens(self.run, [0] * (window - 1), max_new_tokens=1, temperature=0)


def _handler(model: ChatModel) -> type[http.server.BaseHTTPRequestHandler]:

  class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _send(self, status: int, payload: dict[str, Any]) -> None:
      body = json.dumps(payload, ensure_ascii=False).encode("utf-8")
      self.send_response(status)
      self.send_header("Content-Type", "application/json")
      self.send_header("Content-Length", str(len(body)))
      self.end_headers()
      self.wfile.write(body)

    def _error(self, status: int, message: str) -> None:
      kind = "invalid_request_error" if status < 500 else "server_error"
      self._send(status, {"error": {"message": message, "type": kind}})

    def do_GET(self) -> None:  # noqa: N802 - the http.server hook
      if self.path == "/health":
        self._send(200, {"status": "ok", "model": model.name, "step": model.run.step})
      elif self.path == "/v1/models":
        self._send(200, {"object": "list", "data": [{"id": model.name, "object": "model",
                                                     "owned_by": "xbook"}]})
      else:
        self._error(404, f"no such endpoint: GET {self.path}")

    def do_POST(self) -> None:  # noqa: N802 - the http.server hook
      body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
      if self.path != "/v1/chat/completions":
        self._error(404, f"no such endpoint: POST {self.path}")
        return
      try:
        self._send(200, model.complete(json.loads(body)))
      except json.JSONDecodeError as error:
        self._error(400, f"the request body is not JSON: {error}")
      except RequestError as error:
        self._error(error.status, str(error))
      except Exception as error:  # noqa: BLE001 - answered as a 500, the server goes on
        log.exception("request failed")
        self._error(500, f"{type(error).__name__}: {error}")

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the http.server signature
      log.debug("%s " + format, self.address_string(), *args)

  return Handler


def make_server(run_dir: str | os.PathLike[str], *, host: str = "127.0.0.1", port: int = 0,
                step: int | None = None, name: str | None = None, max_prompt_tokens: int = 1024,
                max_tokens: int = 256) -> http.server.ThreadingHTTPServer:
  """A server (not yet serving) over the run in `run_dir`, warmed up; `port` 0 picks a free port.

  Args:
    run_dir: a run directory written by `xbook train`.
    host: address to listen on.
    port: port to listen on (0: any free one; see `server.server_address`).
    step: checkpoint step (None: the latest).
    name: the served model name (None: `<run dir name>@<step>`).
    max_prompt_tokens: longer prompts keep their first tokens.
    max_tokens: the most tokens one answer may have (larger requests are clipped).
  """
  run = load_run(run_dir, step=step)
  model = ChatModel(run, name or f"{Path(run_dir).resolve().name}@{run.step}", max_prompt_tokens, max_tokens)
  model.warm_up()
  server = http.server.ThreadingHTTPServer((host, port), _handler(model))
  server.daemon_threads = True
  return server


def serve(run_dir: str | os.PathLike[str], **kwargs: Any) -> None:
  """Serve the run in `run_dir` until interrupted (arguments as `make_server`)."""
  server = make_server(run_dir, **kwargs)
  host, port = server.server_address[:2]
  print(f"{READY_LINE}http://{host}:{port}/v1", flush=True)
  try:
    server.serve_forever()
  except KeyboardInterrupt:
    pass
  finally:
    server.server_close()


@contextlib.contextmanager
def start_server_process(run_dir: str | os.PathLike[str], *, port: int = 0, args: tuple[str, ...] = (),
                         startup_timeout_s: float = 300.0) -> Iterator[tuple[subprocess.Popen, str]]:
  """Run `xbook serve --run_dir run_dir` on 127.0.0.1 in a child process until the block ends.

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
