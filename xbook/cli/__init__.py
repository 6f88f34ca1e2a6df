"""The `xbook` command: one subcommand per job, each a thin shell over the library.

Run `xbook --help` for the list and `xbook SUBCOMMAND --help` for each one's example. Each command group
has its module here (books, scaffold, vocab, data, weights, bench, train with compile, generation: generate
and write, evaluation: eval, serve) with its `add_parser` and its handlers; this module builds the parser
from them and runs a command line (`main`).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path
from typing import Sequence

from xbook import __version__, cli_checks, cli_errors, cli_gin
from xbook.cli import bench, books, data, evaluation, generation, scaffold, serve, train, vocab, weights
from xbook.gin_flags import split_gin_bindings


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
  """The `xbook` parser. Subcommands whose arguments come from a heavy module (the benchmarks) get them
  only when `argv` runs them, or always when `argv` is None (a full parser, for tests and docs)."""
  parser = argparse.ArgumentParser(
      prog="xbook", description="Train book-writing language models on human-authored novels.",
      epilog="example:\n  xbook train --gin_file=configs/runs/demo.gin --run_dir=runs/demo",
      formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--version", action="version", version=f"xbook {__version__}")
  parser.add_argument("--verbose", action="store_true",
                      help="on an error, print its traceback too, and let libraries log (also anywhere after "
                           f"the subcommand, or {cli_errors.VERBOSE_ENV}=1)")
  commands = parser.add_subparsers(title="subcommands", metavar="SUBCOMMAND")
  for group in (books, scaffold, vocab, data, weights):
    group.add_parser(commands)
  bench.add_parser(commands, argv)
  for group in (train, generation, evaluation, serve):
    group.add_parser(commands)
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
