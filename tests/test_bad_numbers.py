"""Every number is checked at the entry point: a value out of range is one `error:` line naming the flag (or
gin binding) and its valid range, exit status 1, no traceback, and nothing written.

The commands run in this process as the `xbook` program runs them (cli.main() with sys.argv: errors become
one line through xbook.cli_errors), which is the same path as a subprocess without its start-up cost; the
stderr filter of native output is left off (it would hold the test process's fd 2)."""

from __future__ import annotations

import sys

import pytest

from xbook import cli, cli_errors


def _program(argv, monkeypatch, capsys) -> tuple[int, str]:
  """(exit status, stderr) of `xbook ARGV` run as the program (gin cleared first: a fresh process)."""
  import gin
  gin.clear_config()
  monkeypatch.setattr(cli_errors, "quiet_native_stderr", lambda: None)
  monkeypatch.setattr(sys, "argv", ["xbook", *argv])
  capsys.readouterr()
  try:
    status = cli.main()
  except SystemExit as exit_:  # raise SystemExit("error: ...") prints its text and exits 1
    status = exit_.code
    if isinstance(status, str):
      print(status, file=sys.stderr)
      status = 1
  return status, capsys.readouterr().err


TRAIN = ["train", "--gin_file=configs/runs/demo.gin", "--run_dir", "{tmp}/run"]
WRITE = ["write", "--run_dir", "{tmp}/no_run", "--prompt", "A ghost story.", "--out", "{tmp}/book"]

# (arguments, the phrases of the one error line). {tmp}, {scaffolds}, {run} are filled in.
BAD_NUMBERS = [
    (["vocab", "train", "--scaffolds", "{scaffolds}", "--out", "{tmp}/v.model", "--vocab_size", "0"],
     ["--vocab_size 0: expected an integer > 267", "segment markers"]),
    (["vocab", "train", "--scaffolds", "{scaffolds}", "--out", "{tmp}/v.model", "--vocab_size", "-5"],
     ["--vocab_size -5: expected an integer > 267"]),
    (["vocab", "train", "--scaffolds", "{scaffolds}", "--out", "{tmp}/v.model", "--vocab_size", "20"],
     ["--vocab_size 20: expected an integer > 267"]),
    (["data", "inspect", "--scaffolds", "{scaffolds}", "--vocab", "{tmp}/v.model", "--seq_len", "-512"],
     ["--seq_len -512: expected an integer >= 1"]),
    (["serve", "--run_dir", "{tmp}/no_run", "--port", "-1"], ["--port -1: expected an integer from 0 to 65535"]),
    (["serve", "--run_dir", "{tmp}/no_run", "--port", "99999"], ["--port 99999: expected an integer from 0 to 65535",
                                                                 "0: any free port"]),
    (["serve", "--run_dir", "{tmp}/no_run", "--max_batch", "0"], ["--max_batch 0: expected an integer >= 1"]),
    (["eval", "--books", "{tmp}", "--out", "{tmp}/eval", "--baseline_limit", "-3"],
     ["--baseline_limit -3: expected an integer >= 1"]),
    (["scaffold", "build", "--books", "{tmp}/books.jsonl", "--out", "{tmp}/s.jsonl", "--concurrency", "0"],
     ["--concurrency 0: expected an integer >= 1"]),
    (["scaffold", "build", "--books", "{tmp}/books.jsonl", "--out", "{tmp}/s.jsonl", "--max_tokens", "-5"],
     ["--max_tokens -5: expected an integer >= 1"]),
    (["scaffold", "build", "--books", "{tmp}/books.jsonl", "--out", "{tmp}/s.jsonl", "--cache", "{tmp}"],
     ["--cache {tmp} is a folder: pass the SQLite file"]),
    (["books", "fetch", "--catalog", "{tmp}/catalog.csv", "--limit", "0", "--cache", "{tmp}/gutenberg"],
     ["--limit 0: expected an integer >= 1"]),
    (["books", "inspect", "{scaffolds}"], ["is JSON (a books JSONL", "reads one Gutenberg .txt novel"]),
    (["generate", "--run_dir", "{run}", "--prompt", "hi", "--step", "7"],
     ["--step 7:", "has no checkpoint at step 7; its checkpoints are at steps 30, 60"]),
    (["generate", "--run_dir", "{run}", "--prompt", "hi", "--max_new_tokens", "0"],
     ["--max_new_tokens 0: expected an integer >= 1"]),
    (WRITE + ["--gin.WriteConfig.max_chapters=0"], ["WriteConfig.max_chapters = 0: expected a number >= 1"]),
    (WRITE + ["--gin.WriteConfig.text_temperature=-0.5"], ["WriteConfig.text_temperature = -0.5: expected a number >= 0"]),
    (WRITE + ["--gin.WriteConfig.top_p=1.5"], ["WriteConfig.top_p = 1.5: expected a number > 0 and <= 1"]),
    (TRAIN + ["--gin.train.batch_size=0"], ["train.batch_size = 0: expected a number >= 1"]),
    (TRAIN + ["--gin.train.steps=-5"], ["train.steps = -5: expected a number >= 1"]),
    (TRAIN + ["--gin.OptimizerConfig.learning_rate=-0.001"], ["OptimizerConfig.learning_rate = -0.001: expected a number > 0"]),
]


def test_bad_numbers_are_one_error_line_naming_the_flag_and_range_and_write_nothing(tmp_path, scaffold_file,
                                                                                   monkeypatch, capsys):
  monkeypatch.chdir(cli_errors.PACKAGE.parent)  # the gin files are named from the repository root
  run = tmp_path / "a_run"
  for step in ("30", "60"):
    (run / "checkpoints" / step).mkdir(parents=True)
  (tmp_path / "catalog.csv").write_text("Text#,Type\n")
  before = sorted(p.name for p in tmp_path.iterdir())
  failures = []
  for arguments, expected in BAD_NUMBERS:
    fill = lambda text: text.format(tmp=tmp_path, scaffolds=scaffold_file, run=run)  # noqa: E731
    status, err = _program(list(map(fill, arguments)), monkeypatch, capsys)
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    problems = [f"exit status {status}"] if status != 1 else []
    problems += ["a traceback"] if "Traceback" in err else []
    problems += [f"{len(errors)} error lines"] if len(errors) != 1 else []
    problems += [f"no {fill(e)!r}" for e in expected if errors and fill(e) not in errors[0]]
    if problems:
      failures.append(f"xbook {' '.join(map(fill, arguments))}: {', '.join(problems)}\n{err[-2000:]}")
  assert not failures, "\n".join(failures)
  assert sorted(p.name for p in tmp_path.iterdir()) == before  # no run, book, vocabulary or eval folder left


@pytest.mark.parametrize("argv", [["serve", "--run_dir", "r", "--port", "8000"], ["serve", "--run_dir", "r", "--port", "0"],
                                  ["eval", "--books", "b", "--out", "o", "--baseline_limit", "1"]])
def test_numbers_in_range_pass_the_check(argv):
  from xbook import cli_checks
  cli_checks.check_numbers(cli.build_parser(argv).parse_args(argv))
