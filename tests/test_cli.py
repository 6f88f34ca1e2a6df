"""The `xbook` command line: every subcommand is listed and documents itself with an example."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

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



def _mesh_help(command: tuple[str, ...]) -> str:
  parser = cli.build_parser()
  for name in command:
    parser = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction").choices[name]
  return next(a for a in parser._actions if "--mesh" in a.option_strings).help


def test_mesh_help_says_whether_the_command_reads_gins_mesh_config():
  # The decoding commands read --mesh only; `xbook eval` falls back to MeshConfig as gin binds it.
  for command in (("generate",), ("write",), ("serve",)):
    assert "reads no MeshConfig from gin" in _mesh_help(command), command
  assert "default: MeshConfig if gin binds it" in _mesh_help(("eval",))

def test_gin_bindings_are_refused_where_no_gin_config_applies(capsys):
  with pytest.raises(SystemExit):
    cli.main(["vocab", "train", "--scaffolds", "x", "--out", "y", "--gin.train.steps=3"])
  assert "only accepted by gin-configured subcommands" in capsys.readouterr().err


def test_console_script_runs():
  out = subprocess.run([sys.executable, "-m", "xbook.cli", "--version"], capture_output=True, text=True,
                       check=True).stdout
  assert out.startswith("xbook ")


def test_compile_figures_are_printed_at_a_readable_scale():
  from xbook.train import aot
  assert (aot._count(918_000), aot._count(24e9), aot._count(12)) == ("918K", "24B", "12")
  assert (aot._bytes(14.6 * 2**20), aot._bytes(80 * 2**30), aot._bytes(812)) == ("14.60 MiB", "80.00 GiB",
                                                                                 "812 bytes")
  assert (aot._seconds(1.4e-5), aot._seconds(0.0123), aot._seconds(3.5)) == ("14 µs", "12.3 ms", "3.50 s")


def test_vocab_train_says_when_the_text_holds_fewer_pieces_than_asked(scaffold_file, tmp_path, capsys):
  assert cli.main(["vocab", "train", "--scaffolds", str(scaffold_file), "--out", str(tmp_path / "v.model"),
                   "--vocab_size", "32000"]) == 0
  captured = capsys.readouterr()
  pieces = int(captured.out.split("(")[1].split()[0])
  assert pieces < 32000
  assert f"note: {pieces} pieces, not the 32000 asked for" in captured.err and "more books" in captured.err


# ------------------------------------------------------------------------------- documented commands
def _commands(text: str) -> list[str]:
  """The `xbook ...` command lines of a text (continuation lines joined; env prefixes, comments and
  redirections dropped)."""
  import re
  joined = re.sub(r"\\\n\s*", " ", text)
  found = []
  for line in joined.splitlines():
    match = re.search(r"(?:^|\s)(?:\.venv/bin/)?xbook (.*)$", line.strip())
    if not match or line.strip().startswith(("#", "python")):
      continue
    command = re.split(r"\s+#\s", match.group(1))[0]
    command = re.split(r"\s[>|]\s", command)[0]
    found.append(command.strip())
  return found


def _readme_commands() -> list[str]:
  import re
  readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
  blocks = re.findall(r"```bash\n(.*?)```", readme, flags=re.S)
  return [c for block in blocks for c in _commands(block)]


def _help_commands() -> list[str]:
  parser = cli.build_parser()
  found = []
  for command in COMMANDS:
    sub = parser
    for word in command:
      sub = next(a for a in sub._actions if a.__class__.__name__ == "_SubParsersAction").choices[word]
    found += _commands((sub.epilog or "").split("example:", 1)[-1])
  return found


DOCUMENTED = sorted(set(_readme_commands() + _help_commands()))


def test_the_documentation_shows_commands():
  assert len(_readme_commands()) >= 10 and len(_help_commands()) >= 30


@pytest.mark.parametrize("command", DOCUMENTED)
def test_every_documented_command_parses_and_its_gin_config_checks(command):
  """Each `xbook` command of the README's walk-throughs and of every --help example is accepted as written
  by the parser and, for gin-configured commands, by the gin check (files, names, types): flags cannot
  drift from the code. (This does not run them: launch/demo.sh runs the toy pipeline end to end.)"""
  import shlex
  from xbook import cli_gin
  from xbook.gin_flags import split_gin_bindings
  argv, bindings = split_gin_bindings(shlex.split(command))
  try:
    args = cli.build_parser(argv).parse_args(argv)
  except SystemExit as exit_info:
    pytest.fail(f"xbook {command}: refused by the parser (exit {exit_info.code})")
  assert hasattr(args, "handler"), command
  if args.gin_modules:
    cli_gin.precheck(args.gin_file, bindings)
