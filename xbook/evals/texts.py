"""The books `xbook eval` reads, as chapters of scene texts with their plans when they have them.

Accepted inputs (`load_books(path)`):
  - book.json written by `xbook write` (xbook.infer.writer): "chapters" with "title", "summary",
    "scene_plans" and "texts"; the book is named after its folder;
  - book.md written by `xbook write` (read through the book.json beside it when there is one, else
    "## Chapter N: title" sections);
  - a Gutenberg or plain .txt novel (xbook.books.load_book), named after the file stem;
  - books JSONL from `xbook books segment` (xbook.books.io.read_books), each named by its id;
  - a folder: every book.json, book.md without a book.json, .txt and .jsonl file under it (not the
    journal.jsonl beside a book.json: `xbook write`'s resume log).
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any, Iterator

from xbook.books import Book, load_book
from xbook.books.io import read_books

MD_CHAPTER = re.compile(r"^## Chapter (\d+): ?(.*)$", re.MULTILINE)


@dataclasses.dataclass(frozen=True)
class EvalChapter:
  """One chapter: its scene texts, and its plans where the book has them (None otherwise)."""

  title: str
  scenes: tuple[str, ...]
  summary: str | None = None
  scene_plans: tuple[str, ...] | None = None

  @property
  def text(self) -> str:
    return "\n\n".join(self.scenes)


@dataclasses.dataclass(frozen=True)
class EvalBook:
  """A book to evaluate: `name` keys it in eval.json; `source` is the file it came from."""

  name: str
  source: str
  chapters: tuple[EvalChapter, ...]
  planned: bool = False

  @property
  def text(self) -> str:
    return "\n\n".join(c.text for c in self.chapters)


def from_book(book: Book, name: str | None = None) -> EvalBook:
  """An `EvalBook` of a segmented `Book` (no plans)."""
  chapters = tuple(EvalChapter(c.title, tuple(s.text for s in c.scenes)) for c in book.chapters)
  return EvalBook(name or book.id, book.source, chapters)


def _written_chapter(entry: Any, where: str) -> EvalChapter:
  if not isinstance(entry, dict) or not isinstance(entry.get("texts"), list):
    raise ValueError(f"{where}: expected an object with a 'texts' list (as `xbook write` writes "
                     f"book.json); got {str(entry)[:80]!r}")
  plans = entry.get("scene_plans")
  return EvalChapter(str(entry.get("title", "")), tuple(str(t) for t in entry["texts"]),
                     entry.get("summary"), tuple(plans) if isinstance(plans, list) else None)


def load_book_json(path: Path) -> EvalBook:
  """A book.json of `xbook write`; raises ValueError naming the file and field when it is not one."""
  try:
    record = json.loads(path.read_text(encoding="utf-8"))
  except json.JSONDecodeError as error:
    raise ValueError(f"{path}: not JSON ({error}); expected the book.json that `xbook write` writes") from None
  if not isinstance(record, dict) or not isinstance(record.get("chapters"), list):
    raise ValueError(f"{path}: no 'chapters' list; expected the book.json that `xbook write` writes")
  chapters = tuple(_written_chapter(c, f"{path}: chapters[{i}]") for i, c in enumerate(record["chapters"]))
  return EvalBook(path.parent.name, str(path), chapters, planned=True)


def load_book_md(path: Path) -> EvalBook:
  """A book.md of `xbook write` (its book.json when it lies beside it)."""
  if (path.parent / "book.json").is_file():
    return load_book_json(path.parent / "book.json")
  text = path.read_text(encoding="utf-8")
  heads = list(MD_CHAPTER.finditer(text))
  if not heads:
    raise ValueError(f"{path}: no '## Chapter N: title' heading; expected the book.md of `xbook write`")
  chapters = []
  for head, following in zip(heads, heads[1:] + [None]):
    body = text[head.end():following.start() if following else len(text)].strip()
    chapters.append(EvalChapter(head.group(2), tuple(p for p in body.split("\n\n\n") if p.strip())))
  return EvalBook(path.parent.name, str(path), tuple(chapters))


def _files(folder: Path) -> Iterator[Path]:
  """The book files under `folder`; a folder that `xbook write` wrote counts by its book.json alone
  (its journal.jsonl is the write's resume log, not books)."""
  for path in sorted(folder.rglob("*")):
    if path.name == "journal.jsonl" and (path.parent / "book.json").exists():
      continue
    if path.name == "book.json" or path.suffix in (".txt", ".jsonl"):
      yield path
    elif path.name == "book.md" and not (path.parent / "book.json").exists():
      yield path


def load_books(path: str | Path) -> list[EvalBook]:
  """Every book at `path` (see the module docstring), with unique names (a clash gets a suffix).

  Raises:
    FileNotFoundError: `path` does not exist, or a folder holds no book.
    ValueError: a file is not a book of an accepted kind (naming the file and what is wrong).
  """
  path = Path(path)
  if not path.exists():
    raise FileNotFoundError(f"--books {path}: no such file or folder")
  files = list(_files(path)) if path.is_dir() else [path]
  if not files:
    raise FileNotFoundError(f"--books {path}: no book.json, book.md, .txt or .jsonl file in it")
  books: list[EvalBook] = []
  for file in files:
    if file.name == "book.json":
      books.append(load_book_json(file))
    elif file.suffix == ".md":
      books.append(load_book_md(file))
    elif file.suffix == ".jsonl":
      books.extend(from_book(b) for b in read_books(file))
    elif file.suffix == ".txt":
      books.append(from_book(load_book(file), name=file.stem))
    else:
      raise ValueError(f"{file}: not a book.json, book.md, .txt or books .jsonl file")
  return _unique(books)


def _unique(books: list[EvalBook]) -> list[EvalBook]:
  seen: dict[str, int] = {}
  out = []
  for book in books:
    count = seen.get(book.name, 0)
    seen[book.name] = count + 1
    out.append(book if not count else dataclasses.replace(book, name=f"{book.name}-{count + 1}"))
  return out
