"""Paths as the user wrote them, made absolute once at an entry point (a command, `train()`).

Orbax refuses a relative checkpoint path, and a path kept relative means something else to a process
that runs in another folder (an `xbook serve` child, a Beam worker). So every entry point turns the
folders and files it is given into absolute paths, against the current directory, before it passes them
down; library code below may assume absolute paths. Remote paths (`gs://...`, any `scheme://`) are left
as they are, and so is None.
"""

from __future__ import annotations

import os
from typing import Sequence, overload


def is_remote(path: str | os.PathLike[str]) -> bool:
  """Whether `path` is a URL such as gs://bucket/folder (never made absolute)."""
  return "://" in os.fspath(path)


@overload
def absolute(path: None) -> None: ...
@overload
def absolute(path: str | os.PathLike[str]) -> str: ...


def absolute(path):
  """`path` made absolute against the current directory (`~` expanded); a URL or None as it is."""
  if path is None:
    return None
  text = os.fspath(path)
  if not text or is_remote(text):
    return text
  return os.path.abspath(os.path.expanduser(text))


def absolute_all(paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | None):
  """Each of `paths` (one path, a sequence, e.g. file names or glob patterns, or None) made absolute."""
  if paths is None or isinstance(paths, (str, os.PathLike)):
    return absolute(paths)
  return [absolute(p) for p in paths]
