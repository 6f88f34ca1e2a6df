"""The import graph follows DESIGN.md's layer order: a package imports only the packages above it.
Configuration enters at the entry points: library code never reads gin.

Order (DESIGN.md "Layout"): books -> scaffold -> data -> model -> train -> infer / evals (side by side,
evals may read infer), except that `model` knows nothing of `data` (train wires them together). `cli`
(with its cli_*.py modules) sees everything and nothing imports it; `__main__` modules are entry points
(the edge, like cli) and are exempt. The shared helpers at the top of the package (xbook.atomic,
xbook.figures, ...) sit below every layer: any layer may import them, and they import no layer.
"""

from __future__ import annotations

import ast
from pathlib import Path

ORDER = ("books", "scaffold", "data", "model", "train", "infer", "evals")
RANK = {layer: i for i, layer in enumerate(ORDER)}
# Pairs (layer, other) that the order alone would allow but DESIGN.md rules out.
UNRELATED = {("model", "data")}
PACKAGE = Path(__file__).resolve().parents[1] / "xbook"


def _imported(path: Path) -> set[str]:
  """The xbook modules `path` imports (each `from a import b` counted as a and a.b)."""
  names = set()
  for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
    if isinstance(node, ast.ImportFrom) and node.module:
      names |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    elif isinstance(node, ast.Import):
      names |= {alias.name for alias in node.names}
  return {name for name in names if name.startswith("xbook.")}


def _allowed(layer: str, other: str) -> bool:
  if other == "cli":
    return False
  if other not in RANK:  # xbook.atomic, xbook.figures, ...: shared helpers below every layer
    return True
  return RANK[other] <= RANK[layer] and (layer, other) not in UNRELATED


def test_no_module_imports_a_layer_below_it():
  wrong = []
  for path in sorted(PACKAGE.rglob("*.py")):
    parts = path.relative_to(PACKAGE).parts
    if len(parts) < 2 or parts[0] not in RANK or path.name == "__main__.py":
      continue
    for name in _imported(path):
      other = name.split(".")[1]
      if not _allowed(parts[0], other):
        wrong.append(f"{path.relative_to(PACKAGE.parent)} imports {name}")
  assert not wrong, "imports against DESIGN.md's layer order:\n" + "\n".join(sorted(set(wrong)))


def test_shared_helpers_import_no_layer():
  # cli and its own modules (cli_*.py) and __main__ are the edge, not helpers.
  helpers = [path for path in PACKAGE.glob("*.py") if not path.stem.startswith("cli") and path.stem != "__main__"]
  wrong = [f"{path.relative_to(PACKAGE.parent)} imports {name}" for path in helpers
           for name in _imported(path) if name.split(".")[1] in RANK or name.split(".")[1] == "cli"]
  assert helpers and not wrong, "shared helpers importing a layer:\n" + "\n".join(sorted(wrong))


# Configuration enters at the entry points: the commands (cli.py), `train()` (the gin entry of training)
# and trainer_from_gin (the Trainer `train()` would build, for `xbook compile` and the benchmarks).
# Library code takes its configs as arguments and never reads gin's global state.
ENTRY_POINTS = {"xbook/cli.py": None,  # every function
                "xbook/train/trainer.py": {"train", "trainer_from_gin", "train_setting", "_bound_setting"}}
# What reads gin's global state when called: gin's own queries, xbook.gin_flags.configured (a config
# dataclass with its bindings) and the configurable functions.
READS_GIN = {"configured", "query_parameter", "logical_axis_rules", "configured_profile"}


def _calls_by_function(tree: ast.Module):
  """(enclosing top-level function or class, called name) for every call in a module."""
  for top in tree.body:
    for node in ast.walk(top):
      if isinstance(node, ast.Call):
        func = node.func
        if isinstance(func, ast.Attribute) and getattr(func.value, "id", None) == "nn":
          continue  # flax's nn.logical_axis_rules(rules) context: the rules it is given
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
        yield getattr(top, "name", None), name


def test_library_code_never_reads_gin_global_state():
  wrong = []
  for path in sorted(PACKAGE.rglob("*.py")):
    where = str(path.relative_to(PACKAGE.parent))
    if where == "xbook/gin_flags.py" or path.stem.startswith("cli_"):  # the gin helpers themselves
      continue
    allowed = ENTRY_POINTS.get(where, set())
    for function, name in _calls_by_function(ast.parse(path.read_text(encoding="utf-8"))):
      if name in READS_GIN and allowed is not None and function not in allowed:
        wrong.append(f"{where}: {function or 'module level'} calls {name}()")
  assert not wrong, ("library code reading gin (build the config at the entry point and pass it down):\n"
                     + "\n".join(wrong))


def test_config_dataclasses_are_plain_classes_registered_for_gin():
  """A class decorated with @gin.configurable reads gin whenever any code constructs it; registered with
  gin.external_configurable, it reads gin only when an entry point asks (xbook.gin_flags.configured)."""
  from xbook import cli_gin
  decorated = [f"{path.relative_to(PACKAGE.parent)}: {node.name}" for path in sorted(PACKAGE.rglob("*.py"))
               for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
               if isinstance(node, ast.ClassDef) and any("gin" in ast.unparse(d) for d in node.decorator_list)]
  assert not decorated, "config classes decorated with gin:\n" + "\n".join(decorated)
  registered = {c.name for c in cli_gin.configurables()}
  assert {"OptimizerConfig", "MeshConfig", "TpuTarget", "ScaffoldTargets", "WriteConfig"} <= registered
