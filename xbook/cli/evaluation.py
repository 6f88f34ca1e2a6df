"""`xbook eval`: text metrics of books against human novels, held-out perplexity of runs, pairwise judges."""

from __future__ import annotations

import argparse
import dataclasses

from xbook.cli.common import add_command, flag_mesh_config, source_constant


def add_parser(subparsers) -> None:
  """The `eval` subcommand."""
  SPLITS = source_constant("xbook.books.splits", "SPLITS")
  p = add_command(subparsers, "eval", "Evaluate books and runs into --out, each into its own files (books: eval.json "
                  "and report.html; --run_dir: perplexity.json and perplexity.html; --judge: judges.json and "
                  "judges.html; an earlier evaluation's files are replaced only with --overwrite): text metrics of "
                  "--books (repetition, lexical diversity, "
                  "over-represented phrases, sentence and paragraph shape, dialogue, readability, structure, plan "
                  "adherence) placed in the distribution of held-out human novels (--baseline); held-out perplexity "
                  "of --run_dir per segment kind, per token, word and byte; pairwise LLM judges (--judge NAME=PATH "
                  "with an OpenAI-compatible --judge_url) ranked by Bradley-Terry with bootstrap intervals.",
                  "xbook eval --books book/ --out eval/\n"
                  "xbook eval --run_dir runs/demo --scaffolds out/scaffolds.jsonl "
                  "--heldout ../shared/corpus/gutenberg/pg43.txt --out eval/\n"
                  "xbook eval --run_dir runs/demo --scaffolds out/scaffolds.jsonl --mesh data=2,tensor=4 --out eval/\n"
                  "OPENAI_API_KEY=... xbook eval --judge runA=runs/a/book --judge runB=runs/b/book \\\n"
                  "    --judge_url https://api.openai.com/v1 --judge_model gpt-4.1-mini --out eval/", _eval,
                  gin_modules=("xbook.train.mesh",))
  p.add_argument("--out", required=True, help="output folder (eval.json and report.html, perplexity.json "
                 "and perplexity.html, judges.json, judges.html and judge_cache.sqlite)")
  p.add_argument("--overwrite", action="store_true", help="replace the files an earlier evaluation of the "
                 "same kind wrote in --out (the judge cache is always reused)")
  p.add_argument("--books", default=None, help="book.json/book.md of `xbook write`, a .txt novel, books "
                 "JSONL of `xbook books segment`, or a folder of them")
  p.add_argument("--baseline", default=None, help="folder of human Gutenberg novels (default: "
                 "../shared/corpus/gutenberg); the evaluated books themselves are left out")
  p.add_argument("--baseline_split", default=None, choices=SPLITS,
                 help="only the baseline novels whose author falls in this split (default: all)")
  p.add_argument("--baseline_limit", type=int, default=None, help="at most this many baseline novels")
  p.add_argument("--run_dir", default=None, help="a run to score (held-out perplexity)")
  p.add_argument("--scaffolds", action="append", default=[], help="scaffold JSONL whose --split records "
                 "are scored per segment kind (repeatable)")
  p.add_argument("--heldout", action="append", default=[], help="plain held-out novels (.txt) scored as "
                 "prose only (repeatable)")
  p.add_argument("--split", default="test", help="scaffold split to score (default: test)")
  p.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
  p.add_argument("--batch_size", type=int, default=8, help="windows per perplexity batch (a multiple of the "
                 "mesh's data*fsdp)")
  p.add_argument("--mesh", default=None, metavar="AXIS=N,...",
                 help="score --run_dir with the trainer's eval step on a device mesh over every device, e.g. "
                      "--mesh data=2,tensor=4 (axes data, fsdp, sequence, tensor; unnamed ones 1, one may be -1), "
                      "parameters sharded by the trainer's logical axis rules; default: MeshConfig if gin binds "
                      "it (--gin.MeshConfig.tensor=4), else one device")
  p.add_argument("--judge", action="append", default=[], metavar="NAME=PATH",
                 help="a system's books for the pairwise judges (repeatable; at least two)")
  p.add_argument("--judge_url", default=None, help="OpenAI-compatible API root, e.g. http://127.0.0.1:8000/v1")
  p.add_argument("--judge_model", action="append", default=[], help="judge model (repeatable: several judges)")
  p.add_argument("--judge_api_key_env", default="OPENAI_API_KEY", help="env variable holding the API key")
  p.add_argument("--judge_samples", type=int, default=1, help="samples per ordered pair and judge")
  p.add_argument("--judge_concurrency", type=int, default=8, help="judge requests in flight at once")
  p.add_argument("--judge_max_pairs", type=int, default=None, help="at most this many chapter pairs per system pair")
  p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap")
  p.add_argument("--json", action="store_true", help="print the summary as JSON")


def _eval(args: argparse.Namespace) -> int:
  from xbook.evals.command import run
  return run(args, mesh_config=_eval_mesh_config(args) if args.run_dir else None)


def _eval_mesh_config(args: argparse.Namespace):
  """The mesh that scores `eval --run_dir`: --mesh, else MeshConfig as gin binds it (--gin_file,
  --gin.MeshConfig.tensor=2), else None (one device)."""
  if args.mesh is not None:
    return flag_mesh_config(args)
  import gin
  from xbook.gin_flags import configured
  from xbook.train.mesh import MeshConfig
  for field in dataclasses.fields(MeshConfig):
    try:
      gin.query_parameter(f"MeshConfig.{field.name}")
    except ValueError:  # not bound
      continue
    return configured(MeshConfig)
  return None
