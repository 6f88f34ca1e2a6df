"""The `xbook` command: one subcommand per job, each a thin shell over the library.

Run `xbook --help` for the list and `xbook SUBCOMMAND --help` for each one's example.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
import textwrap
from typing import Callable, Sequence

from xbook import __version__
from xbook.gin_flags import parse_gin, split_gin_bindings

log = logging.getLogger("xbook")


def _quiet_tensorflow() -> None:
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  os.environ.setdefault("GRPC_VERBOSITY", "ERROR")


def _setup_logging() -> None:
  """xbook's own progress at INFO; libraries (orbax, absl, tensorflow) only when they warn."""
  logging.basicConfig(level=logging.WARNING, format="[xbook %(asctime)s] %(message)s", datefmt="%H:%M:%S")
  logging.getLogger("xbook").setLevel(logging.INFO)
  logging.getLogger("absl").setLevel(logging.WARNING)


def _add(subparsers, name: str, help_text: str, example: str, handler: Callable[[argparse.Namespace], int],
         gin_modules: Sequence[str] = ()) -> argparse.ArgumentParser:
  """Add a subcommand; `gin_modules` (imported before gin parses) makes it take gin flags."""
  epilog = "example:\n" + textwrap.indent(example.strip(), "  ")
  parser = subparsers.add_parser(name, help=help_text, description=help_text, epilog=epilog,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.set_defaults(handler=handler, gin_modules=tuple(gin_modules))
  if gin_modules:
    parser.add_argument("--gin_file", action="append", default=[],
                        help="gin config file (repeatable; resolved from the cwd or the repo root); "
                             "bind single values with --gin.NAME=VALUE")
  return parser


# ----------------------------------------------------------------------------------------------- vocab
def _vocab_train(args: argparse.Namespace) -> int:
  from xbook.data import vocab
  from xbook.scaffold import read_scaffolds
  records = list(read_scaffolds(args.scaffolds))
  path = vocab.train_vocab(records, args.out, vocab_size=args.vocab_size, model_type=args.model_type)
  processor = vocab.load_processor(path)
  print(json.dumps({"vocab": str(path), "pieces": processor.get_piece_size()}) if args.json
        else f"vocabulary: {path} ({processor.get_piece_size()} pieces)")
  return 0


# ------------------------------------------------------------------------------------------------ data
def _data_inspect(args: argparse.Namespace) -> int:
  import numpy as np
  from xbook.data import tasks, trajectory, vocab
  from xbook.train.input_pipeline import trajectory_batches
  tasks.register_windows_task("xbook_inspect", args.scaffolds, args.vocab)
  processor = vocab.load_processor(args.vocab)
  batches = trajectory_batches("xbook_inspect", split=args.split, global_batch_size=1,
                               seq_len=args.seq_len, length_multiple=args.length_multiple, seed=0,
                               repeat=False)
  n_windows, n_tokens, weighted = 0, 0, 0.0
  first = None
  for batch in batches:
    first = first or batch
    n_windows += 1
    n_tokens += int(np.sum(batch["decoder_segment_ids"] > 0))
    weighted += float(np.sum(batch["decoder_loss_weights"]))
  if first is None:
    raise SystemExit(f"error: no windows: no scaffold record with split {args.split!r} in {args.scaffolds}")
  summary = {"windows": n_windows, "tokens": n_tokens, "weighted_tokens": weighted,
             "features": {k: list(v.shape) + [str(v.dtype)] for k, v in first.items()},
             "kinds": list(trajectory.SEGMENT_KINDS)}
  if args.json:
    print(json.dumps(summary))
  else:
    print(f"{n_windows} windows of {args.seq_len} tokens, {n_tokens} tokens, {weighted:.0f} weighted")
    for name, spec in summary["features"].items():
      print(f"  {name}: {spec}")
    print("first window, decoded:\n" + processor.decode(first["decoder_target_tokens"][0].tolist())[:600])
  return 0


# ----------------------------------------------------------------------------------------------- train
def _train(args: argparse.Namespace) -> int:
  from xbook.train.trainer import train
  metrics = train(args.run_dir)
  print(json.dumps({"run_dir": args.run_dir, **metrics}) if args.json
        else f"run {args.run_dir}: last loss {metrics.get('loss', float('nan')):.4f}")
  return 0


# -------------------------------------------------------------------------------------------- generate
def _generate(args: argparse.Namespace) -> int:
  from xbook.infer import generate_passage, load_run
  run = load_run(args.run_dir, step=args.step)
  text = generate_passage(run, args.prompt, max_new_tokens=args.max_new_tokens,
                          temperature=args.temperature, top_k=args.top_k, seed=args.seed)
  print(json.dumps({"step": run.step, "prompt": args.prompt, "text": text}) if args.json
        else f"[step {run.step}] {args.prompt}\n---\n{text}")
  return 0


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="xbook", description="Train book-writing language models on human-authored novels.",
      epilog="example:\n  xbook train --gin_file=configs/runs/demo.gin --run_dir=runs/demo",
      formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--version", action="version", version=f"xbook {__version__}")
  commands = parser.add_subparsers(title="subcommands", metavar="SUBCOMMAND")

  vocab = commands.add_parser("vocab", help="SentencePiece vocabulary").add_subparsers(
      title="vocab subcommands", metavar="ACTION")
  p = _add(vocab, "train", "Train a SentencePiece vocabulary (markers as user-defined symbols) on scaffolds.",
           "xbook vocab train --scaffolds out/scaffolds.jsonl --out out/vocab.model --vocab_size 8000",
           _vocab_train)
  p.add_argument("--scaffolds", required=True, help="scaffold JSONL file")
  p.add_argument("--out", required=True, help="output .model path")
  p.add_argument("--vocab_size", type=int, default=8000)
  p.add_argument("--model_type", choices=("unigram", "bpe"), default="unigram")
  p.add_argument("--json", action="store_true", help="print a JSON summary")

  data = commands.add_parser("data", help="trajectory examples").add_subparsers(
      title="data subcommands", metavar="ACTION")
  p = _add(data, "inspect", "Build trajectory windows with the seqio task and summarize them.",
           "xbook data inspect --scaffolds out/scaffolds.jsonl --vocab out/vocab.model --seq_len 512",
           _data_inspect)
  p.add_argument("--scaffolds", required=True)
  p.add_argument("--vocab", required=True)
  p.add_argument("--seq_len", type=int, default=512)
  p.add_argument("--length_multiple", type=int, default=1, help="sequence-parallel degree")
  p.add_argument("--split", default="train", choices=("train", "validation", "test"))
  p.add_argument("--json", action="store_true")

  p = _add(commands, "train", "Train (or resume) a decoder on scaffold trajectories, configured by gin.",
           "xbook train --gin_file=configs/runs/demo.gin --run_dir=runs/demo --gin.train.steps=40",
           _train, gin_modules=("xbook.train.trainer",))
  p.add_argument("--run_dir", required=True, help="run directory (resumed if it has checkpoints)")
  p.add_argument("--json", action="store_true", help="print the last step's metrics as JSON")

  p = _add(commands, "generate", "Write a passage from a prompt with a trained run.",
           'xbook generate --run_dir=runs/demo --prompt "Write a ghost story set at Christmas."',
           _generate)
  p.add_argument("--run_dir", required=True)
  p.add_argument("--prompt", required=True)
  p.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
  p.add_argument("--max_new_tokens", type=int, default=128)
  p.add_argument("--temperature", type=float, default=0.8)
  p.add_argument("--top_k", type=int, default=40)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--json", action="store_true")
  return parser


def main(argv: Sequence[str] | None = None) -> int:
  argv, bindings = split_gin_bindings(sys.argv[1:] if argv is None else argv)
  parser = build_parser()
  args = parser.parse_args(argv)
  if not hasattr(args, "handler"):
    parser.print_help()
    return 2
  _quiet_tensorflow()
  _setup_logging()
  if args.gin_modules:
    for module in args.gin_modules:
      importlib.import_module(module)
    parse_gin(args.gin_file, bindings)
  elif bindings:
    parser.error("--gin.NAME=VALUE bindings are only accepted by gin-configured subcommands")
  return args.handler(args)


if __name__ == "__main__":
  sys.exit(main())
