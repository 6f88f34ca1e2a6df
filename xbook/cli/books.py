"""`xbook books`: download Gutenberg novels, clean them and split them into chapters and scenes, inspect one."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path

from xbook.cli.common import add_command, add_group, refuse_overwrite

log = logging.getLogger("xbook")
_DOWNLOAD_CATALOG = "<download>"


def add_parser(subparsers) -> None:
  """The `books` group: fetch, segment, inspect."""
  books = add_group(subparsers, "books", "Gutenberg novels: fetch, clean, segment.",
                    "xbook books segment --books ../shared/corpus/gutenberg --out out/books.jsonl")
  _add_fetch(books)
  _add_segment(books)
  _add_inspect(books)


def _add_fetch(books) -> None:
  p = add_command(
      books, "fetch", "Download plain-text ebooks, by number or chosen from Gutenberg's catalog, into a cache "
      "(resumable; exit status 1 if any book failed).",
      "xbook books fetch --ids 46,35,43 --cache gutenberg/\n"
      "xbook books fetch --catalog --language en --subject fiction --limit 100 --cache gutenberg/",
      _books_fetch)
  which = p.add_mutually_exclusive_group(required=True)
  which.add_argument("--ids", type=_ebook_numbers, help="comma-separated ebook numbers (46,35 or pg46,pg35)")
  which.add_argument("--catalog", nargs="?", const=_DOWNLOAD_CATALOG, metavar="PATH",
                     help="choose the books from Gutenberg's pg_catalog.csv: a local file, or with no PATH "
                          "the mirror's {base_url}/cache/epub/feeds/pg_catalog.csv, downloaded into --cache "
                          "(and reused from there; delete it to refresh). Only Type=Text rows; the filters "
                          "below must all match, the values of one filter are alternatives")
  p.add_argument("--language", action="append", default=[], help="catalog language code, e.g. en (repeatable)")
  p.add_argument("--subject", action="append", default=[],
                 help="text in a catalog subject, any case, e.g. fiction (repeatable)")
  p.add_argument("--bookshelf", action="append", default=[],
                 help="text in a catalog bookshelf, any case, e.g. 'Category: Novels' (repeatable)")
  p.add_argument("--limit", type=int, default=None, help="at most this many books from the catalog (the first)")
  p.add_argument("--cache", required=True, help="download folder; files already there are kept")
  p.add_argument("--base_url", default="https://www.gutenberg.org", help="Gutenberg mirror")
  p.add_argument("--min_interval_s", type=float, default=2.0,
                 help="least seconds between two requests (keep the default for gutenberg.org)")


def _add_segment(books) -> None:
  p = add_command(
      books, "segment", "Clean Gutenberg .txt files and split them into chapters and scenes (JSONL); unusable "
      "files are skipped and listed on stderr (exit status 1, no output, if none was usable); a book that drops "
      "more than 5 percent of its body as front and back matter is listed as a warning (--strict: an error).",
      "xbook books segment --books ../shared/corpus/gutenberg --ids pg46,pg35 --out out/books.jsonl",
      _books_segment)
  p.add_argument("--books", required=True, help="folder of Gutenberg .txt files")
  p.add_argument("--ids", default=None, help="comma-separated file stems (default: every .txt file)")
  p.add_argument("--out", required=True, help="output books JSONL")
  p.add_argument("--scene_words", type=int, default=1200, help="target scene size in words")
  p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
  p.add_argument("--strict", action="store_true",
                 help="a book that drops more than 5%% of its body as front and back matter is an error "
                      "(exit 1, nothing written), not a warning; for corpus builds")


def _add_inspect(books) -> None:
  p = add_command(books, "inspect", "Show one Gutenberg file's metadata, cleaning report and chapters.",
                  "xbook books inspect ../shared/corpus/gutenberg/pg98.txt", _books_inspect)
  p.add_argument("file")
  p.add_argument("--json", action="store_true")


def _ebook_numbers(text: str) -> list[int]:
  """Comma-separated ebook numbers, each optionally written pg<n> (an argparse type)."""
  try:
    return [int(item.strip().removeprefix("pg")) for item in text.split(",") if item.strip()]
  except ValueError:
    raise argparse.ArgumentTypeError(
        f"expected comma-separated ebook numbers such as 46,pg35, got {text!r}") from None


def _books_fetch(args: argparse.Namespace) -> int:
  from xbook.books import FetchError, Fetcher, download_catalog, fetch_books, read_catalog, select_ebooks
  fetcher = Fetcher(min_interval_s=args.min_interval_s)
  if args.ids is not None:
    if args.language or args.subject or args.bookshelf or args.limit is not None:
      raise SystemExit("error: --language, --subject, --bookshelf and --limit choose from a catalog; "
                       "use them with --catalog, not --ids")
    numbers = args.ids
  else:
    try:
      catalog = (download_catalog(args.cache, args.base_url, fetcher) if args.catalog == _DOWNLOAD_CATALOG
                 else Path(args.catalog))
      numbers = select_ebooks(read_catalog(catalog), languages=args.language, subjects=args.subject,
                              bookshelves=args.bookshelf, limit=args.limit)
    except (FetchError, FileNotFoundError, ValueError) as error:  # a BookError is a ValueError
      raise SystemExit(f"error: {error}")
    log.info("catalog %s: %d ebooks selected", catalog, len(numbers))
  paths = fetch_books(numbers, args.cache, base_url=args.base_url, fetcher=fetcher, keep_going=True)
  for path in paths:
    print(path)
  if len(paths) < len(numbers):
    print(f"error: {len(numbers) - len(paths)} of {len(numbers)} books could not be downloaded (see above); "
          f"run the command again to retry them", file=sys.stderr)
    return 1
  return 0


def _book_files(folder: str, ids: str | None) -> list[Path]:
  root = Path(folder)
  if not root.is_dir():
    raise SystemExit(f"error: --books {folder} is not a folder of Gutenberg .txt files")
  if ids:
    files = [root / f"{book_id.strip()}.txt" for book_id in ids.split(",") if book_id.strip()]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
      raise SystemExit(f"error: no such book file: {', '.join(missing)}")
    return files
  files = sorted(root.glob("*.txt"))
  if not files:
    raise SystemExit(f"error: {folder} holds no .txt files")
  return files

def _books_segment(args: argparse.Namespace) -> int:
  refuse_overwrite(args.out, args.overwrite)
  from tqdm import tqdm
  from xbook.books import BookError, load_book_with_report
  from xbook.books.io import write_books
  files = _book_files(args.books, args.ids)
  books, skipped, too_much = [], [], []
  for path in tqdm(files, desc="segment", unit="book"):
    try:
      book, report = load_book_with_report(path, scene_target_words=args.scene_words)
    except BookError as error:
      skipped.append(str(error))
      continue
    books.append(book)
    if report.drops_too_much:
      too_much.append(f"{book.id} ({report.front_matter_words + report.back_matter_words:,} words, "
                      f"{report.dropped_share:.1%}; front: {report.prose.front_rule})")
    n_scenes = sum(len(c.scenes) for c in book.chapters)
    tqdm.write(f"{book.id:>8}  {book.title[:40]:<40} {len(book.chapters):>4} chapters {n_scenes:>5} scenes "
               f"{book.n_words:>8,} words{'  (chapters cut by length)' if book.chapters_by_length else ''}")
  if skipped:
    print(f"skipped {len(skipped)} of {len(files)} files:\n" + "\n".join(f"  {reason}" for reason in skipped),
          file=sys.stderr)
  if not books:
    raise SystemExit(f"error: no usable book among the {len(files)} files; {args.out} not written")
  _check_dropped(too_much, len(books), args)
  write_books(args.out, books)
  print(f"books: {args.out} ({len(books)} books)")
  return 0


def _check_dropped(too_much: list[str], n_books: int, args: argparse.Namespace) -> None:
  """Warn about (with --strict, refuse) books that drop more than MAX_DROPPED_SHARE as front/back matter."""
  if not too_much:
    return
  from xbook.books.load import MAX_DROPPED_SHARE
  summary = (f"{len(too_much)} of {n_books} books drop more than {MAX_DROPPED_SHARE:.0%} of their body as front "
             f"and back matter")
  if args.strict:
    raise SystemExit(f"error: {summary}: {'; '.join(too_much)}; check them with `xbook books inspect FILE` "
                     f"(story text taken as front matter?) or leave out --strict; {args.out} not written")
  print(f"warning: {summary} (check them with `xbook books inspect FILE`; --strict makes this an error):\n"
        + "\n".join(f"  {line}" for line in too_much), file=sys.stderr)


def _books_inspect(args: argparse.Namespace) -> int:
  path = Path(args.file)
  if path.is_file() and (path.suffix in (".jsonl", ".json") or path.open("rb").read(1) == b"{"):
    raise SystemExit(f"error: {args.file} is JSON (a books JSONL of `xbook books segment`?); `xbook books inspect` "
                     "reads one Gutenberg .txt novel, e.g. ../shared/corpus/gutenberg/pg46.txt")
  from xbook.books import BookError, load_book_with_report
  try:
    book, report = load_book_with_report(args.file)
  except (BookError, FileNotFoundError) as error:
    raise SystemExit(f"error: {error}")
  structure = "length_fallback" if book.chapters_by_length else "headings"
  chapters = [{"index": c.index, "path": list(c.path), "title": c.title, "kind": c.kind, "n_words": c.n_words,
               "n_scenes": len(c.scenes)} for c in book.chapters]
  if args.json:
    print(json.dumps({**book.metadata(), "encoding": report.encoding, "structure_source": structure,
                      "cleaning": dataclasses.asdict(report.cleaning), "prose": dataclasses.asdict(report.prose),
                      "dropped": {"front_matter_words": report.front_matter_words,
                                  "back_matter_words": report.back_matter_words,
                                  "share": round(report.dropped_share, 4),
                                  "too_much": report.drops_too_much},
                      "chapters": chapters},
                     ensure_ascii=False))
    return 0
  cleaning, prose = report.cleaning, report.prose
  print(f"{book.id}: {book.title}\n"
        f"  author     {book.author}\n"
        f"  language   {book.language}\n"
        f"  words      {book.n_words:,} in {len(chapters)} chapters\n"
        f"  structure  {structure}\n"
        f"  encoding   {report.encoding}\n"
        f"  cleaning   {'header found' if cleaning.header_found else 'no Gutenberg header (plain text)'}, "
        f"{'footer found' if cleaning.footer_found else 'no footer'}, {cleaning.fraction_removed:.1%} removed, "
        f"{cleaning.leftover_gutenberg_mentions} leftover Gutenberg mentions\n"
        f"  dropped    {report.front_matter_words:,} words front matter, {report.back_matter_words:,} "
        f"back matter ({report.dropped_share:.2%} of the body"
        f"{'; TOO MUCH: check for story text taken as front/back matter' if report.drops_too_much else ''})\n"
        f"  front      {prose.front_rule}\n"
        f"  paragraphs {prose.paragraphs:,} ({prose.prose_paragraphs:,} unwrapped at width {prose.wrap_width}, "
        f"{prose.lines_joined:,} line breaks joined; {prose.kept_line_paragraphs:,} keep their lines)\n"
        f"  markup     {prose.italic_spans:,} _italic_ spans, {prose.illustrations_removed} illustrations "
        f"removed, {prose.footnote_bodies_removed} footnotes and {prose.footnote_anchors_removed} anchors "
        f"removed ({prose.footnote_words + prose.illustration_words} words), "
        f"{prose.dashes_normalised} dashes normalised\n"
        f"  chapters   (index, words, scenes, kind, path: parent headings / title)")
  for c in chapters:
    print(f"  {c['index']:>4} {c['n_words']:>8,} words {c['n_scenes']:>3} scenes  {c['kind']:<9} "
          f"{' / '.join(c['path']) or '(untitled: cut by length)'}")
  return 0
