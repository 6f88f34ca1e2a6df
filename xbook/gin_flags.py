"""t5x-style gin flags: `--gin_file=PATH` (repeatable) and `--gin.NAME=VALUE` bindings, and `configured`:
how an entry point builds a config dataclass with the bindings.

Config dataclasses (OptimizerConfig, MeshConfig, TpuTarget, ScaffoldTargets, WriteConfig) are registered
with `gin.external_configurable`, so calling the class anywhere gives its plain defaults: library code
never reads gin's global state. An entry point (a command, `train()`) calls `configured(cls)` once and
passes the result down as an argument.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Sequence, TypeVar

import gin

ConfigT = TypeVar("ConfigT")

# Gin files name each other relative to the repository root (e.g. include 'configs/models/tiny.gin').
REPO_ROOT = Path(__file__).resolve().parents[1]

# The gin files and bindings of the last parse_gin (the command line's), for messages that name a command to run.
_PARSED: tuple[tuple[str, ...], tuple[str, ...]] = ((), ())


def split_gin_bindings(argv: Sequence[str]) -> tuple[list[str], list[str]]:
  """Separate `--gin.NAME=VALUE` arguments (returned as "NAME=VALUE") from the rest of argv."""
  rest, bindings = [], []
  for arg in argv:
    if arg.startswith("--gin."):
      name, sep, value = arg[len("--gin."):].partition("=")
      if not sep:
        raise SystemExit(f"error: {arg}: gin bindings are written --gin.NAME=VALUE")
      bindings.append(f"{name} = {value}")
    else:
      rest.append(arg)
  return rest, bindings


def parse_gin(files: Sequence[str], bindings: Sequence[str]) -> None:
  """Parse gin files then bindings (later ones win); files resolve from the cwd or the repo root."""
  global _PARSED
  gin.add_config_file_search_path(str(REPO_ROOT))
  gin.parse_config_files_and_bindings(list(files), list(bindings), finalize_config=False)
  _PARSED = (tuple(str(f) for f in files), tuple(bindings))


def parsed() -> tuple[tuple[str, ...], tuple[str, ...]]:
  """(gin files, "NAME = VALUE" bindings) of the last `parse_gin`, as the command line gave them."""
  return _PARSED


def configured(cls: type[ConfigT], **overrides: object) -> ConfigT:
  """A `cls` with the operative gin bindings of its configurable (e.g. `OptimizerConfig.learning_rate`),
  then `overrides` (fields left None are not overrides: a flag that was not given).

  For entry points only (the `xbook` commands, `train()`): library code takes its configs as arguments.
  """
  made = gin.get_configurable(cls)()
  given = {name: value for name, value in overrides.items() if value is not None}
  return dataclasses.replace(cls(**{f.name: getattr(made, f.name) for f in dataclasses.fields(cls)}), **given)
