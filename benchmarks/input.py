"""Input pipeline: seconds to the first batch of a fresh run and of runs resumed deep into training, and
batches per second after the first (the same as `xbook bench input`).

The scaffolds are those of real corpus novels, built with the offline extractive summarizer as the tests
build theirs, with a small SentencePiece vocabulary trained on them (both kept in --work_dir and reused),
or --scaffolds FILE with --vocab. Every record is read as split `train`, through the `windows` view.

Each figure comes from a fresh process (imports and JAX start-up are not counted; building the DataSpec,
which loads the vocabulary and validates the records, is, as `register_s`), through xbook.train.input_pipeline.trajectory_batches exactly as training calls it:
  fresh            start_batch 0: seconds to the first batch, then batches/s over --steady batches
  resume N         start_batch N (--resume, repeatable), in a process that knows no example count
  resume N, kept   start_batch N again, reading the example counts the run before kept in a folder
                   (`count_cache`)
A figure that takes longer than --timeout seconds is reported as timed out.

Example:
  .venv/bin/python benchmarks/input.py --seq_len 4096 --batch_size 8 --resume 1000 --resume 10000 --json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from xbook.host_env import describe_chipless_tpu_host

_REPO = Path(__file__).resolve().parents[1]
_DEFAULT_CORPUS = _REPO.parent / "shared/corpus/gutenberg"


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--corpus", default=os.environ.get("XBOOK_CORPUS") or str(_DEFAULT_CORPUS),
                      help="folder of Gutenberg .txt novels (default: $XBOOK_CORPUS, else "
                           "../shared/corpus/gutenberg beside the clone)")
  parser.add_argument("--books", type=int, default=16, help="novels of the corpus to use (default 16)")
  parser.add_argument("--scaffolds", default=None, help="a scaffold JSONL file to read instead of building one")
  parser.add_argument("--vocab", default=None, help="the vocabulary of --scaffolds (default: one of 1,024 pieces "
                                                    "trained on them, kept in --work_dir)")
  parser.add_argument("--work_dir", default=os.path.join(tempfile.gettempdir(), "xbook-bench-input"),
                      help="where built scaffolds, the vocabulary and count caches are kept")
  parser.add_argument("--seq_len", type=int, default=4096, help="tokens per window (default 4096)")
  parser.add_argument("--batch_size", type=int, default=8, help="global batch, one host here (default 8)")
  parser.add_argument("--resume", type=int, action="append", default=None,
                      help="start_batch of a resumed run (repeatable; default 1000 and 10000)")
  parser.add_argument("--steady", type=int, default=200, help="batches timed after the first (default 200)")
  parser.add_argument("--timeout", type=float, default=900, help="seconds allowed to each figure")
  parser.add_argument("--json", action="store_true", help="print one JSON object")
  parser.add_argument("--measure", default=None, help=argparse.SUPPRESS)  # a child process's one figure


def _inputs(args: argparse.Namespace) -> tuple[str, str]:
  """(scaffold file, vocabulary), built into --work_dir the first time."""
  if args.scaffolds:
    if args.vocab:
      return args.scaffolds, args.vocab
    from xbook.data.vocab import train_vocab
    from xbook.scaffold import read_scaffolds
    vocab = Path(args.work_dir) / f"vocab-{Path(args.scaffolds).stem}.model"
    if not vocab.is_file():
      train_vocab(list(read_scaffolds(args.scaffolds)), vocab, vocab_size=1024)
    return args.scaffolds, str(vocab)
  corpus = Path(args.corpus)
  novels = sorted(corpus.glob("*.txt"))[:args.books]
  if not novels:
    raise SystemExit(f"error: no .txt novels in {corpus} (--corpus, $XBOOK_CORPUS)")
  folder = Path(args.work_dir) / f"{len(novels)}-books"
  scaffolds, vocab = folder / "scaffolds.jsonl", folder / "vocab.model"
  if not (scaffolds.is_file() and vocab.is_file()):
    from xbook.books import load_book
    from xbook.data.vocab import train_vocab
    from xbook.scaffold import ExtractiveSummarizer, build_scaffold, write_scaffolds
    started = time.perf_counter()
    summarizer = ExtractiveSummarizer()
    records = [build_scaffold(load_book(path), summarizer, split="train") for path in novels]
    write_scaffolds(scaffolds, records)
    train_vocab(records, vocab, vocab_size=1024)
    print(f"built the scaffolds of {len(novels)} novels and a vocabulary in {folder} "
          f"({time.perf_counter() - started:.0f} s)", file=sys.stderr)
  return str(scaffolds), str(vocab)


def _measure(spec: dict) -> dict:
  """One figure, in this (fresh) process."""
  import jax
  from xbook.data.spec import DataSpec
  from xbook.data.vocab import load_vocabulary
  from xbook.train import input_pipeline

  jax.process_count()  # JAX's start-up is not the pipeline's
  started = time.perf_counter()
  data = DataSpec.build(spec["scaffolds"], load_vocabulary(spec["vocab"]), spec["seq_len"])
  registered = time.perf_counter()
  kwargs = {"count_cache": spec["count_cache"]} if spec.get("count_cache") else {}
  batches = input_pipeline.trajectory_batches(
      data, split="train", global_batch_size=spec["batch_size"], seed=0, start_batch=spec["start_batch"], **kwargs)
  first = next(batches)
  first_at = time.perf_counter()
  result = {"register_s": registered - started, "first_batch_s": first_at - registered,
            "rows": int(first["decoder_target_tokens"].shape[0]),
            "count_cache": True}
  if spec["steady"]:
    for _ in range(spec["steady"]):
      next(batches)
    result["batches_per_s"] = spec["steady"] / (time.perf_counter() - first_at)
  return result


def _run_child(spec: dict, timeout: float) -> dict:
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=os.pathsep.join(
      [str(_REPO)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
  try:
    done = subprocess.run([sys.executable, __file__, "--measure", json.dumps(spec)], env=env,
                          capture_output=True, text=True, timeout=timeout)
  except subprocess.TimeoutExpired:
    return {"timed_out": True, "timeout_s": timeout}
  if done.returncode:
    raise SystemExit(f"error: the measuring process failed:\n{done.stderr[-3000:]}")
  return json.loads(done.stdout.strip().splitlines()[-1])


def run(args: argparse.Namespace) -> int:
  if args.measure:
    print(json.dumps(_measure(json.loads(args.measure))))
    return 0
  scaffolds, vocab = _inputs(args)
  resumes = args.resume or [1000, 10000]
  base = {"scaffolds": scaffolds, "vocab": vocab, "seq_len": args.seq_len, "batch_size": args.batch_size}
  with open(scaffolds, "rb") as f:
    books = sum(1 for line in f if line.strip())
  figures: dict = {"books": books, "seq_len": args.seq_len, "batch_size": args.batch_size}
  figures["fresh"] = _run_child({**base, "start_batch": 0, "steady": args.steady}, args.timeout)
  for start in resumes:
    counts = tempfile.mkdtemp(prefix="counts-", dir=_ensure(args.work_dir))
    cold = _run_child({**base, "start_batch": start, "steady": 0, "count_cache": counts}, args.timeout)
    figures[f"resume_{start}"] = cold
    if cold.get("count_cache"):
      figures[f"resume_{start}_kept"] = _run_child(
          {**base, "start_batch": start, "steady": 0, "count_cache": counts}, args.timeout)
  if args.json:
    print(json.dumps(figures, indent=1))
    return 0
  print(f"input pipeline: {books} books, windows of {args.seq_len} tokens, batches of {args.batch_size}")
  for key, figure in figures.items():
    if not isinstance(figure, dict):
      continue
    name = key.replace("resume_", "resume at ").replace("_kept", ", kept")
    if figure.get("timed_out"):
      print(f"  {name:<24} over {figure['timeout_s']:.0f} s (timed out)")
      continue
    line = f"  {name:<24} first batch {figure['first_batch_s']:8.2f} s   (register {figure['register_s']:.2f} s)"
    if "batches_per_s" in figure:
      line += f"   steady {figure['batches_per_s']:.1f} batches/s"
    print(line)
  return 0


def _ensure(folder: str) -> str:
  os.makedirs(folder, exist_ok=True)
  return folder


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  add_arguments(parser)
  return run(parser.parse_args(argv))


if __name__ == "__main__":
  describe_chipless_tpu_host()  # an entry point: the environment jax starts in (xbook.host_env)
  sys.exit(main())
