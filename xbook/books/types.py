"""The Book contract: a cleaned novel split into chapters and scenes.

A `Book` is what every later stage reads. Front and back matter are never chapters; a book with no
usable headings still gets chapters (split by length at paragraph boundaries) and says so in
`chapters_by_length`.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any


@dataclasses.dataclass(frozen=True)
class Scene:
  """A contiguous run of paragraphs inside a chapter."""

  index: int
  text: str

  @property
  def n_words(self) -> int:
    return len(self.text.split())


@dataclasses.dataclass(frozen=True)
class Chapter:
  """One narrative unit of the book (chapter, stave, letter, story, prologue ...).

  Attributes:
    index: 0-based position in the book.
    title: the heading as printed, whitespace-normalised ("" when the unit has no heading).
    scenes: the chapter's text, tiled exactly by its scenes.
    path: parent divisions then the heading, e.g. ["BOOK THE SECOND", "CHAPTER IV"].
    kind: "chapter", "letter", "diary", "prologue", "epilogue" or "extracts".
  """

  index: int
  title: str
  scenes: tuple[Scene, ...]
  path: tuple[str, ...] = ()
  kind: str = "chapter"

  @property
  def text(self) -> str:
    return "\n\n".join(s.text for s in self.scenes)

  @property
  def n_words(self) -> int:
    return sum(s.n_words for s in self.scenes)


@dataclasses.dataclass(frozen=True)
class Book:
  """A cleaned, segmented novel.

  Attributes:
    id: stable identifier, e.g. "pg1342" for Project Gutenberg ebook 1342.
    title, author, language: from the Gutenberg header (or the caller).
    source: where the text came from (a path or URL).
    sha256: hex digest of the cleaned text (header, footer and license removed).
    chapters: the narrative units in reading order.
    chapters_by_length: True when no usable headings were found and chapters were cut by length.
  """

  id: str
  title: str
  author: str
  language: str
  source: str
  sha256: str
  chapters: tuple[Chapter, ...]
  chapters_by_length: bool = False

  @property
  def n_words(self) -> int:
    return sum(c.n_words for c in self.chapters)

  def metadata(self) -> dict[str, Any]:
    """Everything but the text: the `book` field of a scaffold record."""
    return {"id": self.id, "title": self.title, "author": self.author, "language": self.language,
            "source": self.source, "sha256": self.sha256, "n_chapters": len(self.chapters),
            "n_words": self.n_words, "chapters_by_length": self.chapters_by_length}

  def to_json(self) -> dict[str, Any]:
    record = self.metadata()
    record["chapters"] = [
        {"index": c.index, "title": c.title, "path": list(c.path), "kind": c.kind,
         "scenes": [{"index": s.index, "text": s.text} for s in c.scenes]}
        for c in self.chapters]
    return record

  @classmethod
  def from_json(cls, record: dict[str, Any]) -> "Book":
    chapters = tuple(
        Chapter(index=c["index"], title=c["title"], path=tuple(c.get("path", ())),
                kind=c.get("kind", "chapter"),
                scenes=tuple(Scene(index=s["index"], text=s["text"]) for s in c["scenes"]))
        for c in record["chapters"])
    return cls(id=record["id"], title=record["title"], author=record["author"],
               language=record["language"], source=record["source"], sha256=record["sha256"],
               chapters=chapters, chapters_by_length=record.get("chapters_by_length", False))


def text_sha256(text: str) -> str:
  return hashlib.sha256(text.encode("utf-8")).hexdigest()
