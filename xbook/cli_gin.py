"""Gin mistakes found in the first second: before the heavy imports, before anything is written.

`precheck(files, bindings)` reads the gin files (and their includes) and the `--gin.NAME=VALUE` bindings
with gin's own parser, and checks every binding against a static index of xbook's configurables (read
from the source with `ast`, nothing imported): a missing file, a line gin cannot parse (often an
unquoted string), an unknown configurable or parameter, and a value of the wrong type (by the parameter's
annotation: int, float, bool, str, sequences, mappings, optional) each raise a GinConfigError whose
message names the file and line (or the flag) and the fix. The real parse (xbook.gin_flags.parse_gin,
after the subcommand's modules are imported) still runs after it: `parse` turns what it raises into a
GinConfigError too.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import functools
import os
import re
from pathlib import Path
from typing import Any, Iterator, Sequence

from gin import config_parser

from xbook.gin_flags import REPO_ROOT

PACKAGE = Path(__file__).resolve().parent


class GinConfigError(ValueError):
  """A gin file or binding that cannot configure xbook as written; the message says where and the fix."""


# ------------------------------------------------------------------------------------ the static index
@dataclasses.dataclass(frozen=True)
class Configurable:
  """A gin configurable as the source declares it: its parameters and their annotations (as written)."""

  name: str
  module: str
  params: dict[str, str | None]
  any_kwargs: bool = False
  denylist: tuple[str, ...] = ()

  @property
  def selectors(self) -> set[str]:
    """Every selector gin accepts for it: the name, and the name under each tail of its module path."""
    parts = self.module.split(".")
    return {self.name} | {".".join(parts[i:] + [self.name]) for i in range(len(parts))}


def _module_name(path: Path) -> str:
  relative = path.relative_to(PACKAGE.parent).with_suffix("")
  parts = list(relative.parts)
  if parts[-1] == "__init__":
    parts.pop()
  return ".".join(parts)


def _is_gin_configurable(node: ast.expr) -> bool:
  target = node.func if isinstance(node, ast.Call) else node
  return isinstance(target, ast.Attribute) and target.attr == "configurable" and \
      isinstance(target.value, ast.Name) and target.value.id == "gin"


def _strings(node: ast.expr | None) -> tuple[str, ...]:
  try:
    value = ast.literal_eval(node) if node is not None else ()
  except ValueError:
    return ()
  return tuple(value) if isinstance(value, (list, tuple)) else ()


def _signature(node: ast.FunctionDef | ast.ClassDef) -> tuple[dict[str, str | None], bool]:
  """(parameter: annotation source) and whether it takes **kwargs, of a function or a class."""
  if isinstance(node, ast.ClassDef):
    init = next((item for item in node.body if isinstance(item, ast.FunctionDef) and item.name == "__init__"),
                None)
    if init is None:  # a dataclass: its annotated fields
      return ({item.target.id: ast.unparse(item.annotation) for item in node.body
               if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name)
               and "ClassVar" not in ast.unparse(item.annotation)}, False)
    node = init
  args = node.args
  params = {a.arg: ast.unparse(a.annotation) if a.annotation else None
            for a in args.posonlyargs + args.args + args.kwonlyargs if a.arg not in ("self", "cls")}
  return params, args.kwarg is not None


def _definitions(tree: ast.Module) -> dict[str, ast.FunctionDef | ast.ClassDef]:
  return {node.name: node for node in tree.body if isinstance(node, (ast.FunctionDef, ast.ClassDef))}


@functools.lru_cache(maxsize=None)
def _parsed(path: Path) -> ast.Module:
  return ast.parse(path.read_text(encoding="utf-8"))


def _module_file(module: str) -> Path | None:
  base = PACKAGE.parent.joinpath(*module.split("."))
  for candidate in (base.with_suffix(".py"), base / "__init__.py"):
    if candidate.is_file():
      return candidate
  return None


def _find_definition(module: str, name: str, depth: int = 0) -> ast.FunctionDef | ast.ClassDef | None:
  """The def or class `name` of xbook module `module`, following `from x import name` re-exports."""
  path = _module_file(module)
  if path is None or depth > 3:
    return None
  tree = _parsed(path)
  found = _definitions(tree).get(name)
  if found is not None:
    return found
  for node in tree.body:
    if isinstance(node, ast.ImportFrom) and node.module and any(a.name == name for a in node.names):
      return _find_definition(node.module, name, depth + 1)
  return None


@functools.lru_cache(maxsize=1)
def configurables() -> tuple[Configurable, ...]:
  """xbook's gin configurables, read from its source (`@gin.configurable` and gin.external_configurable)."""
  found = []
  for path in sorted(PACKAGE.rglob("*.py")):
    text = path.read_text(encoding="utf-8")
    if "gin.configurable" not in text and "gin.external_configurable" not in text:
      continue
    tree, module = _parsed(path), _module_name(path)
    for node in ast.walk(tree):
      if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
        for decorator in node.decorator_list:
          if not _is_gin_configurable(decorator):
            continue
          kwargs = {k.arg: k.value for k in getattr(decorator, "keywords", [])}
          args = getattr(decorator, "args", [])
          name = args[0].value if args and isinstance(args[0], ast.Constant) else node.name
          if "name" in kwargs and isinstance(kwargs["name"], ast.Constant):
            name = kwargs["name"].value
          where = kwargs["module"].value if isinstance(kwargs.get("module"), ast.Constant) else module
          params, any_kwargs = _signature(node)
          found.append(Configurable(name, where, params, any_kwargs, _strings(kwargs.get("denylist"))))
      elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and \
          node.func.attr == "external_configurable" and node.args:
        target = node.args[0]
        kwargs = {k.arg: k.value for k in node.keywords}
        name = ast.unparse(target).split(".")[-1]
        if "name" in kwargs and isinstance(kwargs["name"], ast.Constant):
          name = kwargs["name"].value
        where = kwargs["module"].value if isinstance(kwargs.get("module"), ast.Constant) else module
        definition = _definitions(tree).get(ast.unparse(target))  # defined in this module, or imported
        for imported in ast.walk(tree):
          if isinstance(imported, ast.ImportFrom) and imported.module and \
              any(a.name == ast.unparse(target) for a in imported.names):
            definition = _find_definition(imported.module, ast.unparse(target))
        if definition is None:
          found.append(Configurable(name, where, {}, any_kwargs=True))  # unknown shape: accept any
        else:
          params, any_kwargs = _signature(definition)
          found.append(Configurable(name, where, params, any_kwargs))
  return tuple(found)


def _lookup(selector: str) -> Configurable | None:
  matches = [c for c in configurables() if selector in c.selectors]
  return matches[0] if len(matches) == 1 else None


# -------------------------------------------------------------------------------------------- types
def _accepts(annotation: ast.expr, value: Any) -> bool | None:
  """Whether `value` fits the annotation; None where the annotation says nothing checkable."""
  if isinstance(annotation, ast.Constant) and annotation.value is None:
    return value is None
  if isinstance(annotation, ast.BinOp) and isinstance(annotation.op, ast.BitOr):
    return _any(_accepts(annotation.left, value), _accepts(annotation.right, value))
  if isinstance(annotation, ast.Subscript):
    outer = ast.unparse(annotation.value).split(".")[-1]
    inner = annotation.slice
    items = inner.elts if isinstance(inner, ast.Tuple) else [inner]
    if outer == "Optional":
      return _any(value is None, _accepts(items[0], value))
    if outer == "Union":
      return _any(*(_accepts(item, value) for item in items))
    if outer in ("Sequence", "list", "tuple", "Iterable", "List", "Tuple"):
      return isinstance(value, (list, tuple))
    if outer in ("Mapping", "dict", "Dict", "MutableMapping"):
      return isinstance(value, dict)
    return None
  if isinstance(annotation, ast.Name):
    kind = annotation.id
    if kind == "int":
      return isinstance(value, int) and not isinstance(value, bool)
    if kind == "float":
      return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == "bool":
      return isinstance(value, bool)
    if kind == "str":
      return isinstance(value, str)
    if kind == "None":
      return value is None
  return None


def _any(*answers: bool | None) -> bool | None:
  if any(a is True for a in answers):
    return True
  if all(a is False for a in answers):
    return False
  return None


def _a(annotation: str) -> str:
  words = {"int": "an int", "float": "a number", "bool": "True or False", "str": "a quoted string"}
  text = annotation
  for word, phrase in words.items():
    text = re.sub(rf"\b{word}\b", phrase, text)
  return text.replace(" | None", " or None").replace("Sequence[", "a list of [").replace("Mapping[", "a dict of [")


# ------------------------------------------------------------------------------------------ parsing
class _Reference:
  def __init__(self, name: str, evaluate: bool) -> None:
    self.name, self.evaluate = name, evaluate


class _Macro:
  def __init__(self, name: str) -> None:
    self.name = name


class _Delegate(config_parser.ParserDelegate):
  def configurable_reference(self, scoped_configurable_name, evaluate):
    return _Reference(scoped_configurable_name, evaluate)

  def macro(self, macro_name):
    return _Macro(macro_name)


@dataclasses.dataclass(frozen=True)
class _Binding:
  scope: str
  selector: str
  arg_name: str
  value: Any
  where: str  # "configs/x.gin:12" or "--gin.NAME=VALUE"
  text: str   # the binding as written


def find_gin_file(name: str) -> Path | None:
  """A gin file as gin_flags.parse_gin finds it: the path as given, else under the repository root."""
  for candidate in (Path(name), REPO_ROOT / name):
    if candidate.is_file():
      return candidate
  return None


def _near_files(name: str) -> str:
  folder = Path(name).parent
  candidates = [str(p) for base in (Path.cwd(), REPO_ROOT) for p in (base / folder).glob("*.gin")]
  shown = [os.path.relpath(p) if not os.path.relpath(p).startswith("..") else p for p in candidates]
  close = difflib.get_close_matches(name, shown, n=1, cutoff=0.6)
  return f" (did you mean {close[0]}?)" if close else ""


def _unparsable(where: str, text: str, error: Exception) -> GinConfigError:
  """The error for a binding gin cannot parse, with the quoting fix when the value looks like a bare word."""
  reason = str(getattr(error, "msg", "") or error).splitlines()[0]
  lhs, sep, value = text.partition("=")
  value = value.strip()
  bare = re.fullmatch(r"[\w./:~+-]+", value or "")
  if sep and bare and not re.fullmatch(r"-?\d+(\.\d*)?([eE]-?\d+)?|True|False|None", value):
    fix = (f"--gin.{lhs.strip()}=\"'{value}'\"" if where.startswith("--gin.") else f"{lhs.strip()} = '{value}'")
    return GinConfigError(f"{where}: gin cannot read the value {value} (a bare word): strings are quoted, "
                          f"write {fix}")
  if "EOF" in reason:
    return GinConfigError(f"{where}: gin cannot parse `{text.strip()}`: a bracket or quote is left open")
  return GinConfigError(f"{where}: gin cannot parse `{text.strip()}` ({reason}); values are Python literals "
                        "(3, 0.5, 'text', [1, 2], {'key': 1.0}), @Configurable() or %MACRO")


def _statements(text: str, where: str, base: str | None) -> Iterator[tuple[Any, str]]:
  """The statements of a gin text, each with where it is (file:line or the flag)."""
  parser = config_parser.ConfigParser(text, _Delegate())
  while True:
    try:
      statement = next(parser)
    except StopIteration:
      return
    except (SyntaxError, ValueError) as error:
      line_number = getattr(error, "lineno", None) or 1
      line = (getattr(error, "text", None) or text.splitlines()[line_number - 1:line_number] or [""])
      line = line if isinstance(line, str) else line[0]
      at = f"{base}:{line_number}" if base else where
      raise _unparsable(at, line, error) from None
    except Exception as error:  # tokenize.TokenError: an unclosed bracket or quote
      at = f"{base}" if base else where
      raise _unparsable(at, text.strip().splitlines()[0] if text.strip() else "", error) from None
    line = statement.location.line_num
    yield statement, (f"{base}:{line}" if base else where)


def _read_file(name: str, seen: tuple[str, ...], included_from: str | None) -> Iterator[_Binding]:
  path = find_gin_file(name)
  if path is None:
    where = f"{included_from}: include '{name}'" if included_from else f"--gin_file={name}"
    looked = " and ".join(dict.fromkeys(str(p) for p in (Path.cwd(), REPO_ROOT)))
    raise GinConfigError(f"{where}: no such gin file (looked in {looked}){_near_files(name)}")
  if path.is_dir():
    raise GinConfigError(f"--gin_file={name}: is a folder; pass a .gin file in it")
  shown = os.path.relpath(path) if not os.path.relpath(path).startswith("..") else str(path)
  if str(path.resolve()) in seen:
    raise GinConfigError(f"{included_from}: include '{name}' includes itself (through {', '.join(seen)})")
  text = path.read_text(encoding="utf-8")
  lines = text.splitlines()
  for statement, where in _statements(text, "", shown):
    if isinstance(statement, config_parser.IncludeStatement):
      yield from _read_file(statement.filename, seen + (str(path.resolve()),), where)
    elif isinstance(statement, config_parser.BindingStatement):
      number = statement.location.line_num
      yield _Binding(statement.scope, statement.selector, statement.arg_name, statement.value, where,
                     lines[number - 1] if 0 < number <= len(lines) else "")
    elif isinstance(statement, config_parser.ImportStatement):
      yield _Binding("", "", "", statement, where, "")  # an import: configurables we cannot index


def _read_binding(binding: str) -> Iterator[_Binding]:
  name, _, value = binding.partition("=")
  flag = f"--gin.{name.strip()}={value.strip()}"
  for statement, where in _statements(binding, flag, None):
    if isinstance(statement, config_parser.BindingStatement):
      yield _Binding(statement.scope, statement.selector, statement.arg_name, statement.value, where, binding)
    else:
      raise GinConfigError(f"{flag}: a --gin flag binds one NAME=VALUE; put includes and imports in a gin file")


# ------------------------------------------------------------------------------------------- checks
def _suggest(word: str, choices: Sequence[str]) -> str:
  close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
  return f" (did you mean {close[0]}?)" if close else ""


def _shown(value: Any) -> str:
  text = repr(value)
  return f"{type(value).__name__} {text if len(text) <= 50 else text[:47] + '...'}"


def precheck(files: Sequence[str], bindings: Sequence[str]) -> None:
  """Check the gin files and "NAME = VALUE" bindings of a command line without importing xbook's layers.

  Raises:
    GinConfigError: for the first mistake, naming the file and line (or the flag) and the fix.
  """
  found: list[_Binding] = []
  for name in files:
    found += _read_file(name, (), None)
  for binding in bindings:
    found += _read_binding(binding)
  if any(isinstance(b.value, config_parser.ImportStatement) for b in found):
    return  # a config that imports modules may register configurables this index cannot see
  macros = {b.selector: b.value for b in found if not b.arg_name}
  names = sorted({c.name for c in configurables()})
  for binding in found:
    if not binding.arg_name:
      continue
    configurable = _lookup(binding.selector)
    if configurable is None:
      if any(binding.selector in c.selectors for c in configurables()):
        continue  # ambiguous: gin will say which module it means
      raise GinConfigError(f"{binding.where}: no gin configurable named {binding.selector!r}"
                           f"{_suggest(binding.selector.split('.')[-1], names)}; xbook's are {', '.join(names)}")
    if binding.arg_name not in configurable.params and not configurable.any_kwargs:
      suggestion = _suggest(binding.arg_name, list(configurable.params))
      raise GinConfigError(f"{binding.where}: {configurable.name} has no parameter {binding.arg_name!r}"
                           + (suggestion or f"; its parameters are {', '.join(sorted(configurable.params))}"))
    if binding.arg_name in configurable.denylist:
      raise GinConfigError(f"{binding.where}: {configurable.name}.{binding.arg_name} is not set by gin "
                           f"(it is a command-line flag: --{binding.arg_name})")
    _check_references(binding, binding.value, names)
    value = binding.value
    for _ in range(10):  # follow %MACRO to its value
      if isinstance(value, _Macro) and value.name in macros:
        value = macros[value.name]
      else:
        break
    if isinstance(value, _Macro):
      raise GinConfigError(f"{binding.where}: the macro %{value.name} is never bound; bind it "
                           f"({value.name} = ...) or write the value itself")
    annotation = configurable.params.get(binding.arg_name)
    if annotation is None or _contains_placeholder(value):
      continue
    try:
      verdict = _accepts(ast.parse(annotation, mode="eval").body, value)
    except SyntaxError:
      continue
    if verdict is False:
      quote = ("; strings are quoted: --gin.NAME=\"'text'\"" if binding.where.startswith("--gin.") and
               "str" in annotation and not isinstance(value, str) else "")
      raise GinConfigError(f"{binding.where}: {configurable.name}.{binding.arg_name} takes {_a(annotation)}, "
                           f"got {_shown(value)}{quote}")


def _contains_placeholder(value: Any) -> bool:
  if isinstance(value, (_Reference, _Macro)):
    return True
  if isinstance(value, (list, tuple)):
    return any(_contains_placeholder(v) for v in value)
  if isinstance(value, dict):
    return any(_contains_placeholder(v) for v in value.values())
  return False


def _check_references(binding: _Binding, value: Any, names: Sequence[str]) -> None:
  if isinstance(value, _Reference):
    selector = value.name.split("/")[-1]
    if _lookup(selector) is None and not any(selector in c.selectors for c in configurables()):
      raise GinConfigError(f"{binding.where}: @{value.name} names no gin configurable"
                           f"{_suggest(selector.split('.')[-1], names)}; xbook's are {', '.join(names)}")
  elif isinstance(value, (list, tuple)):
    for item in value:
      _check_references(binding, item, names)
  elif isinstance(value, dict):
    for item in value.values():
      _check_references(binding, item, names)


def parse(files: Sequence[str], bindings: Sequence[str]) -> None:
  """gin_flags.parse_gin, its errors as GinConfigError (one line: gin's own message, located)."""
  from xbook.gin_flags import parse_gin
  try:
    parse_gin(files, bindings)
  except GinConfigError:
    raise
  except (ValueError, SyntaxError, TypeError, KeyError, OSError) as error:
    message = " ".join(str(error).split())
    raise GinConfigError(f"gin: {message}") from error
