"""`xbook eval`: the library behind the subcommand (xbook.cli only parses arguments and calls `run`)."""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any

from xbook.atomic import atomic_open
from xbook.evals.baseline import HumanBaseline
from xbook.evals.evaluate import evaluate_books
from xbook.evals.judges import JudgeConfig, judge_systems
from xbook.evals.texts import load_books

log = logging.getLogger(__name__)
DEFAULT_BASELINE = Path(__file__).resolve().parents[3] / "shared/corpus/gutenberg"


def _books_part(args: argparse.Namespace) -> dict[str, Any]:
  books = load_books(args.books)
  baseline_dir = Path(args.baseline or DEFAULT_BASELINE)
  exclude = {b.name for b in books} | {Path(b.source).stem for b in books}
  baseline = HumanBaseline.build(baseline_dir, exclude=exclude, split=args.baseline_split,
                                 limit=args.baseline_limit)
  return evaluate_books(books, baseline, str(baseline_dir))


def _perplexity_part(args: argparse.Namespace, mesh_config: Any) -> dict[str, Any]:
  from xbook.evals.perplexity import run_perplexity  # start-up: jax and the trainer (6 s) load only for --run_dir
  return run_perplexity(args.run_dir, scaffold_files=args.scaffolds, novels=args.heldout,
                        split=args.split, step=args.step, batch_size=args.batch_size, mesh_config=mesh_config)


def _judges_part(args: argparse.Namespace, out: Path) -> dict[str, Any]:
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


# What each part writes into --out: its record and its page, never another part's.
OUTPUTS = {"books": ("eval.json", "report.html"), "perplexity": ("perplexity.json", "perplexity.html"),
           "judges": ("judges.json", "judges.html")}
FLAGS = {"books": "--books", "perplexity": "--run_dir", "judges": "--judge"}


def parts(args: argparse.Namespace) -> list[str]:
  """The parts the arguments ask for, in OUTPUTS order."""
  asked = {"books": args.books, "perplexity": args.run_dir, "judges": args.judge}
  return [part for part in OUTPUTS if asked[part]]


def refuse_overwrite(out: Path, wanted: list[str], overwrite: bool) -> None:
  """Raise ValueError, before any work, when a file these parts write is in `out` already (an earlier
  evaluation's) and `overwrite` is not set. judge_cache.sqlite is resumable work: always reused."""
  if overwrite:
    return
  found = [out / name for part in wanted for name in OUTPUTS[part] if (out / name).exists()]
  if found:
    raise ValueError(f"--out {out}: {', '.join(str(f) for f in found)} exists already (an earlier `xbook eval`); "
                     "pass --overwrite to replace it, or choose another --out")


def _write_part(out: Path, part: str, record: dict[str, Any]) -> tuple[Path, Path]:
  """Write one part's record and its page; returns their paths."""
  from xbook.evals.report import write_report  # start-up: matplotlib (0.7 s) loads once a part is computed
  json_name, page_name = OUTPUTS[part]
  with atomic_open(out / json_name, "w") as f:
    json.dump(record, f, indent=1, ensure_ascii=False)
  return out / json_name, write_report(record, out / page_name)


def _record(part: str, args: argparse.Namespace, out: Path, mesh_config: Any) -> dict[str, Any]:
  began = time.perf_counter()
  if part == "books":
    record = _books_part(args)
  elif part == "perplexity":
    record = {"schema": "xbook.eval.perplexity/1", "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
              "perplexity": _perplexity_part(args, mesh_config)}
  else:
    record = {"schema": "xbook.eval.judges/1", "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
              "judges": _judges_part(args, out)}
  record["seconds"] = round(time.perf_counter() - began, 1)
  return record


def run(args: argparse.Namespace, mesh_config: Any = None) -> int:
  """Evaluate what the arguments name into `--out`, each part into its own files (OUTPUTS: books
  eval.json and report.html, a run's perplexity.json and perplexity.html, judges judges.json and
  judges.html), refusing to replace an earlier evaluation's files without --overwrite; prints a summary.
  `mesh_config` (xbook.train.mesh.MeshConfig): the mesh that scores --run_dir; None: one device."""
  wanted = parts(args)
  if not wanted:
    raise SystemExit("xbook eval: nothing to evaluate; give --books PATH, --run_dir DIR or --judge NAME=PATH")
  out = Path(args.out)
  if out.exists() and not out.is_dir():
    raise ValueError(f"--out {out}: a file, not a folder; name a folder for the evaluation's files")
  refuse_overwrite(out, wanted, getattr(args, "overwrite", False))
  out.mkdir(parents=True, exist_ok=True)
  summary: dict[str, Any] = {"books": [], "files": [], "seconds": 0.0}
  for part in wanted:
    record = _record(part, args, out, mesh_config)
    summary["files"] += [str(p) for p in _write_part(out, part, record)]
    summary["books"] += list(record.get("books", {}))
    summary["seconds"] = round(summary["seconds"] + record["seconds"], 1)
  if "books" in wanted:
    summary.update(eval_json=str(out / "eval.json"), report=str(out / "report.html"))
  print(json.dumps(summary) if args.json else
        f"evaluated {', '.join(FLAGS[p] for p in wanted)} in {summary['seconds']} s: {', '.join(summary['files'])}")
  return 0
