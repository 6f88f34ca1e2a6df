"""The import graph follows the layer order of docs/architecture.md: a package imports only the packages above
it, and no import cycle closes, not even through an import inside a function. Configuration enters at the
entry points: library code never reads gin, and importing a module changes nothing (not os.environ).

Order (docs/architecture.md, "Layers"): books -> scaffold -> data -> model -> train -> infer / evals (side by side,
evals may read infer), except that `model` knows nothing of `data` (train wires them together). `cli`
(the package xbook/cli, one module per command group, with the cli_*.py modules) sees everything and nothing
imports it; `__main__` modules are entry points (the edge, like cli) and are exempt. The shared helpers at the
top of the package (xbook.atomic, xbook.figures, ...) sit below every layer: any layer may import them, and
they import no layer.
"""

from __future__ import annotations

import ast
import io
import json
import os
import subprocess
import sys
import textwrap
import tokenize
from pathlib import Path
from typing import Callable, Mapping, NamedTuple, Sequence

import pytest

ORDER = ("books", "scaffold", "data", "model", "train", "infer", "evals")
RANK = {layer: i for i, layer in enumerate(ORDER)}
# Pairs (layer, other) that the order alone would allow but the layering rules out.
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
  assert not wrong, "imports against the layer order (docs/architecture.md):\n" + "\n".join(sorted(set(wrong)))


def test_shared_helpers_import_no_layer():
  # cli and its own modules (cli_*.py) and __main__ are the edge, not helpers.
  helpers = [path for path in PACKAGE.glob("*.py") if not path.stem.startswith("cli") and path.stem != "__main__"]
  wrong = [f"{path.relative_to(PACKAGE.parent)} imports {name}" for path in helpers
           for name in _imported(path) if name.split(".")[1] in RANK or name.split(".")[1] == "cli"]
  assert helpers and not wrong, "shared helpers importing a layer:\n" + "\n".join(sorted(wrong))


# Configuration enters at the entry points: the commands (the modules of the package xbook/cli), `train()`
# (the gin entry of training) and trainer_from_gin (the Trainer `train()` would build, for `xbook compile` and
# the benchmarks). Library code takes its configs as arguments and never reads gin's global state.
ENTRY_POINTS = {"xbook/cli/": None,  # a folder (ends in /): every function of every module in it
                "xbook/train/trainer.py": {"train", "trainer_from_gin", "train_setting", "_bound_setting"}}
# What reads gin's global state when called: gin's own queries, xbook.gin_flags.configured (a config
# dataclass with its bindings), xbook.gin_flags.parsed (the command line's gin flags) and the configurable
# functions.
READS_GIN = {"configured", "parsed", "query_parameter", "logical_axis_rules", "configured_profile"}


def _gin_readers(where: str) -> set[str] | None:
  """The functions of the module at `where` (a path from the repository root) that may read gin: None for
  all of them (a module of an entry-point folder), else the names ENTRY_POINTS gives it (none for library code)."""
  for entry, functions in ENTRY_POINTS.items():
    if where == entry or (entry.endswith("/") and where.startswith(entry)):
      return functions
  return set()


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
    allowed = _gin_readers(where)
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


# ------------------------------------------------------------------------------------- import cycles
# The import graph, function-level imports included: an import inside a function still runs the imported
# module, and a cycle it hides breaks the day someone moves it to the top. A function-level import of an
# xbook module in library code is allowed only to keep start-up fast, and says so in a comment with the
# words "start-up". The entry points are exempt from that rule: the cli package and the cli_*.py modules import
# each command's modules inside its handler so that `xbook --help` starts in a fraction of a second.
START_UP_NOTE = "start-up"


class Import(NamedTuple):
  module: str  # the importing module
  target: str  # the package module it imports
  where: str  # path:line
  in_function: bool
  comment: str  # the comments on the statement's lines


def package_modules(package_dir: Path) -> dict[str, Path]:
  """{dotted name: file} of every module of the package in `package_dir` (a package under its own name)."""
  modules = {}
  for path in sorted(package_dir.rglob("*.py")):
    parts = path.relative_to(package_dir.parent).with_suffix("").parts
    modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
  return modules


def _target(name: str, modules: Mapping[str, Path]) -> str | None:
  """The module `name` imports: itself, or the package or module that holds the attribute it names."""
  while name and name not in modules:
    name = name.rpartition(".")[0]
  return name or None


def _absolute(node: ast.ImportFrom, module: str, is_package: bool) -> str:
  if not node.level:
    return node.module or ""
  base = module.split(".")[:len(module.split(".")) - node.level + (1 if is_package else 0)]
  return ".".join(base + ([node.module] if node.module else []))


def package_imports(package_dir: Path) -> list[Import]:
  """Every import of a module of the package by one of its modules (each name of `from a import b, c`
  resolved to a.b when that is a module, else a)."""
  modules = package_modules(package_dir)
  found = []
  for module, path in modules.items():
    source = path.read_text(encoding="utf-8")
    tree = ast.parse(source)
    comments = {}
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
      if token.type == tokenize.COMMENT:
        comments[token.start[0]] = token.string
    in_function = {id(inner) for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
                   for inner in ast.walk(node)}
    where = path.relative_to(package_dir.parent)
    for node in ast.walk(tree):
      if isinstance(node, ast.ImportFrom):
        base = _absolute(node, module, path.name == "__init__.py")
        names = [_target(f"{base}.{alias.name}", modules) for alias in node.names]
      elif isinstance(node, ast.Import):
        names = [_target(alias.name, modules) for alias in node.names]
      else:
        continue
      comment = " ".join(comments.get(line, "") for line in range(node.lineno, node.end_lineno + 1))
      found += [Import(module, name, f"{where}:{node.lineno}", id(node) in in_function, comment)
                for name in dict.fromkeys(names) if name and name != module]
  return found


def _path_back(start: str, edges: Mapping[str, Mapping[str, Import]]) -> list[Import]:
  """The shortest chain of imports that leads from `start` back to it ([] when none does)."""
  paths, frontier = {start: []}, [start]
  while frontier:
    following = []
    for module in frontier:
      for target, imp in sorted(edges.get(module, {}).items()):
        if target == start:
          return paths[module] + [imp]
        if target not in paths:
          paths[target] = paths[module] + [imp]
          following.append(target)
    frontier = following
  return []


def import_cycles(imports: Sequence[Import]) -> list[str]:
  """One cycle of `imports` (package_imports) through each module on one, as "a -> b (where) -> a (where)";
  [] for none."""
  edges: dict[str, dict[str, Import]] = {}
  for imp in imports:
    edges.setdefault(imp.module, {}).setdefault(imp.target, imp)
  cycles, reported = [], set()
  for start in sorted(edges):
    path = [] if start in reported else _path_back(start, edges)
    if path:
      reported |= {imp.module for imp in path}
      cycles.append(start + "".join(f" -> {imp.target} ({imp.where}{', in a function' if imp.in_function else ''})"
                                    for imp in path))
  return cycles


def unexplained_function_imports(imports: Sequence[Import], entry_points: Callable[[str], bool]) -> list[str]:
  """The function-level ones of `imports` (package_imports), outside the entry points, whose comment does
  not say that they are there for start-up time."""
  return [f"{imp.where}: {imp.module} imports {imp.target} inside a function"
          for imp in imports
          if imp.in_function and not entry_points(imp.module) and START_UP_NOTE not in imp.comment]


def _is_entry_point(module: str) -> bool:
  """The package's command line (its module or package `cli`, every module in it, its cli_*.py modules) and
  the __main__ modules."""
  parts = module.split(".")
  return parts[1:2] == ["cli"] or parts[-1].startswith("cli_") or parts[-1] == "__main__"


def test_the_entry_points_are_the_cli_package_the_cli_modules_and_main():
  assert all(_is_entry_point(m) for m in ("xbook.cli", "xbook.cli.books", "xbook.cli.__main__", "xbook.cli_gin",
                                          "xbook.__main__", "xbook.train.__main__"))
  assert not any(_is_entry_point(m) for m in ("xbook.books", "xbook.scaffold.build", "xbook.infer.client"))
  assert _gin_readers("xbook/cli/data.py") is None and _gin_readers("xbook/cli/__init__.py") is None
  assert _gin_readers("xbook/client.py") == set() and _gin_readers("xbook/data/cli.py") == set()
  assert _gin_readers("xbook/train/trainer.py") == ENTRY_POINTS["xbook/train/trainer.py"]


@pytest.fixture(scope="module")
def xbook_imports() -> list[Import]:
  return package_imports(PACKAGE)


def test_no_import_cycles_function_level_imports_included(xbook_imports):
  cycles = import_cycles(xbook_imports)
  assert not cycles, ("import cycles (move what both sides need into a module of its own):\n"
                      + "\n".join(cycles))


def test_function_level_imports_in_library_code_are_there_for_start_up_time(xbook_imports):
  wrong = unexplained_function_imports(xbook_imports, _is_entry_point)
  assert not wrong, (f"move these imports to the top of their module, or say in their comment that they keep "
                     f"start-up fast (the words {START_UP_NOTE!r} and what they defer):\n" + "\n".join(wrong))


# ----------------------------------------------------------------------------- side effects on import
# Importing a module changes nothing outside it: the environment set-up belongs to the entry points
# (xbook.host_env). One fresh interpreter imports every module in turn (the __main__ modules run their
# program, so they are left out) and reports the os.environ changes each import made. The third-party
# packages the modules import are imported first, so that a change they make is not blamed on xbook.
_ENV_PROBE = """
import importlib, json, os, sys
sys.path.insert(0, sys.argv[1])
for name in json.loads(sys.argv[3]):
  try:
    importlib.import_module(name)
  except Exception:
    pass
changed = {}
for name in json.loads(sys.argv[2]):
  before = dict(os.environ)
  importlib.import_module(name)
  after = dict(os.environ)
  keys = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
  if keys:
    changed[name] = keys
print(json.dumps(changed))
"""


def _third_party(modules: Mapping[str, Path], package: str) -> list[str]:
  """The modules outside the package that `modules` import at their top level."""
  names = set()
  for path in modules.values():
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
      if isinstance(node, ast.Import):
        names |= {alias.name for alias in node.names}
      elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
        names.add(node.module)
  return sorted(name for name in names if name.split(".")[0] != package and name != "__future__")


def environ_changes_on_import(package_dir: Path) -> dict[str, list[str]]:
  """{module: the os.environ keys importing it changed} for the package's modules (none: {})."""
  modules = {name: path for name, path in package_modules(package_dir).items() if path.name != "__main__.py"}
  env = {k: v for k, v in os.environ.items() if not k.startswith(("TPU_", "ALLOW_MULTIPLE_LIBTPU"))}
  result = subprocess.run(
      [sys.executable, "-c", _ENV_PROBE, str(package_dir.parent), json.dumps(sorted(modules)),
       json.dumps(_third_party(modules, package_dir.name))],
      capture_output=True, text=True, env=env, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  return json.loads(result.stdout.strip().splitlines()[-1])


def test_importing_a_module_leaves_the_environment_as_it_was():
  changed = environ_changes_on_import(PACKAGE)
  assert not changed, ("modules that change os.environ when imported (set the environment up in the entry "
                       "points: xbook.host_env):\n" + "\n".join(f"{m}: {keys}" for m, keys in changed.items()))


# ----------------------------------------------------- the checks catch what they look for (a made-up package)
def _write_package(root: Path, files: Mapping[str, str]) -> Path:
  for name, text in files.items():
    (root / name).parent.mkdir(parents=True, exist_ok=True)
    (root / name).write_text(textwrap.dedent(text), encoding="utf-8")
  return root / "toy_pkg"


def test_the_checks_find_a_cycle_hidden_in_a_function_an_unexplained_import_and_an_environment_change(tmp_path):
  package = _write_package(tmp_path, {
      "toy_pkg/__init__.py": "",
      "toy_pkg/a.py": """
          import os
          from toy_pkg import b
          os.environ["PKG_MADE_UP"] = "1"
          """,
      "toy_pkg/b.py": """
          def late():
            from toy_pkg.a import os  # deferred, for no reason
            return os
          """,
      "toy_pkg/c.py": """
          def quick():
            from . import b  # start-up: stands in for a heavy module
            return b
          """,
      "toy_pkg/cli.py": """
          def main():
            from toy_pkg import c
            return c
          """})
  cycles = import_cycles(package_imports(package))
  assert cycles == ["toy_pkg.a -> toy_pkg.b (toy_pkg/a.py:3) -> toy_pkg.a (toy_pkg/b.py:3, in a function)"]
  assert unexplained_function_imports(package_imports(package), _is_entry_point) == [
      "toy_pkg/b.py:3: toy_pkg.b imports toy_pkg.a inside a function"]
  assert environ_changes_on_import(package) == {"toy_pkg.a": ["PKG_MADE_UP"]}
  # Broken cycle, explained import, no side effect: nothing to report.
  (package / "b.py").write_text("def late():\n  return None\n")
  (package / "a.py").write_text("from toy_pkg import b\n\ndef set_up():\n  import os\n"
                                "  os.environ['PKG_MADE_UP'] = '1'\n")
  imports = package_imports(package)
  assert import_cycles(imports) == [] and unexplained_function_imports(imports, _is_entry_point) == []
  assert environ_changes_on_import(package) == {}


# ------------------------------------------------------------------------------------------ the map
def test_the_readme_layout_and_the_architecture_page_list_every_package():
  """docs/architecture.md is the map of the package, and the README's Layout its summary: neither leaves a
  package out."""
  packages = sorted(f"xbook/{path.parent.name}" for path in PACKAGE.glob("*/__init__.py"))
  readme = (PACKAGE.parent / "README.md").read_text(encoding="utf-8")
  layout = readme[readme.index("## Layout"):].split("\n## ", 1)[0]
  architecture = (PACKAGE.parent / "docs/architecture.md").read_text(encoding="utf-8")
  assert packages and not [p for p in packages if p not in layout], "packages missing from the README's Layout"
  assert not [p for p in packages if p not in architecture], "packages missing from docs/architecture.md"
