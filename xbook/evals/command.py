"""`xbook eval`: the library behind the subcommand (xbook.cli only parses arguments and calls `run`)."""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any

from xbook.atomic import atomic_open

log = logging.getLogger(__name__)
DEFAULT_BASELINE = Path(__file__).resolve().parents[3] / "shared/corpus/gutenberg"


def _books_part(args: argparse.Namespace) -> dict[str, Any]:
  from xbook.evals.baseline import HumanBaseline
  from xbook.evals.evaluate import evaluate_books
  from xbook.evals.texts import load_books
  books = load_books(args.books)
  baseline_dir = Path(args.baseline or DEFAULT_BASELINE)
  exclude = {b.name for b in books} | {Path(b.source).stem for b in books}
  baseline = HumanBaseline.build(baseline_dir, exclude=exclude, split=args.baseline_split,
                                 limit=args.baseline_limit)
  return evaluate_books(books, baseline, str(baseline_dir))


def _not_built(part: str) -> None:
  raise SystemExit(f"xbook eval: {part} is not implemented yet (see issue 16); use --books for text metrics")


def _perplexity_part(args: argparse.Namespace) -> dict[str, Any]:
  try:
    from xbook.evals.perplexity import run_perplexity
  except ImportError:
    _not_built("--run_dir (held-out perplexity)")
  return run_perplexity(args.run_dir, scaffold_files=args.scaffolds, novels=args.heldout,
                        split=args.split, step=args.step, batch_size=args.batch_size)


def _judges_part(args: argparse.Namespace, out: Path) -> dict[str, Any]:
  try:
    from xbook.evals.judges import JudgeConfig, judge_systems
  except ImportError:
    _not_built("--judge (pairwise judges)")
  systems = dict(_system(s) for s in args.judge)
  config = JudgeConfig(base_url=args.judge_url, models=tuple(args.judge_model),
                       api_key_env=args.judge_api_key_env, samples=args.judge_samples,
                       max_concurrency=args.judge_concurrency)
  return judge_systems(systems, config, cache_path=out / "judge_cache.sqlite",
                       max_pairs=args.judge_max_pairs, seed=args.seed)


def _system(spec: str) -> tuple[str, str]:
  name, sep, path = spec.partition("=")
  if not sep or not name or not path:
    raise ValueError(f"--judge {spec!r}: expected NAME=PATH (a book.json, book.md or folder of books)")
  return name, path


def run(args: argparse.Namespace) -> int:
  """Evaluate what the arguments name into `--out` (eval.json, report.html); prints a summary."""
  from xbook.evals.report import write_report
  if not (args.books or args.run_dir or args.judge):
    raise SystemExit("xbook eval: nothing to evaluate; give --books PATH, --run_dir DIR or --judge NAME=PATH")
  out = Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  began = time.perf_counter()
  record: dict[str, Any] = {"schema": "xbook.eval/1", "books": {}, "metrics": {}}
  if args.books:
    record.update(_books_part(args))
  if args.run_dir:
    record["perplexity"] = _perplexity_part(args)
  if args.judge:
    record["judges"] = _judges_part(args, out)
  record["seconds"] = round(time.perf_counter() - began, 1)
  with atomic_open(out / "eval.json", "w") as f:
    json.dump(record, f, indent=1, ensure_ascii=False)
  report = write_report(record, out / "report.html")
  summary = {"eval_json": str(out / "eval.json"), "report": str(report), "books": list(record["books"]),
             "seconds": record["seconds"]}
  print(json.dumps(summary) if args.json else
        f"evaluated {len(record['books'])} book(s) in {record['seconds']} s: {out / 'eval.json'}, {report}")
  return 0
