"""The one error type of the books stage for input it cannot use."""

from __future__ import annotations


class BookError(ValueError):
  """An input file (a book, a catalog) cannot be used.

  The message names the file, what is wrong with it, and what was expected, so that a command can
  print it as is and skip the file.
  """
