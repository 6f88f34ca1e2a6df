"""Books: Project Gutenberg novels turned into `Book`s (cleaned text, chapters, scenes).

`load_book` reads one Gutenberg plain-text file (`load_book_with_report` also says how it was
read); `read_manifest` reads a corpus folder's MANIFEST.tsv; `read_catalog` and `select_ebooks`
choose books from Gutenberg's catalog; `fetch_books` downloads books into a cache;
`split_for_author` assigns a book to train/validation/test by its author. Unusable input raises
`BookError`.
"""

from __future__ import annotations

from xbook.books.catalog import CatalogEntry, download_catalog, read_catalog, select_ebooks
from xbook.books.errors import BookError
from xbook.books.fetch import FetchError, Fetcher, fetch_books
from xbook.books.gutenberg import CleaningReport, clean_gutenberg, parse_header
from xbook.books.load import LoadReport, load_book, load_book_with_report
from xbook.books.manifest import read_manifest
from xbook.books.splits import split_for_author
from xbook.books.types import Book, Chapter, Scene

__all__ = ["Book", "BookError", "CatalogEntry", "Chapter", "CleaningReport", "FetchError", "Fetcher",
           "LoadReport", "Scene", "clean_gutenberg", "download_catalog", "fetch_books", "load_book",
           "load_book_with_report", "parse_header", "read_catalog", "read_manifest", "select_ebooks",
           "split_for_author"]
