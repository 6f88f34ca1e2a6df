"""A corpus folder's MANIFEST.tsv: one row per book file."""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

_MANIFEST = "MANIFEST.tsv"
_MANIFEST_REQUIRED = ("file", "ebook_number")
_MANIFEST_INTEGERS = ("ebook_number", "bytes", "words")


def read_manifest(corpus_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
  """Rows of a corpus folder's MANIFEST.tsv (tab-separated, one row per book file).

  Returns:
    One dict per row, keyed by the header's column names; ebook_number, bytes and words are ints.

  Raises:
    FileNotFoundError: the folder has no MANIFEST.tsv.
    ValueError: a required column (file, ebook_number) is missing or a number does not parse.
  """
  path = Path(corpus_dir) / _MANIFEST
  if not path.is_file():
    raise FileNotFoundError(f"manifest not found: {path}")
  with open(path, encoding="utf-8-sig", newline="") as f:
    reader = csv.DictReader(f, delimiter="\t")
    missing = [c for c in _MANIFEST_REQUIRED if c not in (reader.fieldnames or [])]
    if missing:
      raise ValueError(f"{path}: missing column(s) {', '.join(missing)}; found {reader.fieldnames}")
    rows = []
    for line_number, row in enumerate(reader, 2):
      for column in _MANIFEST_INTEGERS:
        if column in row:
          try:
            row[column] = int(row[column])
          except (TypeError, ValueError) as e:
            raise ValueError(f"{path}:{line_number}: column {column} is not an integer: "
                             f"{row[column]!r}") from e
      rows.append(row)
  return rows
