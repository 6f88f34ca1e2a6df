"""`xbook generate` and `xbook write`: a passage, or a whole book stage by stage, from a trained run."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from xbook import cli_gin
from xbook.cli.common import add_command, add_mesh_flags, flag_mesh_config, source_constant


def add_parser(subparsers) -> None:
  """The `generate` and `write` subcommands."""
  _add_generate(subparsers)
  _add_write(subparsers)


def _add_generate(subparsers) -> None:
  p = add_command(subparsers, "generate", "Write a passage from a prompt with a trained run, in the run's vocabulary "
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
  add_mesh_flags(p)


def _add_write(subparsers) -> None:
  p = add_command(
      subparsers, "write", "Write a whole book from a prompt with a trained run, stage by stage (premise, "
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
  add_mesh_flags(p)
  p.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
  p.add_argument("--profile", default=None, choices=source_constant("xbook.data.spec", "PROFILES"),
                 help="write in this profile of the paper's stage protocol (default: the format and "
                      "profile the run trained on, recorded in its model.json)")
  p.add_argument("--json", action="store_true", help="print the summary as JSON")
  p.add_argument("--overwrite", action="store_true",
                 help="write into an --out folder that holds files but no journal of a write (replaces book.md and "
                      "book.json)")


def _check_prompt_fits(args: argparse.Namespace, seq_len: int | None, vocabulary) -> None:
  """Refuse a prompt that, with --max_new_tokens, does not fit `seq_len`, the length the run trained at (nothing
  is cut); None: unrecorded, nothing to check."""
  from xbook.infer.generate import prompt_ids
  needed = 1 + len(prompt_ids(args.prompt, vocabulary))  # BOS, the prompt segment, the premise marker
  if seq_len and needed + args.max_new_tokens > seq_len:
    raise ValueError(f"--prompt is {needed} tokens (with its markers) and --max_new_tokens {args.max_new_tokens}: "
                     f"{needed + args.max_new_tokens} in all, more than the {seq_len} tokens {args.run_dir} "
                     f"trained at; shorten the prompt or lower --max_new_tokens (to at most {seq_len - needed})")


def _generate(args: argparse.Namespace) -> int:
  from xbook.infer.generate import generate_passage, load_run
  from xbook.train.run_info import RunInfo
  info = RunInfo.read(args.run_dir)  # the run directory is read once, here; what follows takes the record
  mesh = rules = None
  if (mesh_config := flag_mesh_config(args)) is not None:
    from xbook.infer.placement import inference_mesh
    mesh, rules = inference_mesh(mesh_config, args.shard_cache_length)
  run = load_run(info, step=args.step, mesh=mesh, rules=rules)
  _check_prompt_fits(args, info.seq_len, run.vocabulary)
  text = generate_passage(run, args.prompt, max_new_tokens=args.max_new_tokens,
                          temperature=args.temperature, top_k=args.top_k, seed=args.seed, mesh=mesh, rules=rules)
  print(json.dumps({"step": run.step, "prompt": args.prompt, "text": text}) if args.json
        else f"[step {run.step}] {args.prompt}\n---\n{text}")
  return 0


def _write(args: argparse.Namespace) -> int:
  from xbook.gin_flags import configured
  from xbook.infer import write_books
  from xbook.infer.writer import WriteConfig, check_out_folder
  from xbook.train.run_info import RunInfo
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
  info = RunInfo.read(args.run_dir)  # the run directory is read once, here; what follows takes the record
  backend = write_books.open_backend(
      info, config=config, step=args.step, slots=min(len(books), args.concurrency) if books else 1,
      mesh_config=flag_mesh_config(args), shard_cache_length=args.shard_cache_length, base_url=args.base_url,
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
