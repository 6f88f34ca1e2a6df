"""`xbook bench engine`: what the inference engine's prefix reuse and structured outputs cost and save, on a
trained run, each figure measured with and without in the same process.

  prefix reuse   a sequence of growing prompts as a book's stages make them (each prompt is the previous
                 one, its answer and a new stage header of --header_tokens), decoded one after another:
                 prefilled tokens per new token (what a prompt adds to the one before: the answer and the
                 header) and seconds, with reuse and with every prompt prefilled whole;
  grammar        decode tokens per second of --rows rows sampling --tokens tokens each, free and under a
                 grammar that admits the same text (a regular expression of the vocabulary's words and
                 spaces), and their ratio.

Example:
  xbook bench engine --run_dir runs/demo --stages 12 --rows 4 --tokens 128
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from xbook.infer.decode import SamplingParams
from xbook.infer.engine import Engine, EngineRequest
from xbook.infer.generate import load_run
from xbook.infer.structured import GrammarCompiler, GrammarSpec
from xbook.train.run_info import RunInfo


def add_arguments(p: argparse.ArgumentParser) -> None:
  p.add_argument("--run_dir", required=True, help="run directory of `xbook train`")
  p.add_argument("--stages", type=int, default=12, help="growing prompts, as a book's stages (default 12)")
  p.add_argument("--answer_tokens", type=int, default=64, help="tokens each stage generates (default 64)")
  p.add_argument("--header_tokens", type=int, default=8, help="new tokens each stage's prompt adds (default 8)")
  p.add_argument("--rows", type=int, default=4, help="rows decoded together for the grammar figure (default 4)")
  p.add_argument("--tokens", type=int, default=128, help="tokens per row for the grammar figure (default 128)")
  p.add_argument("--json", action="store_true", help="print one JSON object")


def _growing(engine: Any, vocabulary: Any, args: argparse.Namespace) -> dict[str, float]:
  """Prefilled tokens per new token and seconds over the growing prompts."""
  header = vocabulary.encode(" Chapter the next.")[:args.header_tokens] or [vocabulary.bos_id]
  prompt, new, began = [vocabulary.bos_id, *vocabulary.encode("Write a ghost story set at Christmas.")], 0, None
  before = engine.stats()["prefilled_tokens"]
  previous: list[int] = []
  for stage in range(args.stages):
    if stage == 1:  # the first stage compiles; time from the second
      began, before, new = time.perf_counter(), engine.stats()["prefilled_tokens"], 0
    new += len(prompt) - len(previous)  # what the prompt grew by: the last answer and the new header
    sampling = SamplingParams(temperature=0.0, max_tokens=args.answer_tokens)
    [done] = engine.generate([EngineRequest(prompt, sampling)])
    previous, prompt = prompt, prompt + done.token_ids + header
  prefilled = engine.stats()["prefilled_tokens"] - before
  return {"prefill_per_new_token": prefilled / max(new, 1), "seconds": time.perf_counter() - began}


def _decode_rate(engine: Any, vocabulary: Any, args: argparse.Namespace, grammar: str | None) -> float:
  """Generated tokens per second of args.rows rows of args.tokens tokens (after a warm-up round)."""
  grammars = GrammarCompiler(vocabulary)
  compiled = grammars.compile(GrammarSpec("grammar", grammar)) if grammar else None

  def requests(seed: int) -> list[Any]:
    return [EngineRequest([vocabulary.bos_id, *vocabulary.encode(f"Once upon a time {row}")],
                          SamplingParams(temperature=1.0, seed=seed + row, max_tokens=args.tokens),
                          constraint=grammars.constraint(compiled) if grammar else None)
            for row in range(args.rows)]

  engine.generate(requests(0))
  began = time.perf_counter()
  done = engine.generate(requests(100))
  return sum(len(c.token_ids) for c in done) / (time.perf_counter() - began)


# Any text of letters, digits, spaces and common punctuation (never ends early): the mask is computed at every
# token, as for a stage grammar, but admits about what a free sample writes.
PERMISSIVE = 'start: TEXT\nTEXT: /[A-Za-z0-9 ,.;:!?\'"\\-\\n]*/'


def run(args: argparse.Namespace) -> int:
  info = RunInfo.read(args.run_dir)  # the run directory is read once, here
  run_ = load_run(info)
  vocabulary, config = run_.vocabulary, run_.model.config
  max_len = max(info.seq_len or 0, 1 + 16 + args.stages * (args.answer_tokens + args.header_tokens))

  def engine(**options: Any) -> Engine:
    return Engine(run_.params, config, slots=max(args.rows, 1), max_len=max_len, decode=vocabulary.decode,
                  vocab_size_limit=vocabulary.size, **options)

  figures: dict[str, Any] = {}
  for name, reuse in (("with_reuse", True), ("without_reuse", False)):
    for key, value in _growing(engine(prefix_reuse=reuse), vocabulary, args).items():
      figures[f"{key}_{name}"] = value
  shared = engine()
  figures["decode_tokens_per_s_free"] = _decode_rate(shared, vocabulary, args, None)
  figures["decode_tokens_per_s_grammar"] = _decode_rate(shared, vocabulary, args, PERMISSIVE)
  figures["grammar_vs_free"] = figures["decode_tokens_per_s_grammar"] / figures["decode_tokens_per_s_free"]
  if args.json:
    print(json.dumps(figures))
    return 0
  print(f"run {args.run_dir} (step {run_.step}), {config.num_params() / 1e6:.1f}M parameters")
  print(f"prefix reuse over {args.stages} growing prompts ({args.answer_tokens} tokens answered, "
        f"{args.header_tokens} new each):")
  print(f"  prefilled per new token  {figures['prefill_per_new_token_with_reuse']:.2f} with reuse, "
        f"{figures['prefill_per_new_token_without_reuse']:.2f} without")
  print(f"  seconds                  {figures['seconds_with_reuse']:.2f} with reuse, "
        f"{figures['seconds_without_reuse']:.2f} without")
  print(f"decode, {args.rows} rows x {args.tokens} tokens: {figures['decode_tokens_per_s_free']:.0f} tokens/s free, "
        f"{figures['decode_tokens_per_s_grammar']:.0f} under a grammar ({figures['grammar_vs_free']:.2f}x)")
  return 0
