"""What the command groups of `xbook` share: adding a group or a subcommand, the source constants their
choices come from, refusing to replace an output file, and the device-mesh flags of the decoding commands."""

from __future__ import annotations

import argparse
import functools
import textwrap
from pathlib import Path
from typing import Callable, Sequence

from xbook import cli_gin


@functools.lru_cache(maxsize=None)
def source_constant(module: str, name: str) -> tuple[str, ...]:
  """A tuple constant of an xbook module, read from its source: the parser is built without importing
  the model (jax), so that `xbook --help` and gin mistakes answer in a second."""
  import ast
  path = Path(__file__).resolve().parents[1].joinpath(*module.split(".")[1:]).with_suffix(".py")
  for node in ast.parse(path.read_text(encoding="utf-8")).body:
    if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == name for t in node.targets):
      return tuple(ast.literal_eval(node.value))
  raise LookupError(f"{module}.{name} is not a literal constant")


def add_group(subparsers, name: str, help_text: str, example: str):
  """A subcommand with actions of its own (e.g. `xbook books segment`)."""
  parser = subparsers.add_parser(name, help=help_text, description=help_text,
                                 epilog="example:\n  " + example,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
  return parser.add_subparsers(title=f"{name} subcommands", metavar="ACTION")


def add_command(subparsers, name: str, help_text: str, example: str, handler: Callable[[argparse.Namespace], int],
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


def refuse_overwrite(path: str, overwrite: bool, flag: str = "--out") -> None:
  """A command's output file that exists and is not empty is replaced only with --overwrite."""
  if "://" in path or overwrite or not Path(path).exists():
    return
  if Path(path).is_dir():
    raise SystemExit(f"error: {flag} {path} is a folder: pass a file name")
  if Path(path).stat().st_size:
    raise SystemExit(f"error: {flag} {path} exists already: pass --overwrite to replace it, or another {flag}")


def add_mesh_flags(p: argparse.ArgumentParser) -> None:
  """--mesh and --shard_cache_length: decoding on a device mesh (xbook.infer.placement).

  The decoding commands (generate, write, serve) read the mesh from --mesh only, never from gin's MeshConfig
  (`xbook eval` has a --mesh of its own that falls back to MeshConfig), and the help says so.
  """
  p.add_argument("--mesh", default=None, metavar="AXIS=N,...",
                 help="decode on a device mesh, e.g. --mesh tensor=4,sequence=2 (axes data, fsdp, sequence, "
                      "tensor; unnamed ones 1, one may be -1): parameters sharded over tensor (heads, MLP) and "
                      "fsdp, the KV cache over kv heads; default: one device (this command reads no MeshConfig "
                      "from gin: pass --mesh)")
  p.add_argument("--shard_cache_length", action="store_true",
                 help="also shard the KV cache's length over the mesh's sequence axis (long contexts)")


def flag_mesh_config(args: argparse.Namespace):
  """The MeshConfig of --mesh (None: decode on one device)."""
  if getattr(args, "mesh", None) is None:
    return None
  from xbook.infer.placement import parse_mesh_flag
  try:
    return parse_mesh_flag(args.mesh)
  except ValueError as error:
    raise cli_gin.GinConfigError(str(error)) from None
