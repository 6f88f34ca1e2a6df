"""The import graph follows DESIGN.md's layer order: a package imports only the packages above it.

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
