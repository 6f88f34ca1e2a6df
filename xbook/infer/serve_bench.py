"""`xbook bench serve`: a serving benchmark in the manner of vLLM's (benchmarks/benchmark_serving.py there):
clients with mixed prompt and answer lengths against a real `xbook serve` of a run, once with continuous
batching and once with static batching, each server a child process on 127.0.0.1.

For each batching mode it prints:
  throughput          generated tokens per second with --clients clients, each sending its requests one
                      after another, and the same request set sent by one client at a time (the ratio is
                      what batching buys);
  ttft p50/p99        seconds from sending a request to its first streamed text;
  itl p50/p99         seconds between a request's streamed tokens after the first (its decode time over
                      its tokens; streamed text arrives every --sync_every tokens);
  short alone         the latency of a short request (--short_tokens) on an idle server, and
  short behind long   the same request sent while a long one (--long_tokens) decodes: with static
                      batching it waits for the long one to end; continuously batched it joins at once.

Prompts are cut from a real novel (--text, default a corpus novel) at the requested lengths; answers are
forced to their length (ignore_eos). Every request is greedy, so both modes do the same work.

Example:
  xbook bench serve --run_dir runs/demo --clients 16 --requests 4
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import time
from pathlib import Path
from typing import Any

import httpx

from xbook.infer.serve import start_server_process

_DEFAULT_TEXT = Path(__file__).resolve().parents[2].parent / "shared/corpus/gutenberg/pg46.txt"


def add_arguments(p: argparse.ArgumentParser) -> None:
  p.add_argument("--run_dir", required=True, help="the run to serve")
  p.add_argument("--clients", type=int, default=16, help="concurrent clients (default 16)")
  p.add_argument("--requests", type=int, default=4, help="requests per client, sent one after another (default 4)")
  p.add_argument("--prompt_words", default="20,400", help="min,max words of a prompt (default 20,400)")
  p.add_argument("--answer_tokens", default="16,160", help="min,max tokens of an answer (default 16,160)")
  p.add_argument("--short_tokens", type=int, default=8, help="tokens of the short request (default 8)")
  p.add_argument("--long_tokens", type=int, default=1500, help="tokens of the long request (default 1500)")
  p.add_argument("--max_batch", type=int, default=16, help="the servers' --max_batch (default 16)")
  p.add_argument("--context_len", type=int, default=2048, help="the servers' --context_len (default 2048)")
  p.add_argument("--modes", default="continuous,static", help="batching modes to measure (default both)")
  p.add_argument("--text", default=os.environ.get("XBOOK_BENCH_TEXT") or str(_DEFAULT_TEXT),
                 help="a plain-text novel the prompts are cut from")
  p.add_argument("--seed", type=int, default=0, help="seed of the prompt and answer lengths")
  p.add_argument("--json", action="store_true", help="print one JSON object")


def _range(text: str, flag: str) -> tuple[int, int]:
  low, _, high = text.partition(",")
  if not (low.isdigit() and high.isdigit() and 0 < int(low) <= int(high)):
    raise ValueError(f"{flag} {text!r}: expected MIN,MAX with 0 < MIN <= MAX, e.g. 20,400")
  return int(low), int(high)


def workload(args: argparse.Namespace) -> list[dict[str, Any]]:
  """The requests, one list per client in turn: a prompt cut from --text and a forced answer length."""
  words = Path(args.text).read_text(encoding="utf-8", errors="replace").split()
  rng = random.Random(args.seed)
  (w_low, w_high), (t_low, t_high) = _range(args.prompt_words, "--prompt_words"), _range(args.answer_tokens,
                                                                                         "--answer_tokens")
  requests = []
  for _ in range(args.clients * args.requests):
    n = rng.randint(w_low, w_high)
    start = rng.randrange(max(1, len(words) - n))
    requests.append({"prompt": " ".join(words[start:start + n]), "max_tokens": rng.randint(t_low, t_high)})
  return requests


async def _one(client: httpx.AsyncClient, url: str, request: dict[str, Any]) -> dict[str, float]:
  """Send one streamed greedy request; its latency, time to first text and tokens."""
  body = {**request, "temperature": 0, "stream": True, "ignore_eos": True,
          "stream_options": {"include_usage": True}}
  sent = time.perf_counter()
  first = last = None
  tokens = 0
  async with client.stream("POST", f"{url}/completions", json=body) as answer:
    if answer.status_code != 200:
      raise RuntimeError(f"the server answered {answer.status_code}: {(await answer.aread())[:200]!r}")
    async for line in answer.aiter_lines():
      if not line.startswith("data: ") or line == "data: [DONE]":
        continue
      chunk = json.loads(line[6:])
      if chunk.get("usage"):
        tokens = chunk["usage"]["completion_tokens"]
      elif chunk["choices"] and chunk["choices"][0].get("text"):
        last = time.perf_counter()
        first = first or last
  done = time.perf_counter()
  return {"latency": done - sent, "ttft": (first or done) - sent, "tokens": tokens,
          "itl": ((last or done) - (first or done)) / max(tokens - 1, 1)}


async def _clients(url: str, requests: list[dict[str, Any]], clients: int) -> tuple[list[dict[str, float]], float]:
  """Every request, sent by `clients` clients each in turn; (results, wall seconds)."""
  async with httpx.AsyncClient(timeout=600) as client:
    async def worker(share: list[dict[str, Any]]) -> list[dict[str, float]]:
      return [await _one(client, url, r) for r in share]
    started = time.perf_counter()
    shares = await asyncio.gather(*(worker(requests[i::clients]) for i in range(clients)))
    return [r for share in shares for r in share], time.perf_counter() - started


async def _short_behind_long(url: str, short: dict[str, Any], long: dict[str, Any]) -> tuple[float, float]:
  """(the short request's latency alone (best of 3), its latency sent while the long one decodes)."""
  async with httpx.AsyncClient(timeout=600) as client:
    alone = min([(await _one(client, url, short))["latency"] for _ in range(3)])
    long_task = asyncio.ensure_future(_one(client, url, long))
    await asyncio.sleep(0.5)  # the long request is admitted and decoding
    behind = (await _one(client, url, short))["latency"]
    await long_task
  return alone, behind


def _percentile(values: list[float], q: float) -> float:
  return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def measure(args: argparse.Namespace, mode: str, requests: list[dict[str, Any]]) -> dict[str, float]:
  """The figures of one batching mode, on a fresh server."""
  server_args = ("--batching", mode, "--max_batch", str(args.max_batch), "--context_len", str(args.context_len),
                 "--max_tokens", str(args.context_len // 2), "--max_prompt_tokens", str(args.context_len // 2))
  with start_server_process(args.run_dir, args=server_args) as (_, url):
    # Warm-up: the whole request set once, so that every program (prefill widths, cache lengths) is compiled
    # before timing, as a long-running server's are; the timed runs then measure serving, not XLA.
    asyncio.run(_clients(url, requests, args.clients))
    results, wall = asyncio.run(_clients(url, requests, args.clients))
    serial, serial_wall = asyncio.run(_clients(url, requests, 1))
    short = {"prompt": requests[0]["prompt"][:200], "max_tokens": args.short_tokens}
    long = {"prompt": requests[1]["prompt"][:200], "max_tokens": args.long_tokens}
    alone, behind = asyncio.run(_short_behind_long(url, short, long))
  tokens = sum(r["tokens"] for r in results)
  return {"throughput_tokens_per_s": tokens / wall, "one_client_tokens_per_s": sum(r["tokens"] for r in serial)
          / serial_wall, "ttft_p50_s": _percentile([r["ttft"] for r in results], 50),
          "ttft_p99_s": _percentile([r["ttft"] for r in results], 99),
          "itl_p50_s": _percentile([r["itl"] for r in results], 50),
          "itl_p99_s": _percentile([r["itl"] for r in results], 99),
          "short_alone_s": alone, "short_behind_long_s": behind, "requests": len(results)}


def run(args: argparse.Namespace) -> int:
  requests = workload(args)
  figures = {mode: measure(args, mode, requests) for mode in args.modes.split(",")}
  for values in figures.values():
    values["throughput_vs_one_client"] = values["throughput_tokens_per_s"] / values["one_client_tokens_per_s"]
    values["short_behind_long_vs_alone"] = values["short_behind_long_s"] / values["short_alone_s"]
  if args.json:
    print(json.dumps(figures))
    return 0
  print(f"{args.clients} clients x {args.requests} requests (prompts {args.prompt_words} words, answers "
        f"{args.answer_tokens} tokens), --max_batch {args.max_batch}, run {args.run_dir}")
  rows = [("throughput (tokens/s)", "throughput_tokens_per_s", "{:.0f}"),
          ("one client at a time (tokens/s)", "one_client_tokens_per_s", "{:.0f}"),
          ("  ratio", "throughput_vs_one_client", "{:.2f}x"),
          ("ttft p50 / p99 (s)", ("ttft_p50_s", "ttft_p99_s"), "{:.3f} / {:.3f}"),
          ("itl p50 / p99 (ms)", ("itl_p50_s", "itl_p99_s"), None),
          (f"short request ({args.short_tokens} tokens) alone (s)", "short_alone_s", "{:.3f}"),
          (f"  while a {args.long_tokens}-token one decodes (s)", "short_behind_long_s", "{:.3f}"),
          ("  ratio", "short_behind_long_vs_alone", "{:.1f}x")]
  modes = list(figures)
  print(f"{'':42}" + "".join(f"{m:>18}" for m in modes))
  for label, key, fmt in rows:
    cells = []
    for mode in modes:
      values = figures[mode]
      if isinstance(key, tuple) and fmt is None:
        cells.append(f"{1e3 * values[key[0]]:.2f} / {1e3 * values[key[1]]:.2f}")
      elif isinstance(key, tuple):
        cells.append(fmt.format(*(values[k] for k in key)))
      else:
        cells.append(fmt.format(values[key]))
    print(f"{label:42}" + "".join(f"{c:>18}" for c in cells))
  return 0
