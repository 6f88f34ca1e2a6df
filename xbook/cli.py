"""The `xbook` command: one subcommand per job, each a thin shell over the library.

Run `xbook --help` for the list and `xbook SUBCOMMAND --help` for each one's example.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import json
import logging
import os
import sys
import textwrap
from pathlib import Path
from typing import Callable, Sequence

from xbook import __version__, cli_checks, cli_errors, cli_gin
from xbook.gin_flags import split_gin_bindings

log = logging.getLogger("xbook")


def _source_constant(module: str, name: str) -> tuple[str, ...]:
  """A tuple constant of an xbook module, read from its source: the parser is built without importing
  the model (jax), so that `xbook --help` and gin mistakes answer in a second."""
  import ast
  path = Path(__file__).resolve().parent.joinpath(*module.split(".")[1:]).with_suffix(".py")
  for node in ast.parse(path.read_text(encoding="utf-8")).body:
    if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == name for t in node.targets):
      return tuple(ast.literal_eval(node.value))
  raise LookupError(f"{module}.{name} is not a literal constant")




def _group(subparsers, name: str, help_text: str, example: str):
  """A subcommand with actions of its own (e.g. `xbook books segment`)."""
  parser = subparsers.add_parser(name, help=help_text, description=help_text,
                                 epilog="example:\n  " + example,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
  return parser.add_subparsers(title=f"{name} subcommands", metavar="ACTION")


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


# ----------------------------------------------------------------------------------------------- books
_DOWNLOAD_CATALOG = "<download>"


def _ebook_numbers(text: str) -> list[int]:
  """Comma-separated ebook numbers, each optionally written pg<n> (an argparse type)."""
  try:
    return [int(item.strip().removeprefix("pg")) for item in text.split(",") if item.strip()]
  except ValueError:
    raise argparse.ArgumentTypeError(
        f"expected comma-separated ebook numbers such as 46,pg35, got {text!r}") from None


def _books_fetch(args: argparse.Namespace) -> int:
  from xbook.books import FetchError, Fetcher, download_catalog, fetch_books, read_catalog, select_ebooks
  fetcher = Fetcher(min_interval_s=args.min_interval_s)
  if args.ids is not None:
    if args.language or args.subject or args.bookshelf or args.limit is not None:
      raise SystemExit("error: --language, --subject, --bookshelf and --limit choose from a catalog; "
                       "use them with --catalog, not --ids")
    numbers = args.ids
  else:
    try:
      catalog = (download_catalog(args.cache, args.base_url, fetcher) if args.catalog == _DOWNLOAD_CATALOG
                 else Path(args.catalog))
      numbers = select_ebooks(read_catalog(catalog), languages=args.language, subjects=args.subject,
                              bookshelves=args.bookshelf, limit=args.limit)
    except (FetchError, FileNotFoundError, ValueError) as error:  # a BookError is a ValueError
      raise SystemExit(f"error: {error}")
    log.info("catalog %s: %d ebooks selected", catalog, len(numbers))
  paths = fetch_books(numbers, args.cache, base_url=args.base_url, fetcher=fetcher, keep_going=True)
  for path in paths:
    print(path)
  if len(paths) < len(numbers):
    print(f"error: {len(numbers) - len(paths)} of {len(numbers)} books could not be downloaded (see above); "
          f"run the command again to retry them", file=sys.stderr)
    return 1
  return 0


def _book_files(folder: str, ids: str | None) -> list[Path]:
  root = Path(folder)
  if not root.is_dir():
    raise SystemExit(f"error: --books {folder} is not a folder of Gutenberg .txt files")
  if ids:
    files = [root / f"{book_id.strip()}.txt" for book_id in ids.split(",") if book_id.strip()]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
      raise SystemExit(f"error: no such book file: {', '.join(missing)}")
    return files
  files = sorted(root.glob("*.txt"))
  if not files:
    raise SystemExit(f"error: {folder} holds no .txt files")
  return files


def _refuse_overwrite(path: str, overwrite: bool, flag: str = "--out") -> None:
  """A command's output file that exists and is not empty is replaced only with --overwrite."""
  if "://" in path or overwrite or not Path(path).exists():
    return
  if Path(path).is_dir():
    raise SystemExit(f"error: {flag} {path} is a folder: pass a file name")
  if Path(path).stat().st_size:
    raise SystemExit(f"error: {flag} {path} exists already: pass --overwrite to replace it, or another {flag}")


def _books_segment(args: argparse.Namespace) -> int:
  _refuse_overwrite(args.out, args.overwrite)
  from tqdm import tqdm
  from xbook.books import BookError, load_book_with_report
  from xbook.books.io import write_books
  files = _book_files(args.books, args.ids)
  books, skipped, too_much = [], [], []
  for path in tqdm(files, desc="segment", unit="book"):
    try:
      book, report = load_book_with_report(path, scene_target_words=args.scene_words)
    except BookError as error:
      skipped.append(str(error))
      continue
    books.append(book)
    if report.drops_too_much:
      too_much.append(f"{book.id} ({report.front_matter_words + report.back_matter_words:,} words, "
                      f"{report.dropped_share:.1%}; front: {report.prose.front_rule})")
    n_scenes = sum(len(c.scenes) for c in book.chapters)
    tqdm.write(f"{book.id:>8}  {book.title[:40]:<40} {len(book.chapters):>4} chapters {n_scenes:>5} scenes "
               f"{book.n_words:>8,} words{'  (chapters cut by length)' if book.chapters_by_length else ''}")
  if skipped:
    print(f"skipped {len(skipped)} of {len(files)} files:\n" + "\n".join(f"  {reason}" for reason in skipped),
          file=sys.stderr)
  if not books:
    raise SystemExit(f"error: no usable book among the {len(files)} files; {args.out} not written")
  _check_dropped(too_much, len(books), args)
  write_books(args.out, books)
  print(f"books: {args.out} ({len(books)} books)")
  return 0


def _check_dropped(too_much: list[str], n_books: int, args: argparse.Namespace) -> None:
  """Warn about (with --strict, refuse) books that drop more than MAX_DROPPED_SHARE as front/back matter."""
  if not too_much:
    return
  from xbook.books.load import MAX_DROPPED_SHARE
  summary = (f"{len(too_much)} of {n_books} books drop more than {MAX_DROPPED_SHARE:.0%} of their body as front "
             f"and back matter")
  if args.strict:
    raise SystemExit(f"error: {summary}: {'; '.join(too_much)}; check them with `xbook books inspect FILE` "
                     f"(story text taken as front matter?) or leave out --strict; {args.out} not written")
  print(f"warning: {summary} (check them with `xbook books inspect FILE`; --strict makes this an error):\n"
        + "\n".join(f"  {line}" for line in too_much), file=sys.stderr)


def _books_inspect(args: argparse.Namespace) -> int:
  path = Path(args.file)
  if path.is_file() and (path.suffix in (".jsonl", ".json") or path.open("rb").read(1) == b"{"):
    raise SystemExit(f"error: {args.file} is JSON (a books JSONL of `xbook books segment`?); `xbook books inspect` "
                     "reads one Gutenberg .txt novel, e.g. ../shared/corpus/gutenberg/pg46.txt")
  from xbook.books import BookError, load_book_with_report
  try:
    book, report = load_book_with_report(args.file)
  except (BookError, FileNotFoundError) as error:
    raise SystemExit(f"error: {error}")
  structure = "length_fallback" if book.chapters_by_length else "headings"
  chapters = [{"index": c.index, "path": list(c.path), "title": c.title, "kind": c.kind, "n_words": c.n_words,
               "n_scenes": len(c.scenes)} for c in book.chapters]
  if args.json:
    print(json.dumps({**book.metadata(), "encoding": report.encoding, "structure_source": structure,
                      "cleaning": dataclasses.asdict(report.cleaning), "prose": dataclasses.asdict(report.prose),
                      "dropped": {"front_matter_words": report.front_matter_words,
                                  "back_matter_words": report.back_matter_words,
                                  "share": round(report.dropped_share, 4),
                                  "too_much": report.drops_too_much},
                      "chapters": chapters},
                     ensure_ascii=False))
    return 0
  cleaning, prose = report.cleaning, report.prose
  print(f"{book.id}: {book.title}\n"
        f"  author     {book.author}\n"
        f"  language   {book.language}\n"
        f"  words      {book.n_words:,} in {len(chapters)} chapters\n"
        f"  structure  {structure}\n"
        f"  encoding   {report.encoding}\n"
        f"  cleaning   {'header found' if cleaning.header_found else 'no Gutenberg header (plain text)'}, "
        f"{'footer found' if cleaning.footer_found else 'no footer'}, {cleaning.fraction_removed:.1%} removed, "
        f"{cleaning.leftover_gutenberg_mentions} leftover Gutenberg mentions\n"
        f"  dropped    {report.front_matter_words:,} words front matter, {report.back_matter_words:,} "
        f"back matter ({report.dropped_share:.2%} of the body"
        f"{'; TOO MUCH: check for story text taken as front/back matter' if report.drops_too_much else ''})\n"
        f"  front      {prose.front_rule}\n"
        f"  paragraphs {prose.paragraphs:,} ({prose.prose_paragraphs:,} unwrapped at width {prose.wrap_width}, "
        f"{prose.lines_joined:,} line breaks joined; {prose.kept_line_paragraphs:,} keep their lines)\n"
        f"  markup     {prose.italic_spans:,} _italic_ spans, {prose.illustrations_removed} illustrations "
        f"removed, {prose.footnote_bodies_removed} footnotes and {prose.footnote_anchors_removed} anchors "
        f"removed ({prose.footnote_words + prose.illustration_words} words), "
        f"{prose.dashes_normalised} dashes normalised\n"
        f"  chapters   (index, words, scenes, kind, path: parent headings / title)")
  for c in chapters:
    print(f"  {c['index']:>4} {c['n_words']:>8,} words {c['n_scenes']:>3} scenes  {c['kind']:<9} "
          f"{' / '.join(c['path']) or '(untitled: cut by length)'}")
  return 0


# -------------------------------------------------------------------------------------------- scaffold
def _scaffold_build(args: argparse.Namespace) -> int:
  args.cache = args.cache or str(Path(args.out).parent / "summaries.sqlite")
  if Path(args.cache).is_dir():
    raise SystemExit(f"error: --cache {args.cache} is a folder: pass the SQLite file that keeps the summaries, "
                     "e.g. out/summaries.sqlite")
  from xbook.books import split_for_author
  from xbook.books.io import read_books
  from xbook.scaffold import ExtractiveSummarizer, SummaryCache
  from xbook.gin_flags import configured
  from xbook.scaffold.build import ScaffoldTargets, format_reports, run_scaffold_build
  books = list(read_books(args.books))
  splits = {book.id: split_for_author(book.author) for book in books}
  for book in books:
    log.info("%s (%s): %s split", book.id, book.author, splits[book.id])
  with contextlib.ExitStack() as stack:
    if args.backend == "extractive":
      summarizer = ExtractiveSummarizer()
    else:
      summarizer = _openai_summarizer(args, stack)
    cache = stack.enter_context(SummaryCache(args.cache))
    build = run_scaffold_build(books, summarizer, out_path=args.out, cache=cache, splits=splits,
                               targets=configured(ScaffoldTargets), concurrent_books=args.concurrent_books,
                               plan_format=args.format)
    print(format_reports(build.reports, build.seconds))
    print(f"scaffolds: {args.out} ({len(build.records)} records); summary cache {args.cache}: "
          f"{cache.hits} hits, {cache.misses} misses")
  return 1 if any(r.status == "failed" for r in build.reports) else 0


def _openai_summarizer(args: argparse.Namespace, stack: contextlib.ExitStack):
  """The `openai` backend at --base_url, or (`--backend xbook`) at an `xbook serve` child of --run_dir."""
  import httpx
  from xbook.scaffold.openai_backend import OpenAISummarizer, RetryPolicy
  name, base_url, model = args.backend, args.base_url, args.model
  if args.backend == "xbook":
    if not args.run_dir:
      raise SystemExit("error: --backend xbook needs --run_dir (a run directory from `xbook train`)")
    from xbook.infer.serve import start_server_process
    server = start_server_process(args.run_dir, args=("--max_tokens", str(args.max_tokens)))
    _, base_url = stack.enter_context(server)
    model = httpx.get(f"{base_url}/models", timeout=30).json()["data"][0]["id"]
  elif not (args.base_url and args.model):
    raise SystemExit("error: --backend openai needs --base_url (e.g. http://127.0.0.1:8000/v1) and --model")
  return OpenAISummarizer(
      base_url=base_url, model=model, name=name, prompt_version=args.prompt_version,
      temperature=args.temperature, max_tokens=args.max_tokens, tokens_per_word=args.tokens_per_word,
      seed=args.seed, api_key_env=args.api_key_env, max_concurrency=args.concurrency,
      timeout_s=args.timeout_s, retry=RetryPolicy(max_retries=args.max_retries))


def _scaffold_show(args: argparse.Namespace) -> int:
  from xbook.scaffold import read_scaffolds
  records = [r for r in read_scaffolds(args.file) if args.book in (None, r["book"]["id"])]
  if not records:
    raise SystemExit(f"error: no scaffold for book {args.book!r} in {args.file}")
  record = records[0]
  if args.profile:
    from xbook.scaffold import stage_protocol
    try:
      sys.stdout.write(stage_protocol.render(record, args.profile))
    except ValueError as error:
      raise SystemExit(f"error: {error}")
    return 0
  if args.json:
    print(json.dumps(record, ensure_ascii=False))
    return 0
  print(f"{record['book']['id']}: {record['book']['title']} ({record['split']})")
  for level in ("prompt", "premise", "synopsis"):
    print(f"\n{level.upper()}\n" + textwrap.fill(record[level], 100))
  for field in ("characters", "settings"):
    print(f"\n{field.upper()}")
    for entity in record[field]:
      aliases = f" (also {', '.join(entity['aliases'])})" if entity["aliases"] else ""
      print(f"  {entity['name']}{aliases}, {entity['role']}: {entity['description']}")
  for chapter in record["chapters"]:
    print(f"\n[{chapter['index'] + 1}] {chapter['title']} ({len(chapter['scenes'])} scenes)\n"
          + textwrap.fill(chapter["summary"], 100, initial_indent="  ", subsequent_indent="  "))
  if "paper" in record:
    paper = record["paper"]
    problems = paper["checks"]["format_problems"]
    print(f"\nPAPER FORMAT ({paper['builder']['method']}, {paper['builder']['version']}): "
          f"{len(paper['arcs'])} arcs, {sum(len(c['scenes']) for c in paper['chapters'])} scenes, "
          f"{len(problems)} format problems; print its stream with --profile 14b_full_book")
    for problem in problems[:10]:
      print(f"  {problem}")
  return 0


def _scaffold_import(args: argparse.Namespace) -> int:
  from xbook.scaffold import write_scaffolds
  from xbook.scaffold.longpage import import_longpage
  _refuse_overwrite(args.out, args.overwrite)
  try:
    records, report = import_longpage(args.longpage, limit=args.limit)
  except (OSError, ValueError) as error:
    raise SystemExit(f"error: {args.longpage}: {error}")
  if records:
    write_scaffolds(args.out, records)
  if args.json:
    print(json.dumps({"rows": report.rows, "records": report.records, "out": args.out if records else None,
                      "failed": [{"row": row, "reason": reason} for row, reason in report.failed],
                      "unmapped": dict(report.unmapped), "derived": dict(report.derived)}))
  else:
    print(report.format())
    print(f"scaffolds: {args.out} ({len(records)} records)" if records else
          f"error: no row of {args.longpage} made a record; {args.out} not written")
  return 0 if records and not report.failed else 1


def _scaffold_tfds(args: argparse.Namespace) -> int:
  from xbook.scaffold.tfds_builder import prepare
  builder = prepare(args.manual_dir, args.data_dir, args.beam_args or ("--runner=DirectRunner",))
  for name, split in builder.info.splits.items():
    print(f"{name}: {split.num_examples} books in {builder.data_dir}")
  return 0


# ----------------------------------------------------------------------------------------------- vocab
def _vocab_train(args: argparse.Namespace) -> int:
  _refuse_overwrite(args.out, args.overwrite)
  from xbook.data import vocab
  from xbook.scaffold import read_scaffolds
  records = list(read_scaffolds(args.scaffolds))
  path = vocab.train_vocab(records, args.out, vocab_size=args.vocab_size, model_type=args.model_type)
  size = vocab.load_vocabulary(path).size
  n_train = sum(r.get("split", "train") == "train" for r in records)
  print(json.dumps({"vocab": str(path), "pieces": size, "asked": args.vocab_size, "train_books": n_train})
        if args.json else f"vocabulary: {path} ({size} pieces, from the {n_train} books of split train)")
  if size < args.vocab_size:
    print(f"note: {size} pieces, not the {args.vocab_size} asked for: the text of {n_train} train book(s) "
          f"holds no more pieces worth a vocabulary entry (SentencePiece treats --vocab_size as an upper "
          f"bound). Train on more books for a bigger vocabulary; DecoderConfig.vocab_size needs at least {size}",
          file=sys.stderr)
  return 0


# ------------------------------------------------------------------------------------------------ data
def _data_cache(args: argparse.Namespace) -> int:
  from xbook.data import cache, paper_stages, tasks, trajectory
  from xbook.train.trainer import train_setting

  task_name, seq_len, plan_order = train_setting("task_name"), train_setting("seq_len"), train_setting("plan_order")
  task = tasks.register_task(
      task_name, "windows", train_setting("scaffold_files"), train_setting("vocab_path"),
      plan_order=plan_order, loss_weights=train_setting("loss_weights"),
      profile=paper_stages.configured_profile() if plan_order == trajectory.PAPER_STAGES else None,
      repeat_weight=train_setting("repeat_weight"), cached_length=seq_len)
  out = cache.cache_task(task, args.out, num_shards=args.num_shards, splits=args.split or None,
                         pipeline_args=args.beam_args or ("--runner=DirectRunner",), overwrite=args.overwrite)
  print(json.dumps({"task": task_name, "seq_len": seq_len, "cache": out}) if args.json
        else f"{task_name} ({seq_len} tokens per window) cached in {out}; train from it with the same "
             f"gin config and --gin.train.cache_dir=\"'{args.out}'\"")
  return 0


def _data_inspect(args: argparse.Namespace) -> int:
  import numpy as np
  import seqio
  from tqdm import tqdm
  from xbook.data import inspection, tasks, trajectory, vocab
  from xbook.data.feature_converter import TrajectoryFeatureConverter, task_feature_lengths
  vocabulary = vocab.load_vocabulary(args.vocab)
  paper = args.plan_order == trajectory.PAPER_STAGES
  if paper and args.task == "stages":
    raise SystemExit(f"error: --plan_order {args.plan_order} has the tasks windows and full (and their mixture); "
                     "the stages task is xbook's short one-step examples of its own plan orders")
  mixture = tasks.register_mixture("xbook_inspect", args.scaffolds, vocabulary,
                                   plan_order=args.plan_order, repeat_weight=args.repeat_weight,
                                   **({"profile": args.profile} if paper else {}))
  task_name = mixture.name if args.task == "mixture" else f"xbook_inspect_{args.task}"
  converter = TrajectoryFeatureConverter(bos_id=vocabulary.bos_id, length_multiple=args.sequence_shards)
  ds = seqio.get_dataset(task_name, task_feature_lengths=task_feature_lengths(args.seq_len),
                         dataset_split=args.split, shuffle=False, num_epochs=1, use_cached=False,
                         feature_converter=converter)
  n_examples, n_tokens, weighted, shown = 0, 0, 0.0, None
  marker_ids = vocabulary.marker_ids()
  repeat_shares = []
  for example in tqdm(ds.as_numpy_iterator(), desc=f"data inspect: {args.task}", unit="example",
                      disable=args.json):
    if n_examples == args.index:
      shown = example
    n_examples += 1
    n_tokens += int(np.sum(example["decoder_segment_ids"] > 0))
    weighted += float(np.sum(example["decoder_loss_weights"]))
    repeated, plan_tokens = inspection.plan_repeats(example, marker_ids)
    repeat_shares.append(repeated / plan_tokens if plan_tokens else 0.0)
  if shown is None:
    raise SystemExit(f"error: task {args.task} has {n_examples} examples of split {args.split!r} from "
                     f"{args.scaffolds} at --seq_len {args.seq_len}; --index {args.index} is out of range")
  if args.raw:
    real = shown["decoder_segment_ids"] > 0
    sys.stdout.write(vocabulary.decode(shown["decoder_target_tokens"][real].tolist()))
    return 0
  paper_example = _paper_example(args, vocabulary) if paper and args.task != "mixture" else None
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
  if args.json:
    print(json.dumps(summary))
  else:
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
  return 0


def _paper_example(args: argparse.Namespace, vocabulary):
  """Example `--index` of the paper_stages task, rebuilt in Python with its stages (the seqio task
  yields the records of a split in file order and each book's examples in order)."""
  import glob
  from xbook.data import paper_stages
  from xbook.scaffold import read_scaffolds
  seen = 0
  for path in sorted(glob.glob(args.scaffolds)) or [args.scaffolds]:
    for record in read_scaffolds(path):
      if record["split"] != args.split:
        continue
      examples = paper_stages.book_examples(record, vocabulary.encode, profile=args.profile, length=args.seq_len,
                                            view=args.task)
      if seen + len(examples) > args.index:
        return examples[args.index - seen]
      seen += len(examples)
  return None


# --------------------------------------------------------------------------------------------- weights
def _weights_import(args: argparse.Namespace) -> int:
  if args.adapter is not None:
    return _adapter_import(args)
  if args.hf is None:
    raise SystemExit("error: xbook weights import: give --hf HF_DIR (a Hugging Face model folder), or --adapter "
                     "PEFT_DIR with --base DIR (a peft adapter on imported weights)")
  hf = Path(args.hf)
  if "://" not in args.hf and not (hf / "config.json").is_file():
    what = "is not a folder" if not hf.is_dir() else "has no config.json"
    raise FileNotFoundError(f"--hf {args.hf} {what}: pass a Hugging Face model folder with config.json and "
                            "model.safetensors (or its shards), e.g. from `huggingface-cli download MODEL "
                            "--local-dir DIR`")
  from xbook.data import vocab
  from xbook.model.hf import import_hf_checkpoint
  config = import_hf_checkpoint(args.hf, args.out)
  # The model's own tokenizer goes beside its weights, so that `train.vocab_path` and
  # `train.init_from` can name the same folder.
  try:
    vocabulary = vocab.load_vocabulary(args.hf)
  except FileNotFoundError:
    tokenizer = "no tokenizer files found (pass train.vocab_path yourself)"
  else:
    tokenizer = (f"tokenizer {Path(vocabulary.save(args.out)).name}: {vocabulary.size} ids, "
                 f"BOS {vocabulary.bos_id}, EOS {vocabulary.eos_id}")
  print(f"imported {args.hf} -> {args.out}: {config.n_layers} layers, d_model {config.d_model}, "
        f"{config.num_params() / 1e6:.1f}M parameters; {tokenizer}")
  return 0


def _adapter_import(args: argparse.Namespace) -> int:
  """`weights import --adapter PEFT --base DIR`: a peft adapter on imported base weights, as one xbook
  parameter folder (base and adapters) that export, warm starts and inference read."""
  if args.base is None:
    raise SystemExit("error: xbook weights import --adapter PEFT_DIR needs --base DIR, the base's weights as "
                     "`xbook weights import --hf` wrote them")
  from xbook.model.hf.adapter import import_peft_adapter
  config = import_peft_adapter(args.adapter, args.base, args.out)
  print(f"imported the adapter {args.adapter} on {args.base} -> {args.out}: rank {config.lora.rank}, alpha "
        f"{config.lora.alpha:g}, targets {', '.join(config.lora.targets)}; {config.lora_params()} adapter parameters")
  return 0


def _weights_export(args: argparse.Namespace) -> int:
  if (args.params is None) == (args.run_dir is None):
    raise SystemExit("error: xbook weights export: give exactly one of --params DIR (imported weights) "
                     "and --run_dir DIR (a trained run)")
  if args.params is not None:
    if args.step is not None:
      raise SystemExit("error: --step applies to --run_dir only (imported weights have no steps)")
    from xbook.model.hf import export_hf_checkpoint
    files = export_hf_checkpoint(args.params, args.out, model_type=args.model_type, dtype=args.dtype,
                                 max_shard_size=args.max_shard_size,
                                 max_position_embeddings=args.max_position_embeddings, overwrite=args.overwrite,
                                 adapter=args.adapter)
    source = args.params
  else:
    from xbook.infer.export import export_run
    result = export_run(args.run_dir, args.out, step=args.step, dtype=args.dtype or "bfloat16",
                        model_type=args.model_type, max_shard_size=args.max_shard_size,
                        max_position_embeddings=args.max_position_embeddings, overwrite=args.overwrite,
                        adapter=args.adapter)
    files, source = result.files, f"{args.run_dir} (step {result.step}, {result.model_type}, {result.dtype})"
  print(f"exported {source} -> {args.out}: {', '.join(files)}")
  return 0


# ----------------------------------------------------------------------------------------------- bench
def _bench_attention(args: argparse.Namespace) -> int:
  from xbook.train import attention_bench
  return attention_bench.run(args)


def _bench_engine(args: argparse.Namespace) -> int:
  from xbook.infer import engine_bench
  return engine_bench.run(args)


def _bench_serve(args: argparse.Namespace) -> int:
  from xbook.infer import serve_bench
  return serve_bench.run(args)


def _bench_decode(args: argparse.Namespace) -> int:
  from xbook.infer import decode_bench
  return decode_bench.run(args)


_BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _benchmark(name: str):
  """The module benchmarks/<name>.py of the source tree (its top level imports nothing heavy)."""
  import importlib.util
  spec = importlib.util.spec_from_file_location(f"xbook_benchmark_{name}", _BENCHMARKS / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _bench_input(args: argparse.Namespace) -> int:
  return _benchmark("input").run(args)


# ----------------------------------------------------------------------------------------------- train
def _train(args: argparse.Namespace) -> int:
  from xbook.train import distributed
  from xbook.train.trainer import train
  distributed.initialize(args.coordinator_address, args.num_processes, args.process_id,
                         auto=args.distributed_auto)
  metrics = train(args.run_dir)
  loss = f"loss {metrics['loss']:.4f}" if "loss" in metrics else "no metrics recorded"
  print(json.dumps({"run_dir": args.run_dir, **metrics}) if args.json
        else f"run {args.run_dir}: step {int(metrics.get('step', 0))}, {loss}")
  return 0


# --------------------------------------------------------------------------------------------- compile
def _compile(args: argparse.Namespace) -> int:
  from xbook.gin_flags import configured
  from xbook.train import aot
  from xbook.train.trainer import trainer_from_gin
  if args.decode:
    return _compile_decode(args)
  target = configured(aot.TpuTarget, accelerator=args.topology, num_slices=args.num_slices,
                      assumed_mfu=args.assumed_mfu)
  report = aot.compile_for_tpu(target, trainer_from_gin, count_flops=not args.memory_only)
  print(json.dumps(report.to_json()) if args.json else aot.format_report(report))
  if not report.fits:
    print(f"error: the step needs {report.total_bytes_per_chip / 2**30:.2f} GiB per chip but a "
          f"{report.accelerator} chip has {report.hbm_bytes / 2**30:.0f} GiB of HBM: shard more (fsdp, "
          f"tensor, sequence), remat more, or use a smaller batch per chip", file=sys.stderr)
    return 1
  return 0


def _compile_decode(args: argparse.Namespace) -> int:
  """`xbook compile --decode`: the inference engine's prefill and decode step for a TPU slice."""
  from xbook.gin_flags import configured
  from xbook.infer import aot_decode
  from xbook.train.mesh import MeshConfig
  from xbook.train.trainer import train_setting
  config = train_setting("model_config")
  target = configured(aot_decode.DecodeTarget, accelerator=args.topology, batch=args.batch,
                      context_len=args.context_len)
  mesh_config = configured(MeshConfig)
  probe = not args.full_model
  report = aot_decode.compile_decode(config, target, mesh_config, probe)
  reports = {"batch_1" if target.batch == 1 else f"batch_{target.batch}": report}
  if args.largest_batch:
    batch, largest = aot_decode.largest_batch(config, target, mesh_config, report, probe_layers=probe,
                                              max_compiles=args.batch_compiles)
    if largest is not None and largest.batch != report.batch:
      reports[f"largest_batch_{batch}"] = largest
  if args.json:
    print(json.dumps({name: r.to_json() for name, r in reports.items()}))
  else:
    print("\n\n".join(f"[{name.replace('_', ' ')}]\n{aot_decode.format_report(r)}" for name, r in reports.items()))
  if not report.fits:
    print(f"error: decoding needs {report.total_bytes_per_chip / 2**30:.2f} GiB per chip but a {report.accelerator} "
          f"chip has {report.hbm_bytes / 2**30:.0f} GiB of HBM: shard more (MeshConfig.tensor, fsdp), shard the "
          "cache's length (DecodeTarget.shard_cache_length with MeshConfig.sequence), or lower "
          "DecodeTarget.batch / context_len", file=sys.stderr)
    return 1
  return 0


# -------------------------------------------------------------------------------------------- generate
def _check_prompt_fits(args: argparse.Namespace, run) -> None:
  """Refuse a prompt that, with --max_new_tokens, does not fit the length the run trained at (nothing is cut)."""
  from xbook.infer.generate import prompt_ids, run_seq_len
  limit = run_seq_len(args.run_dir)
  needed = 1 + len(prompt_ids(args.prompt, run.vocabulary))  # BOS, the prompt segment, the premise marker
  if limit and needed + args.max_new_tokens > limit:
    raise ValueError(f"--prompt is {needed} tokens (with its markers) and --max_new_tokens {args.max_new_tokens}: "
                     f"{needed + args.max_new_tokens} in all, more than the {limit} tokens {args.run_dir} "
                     f"trained at; shorten the prompt or lower --max_new_tokens (to at most {limit - needed})")


def _generate(args: argparse.Namespace) -> int:
  from xbook.infer import generate_passage, load_run
  mesh = rules = None
  if (mesh_config := _mesh_config(args)) is not None:
    from xbook.infer.placement import inference_mesh
    mesh, rules = inference_mesh(mesh_config, args.shard_cache_length)
  run = load_run(args.run_dir, step=args.step, mesh=mesh, rules=rules)
  _check_prompt_fits(args, run)
  text = generate_passage(run, args.prompt, max_new_tokens=args.max_new_tokens,
                          temperature=args.temperature, top_k=args.top_k, seed=args.seed, mesh=mesh, rules=rules)
  print(json.dumps({"step": run.step, "prompt": args.prompt, "text": text}) if args.json
        else f"[step {run.step}] {args.prompt}\n---\n{text}")
  return 0


def _write(args: argparse.Namespace) -> int:
  from xbook.gin_flags import configured
  from xbook.infer import write_books
  from xbook.infer.writer import WriteConfig, check_out_folder
  if (args.prompt is None) == (args.prompts is None):
    raise cli_gin.GinConfigError("xbook write takes --prompt (one book) or --prompts FILE (many books), not "
                                 f"{'both' if args.prompt is not None else 'neither'}")
  config = configured(WriteConfig)
  books = write_books.read_prompts(args.prompts, args.seed) if args.prompts else None
  if books is None:
    if not args.prompt.strip():
      raise ValueError("the prompt is empty: say what book to write, e.g. --prompt 'Write a ghost story'")
    check_out_folder(Path(args.out), args.overwrite)  # before the run is loaded
  api_key = os.environ.get(args.api_key_env) if args.base_url else None
  backend = write_books.open_backend(
      args.run_dir, config=config, step=args.step, slots=min(len(books), args.concurrency) if books else 1,
      mesh_config=_mesh_config(args), shard_cache_length=args.shard_cache_length, base_url=args.base_url,
      model=args.model, api_key=api_key)
  try:
    if books is not None:
      return _write_many(args, backend, books, config)
    book = write_books.write_book(backend, args.prompt, args.out, seed=args.seed, config=config,
                                  profile=args.profile, overwrite=args.overwrite)
  finally:
    backend.close()
  words = sum(len(t.split()) for c in book["chapters"] for t in c["texts"])
  summary = {"markdown": book["markdown"], "json": book["json"], "chapters": len(book["chapters"]),
             "scenes": sum(len(c["texts"]) for c in book["chapters"]), "words": words,
             "tokens": sum(s["tokens"] for s in book["stages"])}
  print(json.dumps(summary) if args.json else
        f"wrote {summary['chapters']} chapters, {summary['scenes']} scenes, {words:,} words "
        f"({summary['tokens']:,} tokens): {book['markdown']} and {book['json']}")
  return 0


def _write_many(args: argparse.Namespace, backend, books, config) -> int:
  """`xbook write --prompts`: every book at once, a table of them, exit status 1 if any failed."""
  from xbook.infer import write_books
  results = write_books.write_books(backend, books, args.out, config=config, profile=args.profile,
                                    overwrite=args.overwrite, concurrency=args.concurrency)
  if args.json:
    print(json.dumps(results))
  else:
    print(f"{'book':24} {'status':8} {'chapters':>8} {'words':>8} {'tokens':>8} {'prefill/tok':>11}  folder or reason")
    for r in results:
      if r["status"] == "done":
        ratio = r["prefill_per_stream_token"]
        print(f"{r['name']:24} {'done':8} {r['chapters']:>8} {r['words']:>8,} {r['tokens']:>8,} "
              f"{'-' if ratio is None else f'{ratio:.2f}':>11}  {r['folder']}")
      else:
        print(f"{r['name']:24} {'FAILED':8} {'':>8} {'':>8} {'':>8} {'':>11}  {r['reason']}")
  failed = [r["name"] for r in results if r["status"] != "done"]
  if failed:
    print(f"error: {len(failed)} of {len(results)} books failed ({', '.join(failed)}); their reasons are above. "
          "Rerun the same command to retry them (the finished books are kept)", file=sys.stderr)
    return 1
  return 0


def _eval(args: argparse.Namespace) -> int:
  from xbook.evals.command import run
  return run(args, mesh_config=_eval_mesh_config(args) if args.run_dir else None)


def _eval_mesh_config(args: argparse.Namespace):
  """The mesh that scores `eval --run_dir`: --mesh, else MeshConfig as gin binds it (--gin_file,
  --gin.MeshConfig.tensor=2), else None (one device)."""
  if args.mesh is not None:
    return _mesh_config(args)
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


def _serve(args: argparse.Namespace) -> int:
  from xbook.infer.serve import BatchingConfig, serve
  batching = BatchingConfig(batching=args.batching, max_batch=args.max_batch, batch_window_ms=args.batch_window_ms,
                            sync_every=args.sync_every, max_waiting=args.max_waiting,
                            prefill_chunk=args.prefill_chunk, prefix_reuse=not args.no_prefix_reuse)
  return serve(args.run_dir, host=args.host, port=args.port, step=args.step, name=args.model_name,
               max_prompt_tokens=args.max_prompt_tokens, max_tokens=args.max_tokens,
               context_len=args.context_len, batching=batching, mesh_config=_mesh_config(args),
               shard_cache_length=args.shard_cache_length)


def _add_mesh_flags(p: argparse.ArgumentParser) -> None:
  """--mesh and --shard_cache_length: decoding on a device mesh (xbook.infer.placement)."""
  p.add_argument("--mesh", default=None, metavar="AXIS=N,...",
                 help="decode on a device mesh, e.g. --mesh tensor=4,sequence=2 (axes data, fsdp, sequence, "
                      "tensor; unnamed ones 1, one may be -1): parameters sharded over tensor (heads, MLP) and "
                      "fsdp, the KV cache over kv heads; default: one device, or MeshConfig in gin if bound")
  p.add_argument("--shard_cache_length", action="store_true",
                 help="also shard the KV cache's length over the mesh's sequence axis (long contexts)")


def _mesh_config(args: argparse.Namespace):
  """The MeshConfig of --mesh (None: decode on one device)."""
  if getattr(args, "mesh", None) is None:
    return None
  from xbook.infer.placement import parse_mesh_flag
  try:
    return parse_mesh_flag(args.mesh)
  except ValueError as error:
    raise cli_gin.GinConfigError(str(error)) from None


def _selects(argv: Sequence[str], path: tuple[str, ...]) -> bool:
  """Whether the command line `argv` runs the subcommand `path` (its first words, after top-level flags)."""
  words = [a for a in argv if not a.startswith("-")]
  return tuple(words[:len(path)]) == path


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
  """The `xbook` parser. Subcommands whose arguments come from a heavy module (the benchmarks) get them
  only when `argv` runs them, or always when `argv` is None (a full parser, for tests and docs)."""
  deferred: dict[tuple[str, ...], tuple[argparse.ArgumentParser, str]] = {}
  SPLITS = _source_constant("xbook.books.splits", "SPLITS")
  parser = argparse.ArgumentParser(
      prog="xbook", description="Train book-writing language models on human-authored novels.",
      epilog="example:\n  xbook train --gin_file=configs/runs/demo.gin --run_dir=runs/demo",
      formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--version", action="version", version=f"xbook {__version__}")
  parser.add_argument("--verbose", action="store_true",
                      help="on an error, print its traceback too, and let libraries log (also anywhere after "
                           f"the subcommand, or {cli_errors.VERBOSE_ENV}=1)")
  commands = parser.add_subparsers(title="subcommands", metavar="SUBCOMMAND")

  books = _group(commands, "books", "Gutenberg novels: fetch, clean, segment.",
                 "xbook books segment --books ../shared/corpus/gutenberg --out out/books.jsonl")
  p = _add(books, "fetch", "Download plain-text ebooks, by number or chosen from Gutenberg's catalog, into a cache "
           "(resumable; exit status 1 if any book failed).",
           "xbook books fetch --ids 46,35,43 --cache gutenberg/\n"
           "xbook books fetch --catalog --language en --subject fiction --limit 100 --cache gutenberg/",
           _books_fetch)
  which = p.add_mutually_exclusive_group(required=True)
  which.add_argument("--ids", type=_ebook_numbers, help="comma-separated ebook numbers (46,35 or pg46,pg35)")
  which.add_argument("--catalog", nargs="?", const=_DOWNLOAD_CATALOG, metavar="PATH",
                     help="choose the books from Gutenberg's pg_catalog.csv: a local file, or with no PATH "
                          "the mirror's {base_url}/cache/epub/feeds/pg_catalog.csv, downloaded into --cache "
                          "(and reused from there; delete it to refresh). Only Type=Text rows; the filters "
                          "below must all match, the values of one filter are alternatives")
  p.add_argument("--language", action="append", default=[], help="catalog language code, e.g. en (repeatable)")
  p.add_argument("--subject", action="append", default=[],
                 help="text in a catalog subject, any case, e.g. fiction (repeatable)")
  p.add_argument("--bookshelf", action="append", default=[],
                 help="text in a catalog bookshelf, any case, e.g. 'Category: Novels' (repeatable)")
  p.add_argument("--limit", type=int, default=None, help="at most this many books from the catalog (the first)")
  p.add_argument("--cache", required=True, help="download folder; files already there are kept")
  p.add_argument("--base_url", default="https://www.gutenberg.org", help="Gutenberg mirror")
  p.add_argument("--min_interval_s", type=float, default=2.0,
                 help="least seconds between two requests (keep the default for gutenberg.org)")
  p = _add(books, "segment", "Clean Gutenberg .txt files and split them into chapters and scenes (JSONL); unusable "
           "files are skipped and listed on stderr (exit status 1, no output, if none was usable); a book that drops "
           "more than 5 percent of its body as front and back matter is listed as a warning (--strict: an error).",
           "xbook books segment --books ../shared/corpus/gutenberg --ids pg46,pg35 --out out/books.jsonl",
           _books_segment)
  p.add_argument("--books", required=True, help="folder of Gutenberg .txt files")
  p.add_argument("--ids", default=None, help="comma-separated file stems (default: every .txt file)")
  p.add_argument("--out", required=True, help="output books JSONL")
  p.add_argument("--scene_words", type=int, default=1200, help="target scene size in words")
  p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
  p.add_argument("--strict", action="store_true",
                 help="a book that drops more than 5%% of its body as front and back matter is an error "
                      "(exit 1, nothing written), not a warning; for corpus builds")
  p = _add(books, "inspect", "Show one Gutenberg file's metadata, cleaning report and chapters.",
           "xbook books inspect ../shared/corpus/gutenberg/pg98.txt", _books_inspect)
  p.add_argument("file")
  p.add_argument("--json", action="store_true")

  scaffold = _group(commands, "scaffold", "Planning scaffolds: multi-resolution summaries of books.",
                    "xbook scaffold build --books out/books.jsonl --out out/scaffolds.jsonl "
                    "--cache out/summaries.sqlite")
  p = _add(scaffold, "build", "Summarize books bottom-up into xbook.scaffold/1 records (cached, resumable; books "
           "concurrently; a failed book is reported and the others go on, exit status 1 if any failed).",
           "xbook scaffold build --books out/books.jsonl --out out/scaffolds.jsonl --cache out/summaries.sqlite\n"
           "OPENAI_API_KEY=... xbook scaffold build --books out/books.jsonl --out out/scaffolds.jsonl "
           "--cache out/summaries.sqlite \\\n"
           "    --backend openai --base_url http://127.0.0.1:8000/v1 --model Qwen/Qwen2.5-7B-Instruct\n"
           "xbook scaffold build --books out/books.jsonl --out out/scaffolds.jsonl --cache out/summaries.sqlite "
           "--backend xbook --run_dir runs/demo",
           _scaffold_build, gin_modules=("xbook.scaffold",))
  p.add_argument("--books", required=True, help="books JSONL from `xbook books segment`")
  p.add_argument("--out", required=True, help="scaffold JSONL (books already in it are kept)")
  p.add_argument("--cache", default=None,
                 help="SQLite cache of summarizer calls (default: summaries.sqlite beside --out)")
  p.add_argument("--backend", choices=("extractive", "openai", "xbook"), default="extractive",
                 help="extractive (offline), openai (any OpenAI-compatible endpoint: --base_url, --model) or "
                      "xbook (starts `xbook serve --run_dir` on a free local port and uses it as an openai endpoint)")
  p.add_argument("--base_url", default=None, help="openai: API root, e.g. http://127.0.0.1:8000/v1")
  p.add_argument("--model", default=None, help="openai: the served model's name")
  p.add_argument("--run_dir", default=None, help="xbook: run directory of the checkpoint to serve")
  p.add_argument("--api_key_env", default="OPENAI_API_KEY", help="environment variable holding the API key")
  p.add_argument("--prompt_version", default="plan_v1", help="templates folder xbook/scaffold/templates/NAME/")
  p.add_argument("--temperature", type=float, default=0.0)
  p.add_argument("--max_tokens", type=int, default=512, help="the most tokens of one summary")
  p.add_argument("--tokens_per_word", type=float, default=2.0,
                 help="a call's max_tokens is also at most this times its target words")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--concurrency", type=int, default=8, help="requests in flight at once")
  p.add_argument("--concurrent_books", type=int, default=4, help="books built at once")
  p.add_argument("--timeout_s", type=float, default=120.0, help="deadline of one request attempt")
  p.add_argument("--max_retries", type=int, default=6,
                 help="retries of a request after a timeout, a connection error, 429 or 5xx")
  p.add_argument("--format", choices=("xbook", "paper"), default="xbook",
                 help="xbook: xbook's levels; paper: also the plans of the paper's released models (book "
                      "preview and plan, chapter plans, scene breakdowns, characters; the record's `paper` "
                      "field): measured where the text allows, written by the backend otherwise (extractive: "
                      "its approximation, marked as such)")
  p = _add(scaffold, "show", "Print the plans of one scaffold record, or (--profile) its stage stream in the "
           "paper's format exactly as rendered.",
           "xbook scaffold show out/scaffolds.jsonl --book pg46\n"
           "xbook scaffold show out/paper.jsonl --book pg46 --profile 24b_first_chapter > pg46.stream.txt",
           _scaffold_show)
  p.add_argument("file")
  p.add_argument("--book", default=None, help="book id (default: the first record)")
  p.add_argument("--json", action="store_true")
  p.add_argument("--profile", choices=("24b_first_chapter", "14b_full_book"), default=None,
                 help="print the record's stage stream in this profile of the paper's protocol (needs a "
                      "record with a paper field), byte for byte")
  p = _add(scaffold, "import", "Import rows of the LongPage dataset (parquet) as scaffold records with the paper "
           "format's plans; fields that do not map are reported (exit status 1 if any row failed).",
           "xbook scaffold import --longpage LongPage/train-00000.parquet --out out/longpage.jsonl --limit 100",
           _scaffold_import)
  p.add_argument("--longpage", required=True, help="a LongPage parquet file")
  p.add_argument("--out", required=True, help="scaffold JSONL to write")
  p.add_argument("--limit", type=int, default=None, help="read at most this many rows")
  p.add_argument("--json", action="store_true", help="print the report as JSON")
  p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
  p = _add(scaffold, "tfds", "Build the xbook_scaffolds TFDS dataset with Apache Beam (Beam options after --).",
           "xbook scaffold tfds --manual_dir gutenberg/ --data_dir tfds/ -- --runner=DirectRunner "
           "--direct_num_workers=2", _scaffold_tfds)
  p.add_argument("--manual_dir", required=True, help="directory of Gutenberg *.txt novels")
  p.add_argument("--data_dir", required=True, help="TFDS data directory (local or gs://)")
  p.add_argument("beam_args", nargs="*", help="Beam pipeline options (default: --runner=DirectRunner)")

  vocab = _group(commands, "vocab", "xbook's SentencePiece vocabulary with the segment markers (pretrained "
                 "models bring their own: tokenizer.json, tekken.json or tokenizer.model).",
                 "xbook vocab train --scaffolds out/scaffolds.jsonl --out out/vocab.model")
  p = _add(vocab, "train", "Train a SentencePiece vocabulary (markers as user-defined symbols) on the scaffolds "
           "of split train (validation and test books are left out).",
           "xbook vocab train --scaffolds out/scaffolds.jsonl --out out/vocab.model --vocab_size 8000",
           _vocab_train)
  p.add_argument("--scaffolds", required=True, help="scaffold JSONL file")
  p.add_argument("--out", required=True, help="output .model path")
  p.add_argument("--vocab_size", type=int, default=8000)
  p.add_argument("--model_type", choices=("unigram", "bpe"), default="unigram")
  p.add_argument("--overwrite", action="store_true", help="replace an existing --out vocabulary (runs trained "
                 "on it keep their own copy in RUN/vocab/)")
  p.add_argument("--json", action="store_true", help="print a JSON summary")

  data = _group(commands, "data", "Trajectory examples from the seqio tasks.",
                "xbook data inspect --scaffolds out/scaffolds.jsonl --vocab out/vocab.model")
  p = _add(data, "inspect", "Build the examples of one book view (seqio task) and show one segment by segment "
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
  p.add_argument("--task", default="windows", choices=("windows", "full", "stages", "mixture"),
                 help="book view to show, or the mixture of all three (paper_stages: windows, full, mixture)")
  p.add_argument("--index", type=int, default=0, help="which example of the task to show")
  p.add_argument("--plan_order", "--layout", default="interleaved",
                 choices=("interleaved", "plans_first", "paper_stages"),
                 help="order of plans and text in a trajectory (--layout: its old name); paper_stages: the "
                      "stage stream of the paper's released models "
                      "(records with a paper field, `xbook scaffold build --format paper`)")
  p.add_argument("--profile", default="14b_full_book", choices=("24b_first_chapter", "14b_full_book"),
                 help="paper_stages: the released model's profile (24b: one example per book to the end of "
                      "the first chapter; 14b: the whole book, or one example per later chapter)")
  p.add_argument("--raw", action="store_true",
                 help="print only the example's text, decoded exactly as rendered (framing, markers)")
  p.add_argument("--repeat_weight", type=float, default=0.0,
                 help="windows: factor on the loss weight of plans repeated from an earlier window")
  p.add_argument("--max_chars", type=int, default=300, help="characters of decoded text shown per segment")
  p.add_argument("--json", action="store_true")
  p = _add(data, "cache", "Build the training windows of a gin config offline with Apache Beam into sharded "
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

  SUPPORTED_MODEL_TYPES = _source_constant("xbook.model.hf.config", "SUPPORTED_MODEL_TYPES")
  MULTIMODAL_MODEL_TYPES = _source_constant("xbook.model.hf.config", "MULTIMODAL_MODEL_TYPES")
  DTYPES = _source_constant("xbook.model.hf.writer", "DTYPES")
  architectures = ", ".join(SUPPORTED_MODEL_TYPES)
  weights = _group(commands, "weights", f"Pretrained weights: Hugging Face checkpoints ({architectures}).",
                   "xbook weights import --hf ~/models/Ministral-3-14B-Base-2512 --out weights/ministral3-14b")
  p = _add(weights, "import",
           f"Convert a Hugging Face safetensors checkpoint to xbook parameters (Orbax). Architectures: "
           f"{architectures}; multimodal {', '.join(MULTIMODAL_MODEL_TYPES)} checkpoints (Ministral 3, "
           "Mistral Small 3.x) give their language model, the vision tower is skipped.",
           "xbook weights import --hf ~/models/Ministral-3-14B-Base-2512 --out weights/ministral3-14b\n"
           "xbook weights import --hf ~/models/Qwen2.5-7B --out weights/qwen2.5-7b\n"
           "xbook weights import --adapter exported/books-lora --base weights/ministral3-14b --out weights/books-lora",
           _weights_import)
  p.add_argument("--hf", default=None, help="folder with config.json and model.safetensors (or shards)")
  p.add_argument("--out", required=True, help="new folder for model.json and the Orbax params")
  p.add_argument("--adapter", default=None,
                 help="a peft LoRA adapter folder (adapter_config.json, adapter_model.safetensors) to import on "
                      "--base: the folder written holds the base and the adapters")
  p.add_argument("--base", default=None, help="with --adapter: the base's folder from `xbook weights import --hf`")
  p.set_defaults(path_flags=("out",))
  p = _add(weights, "export",
           "Write a trained run (--run_dir) or imported weights (--params) as a Hugging Face checkpoint: "
           "sharded safetensors with model.safetensors.index.json, config.json, generation_config.json "
           "and, for a run, its tokenizer files; loadable by transformers and vLLM as it is.",
           "xbook weights export --run_dir runs/ministral3-books --out exported/ministral3-books\n"
           "xbook weights export --run_dir runs/demo --step 200 --dtype float32 --out exported/demo\n"
           "xbook weights export --params weights/tiny-llama --out exported/tiny-llama\n"
           "xbook weights export --run_dir runs/books-lora --adapter --out exported/books-lora", _weights_export)
  p.add_argument("--adapter", action="store_true",
                 help="a LoRA run's adapters alone, as a peft adapter folder (adapter_config.json, "
                      "adapter_model.safetensors) that peft and vLLM load onto the base; without it a LoRA run "
                      "is written merged into its base")
  p.add_argument("--run_dir", default=None, help="a run directory written by `xbook train` (local or gs://)")
  p.add_argument("--step", type=int, default=None, help="checkpoint step of --run_dir (default: the latest)")
  p.add_argument("--params", default=None, help="folder written by `xbook weights import`")
  p.add_argument("--out", required=True, help="new (or empty) local folder for the checkpoint")
  p.set_defaults(path_flags=("out",))
  p.add_argument("--dtype", choices=DTYPES, default=None,
                 help="tensor dtype (default: bfloat16 for a run, the parameters' own for --params)")
  p.add_argument("--model_type", choices=SUPPORTED_MODEL_TYPES, default=None,
                 help="architecture to write (default: the one imported; for a run, qwen2 with q/k/v "
                      "biases, ministral3 with query scaling, mistral with a sliding window, else llama)")
  p.add_argument("--max_shard_size", default="5GB", help="most bytes per safetensors file (default 5GB)")
  p.add_argument("--max_position_embeddings", type=int, default=None,
                 help="config.json's context length (default: the imported checkpoint's; for a run, the "
                      "scaled RoPE's, else the run's seq_len)")
  p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out folder")

  bench = _group(commands, "bench", "Speed, memory and accuracy figures.",
                 "xbook bench attention --impl ring --seq 8192 --devices 8 --length_layout zigzag")
  p = _add(bench, "attention", "Attention vs dense: max errors of out and dq/dk/dv, time, memory, balance.",
           "xbook bench attention --impl ring --seq 8192 --devices 8 --length_layout zigzag --json", _bench_attention)
  deferred[("bench", "attention")] = (p, "xbook.train.attention_bench")
  p = _add(bench, "decode", "KV-cache decoding speed of a trained run: prefill tokens/s, decode tokens/s at batch 1 "
           "and 8, ms per token at contexts of 256, 1k and 4k, compiles; beside transformers' generate on the same "
           "weights exported to Hugging Face format (when transformers and torch are installed).",
           "xbook bench decode --run_dir runs/demo\nxbook bench decode --run_dir runs/demo --no_transformers --json",
           _bench_decode)
  deferred[("bench", "decode")] = (p, "xbook.infer.decode_bench")
  p = _add(bench, "serve", "Serving benchmark of a run (as vLLM's): clients with mixed prompt and answer lengths "
           "against a real xbook serve, continuous and static batching: throughput against one client at a time, "
           "p50/p99 time to first token and inter-token latency, a short request's latency behind a long one.",
           "xbook bench serve --run_dir runs/demo --clients 16 --requests 4", _bench_serve)
  deferred[("bench", "serve")] = (p, "xbook.infer.serve_bench")
  p = _add(bench, "engine", "The inference engine's prefix reuse (prefilled tokens per new token over growing "
           "prompts, with and without) and structured outputs (decode tokens/s under a grammar against free).",
           "xbook bench engine --run_dir runs/demo --stages 12 --rows 4 --tokens 128", _bench_engine)
  deferred[("bench", "engine")] = (p, "xbook.infer.engine_bench")
  if (_BENCHMARKS / "input.py").is_file():  # a source tree (benchmarks/ is not installed)
    p = _add(bench, "input", "Input pipeline: seconds to the first batch of a fresh run and of runs resumed at "
             "batch N (example counts unknown, then kept), batches/s after the first; on the scaffolds of real "
             "corpus novels (built once with the extractive summarizer) or --scaffolds.",
             "xbook bench input --seq_len 4096 --batch_size 8 --resume 1000 --resume 10000\n"
             "xbook bench input --scaffolds out/scaffolds.jsonl --vocab out/vocab.model --json", _bench_input)
    _benchmark("input").add_arguments(p)

  p = _add(commands, "train", "Train (or resume) a decoder on scaffold trajectories, configured by gin.",
           "xbook train --gin_file=configs/runs/demo.gin --run_dir=runs/demo --gin.train.steps=40",
           _train, gin_modules=("xbook.train.trainer",))
  p.add_argument("--run_dir", required=True, help="run directory (resumed if it has checkpoints)")
  p.add_argument("--json", action="store_true", help="print the last step's metrics as JSON")
  p.add_argument("--coordinator_address", default=None,
                 help="multi-process: host:port of process 0 (or XBOOK_COORDINATOR_ADDRESS)")
  p.add_argument("--num_processes", type=int, default=None, help="multi-process: (or XBOOK_NUM_PROCESSES)")
  p.add_argument("--process_id", type=int, default=None, help="multi-process: (or XBOOK_PROCESS_ID)")
  p.add_argument("--distributed_auto", action="store_true",
                 help="join a TPU pod job with jax.distributed.initialize() auto-detection")

  p = _add(commands, "compile", "Compile the train step ahead of time for a TPU slice on this host: memory per "
           "chip against HBM, compiler vs analytic FLOPs, projected speed (exit status 1 if it does not fit).",
           "xbook compile --gin_file=configs/paper/mistral24b_131k.gin\n"
           "xbook compile --gin_file=configs/runs/demo.gin --topology v5e-8 --json\n"
           "xbook compile --gin_file=configs/paper/ministral14b_262k.gin --memory_only",
           _compile, gin_modules=("xbook.train.trainer", "xbook.train.aot", "xbook.infer.aot_decode"))
  p.add_argument("--topology", default=None,
                 help="accelerator type (v5p-256, v6e-8) or topology (v5p:4x4x8) of one slice "
                      "(default: the config's TpuTarget.accelerator)")
  p.add_argument("--num_slices", type=int, default=None, help="slices over DCN (default: TpuTarget.num_slices)")
  p.add_argument("--assumed_mfu", type=float, default=None,
                 help="MFU for the projected step time (default: TpuTarget.assumed_mfu)")
  p.add_argument("--json", action="store_true",
                 help="print fits, hbm_bytes, total_bytes_per_chip, compiler_flops, analytic_flops, ... as JSON")
  p.add_argument("--memory_only", action="store_true",
                 help="stop after the memory verdict (about a minute at paper scale); skip counting FLOPs")
  p.add_argument("--decode", action="store_true",
                 help="compile inference instead (the engine's prefill chunk and decode step over "
                      "DecodeTarget.batch slots of DecodeTarget.context_len tokens): memory per chip, the "
                      "HBM-bandwidth floor and projected ms per token; e.g. "
                      "--gin_file=configs/inference/ministral14b_262k_v5e8.gin --decode --largest_batch")
  p.add_argument("--batch", type=int, default=None, help="--decode: cache slots (default: DecodeTarget.batch)")
  p.add_argument("--context_len", type=int, default=None,
                 help="--decode: tokens per slot (default: DecodeTarget.context_len)")
  p.add_argument("--largest_batch", action="store_true",
                 help="--decode: also find and compile the largest batch that fits (memory is linear in it)")
  p.add_argument("--batch_compiles", type=int, default=2,
                 help="--largest_batch: compiles spent narrowing the largest batch after batch 1 and 2 (default 2)")
  p.add_argument("--full_model", action="store_true",
                 help="--decode: compile every layer (minutes each at paper scale); default: compile 2- and 4-layer "
                      "programs and extrapolate linearly to all layers (each layer has its own weights and cache)")

  p = _add(commands, "generate", "Write a passage from a prompt with a trained run, in the run's vocabulary "
           "(xbook's, or a pretrained tokenizer.json, tekken.json or tokenizer.model).",
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
  _add_mesh_flags(p)

  p = _add(commands, "write", "Write a whole book from a prompt with a trained run, stage by stage (premise, "
           "synopsis, outline, then per chapter its scene plans and scene texts), each stage's context built "
           "as training built its windows, so a book may be longer than the context. Writes book.md, "
           "book.json (every stage, its sampling, tokens and timings) and a journal: rerun the same command "
           "after a kill to continue the same book. Sampling and budgets: WriteConfig in gin.",
           'xbook write --run_dir runs/demo --prompt "Write a ghost story set at Christmas." --out book/ --seed 7\n'
           'xbook write --run_dir runs/demo --prompt "..." --out book/ --gin.WriteConfig.text_temperature=0.6\n'
           'xbook write --run_dir runs/paper_demo --prompts prompts.jsonl --out books/\n'
           'xbook write --run_dir runs/paper_demo --prompt "..." --out book/ --base_url http://127.0.0.1:8000/v1 '
           '--model paper_demo',
           _write, gin_modules=("xbook.infer.writer",))
  p.add_argument("--run_dir", required=True,
                 help="the run (its weights, or with --base_url only its vocabulary and format)")
  p.add_argument("--prompt", default=None, help="what book to write (the trajectory's prompt)")
  p.add_argument("--prompts", default=None,
                 help="many books at once: a JSONL file of {\"prompt\", \"name\", \"seed\"} lines or a text "
                      "file of one prompt per line (NAME<TAB>PROMPT, NAME<TAB>SEED<TAB>PROMPT); each book is "
                      "written to OUT/NAME (default book-001, ...) and resumes on its own")
  p.add_argument("--out", required=True, help="output folder (book.md, book.json, journal.jsonl; with "
                                              "--prompts one folder per book under it)")
  p.set_defaults(path_flags=("out", "prompts"))
  p.add_argument("--seed", type=int, default=0, help="the book's seed (each stage derives its own; with "
                                                     "--prompts the seed of lines that give none)")
  p.add_argument("--concurrency", type=int, default=8,
                 help="--prompts: books written at once (the engine's slots, or requests in flight)")
  p.add_argument("--base_url", default=None,
                 help="decode on an OpenAI-compatible server honouring vLLM's structured_outputs (vLLM, or "
                      "xbook serve), e.g. http://127.0.0.1:8000/v1, instead of loading the weights here")
  p.add_argument("--model", default=None, help="--base_url: the model name the server serves the run under")
  p.add_argument("--api_key_env", default="OPENAI_API_KEY", help="--base_url: the variable holding the API key")
  _add_mesh_flags(p)
  p.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
  p.add_argument("--profile", default=None, choices=("24b_first_chapter", "14b_full_book"),
                 help="write in this profile of the paper's stage protocol (default: the format and "
                      "profile the run trained on, recorded in its model.json)")
  p.add_argument("--json", action="store_true", help="print the summary as JSON")
  p.add_argument("--overwrite", action="store_true",
                 help="write into an --out folder that holds files but no journal of a write (replaces book.md and "
                      "book.json)")

  p = _add(commands, "eval", "Evaluate books and runs into --out, each into its own files (books: eval.json "
           "and report.html; --run_dir: perplexity.json and perplexity.html; --judge: judges.json and "
           "judges.html; an earlier evaluation's files are replaced only with --overwrite): text metrics of "
           "--books (repetition, lexical diversity, "
           "over-represented phrases, sentence and paragraph shape, dialogue, readability, structure, plan "
           "adherence) placed in the distribution of held-out human novels (--baseline); held-out perplexity "
           "of --run_dir per segment kind, per token, word and byte; pairwise LLM judges (--judge NAME=PATH "
           "with an OpenAI-compatible --judge_url) ranked by Bradley-Terry with bootstrap intervals.",
           "xbook eval --books book/ --out eval/\n"
           "xbook eval --run_dir runs/demo --scaffolds out/scaffolds.jsonl --heldout ../shared/corpus/gutenberg/pg43.txt --out eval/\n"
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

  p = _add(commands, "serve", "Serve a trained run over an OpenAI-compatible HTTP API on the KV-cache decoder "
           "(POST /v1/completions with a raw prompt, POST /v1/chat/completions, GET /v1/models, GET /health; "
           "streaming with \"stream\": true); requests from several clients are decoded together in one "
           "batch; chat messages become the trajectory's prompt, encoded in the run's vocabulary (xbook's, "
           "or a pretrained tokenizer.json, tekken.json or tokenizer.model). Stops cleanly on SIGTERM.",
           "xbook serve --run_dir runs/demo --port 8000\n"
           "curl http://127.0.0.1:8000/v1/chat/completions -d '{\"messages\": [{\"role\": \"user\", "
           "\"content\": \"Write a ghost story.\"}], \"max_tokens\": 64}'", _serve)
  p.add_argument("--run_dir", required=True)
  p.add_argument("--host", default="127.0.0.1")
  p.add_argument("--port", type=int, default=8000, help="0: any free port (printed when ready)")
  p.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
  p.add_argument("--model_name", default=None, help="served model name (default: RUN_DIR_NAME@STEP)")
  p.add_argument("--max_prompt_tokens", type=int, default=1024, help="longer prompts keep their first tokens")
  p.add_argument("--max_tokens", type=int, default=256, help="the most tokens of one answer")
  p.add_argument("--context_len", type=int, default=None,
                 help="the most tokens of a prompt plus its answer (default: the run's trained seq_len)")
  p.add_argument("--max_batch", type=int, default=8, help="the most requests decoded together")
  p.add_argument("--batch_window_ms", type=float, default=0.0,
                 help="how long the decode worker waits for more requests before starting a batch")
  p.add_argument("--sync_every", type=int, default=16,
                 help="decode steps between streamed chunks (and stop-string checks)")
  p.add_argument("--batching", default="continuous", choices=("continuous", "static"),
                 help="continuous (default): a request joins the running ones at the next decode step and "
                      "leaves when done; static: a batch runs to its end before the next starts")
  p.add_argument("--max_waiting", type=int, default=256,
                 help="continuous: the most requests waiting for a slot; beyond it, 503 with Retry-After")
  p.add_argument("--prefill_chunk", type=int, default=512,
                 help="continuous: the most prompt tokens of a request prefilled per step (running requests "
                      "decode between a long prompt's chunks)")
  p.add_argument("--no_prefix_reuse", action="store_true",
                 help="continuous: prefill every prompt whole (default: a prompt's longest prefix already in "
                      "the cache is reused)")
  _add_mesh_flags(p)
  for path, (subparser, module) in deferred.items():
    if argv is None or _selects(argv, path):
      importlib.import_module(module).add_arguments(subparser)
  return parser


def _check_run_dir(args: argparse.Namespace) -> None:
  """A --run_dir that is a file is refused before anything reads or writes it."""
  run_dir = getattr(args, "run_dir", None)
  if run_dir and "://" not in str(run_dir) and Path(run_dir).exists() and not Path(run_dir).is_dir():
    raise cli_gin.GinConfigError(f"--run_dir {run_dir} is a file, not a run directory: pass a folder (a new "
                                 "one for a new run)")


# The flags that name folders (or files) which Orbax, a child process or a Beam worker reads or writes: made
# absolute against the current directory once, here (xbook.paths), so that `--run_dir runs/demo` works as
# written. A subcommand names more with set_defaults(path_flags=...); gs:// paths are left as they are.
_PATH_FLAGS = ("run_dir", "params")


def _absolute_paths(args: argparse.Namespace) -> None:
  from xbook import paths
  for flag in (*_PATH_FLAGS, *getattr(args, "path_flags", ())):
    if getattr(args, flag, None) is not None:
      setattr(args, flag, paths.absolute(getattr(args, flag)))


def main(argv: Sequence[str] | None = None) -> int:
  """Run the `xbook` command line `argv` (default: sys.argv[1:]) and return its exit status.

  As the program (argv None: the `xbook` script, `python -m xbook`), a user's mistake prints one
  `error: ...` line and exits 1 without a traceback (xbook.cli_errors; --verbose or XBOOK_VERBOSE=1 show
  it), and native start-up noise is filtered from stderr. Called with an argv (tests, scripts), errors
  propagate as exceptions.
  """
  program = argv is None
  argv = list(sys.argv[1:] if argv is None else argv)
  if "--verbose" in argv:
    argv = [a for a in argv if a != "--verbose"]
    os.environ[cli_errors.VERBOSE_ENV] = "1"
  cli_errors.quiet_environment()
  if program:
    cli_errors.quiet_native_stderr()
  try:
    return _run(argv)
  except KeyboardInterrupt:
    if not program:
      raise
    print("error: interrupted", file=sys.stderr)
    return 130
  except Exception as error:  # noqa: BLE001 - mapped to one line if it is a user's mistake, else re-raised
    status = cli_errors.report(error) if program else None
    if status is None:
      raise
    return status


def _run(argv: list[str]) -> int:
  argv, bindings = split_gin_bindings(argv)
  parser = build_parser(argv)
  args = parser.parse_args(argv)
  if not hasattr(args, "handler"):
    parser.print_help()
    return 2
  cli_errors.setup_logging()
  _check_run_dir(args)
  cli_checks.check_numbers(args)
  _absolute_paths(args)
  cli_checks.check_step(args)
  if args.gin_modules:
    # Mistakes in the gin files and flags are found before the heavy imports and before any file is written.
    cli_gin.precheck(args.gin_file, bindings)
    for module in args.gin_modules:
      importlib.import_module(module)
    cli_gin.parse(args.gin_file, bindings)
  elif bindings:
    parser.error("--gin.NAME=VALUE bindings are only accepted by gin-configured subcommands")
  return args.handler(args)


if __name__ == "__main__":
  sys.exit(main())
