"""The `xbook` command line: every subcommand is listed and documents itself with an example."""

from __future__ import annotations

import subprocess
import sys

import pytest

from xbook import cli


def _subcommands(parser):
  for action in parser._actions:  # argparse keeps subparsers here
    if action.__class__.__name__ == "_SubParsersAction":
      for name, sub in action.choices.items():
        yield (name,)
        yield from ((name,) + nested for nested in _subcommands(sub))


COMMANDS = sorted(_subcommands(cli.build_parser()))


def test_top_level_help_lists_the_stages():
  help_text = cli.build_parser().format_help()
  for name in ("books", "scaffold", "vocab", "data", "train", "generate"):
    assert name in help_text


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_each_subcommand_has_help_with_an_example(command, capsys):
  with pytest.raises(SystemExit) as exit_info:
    cli.main(list(command) + ["--help"])
  assert exit_info.value.code == 0
  out = capsys.readouterr().out
  assert "example:" in out and f"xbook {' '.join(command)}" in out


def test_gin_bindings_are_refused_where_no_gin_config_applies(capsys):
  with pytest.raises(SystemExit):
    cli.main(["vocab", "train", "--scaffolds", "x", "--out", "y", "--gin.train.steps=3"])
  assert "only accepted by gin-configured subcommands" in capsys.readouterr().err


def test_console_script_runs():
  out = subprocess.run([sys.executable, "-m", "xbook.cli", "--version"], capture_output=True, text=True,
                       check=True).stdout
  assert out.startswith("xbook ")
