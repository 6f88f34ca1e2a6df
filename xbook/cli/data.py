"""`xbook data`: the trajectory examples of a run's data, shown (inspect) or built offline (cache)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from typing import NamedTuple

from xbook.cli.common import add_command, add_group, source_constant


def add_parser(subparsers) -> None:
  """The `data` group: inspect, cache."""
  data = add_group(subparsers, "data", "Trajectory examples from the seqio tasks.",
                   "xbook data inspect --scaffolds out/scaffolds.jsonl --vocab out/vocab.model")
  _add_inspect(data)
  _add_cache(data)


def _add_inspect(data) -> None:
  SPLITS = source_constant("xbook.books.splits", "SPLITS")
  p = add_command(
      data, "inspect", "Build the examples of one book view (seqio task) and show one segment by segment "
      "(stage by stage for the paper_stages plan order), or (--raw) print its text exactly.",
      "xbook data inspect --scaffolds out/scaffolds.jsonl --vocab out/vocab.model --seq_len 2048 \\\n"
      "  --task stages --index 3\n"
      "xbook data inspect --scaffolds out/paper.jsonl --vocab out/vocab.model --seq_len 32768 \\\n"
      "  --plan_order paper_stages --profile 24b_first_chapter --raw > example0.txt\n"
      "xbook data inspect --scaffolds out/scaffolds.jsonl --vocab ~/models/Mistral-Small-24B/tekken.json \\\n"
      "  --seq_len 8192 --json",
      _data_inspect)
  p.add_argument("--scaffolds", required=True, help="scaffold JSONL file(s) (glob pattern)")
  p.add_argument("--vocab", required=True,
                 help="xbook vocabulary (.model), or a pretrained model's tokenizer: tokenizer.json, "
                      "tekken.json, tokenizer.model, or its Hugging Face folder (markers as text tags)")
  p.add_argument("--seq_len", type=int, default=512)
  p.add_argument("--sequence_shards", type=int, default=1,
                 help="size of the sequence mesh axis (the length must divide by it)")
  p.add_argument("--split", default="train", choices=SPLITS)
  p.add_argument("--task", default="windows", choices=source_constant("xbook.data.spec", "VIEWS") + ("mixture",),
                 help="book view to show, or the mixture of all three (paper_stages: windows, full, mixture)")
  p.add_argument("--index", type=int, default=0, help="which example of the task to show")
  p.add_argument("--plan_order", "--layout", default="interleaved",
                 choices=source_constant("xbook.data.spec", "PLAN_ORDERS"),
                 help="order of plans and text in a trajectory (--layout: its old name); paper_stages: the "
                      "stage stream of the paper's released models "
                      "(records with a paper field, `xbook scaffold build --format paper`)")
  p.add_argument("--profile", default="14b_full_book", choices=source_constant("xbook.data.spec", "PROFILES"),
                 help="paper_stages: the released model's profile (24b: one example per book to the end of "
                      "the first chapter; 14b: the whole book, or one example per later chapter)")
  p.add_argument("--raw", action="store_true",
                 help="print only the example's text, decoded exactly as rendered (framing, markers)")
  p.add_argument("--repeat_weight", type=float, default=0.0,
                 help="windows: factor on the loss weight of plans repeated from an earlier window")
  p.add_argument("--max_chars", type=int, default=300, help="characters of decoded text shown per segment")
  p.add_argument("--json", action="store_true")


def _add_cache(data) -> None:
  SPLITS = source_constant("xbook.books.splits", "SPLITS")
  p = add_command(data, "cache", "Build the training windows of a gin config offline with Apache Beam into sharded "
                  "TFRecord files (seqio's cache layout), read by the same config with train.cache_dir. "
                  "train.vocab_path may be any vocabulary: an xbook .model, a tokenizer.json, tekken.json, "
                  "tokenizer.model or a model folder (local or gs://, readable by every worker).",
                  "xbook data cache --gin_file=configs/runs/demo.gin --out demo_out/cache --num_shards 2\n"
                  "xbook data cache --gin_file=configs/paper/mistral24b_131k.gin --out gs://BUCKET/xbook/cache \\\n"
                  "  --num_shards 64 -- --runner=DataflowRunner --project=P --region=R --temp_location=gs://BUCKET/tmp",
                  _data_cache, gin_modules=("xbook.train.trainer",))
  p.add_argument("--out", required=True, help="cache folder (local or gs://); the task goes in OUT/TASK")
  p.set_defaults(path_flags=("out",))
  p.add_argument("--num_shards", type=int, default=8,
                 help="TFRecord files per split: at least the number of hosts that will train")
  p.add_argument("--split", action="append", choices=SPLITS,
                 help="split to cache (repeatable; default: all)")
  p.add_argument("--overwrite", action="store_true",
                 help="replace a cache of the task in OUT that was built for another config (a cache of the "
                      "same config is kept as it is)")
  p.add_argument("--json", action="store_true")
  p.add_argument("beam_args", nargs="*", help="Beam pipeline options after -- (default: --runner=DirectRunner)")


def _data_cache(args: argparse.Namespace) -> int:
  from xbook.data import cache, tasks
  spec = _configured_data_spec()
  out = cache.cache_task(tasks.cached_task(spec), args.out, num_shards=args.num_shards, splits=args.split or None,
                         pipeline_args=args.beam_args or ("--runner=DirectRunner",), overwrite=args.overwrite)
  print(json.dumps({"task": spec.cache_name, "seq_len": spec.seq_len, "cache": out}) if args.json
        else f"{spec.cache_name} ({spec.seq_len} tokens per window) cached in {out}; train from it with the same "
             f"gin config and --gin.train.cache_dir=\"'{args.out}'\"")
  return 0


def _configured_data_spec():
  """The DataSpec `train` builds from the operative gin config (its windows, what `xbook data cache` caches)."""
  from xbook import paths
  from xbook.data import paper_stages
  from xbook.data.spec import DataSpec, TrajectoryFormat
  from xbook.data.vocab import load_vocabulary
  from xbook.train.trainer import train_setting
  return DataSpec.build(paths.absolute_all(train_setting("scaffold_files")),
                        load_vocabulary(paths.absolute(train_setting("vocab_path"))), train_setting("seq_len"),
                        trajectory_format=TrajectoryFormat(train_setting("plan_order"), paper_stages.configured_profile()),
                        loss_weights=train_setting("loss_weights"), repeat_weight=train_setting("repeat_weight"),
                        cache_name=train_setting("task_name"))


class _Counts(NamedTuple):
  """What `data inspect` counted over a task's examples, and the example it shows."""
  n_examples: int
  n_tokens: int
  weighted: float
  shown: dict | None  # example --index, None if the task has fewer examples
  repeat_shares: list[float]  # per example: the share of its plan tokens repeating an earlier segment


def _data_inspect(args: argparse.Namespace) -> int:
  spec = _inspected_spec(args)
  vocabulary = spec.vocabulary
  marker_ids = vocabulary.marker_ids()
  counts = _count_examples(args, _inspected_examples(args, spec), marker_ids)
  if counts.shown is None:
    raise SystemExit(f"error: task {args.task} has {counts.n_examples} examples of split {args.split!r} from "
                     f"{args.scaffolds} at --seq_len {args.seq_len}; --index {args.index} is out of range")
  if args.raw:
    real = counts.shown["decoder_segment_ids"] > 0
    sys.stdout.write(vocabulary.decode(counts.shown["decoder_target_tokens"][real].tolist()))
    return 0
  paper = spec.trajectory_format.is_paper
  paper_example = _paper_example(args, spec) if paper and args.task != "mixture" else None
  summary = _inspection_summary(args, vocabulary, counts, marker_ids, paper_example)
  if args.json:
    print(json.dumps(summary))
  else:
    _print_inspection(args, vocabulary, summary, counts, marker_ids, paper_example)
  return 0


def _inspected_spec(args: argparse.Namespace):
  """The DataSpec `data inspect` reads: the flags' vocabulary, files and format; --task's view, or (mixture)
  every view of the format at rate 1."""
  from xbook.data.spec import DataSpec, TrajectoryFormat
  from xbook.data.vocab import load_vocabulary
  trajectory_format = TrajectoryFormat(args.plan_order, args.profile)
  if args.task != "mixture" and args.task not in trajectory_format.views:
    raise SystemExit(f"error: --plan_order {args.plan_order} has the tasks {', '.join(trajectory_format.views)} "
                     "(and their mixture); the stages task is xbook's short one-step examples of its own plan orders")
  views = trajectory_format.views if args.task == "mixture" else (args.task,)
  return DataSpec.build(args.scaffolds, load_vocabulary(args.vocab), args.seq_len, trajectory_format=trajectory_format,
                        repeat_weight=args.repeat_weight, view_rates={view: 1.0 for view in views})


def _inspected_examples(args: argparse.Namespace, spec):
  """The examples `data inspect` shows, one at a time, as training converts them (the trainer's input
  pipeline, in book order, on one host)."""
  from xbook.train.input_pipeline import trajectory_batches
  batches = trajectory_batches(spec, split=args.split, global_batch_size=1, seed=0,
                               sequence_shards=args.sequence_shards, repeat=False, shuffle=False,
                               process_index=0, process_count=1)
  return ({name: value[0] for name, value in batch.items()} for batch in batches)


def _count_examples(args: argparse.Namespace, examples, marker_ids) -> _Counts:
  """Examples, real and weighted tokens and plan repeats of every one of `examples`; example --index kept."""
  import numpy as np
  from tqdm import tqdm
  from xbook.data import inspection
  n_examples, n_tokens, weighted, shown = 0, 0, 0.0, None
  repeat_shares = []
  for example in tqdm(examples, desc=f"data inspect: {args.task}", unit="example",
                      disable=args.json):
    if n_examples == args.index:
      shown = example
    n_examples += 1
    n_tokens += int(np.sum(example["decoder_segment_ids"] > 0))
    weighted += float(np.sum(example["decoder_loss_weights"]))
    repeated, plan_tokens = inspection.plan_repeats(example, marker_ids)
    repeat_shares.append(repeated / plan_tokens if plan_tokens else 0.0)
  return _Counts(n_examples, n_tokens, weighted, shown, repeat_shares)


def _inspection_summary(args: argparse.Namespace, vocabulary, counts: _Counts, marker_ids, paper_example) -> dict:
  """What `data inspect --json` prints: the vocabulary, the counts, example --index's features and segments."""
  import numpy as np
  from xbook.data import inspection, trajectory
  n_examples, n_tokens, weighted, shown, repeat_shares = counts
  vocab_summary = {"path": vocabulary.path, "size": vocabulary.size, "bos_id": vocabulary.bos_id,
                   "eos_id": vocabulary.eos_id, "pad_id": vocabulary.pad_id,
                   "marker_style": vocabulary.marker_style}
  summary = {"task": args.task, "vocab": vocab_summary, "examples": n_examples, "tokens": n_tokens,
             "weighted_tokens": weighted,
             "features": {k: list(v.shape) + [str(v.dtype)] for k, v in shown.items()},
             "kinds": list(trajectory.SEGMENT_KINDS), "index": args.index,
             "segments": [dataclasses.asdict(span) for span in inspection.example_spans(shown, marker_ids)],
             "tokens_per_kind": inspection.tokens_per_kind(shown),
             "plan_repeat_share": {"mean": float(np.mean(repeat_shares)), "max": float(np.max(repeat_shares)),
                                   "ngram": inspection.REPEAT_NGRAM}}
  if paper_example is not None:
    summary.update(plan_order=args.plan_order, profile=args.profile, stages=inspection.paper_stage_spans(paper_example),
                   dropped_tokens=paper_example.dropped_tokens,
                   dropped_chapters=[c + 1 for c in paper_example.dropped_chapters])
  return summary


def _print_inspection(args: argparse.Namespace, vocabulary, summary: dict, counts: _Counts, marker_ids,
                      paper_example) -> None:
  """`data inspect` without --json: the summary in lines, then example --index segment by segment."""
  from xbook.data import inspection
  n_examples, n_tokens, weighted, shown = counts.n_examples, counts.n_tokens, counts.weighted, counts.shown
  print(f"vocabulary: {vocabulary.path}: {vocabulary.size} ids, BOS {vocabulary.bos_id}, "
        f"EOS {vocabulary.eos_id}, pad {vocabulary.pad_id}, markers as {vocabulary.marker_style}")
  print(f"{args.task}: {n_examples} examples of {args.seq_len} tokens, {n_tokens} tokens, "
        f"{weighted:.0f} weighted")
  print(f"plan tokens repeating an earlier segment of their window ({inspection.REPEAT_NGRAM}-id runs): "
        f"{summary['plan_repeat_share']['mean']:.1%} on average, {summary['plan_repeat_share']['max']:.1%} "
        "at most")
  for name, spec in summary["features"].items():
    print(f"  {name}: {spec}")
  print(f"example {args.index}" + (f" ({args.profile}, stage by stage):" if paper_example else ":"))
  if paper_example is not None:
    print(inspection.render_paper_example(paper_example, vocabulary.decode, max_chars=args.max_chars))
  else:
    print(inspection.render_example(shown, vocabulary.decode, marker_ids=marker_ids,
                                    max_chars=args.max_chars))


def _paper_example(args: argparse.Namespace, spec):
  """Example `--index` of the paper_stages view, rebuilt in Python with its stages (the input pipeline,
  unshuffled, yields the records of a split in file order and each book's examples in order)."""
  from xbook.data import paper_stages, records
  from xbook.scaffold import scaffold_lines
  seen = 0
  for path in records.list_scaffold_files(list(spec.scaffold_files)):
    for _, record in scaffold_lines(path, records.open_text, validate=False):
      if record.get("split", "train") != args.split:
        continue
      examples = paper_stages.book_examples(record, spec.vocabulary.encode, profile=spec.trajectory_format.profile,
                                            length=spec.seq_len, view=args.task)
      if seen + len(examples) > args.index:
        return examples[args.index - seen]
      seen += len(examples)
  return None
