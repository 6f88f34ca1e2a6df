"""Books on the real Gutenberg corpus: cleaning, chapters against GOLD.jsonl, scenes, splits, fetch."""

from __future__ import annotations

import http.server
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from xbook.books import (Book, FetchError, clean_gutenberg, fetch_books, load_book, parse_header,
                         read_manifest, split_for_author)
from xbook.books.chapters import segment_chapters
from xbook.books.scenes import paragraphs_and_breaks, split_scenes
from xbook.books.splits import normalise_author
from xbook.books.types import text_sha256

# First words must match GOLD for at least this share of each book's units.
MIN_FIRST_WORDS_MATCH = 0.9
FIRST_WORDS = 8
SCENE_MIN, SCENE_TARGET, SCENE_MAX = 500, 1200, 2500


# ------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def gold(corpus_dir: Path) -> dict[str, dict]:
  with open(corpus_dir / "GOLD.jsonl", encoding="utf-8") as f:
    records = [json.loads(line) for line in f if line.strip()]
  return {record["file"]: record for record in records}


@pytest.fixture(scope="module")
def book_files(corpus_dir: Path) -> list[Path]:
  files = sorted(corpus_dir.glob("pg*.txt"))
  assert len(files) == 16, f"expected the 16 corpus novels in {corpus_dir}"
  return files


@pytest.fixture(scope="module")
def cleaned(book_files: list[Path]) -> dict[str, tuple]:
  return {f.name: clean_gutenberg(_raw(f)) for f in book_files}


@pytest.fixture(scope="module")
def books(book_files: list[Path]) -> dict[str, Book]:
  return {f.name: load_book(f) for f in book_files}


def _raw(path: Path) -> str:
  """The file decoded as is: BOM and CRLF line ends kept (`read_text` would translate them)."""
  return path.read_bytes().decode("utf-8")


def _first_words(text: str) -> str:
  return " ".join(text.split()[:FIRST_WORDS])


def _alternative_counts(notes: str) -> set[int]:
  """Counts GOLD's notes name as acceptable: "24 if ...", "(14 if split)", "alternative: 29 units"."""
  counts = {int(n) for n in re.findall(r"(\d+)(?: [a-z]+)? if\b", notes)}
  return counts | {int(n) for n in re.findall(r"alternative[^:]*: (\d+)", notes)}


# ------------------------------------------------------------------------------------- cleaning
def test_every_book_loses_header_footer_and_licence(cleaned):
  for name, (text, report) in cleaned.items():
    assert report.header_found and report.footer_found, name
    assert report.leftover_gutenberg_mentions == 0, name
    assert 0.01 < report.fraction_removed < 0.2, (name, report.fraction_removed)
    assert "\r" not in text and not text.startswith("\ufeff"), name
    for end in (text[:3000], text[-3000:]):
      assert "gutenberg" not in end.lower(), name
      assert "*** START" not in end and "***START" not in end and "*** END" not in end, name
      assert "LICENSE" not in end, name
    assert text == text.strip("\n") and text.strip(), name


def test_start_marker_wrapped_over_two_lines(cleaned, corpus_dir):
  raw = _raw(corpus_dir / "pg43.txt")
  assert "*** START OF THIS PROJECT GUTENBERG EBOOK\r\nTHE STRANGE CASE" in raw  # the wrapped marker
  text, report = cleaned["pg43.txt"]
  assert report.header_found
  assert text.startswith("THE STRANGE CASE OF DR. JEKYLL AND MR. HYDE\n\nby Robert Louis Stevenson")
  assert "HYDE ***" not in text


def test_old_style_markers_and_back_matter(cleaned):
  wuthering, report = cleaned["pg768.txt"]  # ***START OF THE ...***, a transcriber credit
  assert report.header_found and report.footer_found
  assert wuthering.startswith("WUTHERING HEIGHTS") and "Transcribed from" not in wuthering
  dracula, _ = cleaned["pg345.txt"]  # THE END, then advertisements and a typo list
  assert dracula.endswith("JONATHAN HARKER.")
  assert "Grosset & Dunlap list" not in dracula and "Typographical errors" not in dracula
  alice, _ = cleaned["pg11.txt"]
  assert alice.endswith("the happy summer days.")
  moby, _ = cleaned["pg2701.txt"]
  assert "Transcriber" not in moby and "Produced by" not in moby


def test_clean_without_markers_keeps_the_text():
  raw = "\ufeffCHAPTER I\r\n\r\nIt was a dark night.\r\n"
  text, report = clean_gutenberg(raw)
  assert text == "CHAPTER I\n\nIt was a dark night."
  assert not report.header_found and not report.footer_found
  assert report.leftover_gutenberg_mentions == 0


def test_parse_header_matches_manifest(corpus_dir):
  for row in read_manifest(corpus_dir):
    header = parse_header(_raw(corpus_dir / row["file"]))
    assert header["ebook_number"] == row["ebook_number"], row["file"]
    assert header["title"] == row["title"], row["file"]
    assert header["language"] == "English", row["file"]
    assert header["author"], row["file"]


def test_read_manifest(corpus_dir, tmp_path):
  rows = read_manifest(corpus_dir)
  assert len(rows) == 16
  assert all((corpus_dir / row["file"]).is_file() and isinstance(row["words"], int) for row in rows)
  with pytest.raises(FileNotFoundError, match="MANIFEST.tsv"):
    read_manifest(tmp_path)
  (tmp_path / "MANIFEST.tsv").write_text("file\ttitle\npg1.txt\tX\n", encoding="utf-8")
  with pytest.raises(ValueError, match="ebook_number"):
    read_manifest(tmp_path)


# ------------------------------------------------------------------------------------- chapters
def test_chapter_counts_and_first_words_match_gold(books, gold):
  for name, record in gold.items():
    chapters = books[name].chapters
    allowed = {record["n_chapters"], record["n_with_extras"]} | _alternative_counts(record["notes"])
    assert len(chapters) in allowed, (name, len(chapters), sorted(allowed))
    ours = {_first_words(c.text) for c in chapters}
    matched = sum(unit["first_words"] in ours for unit in record["units"])
    assert matched / len(record["units"]) >= MIN_FIRST_WORDS_MATCH, (name, matched)
    assert not books[name].chapters_by_length, name


def test_headings_and_kinds_match_gold(books, gold):
  for name, record in gold.items():
    chapters = books[name].chapters
    if len(chapters) != len(record["units"]):
      continue
    titles = sum(c.title == unit["heading"] for c, unit in zip(chapters, record["units"]))
    assert titles / len(chapters) >= MIN_FIRST_WORDS_MATCH, (name, titles)
    assert [c.kind for c in chapters] == [unit["kind"] for unit in record["units"]], name


def test_parts_are_kept_in_path(books, gold):
  for name, sizes in (("pg98.txt", [6, 24, 15]), ("pg36.txt", [17, 10])):
    chapters = books[name].chapters
    assert all(len(c.path) == 2 and c.path[-1] == c.title for c in chapters), name
    assert [c.path[0] for c in chapters] == [unit["part"] for unit in gold[name]["units"]], name
    parts = list(dict.fromkeys(c.path[0] for c in chapters))
    assert [sum(c.path[0] == part for c in chapters) for part in parts] == sizes, name
  tale = books["pg98.txt"].chapters
  assert tale[6].path == ("Book the Second--the Golden Thread", "I. Five Years Later")
  worlds = [c.title for c in books["pg36.txt"].chapters if c.path[0].startswith("BOOK TWO")]
  assert sum(title.startswith("VI.") for title in worlds) == 2  # the misprinted 'VI.' is kept


def test_extra_kinds(books):
  moby = books["pg2701.txt"].chapters
  assert [c.kind for c in moby[:3]] == ["extracts", "extracts", "chapter"]
  assert moby[-1].kind == "epilogue" and moby[-1].title == "Epilogue"
  assert books["pg35.txt"].chapters[-1].kind == "epilogue"
  assert books["pg345.txt"].chapters[-1].title == "NOTE"
  assert [c.kind for c in books["pg84.txt"].chapters[:5]] == ["letter"] * 4 + ["chapter"]


def test_sub_parts_and_contents_are_not_chapters(books):
  holmes = books["pg1661.txt"].chapters
  assert holmes[0].text.startswith("I.\n\nTo Sherlock Holmes")
  assert "\n\nII.\n\n" in holmes[0].text and "\n\nIII.\n\n" in holmes[0].text
  for name in ("pg84.txt", "pg16.txt", "pg2701.txt", "pg345.txt", "pg103.txt"):  # with CONTENTS
    assert all(c.n_words >= 40 for c in books[name].chapters), name


def test_fallback_by_length_without_headings(cleaned):
  text, _ = cleaned["pg1342.txt"]
  headless = re.sub(r"(?m)^Chapter \d+$", "", text)
  segmentation = segment_chapters(headless)
  assert segmentation.by_length
  sizes = [len(unit.text.split()) for unit in segmentation.units]
  assert sum(sizes) == len(headless.split())
  assert all(3000 <= size <= 5000 for size in sizes), sizes
  assert all(unit.title == "" and unit.path == () for unit in segmentation.units)
  rejoined = "\n\n".join(paragraph for unit in segmentation.units
                         for paragraph in paragraphs_and_breaks(unit.text)[0])
  assert rejoined == "\n\n".join(paragraphs_and_breaks(headless)[0])


def test_load_book_fallback_flag(corpus_dir, tmp_path):
  raw = _raw(corpus_dir / "pg1342.txt")
  path = tmp_path / "headless.txt"
  path.write_bytes(re.sub(r"(?m)^Chapter \d+\r$", "", raw).encode("utf-8"))
  book = load_book(path)
  assert book.chapters_by_length and book.id == "pg1342"
  assert all(3000 <= c.n_words <= 5000 for c in book.chapters)


# --------------------------------------------------------------------------------------- scenes
def test_scenes_tile_chapters_within_bounds(books, cleaned):
  for name, book in books.items():
    units = segment_chapters(cleaned[name][0]).units
    assert len(units) == len(book.chapters), name
    for chapter, unit in zip(book.chapters, units):
      paragraphs = paragraphs_and_breaks(unit.text)[0]
      assert chapter.text.split("\n\n") == paragraphs, (name, chapter.title)
      assert [s.index for s in chapter.scenes] == list(range(len(chapter.scenes)))
      if chapter.n_words < SCENE_MIN:
        assert len(chapter.scenes) == 1, (name, chapter.title)
        continue
      for scene in chapter.scenes:
        assert SCENE_MIN <= scene.n_words <= SCENE_MAX or "\n\n" not in scene.text, (
            name, chapter.title, scene.index, scene.n_words)


@pytest.mark.parametrize("name", ["pg1342.txt", "pg345.txt"])
def test_asterisk_breaks_become_scene_boundaries(cleaned, name):
  checked = 0
  for unit in segment_chapters(cleaned[name][0]).units:
    paragraphs, breaks = paragraphs_and_breaks(unit.text)
    if not breaks:
      continue
    scenes = split_scenes(unit.text, SCENE_TARGET, SCENE_MIN, SCENE_MAX)
    boundaries, count = set(), 0
    for scene in scenes[:-1]:
      count += len(scene.split("\n\n"))
      boundaries.add(count)
    cuts = [0] + sorted(breaks) + [len(paragraphs)]
    words = [len(p.split()) for p in paragraphs]
    for before, at, after in zip(cuts, cuts[1:], cuts[2:]):
      if sum(words[before:at]) >= SCENE_MIN and sum(words[at:after]) >= SCENE_MIN:
        assert at in boundaries, (name, unit.title, at)
        checked += 1
  assert checked >= 2, name


def _para(tag: str, n: int) -> str:
  return " ".join([tag] * n)


def test_split_scenes_markers_gaps_and_sizes():
  text = "\n\n".join([_para("a", 600), "*       *       *", _para("b", 700), _para("c", 100)])
  text += "\n\n\n\n" + _para("d", 800) + "\n\n#\n\n" + _para("e", 100)
  scenes = split_scenes(text)
  assert [s.split()[0] for s in scenes] == ["a", "b", "d"]
  assert "\n\n".join(scenes).split("\n\n") == [_para(t, n) for t, n in
                                                (("a", 600), ("b", 700), ("c", 100), ("d", 800),
                                                 ("e", 100))]
  long_text = "\n\n".join(_para(str(i), 300) for i in range(20))  # 6000 words, no breaks
  long_scenes = split_scenes(long_text)
  assert len(long_scenes) == 5 and all(1200 <= len(s.split()) <= 1500 for s in long_scenes)
  assert split_scenes(_para("x", 5000)) == [_para("x", 5000)]  # one paragraph cannot be cut
  assert split_scenes("\n\n* * *\n\n") == []
  with pytest.raises(ValueError, match="min_words"):
    split_scenes(long_text, target_words=100, min_words=500)


# -------------------------------------------------------------------------------------- load_book
def test_load_book_fields(books, cleaned, corpus_dir):
  pride = books["pg1342.txt"]
  assert (pride.id, pride.title, pride.author, pride.language) == (
      "pg1342", "Pride and Prejudice", "Jane Austen", "English")
  assert pride.sha256 == text_sha256(cleaned["pg1342.txt"][0])
  assert pride.source == str(corpus_dir / "pg1342.txt")
  assert Book.from_json(json.loads(json.dumps(pride.to_json()))) == pride
  assert load_book(corpus_dir / "pg46.txt", book_id="carol").id == "carol"


def test_load_book_errors_name_the_file(tmp_path):
  empty = tmp_path / "empty.txt"
  empty.write_bytes(b"")
  with pytest.raises(ValueError, match=r"empty\.txt: empty file"):
    load_book(empty)
  latin1 = tmp_path / "latin1.txt"
  latin1.write_bytes("Chapter 1\n\nCaf\u00e9".encode("latin-1"))
  with pytest.raises(ValueError, match=r"latin1\.txt: not UTF-8 .*byte offset 14"):
    load_book(latin1)
  with pytest.raises(FileNotFoundError, match="missing.txt"):
    load_book(tmp_path / "missing.txt")


def test_load_book_without_header_uses_file_stem(tmp_path):
  path = tmp_path / "story.txt"
  chapters = [f"CHAPTER {n}\n\n" + " ".join(["word"] * 700) for n in ("I", "II", "III")]
  path.write_text("\n\n\n".join(chapters), encoding="utf-8")
  book = load_book(path)
  assert (book.id, book.title, book.author) == ("story", "story", "unknown")
  assert [c.title for c in book.chapters] == ["CHAPTER I", "CHAPTER II", "CHAPTER III"]


# --------------------------------------------------------------------------------------- splits
def test_split_is_stable_and_author_consistent(corpus_dir):
  authors = [row["author"] for row in read_manifest(corpus_dir)]
  splits = [split_for_author(author) for author in authors]
  assert set(splits) <= {"train", "validation", "test"}
  by_author: dict[str, set[str]] = {}
  for author, split in zip(authors, splits):
    by_author.setdefault(normalise_author(author), set()).add(split)
  assert all(len(found) == 1 for found in by_author.values())
  assert split_for_author("Emily Brontë") == split_for_author("emily bronte") == split_for_author(
      "Bronte, Emily")
  code = ("import json, sys; from xbook.books import split_for_author; "
          "print(json.dumps([split_for_author(a) for a in json.loads(sys.argv[1])]))")
  env = dict(os.environ, PYTHONHASHSEED="12345",
             PYTHONPATH=os.pathsep.join([str(Path(__file__).resolve().parents[1]),
                                         os.environ.get("PYTHONPATH", "")]))
  other_process = subprocess.run([sys.executable, "-c", code, json.dumps(authors)], env=env,
                                 capture_output=True, text=True, check=True)
  assert json.loads(other_process.stdout) == splits


def test_split_fractions():
  names = [f"Author Number {i}" for i in range(4000)]
  shares = {s: 0 for s in ("train", "validation", "test")}
  for name in names:
    shares[split_for_author(name)] += 1
  assert abs(shares["train"] / len(names) - 0.9) < 0.02
  assert abs(shares["test"] / len(names) - 0.05) < 0.015
  assert {split_for_author(n, (0.0, 0.0, 1.0)) for n in names[:50]} == {"test"}
  with pytest.raises(ValueError, match="fractions"):
    split_for_author("Jane Austen", (0.5, 0.5, 0.5))
  with pytest.raises(ValueError, match="no letters"):
    split_for_author(" -- ")


# ---------------------------------------------------------------------------------------- fetch
class _GutenbergHandler(http.server.BaseHTTPRequestHandler):
  """Serves corpus files at /cache/epub/<n>/pg<n>.txt.

  The first request for each path gets a 503; ebook numbers in `always_failing` always get a 503,
  and files not in the corpus a 404.
  """

  corpus: Path
  requests: list[tuple[str, str]]
  always_failing: set[int]

  def do_GET(self):  # noqa: N802 -- the http.server API
    self.requests.append((self.path, self.headers.get("User-Agent", "")))
    match = re.fullmatch(r"/cache/epub/(\d+)/pg\1\.txt", self.path)
    path = self.corpus / f"pg{match.group(1)}.txt" if match else None
    if path is None or not path.is_file():
      self.send_error(404)
      return
    if int(match.group(1)) in self.always_failing or [p for p, _ in self.requests].count(self.path) == 1:
      self.send_error(503)
      return
    data = path.read_bytes()
    self.send_response(200)
    self.send_header("Content-Length", str(len(data)))
    self.end_headers()
    self.wfile.write(data)

  def log_message(self, *args):
    pass


@pytest.fixture
def server(corpus_dir):
  handler = type("Handler", (_GutenbergHandler,),
                 {"corpus": corpus_dir, "requests": [], "always_failing": {11}})
  httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
  thread = threading.Thread(target=httpd.serve_forever, daemon=True)
  thread.start()
  yield handler, f"http://127.0.0.1:{httpd.server_address[1]}"
  httpd.shutdown()
  httpd.server_close()
  thread.join()


FAST = dict(min_interval_s=0.0, backoff_s=0.01, timeout_s=10.0)


def test_fetch_retries_caches_and_resumes(server, corpus_dir, tmp_path):
  handler, base_url = server
  cache = tmp_path / "cache"
  paths = fetch_books([46, 35], cache, base_url=base_url, **FAST)
  assert paths == [cache / "pg46.txt", cache / "pg35.txt"]
  for path in paths:
    assert path.read_bytes() == (corpus_dir / path.name).read_bytes()
  assert [p for p, _ in handler.requests] == ["/cache/epub/46/pg46.txt"] * 2 + [
      "/cache/epub/35/pg35.txt"] * 2  # a 503, then the file
  assert {agent for _, agent in handler.requests} == {"xbook/0.1 (+research)"}
  assert sorted(p.name for p in cache.iterdir()) == ["pg35.txt", "pg46.txt"]  # no temp files
  handler.requests.clear()
  assert fetch_books([46, 35], cache, base_url=base_url, **FAST) == paths
  assert handler.requests == []  # everything was cached


def test_fetch_errors_name_ebook_and_url(server, tmp_path):
  handler, base_url = server
  with pytest.raises(FetchError, match=rf"ebook 999999: download of {base_url}/cache/epub/999999/"
                                       r"pg999999.txt failed: HTTP Error 404"):
    fetch_books([999999], tmp_path, base_url=base_url, **FAST)
  assert len(handler.requests) == 1  # a 404 is not retried
  with pytest.raises(FetchError, match=r"ebook 11: .*pg11.txt failed after 3 attempts: .*503"):
    fetch_books([11], tmp_path, base_url=base_url, retries=2, **FAST)
  assert list(tmp_path.iterdir()) == []


def test_fetch_rate_limit_and_url_pattern(server, tmp_path):
  handler, base_url = server
  started = time.monotonic()
  fetch_books([43], tmp_path, base_url=base_url, url_pattern="{base_url}/cache/epub/{n}/pg{n}.txt",
              min_interval_s=0.3, backoff_s=0.0)
  assert time.monotonic() - started >= 0.3  # two requests (503, then 200) at least 0.3 s apart
  assert len(handler.requests) == 2
  with pytest.raises(FetchError, match="elsewhere/pg16"):
    fetch_books([16], tmp_path, base_url=base_url, url_pattern="{base_url}/elsewhere/pg{n}.txt",
                **FAST)
