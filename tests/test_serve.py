"""`xbook serve` answering the official `openai` client, on a tiny trained run, in a child process.

One server serves every test (module fixture); it waits `BATCH_WINDOW_MS` for more requests before each
batch, so that clients that ask at once are decoded together (checked with /health's batch counts).
Greedy answers are compared with `decode.generate` run in the test process on the same checkpoint.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import openai
import pytest

from xbook.infer import decode
from xbook.infer.generate import load_run, prompt_ids
from xbook.infer.serve import start_server_process

from tiny_runs import train_tiny

SEQ_LEN = 256
CONTEXT = 1024  # served beyond the trained length, so that a stream lasts long enough to be left
BATCH_WINDOW_MS = 300
SERVER_ARGS = ("--max_tokens", "1000", "--context_len", str(CONTEXT), "--batch_window_ms", str(BATCH_WINDOW_MS),
               "--sync_every", "4", "--max_batch", "8")
PROMPT = "A miser is visited by three ghosts on Christmas Eve."


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, scaffold_file, vocab_path):
  run = tmp_path_factory.mktemp("run")
  train_tiny(run, scaffold_file, vocab_path, steps=3, seq_len=SEQ_LEN)
  return run


@pytest.fixture(scope="module")
def server(run_dir):
  with start_server_process(run_dir, args=SERVER_ARGS) as (process, url):
    yield process, url


@pytest.fixture(scope="module")
def url(server):
  return server[1]


@pytest.fixture(scope="module")
def client(url):
  return openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def name(client):
  return client.models.list().data[0].id


@pytest.fixture(scope="module")
def run(run_dir):
  return load_run(run_dir)


def _health(url: str) -> dict:
  return httpx.get(url.removesuffix("/v1") + "/health", timeout=30).json()


def _greedy(run, ids: list[int], max_tokens: int, stop=(), stop_ids=None) -> decode.Completion:
  vocabulary = run.vocabulary
  stop_ids = [vocabulary.eos_id] if stop_ids is None else stop_ids
  [completion] = decode.generate(run.params, run.model.config, [ids], decode.GREEDY, max_tokens=max_tokens,
                                 stop=stop, stop_token_ids=stop_ids, decode=vocabulary.decode,
                                 vocab_size_limit=vocabulary.size)
  return completion


def test_completions_and_chat_equal_decode_generate(client, name, run):
  answer = client.completions.create(model=name, prompt=PROMPT, max_tokens=16, temperature=0)
  expected = _greedy(run, [run.vocabulary.bos_id, *run.vocabulary.encode(PROMPT)], 16)
  assert answer.object == "text_completion" and answer.model == name
  assert answer.choices[0].text == expected.text
  assert answer.choices[0].finish_reason == ("length" if expected.finish_reason == "length" else "stop")
  assert answer.usage.prompt_tokens == expected.prompt_tokens
  assert answer.usage.completion_tokens == len(expected.token_ids)
  assert answer.usage.total_tokens == answer.usage.prompt_tokens + answer.usage.completion_tokens

  messages = [{"role": "system", "content": "Plan a novel."}, {"role": "user", "content": PROMPT}]
  chat = client.chat.completions.create(model=name, messages=messages, max_tokens=12, temperature=0)
  ids = [run.vocabulary.bos_id, *prompt_ids(f"Plan a novel.\n\n{PROMPT}", run.vocabulary)]
  expected = _greedy(run, ids, 12)
  assert chat.object == "chat.completion" and chat.choices[0].message.role == "assistant"
  assert chat.choices[0].message.content == expected.text
  assert chat.usage.prompt_tokens == len(ids) and chat.usage.completion_tokens == len(expected.token_ids)


def test_streamed_chunks_concatenate_to_the_greedy_answer(client, name):
  whole = client.completions.create(model=name, prompt=PROMPT, max_tokens=40, temperature=0,
                                    extra_body={"ignore_eos": True})
  chunks = list(client.completions.create(model=name, prompt=PROMPT, max_tokens=40, temperature=0, stream=True,
                                          extra_body={"ignore_eos": True}))
  assert "".join(c.choices[0].text for c in chunks) == whole.choices[0].text
  assert len(chunks) > 2, "streamed every --sync_every tokens, not at the end"
  assert chunks[-1].choices[0].finish_reason == "length"

  messages = [{"role": "user", "content": PROMPT}]
  whole = client.chat.completions.create(model=name, messages=messages, max_tokens=20, temperature=0)
  stream = client.chat.completions.create(model=name, messages=messages, max_tokens=20, temperature=0,
                                          stream=True, stream_options={"include_usage": True})
  chunks = list(stream)
  assert chunks[0].choices[0].delta.role == "assistant"
  assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == whole.choices[0].message.content
  assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def _stop_string(run, ids: list[int]) -> str:
  """The text of 3 tokens of `ids` (a whole-character stretch, found first where it is)."""
  decode_ = run.vocabulary.decode
  for start in range(1, len(ids) - 3):
    head, stop = decode_(ids[:start]), decode_(ids[:start + 3])[len(decode_(ids[:start])):]
    if stop.strip() and "\ufffd" not in stop and decode_(ids).find(stop) == len(head):
      return stop
  pytest.skip(f"no stop string of 3 tokens in {decode_(ids)!r}")


def test_stop_strings_of_several_tokens_cut_the_answer(client, name, run):
  ids = [run.vocabulary.bos_id, *run.vocabulary.encode(PROMPT)]
  free = _greedy(run, ids, 32, stop_ids=())
  stop = _stop_string(run, free.token_ids)
  expected = free.text[:free.text.find(stop)]
  assert expected == _greedy(run, ids, 32, stop=[stop], stop_ids=()).text
  for stops in (stop, ["never in the answer", stop]):
    cut = client.completions.create(model=name, prompt=PROMPT, max_tokens=32, temperature=0, stop=stops,
                                    extra_body={"ignore_eos": True})
    assert cut.choices[0].text == expected and cut.choices[0].finish_reason == "stop"
  streamed = client.completions.create(model=name, prompt=PROMPT, max_tokens=32, temperature=0, stop=stop,
                                       stream=True, extra_body={"ignore_eos": True})
  assert "".join(c.choices[0].text for c in streamed) == expected


def test_clients_asking_at_once_are_decoded_together(client, name, url, run):
  prompts = [f"{PROMPT} Chapter {i}." for i in range(4)]
  answers: dict[int, str] = {}

  def ask(i: int) -> None:
    answers[i] = client.completions.create(model=name, prompt=prompts[i], max_tokens=10,
                                           temperature=0).choices[0].text

  before = _health(url)
  threads = [threading.Thread(target=ask, args=(i,)) for i in range(4)]
  for thread in threads:
    thread.start()
  for thread in threads:
    thread.join()
  after = _health(url)
  assert after["requests"] - before["requests"] == 4
  assert after["batching"] == "continuous" and after["max_batch_seen"] >= 2, (before, after)
  for i, prompt in enumerate(prompts):
    assert answers[i] == _greedy(run, [run.vocabulary.bos_id, *run.vocabulary.encode(prompt)], 10).text


@pytest.mark.parametrize("body, status, words", [
    (b"{not json", 400, "not valid JSON"),
    ({"prompt": PROMPT, "max_tokens": "ten"}, 400, "max_tokens: expected an integer"),
    ({"prompt": PROMPT, "temperature": "hot"}, 400, "temperature: expected a number"),
    ({"prompt": PROMPT, "temperature": -0.5}, 400, "temperature=-0.5 is out of range"),
    ({"prompt": PROMPT, "max_tokens": 0}, 400, "max_tokens=0 is out of range"),
    ({"prompt": PROMPT, "stop": 7}, 400, "stop: expected"),
    ({"prompt": ["a", "b"]}, 400, "prompt: expected a string"),
    ({"prompt": PROMPT, "model": "gpt-x"}, 404, "'gpt-x' is not served here"),
    ({"prompt": "ghost " * 3 * CONTEXT}, 400, f"the model's context is {CONTEXT} tokens"),
])
def test_bad_requests_get_a_4xx_and_the_server_goes_on(url, name, client, body, status, words):
  kwargs = {"content": body} if isinstance(body, bytes) else {"json": {"model": name} | body}
  answer = httpx.post(f"{url}/completions", timeout=30, **kwargs)
  assert answer.status_code == status
  error = answer.json()["error"]
  assert words in error["message"] and error["type"] == "invalid_request_error"
  assert client.completions.create(model=name, prompt=PROMPT, max_tokens=2, temperature=0).choices


def test_the_openai_client_raises_on_a_bad_request(client, name):
  with pytest.raises(openai.BadRequestError, match="temperature"):
    client.completions.create(model=name, prompt=PROMPT, temperature=-1)
  with pytest.raises(openai.NotFoundError, match="not served here"):
    client.chat.completions.create(model="gpt-x", messages=[{"role": "user", "content": "hi"}])


def test_a_client_leaving_mid_stream_frees_its_row(url, name, client):
  before = _health(url)
  body = {"model": name, "prompt": PROMPT, "max_tokens": 900, "temperature": 0, "stream": True,
          "ignore_eos": True}
  with httpx.stream("POST", f"{url}/completions", json=body, timeout=30) as answer:
    lines = answer.iter_lines()
    first = next(line for line in lines if line.startswith("data: "))
    assert json.loads(first.removeprefix("data: "))["choices"][0]["finish_reason"] is None
  deadline = time.monotonic() + 20
  while (health := _health(url))["cancelled"] == before["cancelled"] and time.monotonic() < deadline:
    time.sleep(0.05)
  assert health["cancelled"] == before["cancelled"] + 1, health
  assert client.completions.create(model=name, prompt=PROMPT, max_tokens=2, temperature=0).choices


def test_a_client_leaving_before_its_whole_answer_frees_its_row(url, name, client):
  """A request that is not streamed is cancelled too when its client disconnects while it is decoded."""
  before = _health(url)
  body = json.dumps({"model": name, "prompt": PROMPT, "max_tokens": 900, "temperature": 0,
                     "ignore_eos": True}).encode()
  host, port = url.removeprefix("http://").split("/")[0].split(":")
  with socket.create_connection((host, int(port)), timeout=30) as connection:
    connection.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
                       b"Content-Length: %d\r\n\r\n%s" % (host.encode(), len(body), body))
    deadline = time.monotonic() + 20
    while _health(url)["running"] == 0 and time.monotonic() < deadline:  # its batch is being decoded
      time.sleep(0.01)
  deadline = time.monotonic() + 20
  while (health := _health(url))["cancelled"] == before["cancelled"] and time.monotonic() < deadline:
    time.sleep(0.05)
  assert health["cancelled"] == before["cancelled"] + 1, health
  assert client.completions.create(model=name, prompt=PROMPT, max_tokens=2, temperature=0).choices


def test_32_concurrent_openai_clients_all_get_their_answers(client, name, run, url):
  """32 clients at once over 8 slots: each answer equals the request's greedy answer alone."""
  prompts = [f"{PROMPT} Chapter {i} of the book." for i in range(32)]
  answers: dict[int, str] = {}

  def ask(i: int) -> None:
    answers[i] = client.completions.create(model=name, prompt=prompts[i], max_tokens=8,
                                           temperature=0).choices[0].text

  threads = [threading.Thread(target=ask, args=(i,)) for i in range(32)]
  for thread in threads:
    thread.start()
  for thread in threads:
    thread.join()
  for i, prompt in enumerate(prompts):
    assert answers[i] == _greedy(run, [run.vocabulary.bos_id, *run.vocabulary.encode(prompt)], 8).text, i
  assert _health(url)["max_batch_seen"] >= 4


REGEX = r"[a-z]{3,8}( [a-z]{2,8}){2,4}\."


def test_structured_outputs_of_vllm_and_openai_fields_always_parse(url, name, client):
  regex_answers = []
  for seed in range(3):
    answer = httpx.post(f"{url}/completions", timeout=60, json={
        "model": name, "prompt": PROMPT, "max_tokens": 60, "temperature": 1.0, "seed": seed,
        "structured_outputs": {"regex": REGEX}}).json()
    regex_answers.append(answer["choices"][0]["text"])
  assert all(re.fullmatch(REGEX, text) for text in regex_answers), regex_answers
  choice = client.completions.create(model=name, prompt=PROMPT, max_tokens=10, temperature=1.0, seed=4,
                                     extra_body={"guided_choice": ["ghost", "miser", "bell"]})
  assert choice.choices[0].text in ("ghost", "miser", "bell")
  schema = {"type": "object", "properties": {"title": {"type": "string", "maxLength": 20},
                                             "chapters": {"type": "integer"}},
            "required": ["title", "chapters"], "additionalProperties": False}
  chat = client.chat.completions.create(
      model=name, messages=[{"role": "user", "content": PROMPT}], max_tokens=80, temperature=0.7, seed=1,
      response_format={"type": "json_schema", "json_schema": {"name": "book", "schema": schema}})
  parsed = json.loads(chat.choices[0].message.content)
  assert isinstance(parsed["chapters"], int) and len(parsed["title"]) <= 20


@pytest.mark.parametrize("body, words", [
    ({"structured_outputs": {"regex": "[a-"}}, "invalid grammar: regex"),
    ({"guided_grammar": "start: missing_rule"}, "invalid grammar: grammar"),
    ({"guided_json": "{not json"}, "invalid grammar: json"),
    ({"structured_outputs": {"regex": "a", "choice": ["b"]}}, "exactly one of"),
    ({"guided_regex": "a", "guided_choice": ["b"]}, "both constrain"),
    ({"logprobs": 3}, "logprobs: not supported"),
    ({"echo": True}, "echo: not supported"),
    ({"n": 2}, "only n=1"),
])
def test_invalid_grammars_and_unsupported_fields_get_a_400(url, name, body, words):
  answer = httpx.post(f"{url}/completions", timeout=30, json={"model": name, "prompt": PROMPT} | body)
  assert answer.status_code == 400, answer.text
  assert words in answer.json()["error"]["message"]


def test_metrics_parse_with_prometheus_client(url, client, name):
  from prometheus_client.parser import text_string_to_metric_families
  client.completions.create(model=name, prompt=PROMPT + " Again.", max_tokens=4, temperature=0)
  client.completions.create(model=name, prompt=PROMPT + " Again. And again.", max_tokens=4, temperature=0)
  answer = httpx.get(url.removesuffix("/v1") + "/metrics", timeout=30)
  assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/plain")
  families = {f.name: f for f in text_string_to_metric_families(answer.text)}
  for name_ in ("xbook_requests_running", "xbook_requests_waiting", "xbook_kv_cache_usage_ratio",
                "xbook_generation_tokens_per_second", "xbook_time_to_first_token_seconds",
                "xbook_prefix_cache_hits", "xbook_prefix_cache_reused_tokens", "xbook_generation_tokens"):
    assert name_ in families, sorted(families)
  value = {s.name: s.value for f in families.values() for s in f.samples}
  assert value["xbook_prefix_cache_hits_total"] >= 1 and value["xbook_prefix_cache_reused_tokens_total"] > 0
  assert value["xbook_time_to_first_token_seconds_count"] >= 2


def test_a_full_queue_is_answered_503_with_retry_after(run_dir):
  """One slot and one waiting place: a third request, while the first decodes and the second waits, is
  turned away with 503 and Retry-After; the first two are answered."""
  args = ("--max_tokens", "1000", "--context_len", str(CONTEXT), "--max_batch", "1", "--max_waiting", "1")
  with start_server_process(run_dir, args=args) as (_, url):
    body = {"prompt": PROMPT, "max_tokens": 900, "temperature": 0, "ignore_eos": True}
    results: dict[int, int] = {}

    def ask(i: int) -> None:
      results[i] = httpx.post(f"{url}/completions", json=body, timeout=120).status_code

    first = threading.Thread(target=ask, args=(0,))
    first.start()
    deadline = time.monotonic() + 30
    while _health(url)["running"] < 1 and time.monotonic() < deadline:
      time.sleep(0.01)
    second = threading.Thread(target=ask, args=(1,))
    second.start()
    while _health(url)["waiting"] < 1 and time.monotonic() < deadline:
      time.sleep(0.01)
    third = httpx.post(f"{url}/completions", json=body, timeout=30)
    assert third.status_code == 503 and third.headers["retry-after"] == "1", third.text
    assert "at capacity" in third.json()["error"]["message"]
    first.join()
    second.join()
    assert results == {0: 200, 1: 200}


def test_a_busy_port_is_reported_before_the_model_loads(url, run_dir):
  port = url.rsplit(":", 1)[1].split("/")[0]
  started = time.monotonic()
  result = subprocess.run([sys.executable, "-m", "xbook.cli", "serve", "--run_dir", str(run_dir),
                           "--port", port], capture_output=True, text=True, timeout=120)
  assert result.returncode == 2
  errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
  assert len(errors) == 1 and port in errors[0] and "--port" in errors[0], result.stderr
  assert "loaded" not in result.stderr, "the port is checked before the model loads"
  assert time.monotonic() - started < 60


def test_a_busy_port_is_reported_before_jax_is_imported(tmp_path):
  """`xbook serve` binds its port before it imports the server (and with it jax): a busy port costs a moment."""
  with socket.socket() as busy:
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    port = str(busy.getsockname()[1])
    code = ("import sys; from xbook.cli import main; "
            f"status = main(['serve', '--run_dir', {str(tmp_path / 'no_run')!r}, '--port', '{port}']); "
            "print(status, sorted(m for m in ('jax', 'numpy', 'xbook.infer.serve') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
  assert result.stdout.split() == ["2", "[]"], result.stdout + result.stderr
  assert f"cannot listen on 127.0.0.1:{port}" in result.stderr and "--port" in result.stderr


def test_sigterm_stops_the_server_cleanly(server):
  process, _ = server
  process.send_signal(signal.SIGTERM)
  assert process.wait(timeout=20) == 0
