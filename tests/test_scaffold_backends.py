"""The `openai` summarizer backend against a real `xbook serve` over a tiny trained run.

Requests go through a fault-injecting HTTP proxy on 127.0.0.1 (429 with Retry-After, 500, a stall past
the client's timeout, unusable answers) to a real `xbook serve` child process, which is also killed
and restarted in the middle of a build; a `xbook scaffold build` child process is killed with SIGKILL
and rerun. The proxy counts, per request body (one body per cache key), the answers the server gave.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import http.client
import http.server
import json
import logging
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Iterable

import httpx
import pytest
from test_scaffold import _one_book_per_stave
from test_train import _train

from xbook.books import load_book, split_for_author
from xbook.books.io import write_books
from xbook.infer.serve import start_server_process
from xbook.scaffold import ScaffoldTargets, SummaryCache, read_scaffolds
from xbook.scaffold.build import (ScaffoldBuildError, build_scaffolds, calls_to_build, format_reports,
                                  run_scaffold_build)
from xbook.scaffold.openai_backend import OpenAISummarizer, RetryPolicy, retry_after_seconds

# Short answers and prompts: every request fits one compiled 128-token window of the tiny model.
SERVER_ARGS = ("--max_prompt_tokens", "112", "--max_tokens", "16")
MAX_TOKENS = 16
TIMEOUT_S = 5.0
RETRY_AFTER_S = 1
STAVES = (1, 3, 4)  # 5, 4 and 2 scenes: 23 summaries in all


class Upstream:
  """`xbook serve` over a run, in a child process that can be killed and restarted on its port."""

  def __init__(self, run_dir: Path) -> None:
    self.run_dir = run_dir
    self.port = 0
    self._stack = contextlib.ExitStack()
    self.start()

  def start(self) -> None:
    process, url = self._stack.enter_context(
        start_server_process(self.run_dir, port=self.port, args=SERVER_ARGS))
    self.process, self.url = process, url
    self.port = int(url.rsplit(":", 1)[1].split("/")[0])
    self.model = httpx.get(f"{url}/models", timeout=30).json()["data"][0]["id"]

  def kill(self) -> None:
    self.process.kill()
    self.process.wait()
    self._stack.close()

  def close(self) -> None:
    self._stack.close()


class FaultProxy:
  """A real HTTP proxy in front of the upstream server that injects faults and counts answers.

  Attributes:
    faults: what to do with the next requests, one each: "429" (with Retry-After), "500", "stall"
      (answer nothing for longer than the client's timeout); none are forwarded.
    rewrite: given a forwarded request and the server's answer, the bytes to send instead (or None).
    answered: by request body hash, how many times the server answered it (200).
    authorizations: the Authorization headers received.
    events: (time, what, body hash) for every request ("request") and injected "429".
  """

  def __init__(self, upstream: Upstream) -> None:
    self.upstream = upstream
    self.faults: list[str] = []
    self.rewrite: Callable[[dict[str, Any], bytes], bytes | None] | None = None
    self.answered: Counter[str] = Counter()
    self.statuses: Counter[int] = Counter()
    self.authorizations: set[str | None] = set()
    self.in_flight = 0
    self.events: list[tuple[float, str, str]] = []
    self.lock = threading.Lock()
    self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
    self.server.daemon_threads = True
    self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
    threading.Thread(target=self.server.serve_forever, daemon=True).start()

  def wait_idle(self, timeout_s: float = 60.0) -> None:
    """Wait until every request received so far has been answered (or dropped)."""
    deadline = time.monotonic() + timeout_s
    while self.in_flight and time.monotonic() < deadline:
      time.sleep(0.01)
    assert not self.in_flight, f"{self.in_flight} requests still in flight after {timeout_s} s"

  def reset(self) -> None:
    with self.lock:
      self.faults, self.rewrite = [], None
      self.answered.clear()
      self.statuses.clear()
      self.events.clear()

  def _handler(self) -> type[http.server.BaseHTTPRequestHandler]:
    proxy = self

    class Handler(http.server.BaseHTTPRequestHandler):

      def do_POST(self) -> None:  # noqa: N802
        with proxy.lock:
          proxy.in_flight += 1
        try:
          self._answer(self.rfile.read(int(self.headers["Content-Length"])))
        except OSError:
          pass  # the client gave up (the stall) or was killed
        finally:
          with proxy.lock:
            proxy.in_flight -= 1

      def _answer(self, body: bytes) -> None:
        key = hashlib.sha256(body).hexdigest()
        with proxy.lock:
          proxy.authorizations.add(self.headers.get("Authorization"))
          proxy.events.append((time.monotonic(), "request", key))
          fault = proxy.faults.pop(0) if proxy.faults else None
          if fault == "429":
            proxy.events.append((time.monotonic(), "429", key))
        if fault == "stall":
          time.sleep(TIMEOUT_S + 0.5)
          self._reply(504, b"{}")
        elif fault == "429":
          self._reply(429, b'{"error": {"message": "slow down"}}', {"Retry-After": str(RETRY_AFTER_S)})
        elif fault == "500":
          self._reply(500, b'{"error": {"message": "injected"}}')
        else:
          self._forward(body, key)

      def _forward(self, body: bytes, key: str) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", proxy.upstream.port, timeout=60)
        try:
          connection.request("POST", self.path, body, {"Content-Type": "application/json"})
          response = connection.getresponse()
          status, answer = response.status, response.read()
        except OSError:
          self._reply(502, b'{"error": {"message": "upstream down"}}')
          return
        finally:
          connection.close()
        if status == 200:
          with proxy.lock:
            proxy.answered[key] += 1
          if proxy.rewrite and (rewritten := proxy.rewrite(json.loads(body), answer)) is not None:
            answer = rewritten
        self._reply(status, answer)

      def _reply(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        with proxy.lock:
          proxy.statuses[status] += 1
        self.send_response(status)
        for name, value in (headers or {}).items():
          self.send_header(name, value)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

      def log_message(self, *args: Any) -> None:
        pass

    return Handler


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, scaffold_file, vocab_path) -> Path:
  run_dir = tmp_path_factory.mktemp("run")
  _train(run_dir, scaffold_file, vocab_path, steps=3)
  return run_dir


@pytest.fixture(scope="module")
def upstream(tiny_run):
  server = Upstream(tiny_run)
  yield server
  server.close()


@pytest.fixture
def proxy(upstream):
  fault_proxy = FaultProxy(upstream)
  yield fault_proxy
  fault_proxy.server.shutdown()
  fault_proxy.server.server_close()


@pytest.fixture(scope="module")
def books(corpus_dir):
  staves = _one_book_per_stave(load_book(corpus_dir / "pg46.txt"))
  return [staves[i] for i in STAVES]


def _summarizer(url: str, model: str, **overrides: Any) -> OpenAISummarizer:
  settings = dict(base_url=url, model=model, max_tokens=MAX_TOKENS, tokens_per_word=1.0, max_concurrency=3,
                  timeout_s=TIMEOUT_S, retry=RetryPolicy(max_retries=100, base_delay_s=0.2, max_delay_s=1.0))
  return OpenAISummarizer(**{**settings, **overrides})


def _splits(books) -> dict[str, str]:
  return {b.id: split_for_author(b.author) for b in books}


def _stable(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
  """The records without their provenance (when and by which version they were built)."""
  return [{k: v for k, v in r.items() if k != "provenance"} for r in records]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, upstream, books):
  """An uninterrupted build, straight to the server: its records and the number of calls it made."""
  out = tmp_path_factory.mktemp("reference")
  with SummaryCache(out / "cache.sqlite") as cache:
    build = run_scaffold_build(books, _summarizer(upstream.url, upstream.model), out / "scaffolds.jsonl",
                               cache=cache, splits=_splits(books), concurrent_books=3, progress=False)
    calls = len(cache)
  assert [r.status for r in build.reports] == ["built"] * len(books), format_reports(build.reports)
  assert sum(r.calls for r in build.reports) == calls
  assert sum(r.calls + r.cache_hits for r in build.reports) == sum(calls_to_build(b) for b in books)
  return build.records, calls


def test_serve_speaks_the_openai_protocol(upstream):
  assert httpx.get(upstream.url.removesuffix("/v1") + "/health").json()["status"] == "ok"
  request = {"model": upstream.model, "max_tokens": 5, "temperature": 0,
             "messages": [{"role": "system", "content": "Plan a novel."},
                          {"role": "user", "content": "A miser meets three ghosts on Christmas Eve."}]}
  first = httpx.post(f"{upstream.url}/chat/completions", json=request, timeout=30).json()
  assert first == first | {"object": "chat.completion", "model": upstream.model}
  assert first["choices"][0]["message"]["role"] == "assistant"
  assert 1 <= first["usage"]["completion_tokens"] <= 5
  assert first["usage"]["total_tokens"] == first["usage"]["prompt_tokens"] + first["usage"]["completion_tokens"]
  again = httpx.post(f"{upstream.url}/chat/completions", json=request, timeout=30).json()
  assert again["choices"] == first["choices"], "greedy answers are deterministic"
  wrong_model = httpx.post(f"{upstream.url}/chat/completions", json=request | {"model": "gpt-x"}, timeout=30)
  assert wrong_model.status_code == 404 and "gpt-x" in wrong_model.json()["error"]["message"]
  no_messages = httpx.post(f"{upstream.url}/chat/completions", json={"max_tokens": 3}, timeout=30)
  assert no_messages.status_code == 400 and "messages" in no_messages.json()["error"]["message"]
  not_json = httpx.post(f"{upstream.url}/chat/completions", content=b"{oops", timeout=30)
  assert not_json.status_code == 400


def test_retry_after_reads_seconds_and_http_dates():
  assert retry_after_seconds("7") == 7.0 and retry_after_seconds(None) is None
  date = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 30))
  assert 25 < retry_after_seconds(date) <= 30
  assert retry_after_seconds("soon") is None


def test_faults_and_a_server_restart_mid_build_lose_nothing_and_repeat_no_call(
    tmp_path, upstream, proxy, books, reference):
  records, calls = reference
  proxy.faults = ["429", "500", "stall", "500", "429"]
  restarted, finished = threading.Event(), threading.Event()

  def kill_and_restart_mid_build() -> None:
    while sum(proxy.answered.values()) < calls // 3:
      if finished.is_set():
        return
      time.sleep(0.02)
    upstream.kill()
    upstream.start()
    restarted.set()

  restarter = threading.Thread(target=kill_and_restart_mid_build, daemon=True)
  restarter.start()
  with SummaryCache(tmp_path / "cache.sqlite") as cache:
    try:
      build = run_scaffold_build(books, _summarizer(proxy.url, upstream.model), tmp_path / "scaffolds.jsonl",
                                 cache=cache, splits=_splits(books), concurrent_books=3, progress=False)
    finally:
      finished.set()
    assert len(cache) == calls
  restarter.join(timeout=120)
  assert restarted.is_set()
  assert [r.status for r in build.reports] == ["built"] * len(books), format_reports(build.reports)
  assert _stable(build.records) == _stable(records), "faults must not change a single summary"
  assert list(read_scaffolds(tmp_path / "scaffolds.jsonl")) == build.records
  assert sum(proxy.answered.values()) == calls and max(proxy.answered.values()) == 1, "a call made twice"
  assert proxy.statuses[429] == 2 and proxy.statuses[500] == 2 and proxy.statuses[502] >= 1
  requests = [e for e in proxy.events if e[1] == "request"]
  assert len(requests) >= calls + 5 + proxy.statuses[502], "every fault was retried"
  for when, what, key in proxy.events:
    if what == "429":
      retried = min(t for t, w, k in requests if k == key and t > when)
      assert retried - when >= RETRY_AFTER_S, "Retry-After not respected"


def _cli_build(books_file: Path, out: Path, proxy: FaultProxy, model: str) -> list[str]:
  return [sys.executable, "-m", "xbook.cli", "scaffold", "build", "--books", str(books_file),
          "--out", str(out / "scaffolds.jsonl"), "--cache", str(out / "cache.sqlite"),
          "--backend", "openai", "--base_url", proxy.url, "--model", model,
          "--max_tokens", str(MAX_TOKENS), "--tokens_per_word", "1", "--timeout_s", str(TIMEOUT_S),
          "--concurrency", "3", "--concurrent_books", "1"]


def test_a_build_killed_with_sigkill_resumes_and_makes_only_the_missing_calls(
    tmp_path, upstream, proxy, books, reference):
  records, calls = reference
  write_books(tmp_path / "books.jsonl", books)
  out = tmp_path / "out"
  command = _cli_build(tmp_path / "books.jsonl", out, proxy, upstream.model)
  build = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  while sum(proxy.answered.values()) < calls // 2 and build.poll() is None:
    time.sleep(0.01)
  build.send_signal(signal.SIGKILL)
  output = build.communicate()[0]
  assert build.returncode == -signal.SIGKILL, output
  proxy.wait_idle()  # the server still answers what the killed build asked; those answers are lost
  killed_records = list(read_scaffolds(out / "scaffolds.jsonl")) if (out / "scaffolds.jsonl").exists() else []
  assert _stable(killed_records) == _stable(records[:len(killed_records)]), "finished books are on disk"
  with SummaryCache(out / "cache.sqlite") as cache:
    missing = calls - len(cache)
  assert 0 < missing < calls

  proxy.reset()
  rerun = subprocess.run(command, capture_output=True, text=True, timeout=300)
  assert rerun.returncode == 0, rerun.stdout + rerun.stderr
  assert _stable(read_scaffolds(out / "scaffolds.jsonl")) == _stable(records)
  assert sum(proxy.answered.values()) == missing and max(proxy.answered.values()) == 1
  kept = len(killed_records)
  assert f"{len(books) - kept} built, {kept} kept, 0 failed" in rerun.stdout

  proxy.reset()
  (out / "scaffolds.jsonl").unlink()
  again = subprocess.run(command, capture_output=True, text=True, timeout=300)
  assert again.returncode == 0 and f"{len(books)} built, 0 kept, 0 failed" in again.stdout, again.stderr
  assert sum(proxy.answered.values()) == 0, "a rebuild from a full cache makes no call"
  assert _stable(read_scaffolds(out / "scaffolds.jsonl")) == _stable(records)
  assert sorted(p.name for p in out.iterdir() if not p.name.startswith("cache.sqlite")) == ["scaffolds.jsonl"]


def test_unusable_answers_and_unbuildable_books_fail_alone(tmp_path, monkeypatch, corpus_dir, upstream, proxy,
                                                          books, reference):
  records, _ = reference
  monkeypatch.setenv("XBOOK_TEST_API_KEY", "sk-test-4242")
  staves = _one_book_per_stave(load_book(corpus_dir / "pg46.txt"))
  long_answer = json.dumps({"choices": [{"message": {"content": "word " * 5000}}]}).encode()
  answers = {"pg46-0": long_answer, "pg46-1": b"<html>Bad Gateway</html>", "pg46-2": b'{"choices": []}',
             "pg46-3": json.dumps({"choices": [{"message": {"content": " \n "}}]}).encode()}
  openings = {book_id: " ".join(staves[int(book_id[-1])].chapters[0].scenes[0].text.split()[:12])
              for book_id in answers}

  def unusable_answer(request: dict[str, Any], answer: bytes) -> bytes | None:
    content = " ".join(request["messages"][0]["content"].split())
    return next((answers[i] for i, opening in openings.items() if opening in content), None)

  proxy.rewrite = unusable_answer
  broken = dataclasses.replace(staves[4], id="no-chapters", chapters=())
  good = next(b for b in books if b.id == "pg46-4")
  chosen = staves[:4] + [broken, good]
  summarizer = _summarizer(proxy.url, upstream.model, api_key_env="XBOOK_TEST_API_KEY")
  with SummaryCache(tmp_path / "cache.sqlite") as cache:
    build = run_scaffold_build(chosen, summarizer, tmp_path / "scaffolds.jsonl", cache=cache,
                               splits=_splits(chosen), concurrent_books=3, progress=False)
  reasons = {r.book_id: r.reason for r in build.reports if r.status == "failed"}
  assert list(reasons) == ["pg46-0", "pg46-1", "pg46-2", "pg46-3", "no-chapters"], format_reports(build.reports)
  assert "more than its" in reasons["pg46-0"] and "(scene)" in reasons["pg46-0"]
  assert "not JSON" in reasons["pg46-1"] and proxy.url in reasons["pg46-1"]
  assert "has no choices" in reasons["pg46-2"]
  assert "empty answer" in reasons["pg46-3"]
  assert "has no chapters" in reasons["no-chapters"]
  assert proxy.authorizations == {"Bearer sk-test-4242"}
  reference_good = next(r for r in records if r["book"]["id"] == "pg46-4")
  assert _stable(build.records) == _stable([reference_good])
  assert list(read_scaffolds(tmp_path / "scaffolds.jsonl")) == build.records
  table = format_reports(build.reports)
  assert "1 built, 0 kept, 5 failed" in table and "has no choices" in table

  with SummaryCache(tmp_path / "cache.sqlite") as cache, pytest.raises(ScaffoldBuildError) as failed:
    build_scaffolds(chosen, summarizer, tmp_path / "scaffolds.jsonl", cache=cache, splits=_splits(chosen),
                    progress=False)
  assert "5 of 6 books failed" in str(failed.value)
  assert [r.status for r in failed.value.reports][-1] == "kept"


def test_an_endpoint_that_is_down_fails_each_book_naming_it(tmp_path, monkeypatch, caplog, books):
  monkeypatch.setenv("OPENAI_API_KEY", "sk-test-4242")
  caplog.set_level(logging.INFO, logger="xbook")
  with socket.socket() as probe:
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
  url = f"http://127.0.0.1:{port}/v1"
  summarizer = _summarizer(url, "any", retry=RetryPolicy(max_retries=2, base_delay_s=0.01))
  build = run_scaffold_build(books[:2], summarizer, tmp_path / "scaffolds.jsonl", progress=False,
                             targets=ScaffoldTargets(), concurrent_books=2)
  assert [r.status for r in build.reports] == ["failed", "failed"]
  for report in build.reports:
    assert f"{url}/chat/completions: gave up after 3 attempts; last: ConnectError" in report.reason
  assert build.records == [] and not (tmp_path / "scaffolds.jsonl").exists()
  assert "retry 2 of 2" in caplog.text and "sk-test-4242" not in caplog.text + format_reports(build.reports)

