"""Atomic file writes: a file is either as it was or complete, never half-written.

Local paths go through a temporary file and a rename. Object-store URLs (gs://, s3://) are written
directly: an object store publishes an object only when its upload completes, which is atomic already.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path
from typing import IO, Iterator

from etils import epath


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "w") -> Iterator[IO]:
  """Open a temporary file beside `path` for writing; on success it replaces `path`.

  The temporary file is opened with "x" (not made by `tempfile`), so the result gets the usual
  permissions of the umask. On any exception the temporary file is removed and `path` is untouched.

  Args:
    path: the destination (a local path or an object-store URL); its folder is created if missing.
    mode: "w" (text, UTF-8) or "wb".
  """
  if mode not in ("w", "wb"):
    raise ValueError(f"atomic_open writes only: mode must be 'w' or 'wb', got {mode!r}")
  if is_url(path):
    with epath.Path(path).open(mode) as f:
      yield f
    return
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
  try:
    with open(temporary, mode.replace("w", "x"), encoding=None if "b" in mode else "utf-8") as f:
      yield f
      f.flush()
      os.fsync(f.fileno())
    os.replace(temporary, path)
  except BaseException:
    temporary.unlink(missing_ok=True)
    raise


def is_url(path: str | os.PathLike[str]) -> bool:
  """Whether `path` names an object in a store (gs://bucket/...) rather than a local file."""
  return "://" in os.fspath(path)
