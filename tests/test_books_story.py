"""Every word of the story kept: front matter dropped for what it is, never for its length; letters and
diary entries as units wherever they are the structure; `xbook books segment` warns (or, with
`--strict`, fails) on a book that still drops too much.

The synthetic books are Gutenberg-style files (header, START and END markers, licence line, text
wrapped at 70 columns) written by the tests. That the shared novels still match GOLD.jsonl and drop no
more words than before is checked in tests/test_books.py."""

from __future__ import annotations

import json
import random
import textwrap
from pathlib import Path

import pytest

from xbook import cli
from xbook.books import load_book_with_report
from xbook.books.front import MAX_DROPPED_SHARE, reads_as_narrative
from xbook.books.io import read_books

_PEOPLE = ["the old captain", "my brother", "Mrs. Hale", "the stranger", "our host", "the girl", "the doctor",
           "young Fenwick", "the ferryman", "my aunt"]
_DEEDS = ["walked down to", "looked across", "came back from", "waited beside", "spoke of", "remembered",
          "turned towards", "left", "watched", "crossed"]
_PLACES = ["the harbour", "the grey house on the hill", "the narrow lane", "the frozen river", "the lamp by the door",
           "the garden wall", "the church at Lowick", "the mill", "the long road to the moor", "the inn"]
_TAILS = ["before the light was gone", "when the bell had rung", "and said nothing", "as the rain came on",
          "while the others slept", "without a word to anyone", "long after midnight", "in the cold of the morning"]
_BOOK_TOPICS = ["this book", "the story", "each chapter", "the tale", "the present volume", "the narrative"]
_CLAIMS = ["is meant for readers who love the sea", "does not pretend to be history",
           "owes much to the letters of my friends", "is told as plainly as I can tell it",
           "has its faults, which the reader will forgive", "is dedicated to those who sail",
           "asks only an evening of the reader", "is set in a country I know well"]


def _sentence(rng: random.Random) -> str:
  text = f"{rng.choice(_PEOPLE)} {rng.choice(_DEEDS)} {rng.choice(_PLACES)} {rng.choice(_TAILS)}."
  return text[0].upper() + text[1:]


def _wrap(text: str, indent: str = "") -> str:
  return textwrap.fill(text, width=70, initial_indent=indent, subsequent_indent=indent)


def _narrative(rng: random.Random, n_words: int) -> list[str]:
  """Past-tense paragraphs of about `n_words` words, with dialogue and short one-line paragraphs."""
  paragraphs, words = [], 0
  while words < n_words:
    shape = rng.random()
    if shape < 0.15:
      paragraph = f"“{_sentence(rng)[:-1]},” said {rng.choice(_PEOPLE)}. “I saw it myself.”"
    elif shape < 0.22:
      paragraph = rng.choice(["“Yes.”", "Then the storm broke.", "Nobody answered.", "“Who is there?”"])
    else:
      paragraph = " ".join(_sentence(rng) for _ in range(rng.randint(3, 7)))
    paragraphs.append(_wrap(paragraph))
    words += len(paragraph.split())
  return paragraphs


def _about_the_book(rng: random.Random, n_words: int) -> list[str]:
  """An author's present-tense paragraphs about the book (no story in them)."""
  paragraphs, words = [], 0
  while words < n_words:
    sentences = []
    for _ in range(rng.randint(3, 6)):
      text = f"{rng.choice(_BOOK_TOPICS)} {rng.choice(_CLAIMS)}."
      sentences.append(text[0].upper() + text[1:])
    paragraphs.append(_wrap(" ".join(sentences)))
    words += len(" ".join(sentences).split())
  return paragraphs


def _chapters(rng: random.Random, n: int, words: int = 1500, roman: bool = True) -> list[str]:
  numerals = ["I", "II", "III", "IV", "V", "VI", "VII", "VIII"]
  blocks = []
  for k in range(n):
    blocks += [f"CHAPTER {numerals[k] if roman else k + 1}"] + _narrative(rng, words)
  return blocks


def _gutenberg_file(folder: Path, number: int, title: str, blocks: list[str]) -> Path:
  """A Gutenberg-style file: header fields, START marker, the blocks, END marker and a licence line."""
  header = (f"The Project Gutenberg EBook of {title}, by Ann Example\n\nTitle: {title}\n\nAuthor: Ann Example\n\n"
            f"Release Date: May 1, 2004 [EBook #{number}]\n\nLanguage: English\n\n"
            f"*** START OF THIS PROJECT GUTENBERG EBOOK {title.upper()} ***\n\n\n\n")
  footer = (f"\n\n\n\nEnd of the Project Gutenberg EBook of {title}\n\n"
            f"*** END OF THIS PROJECT GUTENBERG EBOOK {title.upper()} ***\n\nSection 1. General Terms of Use\n")
  path = folder / f"pg{number}.txt"
  path.write_text(header + "\n\n".join(blocks) + footer, encoding="utf-8")
  return path


def _words(blocks: list[str]) -> int:
  return sum(len(b.split()) for b in blocks)


# ------------------------------------------------------------------------------ front matter and story
def test_unheaded_frame_narrative_is_kept_whole_as_the_prologue(tmp_path):
  rng = random.Random(28)
  title_page = ["THE HARBOUR LIGHTS", "A TALE", "by Ann Example",
                "Copyright, 1897, by Ann Example. All rights reserved.\nPrinted in London by the Harbour Press."]
  contents = ["CONTENTS", "    CHAPTER I\n    CHAPTER II\n    CHAPTER III\n    CHAPTER IV"]
  frame = _narrative(rng, 5000)
  path = _gutenberg_file(tmp_path, 9001, "The Harbour Lights", title_page + contents + frame + _chapters(rng, 4))
  book, report = load_book_with_report(path)
  assert [c.kind for c in book.chapters] == ["prologue"] + ["chapter"] * 4
  prologue = book.chapters[0]
  assert prologue.path == () and prologue.title == ""
  assert prologue.text.split() == "\n\n".join(frame).split() and prologue.n_words == _words(frame) >= 5000
  assert report.prose.front_matter_words == _words(title_page + contents)
  assert report.prose.front_rule == (f"story kept (title page {_words(title_page)} dropped, contents 9 dropped, "
                                     f"story {_words(frame):,} kept)")
  assert not report.drops_too_much


def test_introductory_letter_of_the_fiction_is_kept_whole(tmp_path):
  rng = random.Random(37)
  letter = ["                                        London, 3rd May 1890.", "My dear Harris,"]
  letter += _narrative(rng, 600) + ["Yours ever,\n        J."]
  blocks = ["THE HARBOUR LIGHTS", "by Ann Example"] + letter + _chapters(rng, 3)
  book, report = load_book_with_report(_gutenberg_file(tmp_path, 9008, "The Harbour Lights", blocks))
  assert [c.kind for c in book.chapters] == ["prologue"] + ["chapter"] * 3
  assert book.chapters[0].n_words == _words(letter) and book.chapters[0].text.startswith("London, 3rd May 1890.")
  assert report.prose.front_rule == f"story kept (title page 6 dropped, story {_words(letter):,} kept)"


def test_authors_headed_introduction_is_dropped_as_front_matter(tmp_path):
  rng = random.Random(29)
  introduction = ["INTRODUCTION"] + _about_the_book(rng, 800)
  blocks = ["THE HARBOUR LIGHTS", "by Ann Example"] + introduction + _chapters(rng, 5)
  book, report = load_book_with_report(_gutenberg_file(tmp_path, 9002, "The Harbour Lights", blocks))
  assert [c.title for c in book.chapters] == ["CHAPTER I", "CHAPTER II", "CHAPTER III", "CHAPTER IV", "CHAPTER V"]
  assert report.prose.front_matter_words == _words(blocks[:2] + introduction)
  assert report.dropped_share > MAX_DROPPED_SHARE and report.drops_too_much
  # re-examined because it passed the threshold, and still dropped: it is about the book, not a story
  assert report.prose.front_rule == (f"re-examined: still too much (title page 6 dropped, "
                                     f"introduction {_words(introduction):,} dropped)")


def test_narrative_under_a_front_heading_is_kept_on_reexamination(tmp_path):
  rng = random.Random(30)
  frame = _narrative(rng, 1500)
  blocks = ["THE HARBOUR LIGHTS", "PREFATORY NOTE"] + frame + _chapters(rng, 4)
  book, report = load_book_with_report(_gutenberg_file(tmp_path, 9003, "The Harbour Lights", blocks))
  assert book.chapters[0].kind == "prologue" and book.chapters[0].n_words == _words(frame)
  assert report.prose.front_rule == (f"re-examined: narrative kept (title page 3 dropped, preface 2 dropped, "
                                     f"story {_words(frame):,} kept)")
  assert report.prose.front_matter_words == 5 and not report.drops_too_much


def test_a_dedication_stays_dropped_even_when_it_tells_a_story(tmp_path):
  rng = random.Random(38)
  dedication = ["TO", "THOMAS ARTHUR NELSON", "My dear Tommy,"] + _narrative(rng, 900) + ["J. B."]
  blocks = ["THE HARBOUR LIGHTS"] + dedication + _chapters(rng, 4)
  book, report = load_book_with_report(_gutenberg_file(tmp_path, 9009, "The Harbour Lights", blocks))
  assert [c.kind for c in book.chapters] == ["chapter"] * 4 and report.drops_too_much
  assert report.prose.front_rule == (f"re-examined: still too much (title page 3 dropped, "
                                     f"dedication {_words(dedication) - 2} dropped, title page 2 dropped)")


def test_reads_as_narrative():
  rng = random.Random(31)
  assert reads_as_narrative("\n\n".join(_narrative(rng, 300)))
  assert not reads_as_narrative("\n\n".join(_about_the_book(rng, 300)))
  assert not reads_as_narrative("THE HARBOUR LIGHTS\nA TALE")


# ------------------------------------------------------------------------------ letters and diaries
def _letter(rng: random.Random, place: str, day: int, signed: bool) -> list[str]:
  blocks = [f"                                        {place}, March {day}th, 1790.", "My dear Charlotte,"]
  blocks += _narrative(rng, 250)
  if signed:
    blocks.append("Your ever affectionate,\n        EMILY.")
  return blocks


def test_dated_letters_under_book_parents_are_the_units(tmp_path):
  rng = random.Random(32)
  blocks = ["THE LETTERS OF EMILY", "by Ann Example", "\n\nBOOK I."]
  for k in range(5):
    blocks += _letter(rng, "Bath", k + 1, signed=k % 2 == 0)
  blocks.append("\n\nBOOK II.")
  for k in range(4):
    blocks += _letter(rng, "London", k + 10, signed=k != 1)
  book, report = load_book_with_report(_gutenberg_file(tmp_path, 9004, "The Letters of Emily", blocks))
  assert not book.chapters_by_length
  assert [c.kind for c in book.chapters] == ["letter"] * 9
  assert [c.path for c in book.chapters[:2]] == [("BOOK I.", "Bath, March 1th, 1790."),
                                                 ("BOOK I.", "Bath, March 2th, 1790.")]
  assert [c.path[0] for c in book.chapters] == ["BOOK I."] * 5 + ["BOOK II."] * 4
  assert book.chapters[5].title == "London, March 10th, 1790."
  assert book.chapters[0].text.startswith("My dear Charlotte,\n\n")
  assert book.chapters[0].text.endswith("Your ever affectionate,\n        EMILY.")  # lines kept as printed
  assert report.prose.front_matter_words == 7


def test_letters_under_a_parent_without_chapters_beside_one_with_chapters(tmp_path):
  rng = random.Random(33)
  blocks = ["THE LETTERS OF EMILY", "\n\nBOOK I.", "CHAPTER I"] + _narrative(rng, 800)
  blocks += ["CHAPTER II"] + _narrative(rng, 800) + ["\n\nBOOK II."]
  for k in range(3):
    blocks += _letter(rng, "London", k + 10, signed=True)
  book, _ = load_book_with_report(_gutenberg_file(tmp_path, 9005, "The Letters of Emily", blocks))
  assert [(c.kind, c.path[0]) for c in book.chapters] == [("chapter", "BOOK I.")] * 2 + [("letter", "BOOK II.")] * 3


def test_chapters_that_contain_letters_stay_chapters(tmp_path):
  rng = random.Random(34)
  blocks = ["THE LETTERS OF EMILY"]
  for k, numeral in enumerate(["I", "II", "III", "IV"]):
    blocks += [f"CHAPTER {numeral}"] + _letter(rng, "Bath", k + 1, signed=True) + _narrative(rng, 600)
    blocks += _letter(rng, "Bath", k + 5, signed=True) + _narrative(rng, 300)
  book, report = load_book_with_report(_gutenberg_file(tmp_path, 9006, "The Letters of Emily", blocks))
  assert [(c.kind, c.title) for c in book.chapters] == [("chapter", f"CHAPTER {n}") for n in ["I", "II", "III", "IV"]]
  assert "My dear Charlotte," in book.chapters[0].text and report.prose.front_matter_words == 4


def test_diary_entries_under_volume_parents(tmp_path):
  rng = random.Random(35)
  blocks = ["A DIARY", "\n\nVOLUME I."]
  for k in range(4):
    blocks += [f"{k + 3} May. Bistritz."] + _narrative(rng, 300)
  blocks.append("\n\nVOLUME II.")
  for k in range(3):
    blocks += [f"{k + 12} June."] + _narrative(rng, 300)
  book, _ = load_book_with_report(_gutenberg_file(tmp_path, 9007, "A Diary", blocks))
  assert [(c.kind, c.path[0]) for c in book.chapters] == [("diary", "VOLUME I.")] * 4 + [("diary", "VOLUME II.")] * 3


def test_numbered_parts_are_the_units_where_they_are_the_only_division(tmp_path):
  rng = random.Random(39)
  blocks = ["THE HARBOUR LIGHTS"]
  for numeral in ["I", "II", "III"]:
    blocks += [f"Part {numeral}"] + _narrative(rng, 700)
  book, _ = load_book_with_report(_gutenberg_file(tmp_path, 9010, "The Harbour Lights", blocks))
  assert not book.chapters_by_length
  assert [(c.kind, c.path) for c in book.chapters] == [("chapter", (f"Part {n}",)) for n in ["I", "II", "III"]]


# ------------------------------------------------------------------------------ the command line
@pytest.fixture()
def two_books(tmp_path) -> Path:
  folder = tmp_path / "books"
  folder.mkdir()
  rng = random.Random(36)
  _gutenberg_file(folder, 9011, "The Harbour Lights",
                  ["THE HARBOUR LIGHTS"] + _narrative(rng, 2000) + _chapters(rng, 3))
  _gutenberg_file(folder, 9012, "An Introduction", ["AN INTRODUCTION", "INTRODUCTION"] + _about_the_book(rng, 800)
                  + _chapters(rng, 5))
  return folder


def test_cli_segment_warns_about_a_book_that_drops_too_much(two_books, tmp_path, capsys):
  out = tmp_path / "books.jsonl"
  assert cli.main(["books", "segment", "--books", str(two_books), "--out", str(out)]) == 0
  assert [book.id for book in read_books(out)] == ["pg9011", "pg9012"]
  err = capsys.readouterr().err
  lines = [line for line in err.splitlines() if line.startswith("warning:")]
  assert len(lines) == 1 and lines[0].startswith("warning: 1 of 2 books drop more than 5% of their body")
  _, report = load_book_with_report(two_books / "pg9012.txt")
  dropped = report.front_matter_words + report.back_matter_words
  assert f"  pg9012 ({dropped:,} words, {report.dropped_share:.1%}; front: {report.prose.front_rule})" in err
  assert "pg9011 (" not in err


def test_cli_segment_strict_makes_it_an_error(two_books, tmp_path, capsys):
  out = tmp_path / "strict.jsonl"
  with pytest.raises(SystemExit) as exit_info:
    cli.main(["books", "segment", "--books", str(two_books), "--out", str(out), "--strict"])
  message = str(exit_info.value.code)
  assert message.startswith("error: 1 of 2 books drop more than 5% of their body") and "\n" not in message
  _, report = load_book_with_report(two_books / "pg9012.txt")
  assert f"pg9012 ({report.front_matter_words + report.back_matter_words:,} words" in message
  assert "--strict" in message and not out.exists()
  ok = tmp_path / "ok.jsonl"
  assert cli.main(["books", "segment", "--books", str(two_books), "--ids", "pg9011", "--out", str(ok),
                   "--strict"]) == 0
  assert [book.id for book in read_books(ok)] == ["pg9011"]


def test_cli_inspect_says_which_rule_decided(two_books, capsys):
  assert cli.main(["books", "inspect", str(two_books / "pg9012.txt")]) == 0
  out = capsys.readouterr().out
  assert "TOO MUCH" in out and "  front      re-examined: still too much (title page 2 dropped, introduction " in out
  assert cli.main(["books", "inspect", str(two_books / "pg9011.txt"), "--json"]) == 0
  record = json.loads(capsys.readouterr().out)
  assert record["prose"]["front_rule"].startswith("story kept (title page 3 dropped, story ")
  assert record["chapters"][0]["kind"] == "prologue"
