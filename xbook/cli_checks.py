"""Every number a user gives the `xbook` commands, checked once at the entry point, before anything heavy is
imported or anything is written: a value out of range is one `error:` line naming the flag and the valid
range (a GinConfigError, which xbook.cli_errors prints as one line, exit status 1).

`check_numbers(args)` checks each flag of RANGES that the subcommand has (by its argparse dest); a flag
that is None (not given, no default) is left alone. `check_step(args)` checks --step against the
checkpoints a local run directory holds, naming the steps it has.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from xbook.cli_gin import GinConfigError


@dataclasses.dataclass(frozen=True)
class Range:
  """least <= value (least < value when `open_below`) and, with `most`, value <= most; `note` says what an
  edge value means."""

  least: float
  most: float | None = None
  open_below: bool = False
  note: str = ""

  def holds(self, value: float) -> bool:
    above = value > self.least if self.open_below else value >= self.least
    return above and (self.most is None or value <= self.most)

  def describe(self, integer: bool) -> str:
    kind = "an integer" if integer else "a number"
    if self.most is not None and not self.open_below:
      text = f"{kind} from {_shown(self.least)} to {_shown(self.most)}"
    else:
      text = f"{kind} {'>' if self.open_below else '>='} {_shown(self.least)}"
      text += f" and <= {_shown(self.most)}" if self.most is not None else ""
    return text + (f" ({self.note})" if self.note else "")


def _shown(number: float) -> str:
  return str(int(number)) if float(number).is_integer() else str(number)


AT_LEAST_ONE, NOT_NEGATIVE, POSITIVE = Range(1), Range(0), Range(0, open_below=True)

# argparse dest -> valid range, for every numeric flag of the xbook commands (the benchmarks' own flags too,
# where they share a name: the same meaning).
RANGES: dict[str, Range] = {
    # books, scaffolds, vocabulary, data
    "limit": AT_LEAST_ONE, "min_interval_s": NOT_NEGATIVE, "scene_words": AT_LEAST_ONE,
    "max_tokens": AT_LEAST_ONE, "tokens_per_word": POSITIVE, "concurrency": AT_LEAST_ONE,
    "concurrent_books": AT_LEAST_ONE, "timeout_s": POSITIVE, "max_retries": NOT_NEGATIVE,
    "temperature": NOT_NEGATIVE, "seq_len": AT_LEAST_ONE, "sequence_shards": AT_LEAST_ONE,
    "index": NOT_NEGATIVE, "max_chars": NOT_NEGATIVE, "repeat_weight": NOT_NEGATIVE,
    "num_shards": AT_LEAST_ONE,
    # weights, train, compile
    "max_position_embeddings": AT_LEAST_ONE, "num_processes": AT_LEAST_ONE, "process_id": NOT_NEGATIVE,
    "num_slices": AT_LEAST_ONE, "assumed_mfu": Range(0, 1, open_below=True),
    # generate, write, serve, eval
    "step": Range(0, note="a checkpoint step of the run"), "max_new_tokens": AT_LEAST_ONE,
    "top_k": Range(0, note="0: no top-k filter"), "port": Range(0, 65535, note="0: any free port"),
    "max_prompt_tokens": AT_LEAST_ONE, "context_len": AT_LEAST_ONE, "max_batch": AT_LEAST_ONE,
    "batch_window_ms": NOT_NEGATIVE, "sync_every": AT_LEAST_ONE, "baseline_limit": AT_LEAST_ONE,
    "batch_size": AT_LEAST_ONE, "judge_samples": AT_LEAST_ONE, "judge_concurrency": AT_LEAST_ONE,
    "judge_max_pairs": AT_LEAST_ONE,
    # the inference engine (serve, write, compile --decode, bench serve)
    "max_waiting": AT_LEAST_ONE, "prefill_chunk": AT_LEAST_ONE, "batch": AT_LEAST_ONE, "clients": AT_LEAST_ONE,
    "requests": AT_LEAST_ONE, "short_tokens": AT_LEAST_ONE, "long_tokens": AT_LEAST_ONE,
    "stages": AT_LEAST_ONE, "answer_tokens": AT_LEAST_ONE, "header_tokens": AT_LEAST_ONE, "rows": AT_LEAST_ONE,
    "tokens": AT_LEAST_ONE, "batch_compiles": AT_LEAST_ONE,
}


def check_numbers(args: argparse.Namespace) -> None:
  """GinConfigError for the first numeric flag of `args` outside its range (RANGES)."""
  for dest, valid in RANGES.items():
    value = getattr(args, dest, None)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
      continue
    if not valid.holds(value):
      raise GinConfigError(f"--{dest} {_shown(value)}: expected {valid.describe(isinstance(value, int))}")


def saved_steps(run_dir: str) -> list[int] | None:
  """The checkpoint steps of a local run directory (checkpoints/<step>); None where they cannot be listed
  without Orbax (gs://, or no checkpoints folder: the command's own error then names the problem)."""
  folder = Path(run_dir) / "checkpoints"
  if "://" in run_dir or not folder.is_dir():
    return None
  return sorted(int(child.name) for child in folder.iterdir() if child.name.isdigit())


def check_step(args: argparse.Namespace) -> None:
  """GinConfigError for a --step of which --run_dir holds no checkpoint, naming the steps it has."""
  step, run_dir = getattr(args, "step", None), getattr(args, "run_dir", None)
  if step is None or not run_dir:
    return
  steps = saved_steps(str(run_dir))
  if steps is not None and step not in steps:
    have = f"its checkpoints are at steps {', '.join(map(str, steps))}" if steps else "it has no checkpoint yet"
    raise GinConfigError(f"--step {step}: {run_dir} has no checkpoint at step {step}; {have} (leave --step out "
                         "for the latest)")
