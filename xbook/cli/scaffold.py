"""`xbook scaffold`: planning scaffolds of books (build, show, import LongPage, TFDS)."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
import textwrap
from pathlib import Path

from xbook.cli.common import add_command, add_group, refuse_overwrite, source_constant

log = logging.getLogger("xbook")


def add_parser(subparsers) -> None:
  """The `scaffold` group: build, show, import, tfds."""
  scaffold = add_group(subparsers, "scaffold", "Planning scaffolds: multi-resolution summaries of books.",
                       "xbook scaffold build --books out/books.jsonl --out out/scaffolds.jsonl "
                       "--cache out/summaries.sqlite")
  _add_build(scaffold)
  _add_show(scaffold)
  _add_import(scaffold)
  _add_tfds(scaffold)


def _add_build(scaffold) -> None:
  p = add_command(
      scaffold, "build", "Summarize books bottom-up into xbook.scaffold/1 records (cached, resumable; books "
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


def _add_show(scaffold) -> None:
  p = add_command(scaffold, "show", "Print the plans of one scaffold record, or (--profile) its stage stream in the "
                  "paper's format exactly as rendered.",
                  "xbook scaffold show out/scaffolds.jsonl --book pg46\n"
                  "xbook scaffold show out/paper.jsonl --book pg46 --profile 24b_first_chapter > pg46.stream.txt",
                  _scaffold_show)
  p.add_argument("file")
  p.add_argument("--book", default=None, help="book id (default: the first record)")
  p.add_argument("--json", action="store_true")
  p.add_argument("--profile", choices=source_constant("xbook.data.spec", "PROFILES"), default=None,
                 help="print the record's stage stream in this profile of the paper's protocol (needs a "
                      "record with a paper field), byte for byte")


def _add_import(scaffold) -> None:
  p = add_command(
      scaffold, "import", "Import rows of the LongPage dataset (parquet) as scaffold records with the paper "
      "format's plans; fields that do not map are reported (exit status 1 if any row failed).",
      "xbook scaffold import --longpage LongPage/train-00000.parquet --out out/longpage.jsonl --limit 100",
      _scaffold_import)
  p.add_argument("--longpage", required=True, help="a LongPage parquet file")
  p.add_argument("--out", required=True, help="scaffold JSONL to write")
  p.add_argument("--limit", type=int, default=None, help="read at most this many rows")
  p.add_argument("--json", action="store_true", help="print the report as JSON")
  p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")


def _add_tfds(scaffold) -> None:
  p = add_command(scaffold, "tfds", "Build the xbook_scaffolds TFDS dataset with Apache Beam (Beam options after --).",
                  "xbook scaffold tfds --manual_dir gutenberg/ --data_dir tfds/ -- --runner=DirectRunner "
                  "--direct_num_workers=2", _scaffold_tfds)
  p.add_argument("--manual_dir", required=True, help="directory of Gutenberg *.txt novels")
  p.add_argument("--data_dir", required=True, help="TFDS data directory (local or gs://)")
  p.add_argument("beam_args", nargs="*", help="Beam pipeline options (default: --runner=DirectRunner)")


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
  refuse_overwrite(args.out, args.overwrite)
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
