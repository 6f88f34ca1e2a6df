"""Download Project Gutenberg plain-text books into a local cache, politely and resumably.

Requests are spaced by a minimum delay, failures that may pass (HTTP 5xx and 429, timeouts,
connection errors) are retried with exponential backoff, each file is written atomically (temporary
file, then `os.replace`), and files already in the cache are not downloaded again.
"""

from __future__ import annotations

import http.client
import logging
import os
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterable

from tqdm import tqdm

from xbook.atomic import atomic_open

USER_AGENT = "xbook/0.1 (+research)"
DEFAULT_URL_PATTERN = "{base_url}/cache/epub/{n}/pg{n}.txt"

_log = logging.getLogger(__name__)


class FetchError(RuntimeError):
  """A book could not be downloaded; the message names the ebook and the URL."""


class _Throttle:
  """Keeps at least `min_interval_s` seconds between the starts of consecutive requests."""

  def __init__(self, min_interval_s: float):
    self.min_interval_s = min_interval_s
    self._last_start: float | None = None

  def wait(self) -> None:
    if self._last_start is not None:
      remaining = self._last_start + self.min_interval_s - time.monotonic()
      if remaining > 0:
        time.sleep(remaining)
    self._last_start = time.monotonic()


# Errors of one request; those `_is_transient` accepts are retried.
_REQUEST_ERRORS = (urllib.error.URLError, http.client.HTTPException, TimeoutError, ConnectionError)


def _is_transient(error: Exception) -> bool:
  """Whether a failed request may succeed if tried again (all but HTTP 4xx other than 429)."""
  if isinstance(error, urllib.error.HTTPError):
    return error.code >= 500 or error.code == 429
  return True


def _download(url: str, timeout_s: float) -> bytes:
  request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
  with urllib.request.urlopen(request, timeout=timeout_s) as response:
    return response.read()


def fetch_books(ebook_numbers: Iterable[int], cache_dir: str | os.PathLike[str],
                base_url: str = "https://www.gutenberg.org", url_pattern: str = DEFAULT_URL_PATTERN,
                min_interval_s: float = 2.0, retries: int = 4, backoff_s: float = 2.0,
                timeout_s: float = 60.0) -> list[Path]:
  """Download books into `cache_dir` as pg<n>.txt, skipping those already there.

  Progress shows as a bar over the books; the `xbook.books.fetch` logger says what each one did
  (INFO) and warns of every retry.

  Args:
    ebook_numbers: Gutenberg ebook numbers.
    cache_dir: folder for the files (created if missing).
    base_url: the server, without a trailing slash.
    url_pattern: the file's URL, formatted with `base_url` and `n` (the ebook number).
    min_interval_s: least time between the starts of two requests (rate limit).
    retries: further attempts after a transient failure (HTTP 5xx/429, timeout, connection error).
    backoff_s: wait before the first retry; doubled for each next one.
    timeout_s: socket timeout of one request.

  Returns:
    The cached file of each book, in the order asked for.

  Raises:
    FetchError: a book failed for good (a 4xx other than 429, or transient failures past the
      retries); the message names the ebook, the URL and the last error.
  """
  cache = Path(cache_dir)
  cache.mkdir(parents=True, exist_ok=True)
  throttle = _Throttle(min_interval_s)
  paths = []
  for n in tqdm(list(ebook_numbers), desc="fetch", unit="book"):
    path = cache / f"pg{n}.txt"
    paths.append(path)
    if path.is_file() and path.stat().st_size > 0:
      _log.info("pg%d: cached at %s", n, path)
      continue
    url = url_pattern.format(base_url=base_url.rstrip("/"), n=n)
    data = _fetch_with_retries(n, url, throttle, retries, backoff_s, timeout_s)
    with atomic_open(path, "wb") as f:
      f.write(data)
    _log.info("pg%d: downloaded %s -> %s", n, url, path)
  return paths


def _fetch_with_retries(n: int, url: str, throttle: _Throttle, retries: int, backoff_s: float,
                        timeout_s: float) -> bytes:
  """The body at `url`, retrying transient failures with exponential backoff."""
  attempt = 0
  while True:
    throttle.wait()
    try:
      data = _download(url, timeout_s)
    except _REQUEST_ERRORS as error:
      if not _is_transient(error):
        raise FetchError(f"ebook {n}: download of {url} failed: {error}") from error
      if attempt == retries:
        raise FetchError(f"ebook {n}: download of {url} failed after {attempt + 1} attempts: "
                         f"{error}") from error
      delay = backoff_s * 2**attempt
      attempt += 1
      _log.warning("ebook %d: %s (attempt %d of %d); retrying in %.1fs", n, error, attempt,
                   retries + 1, delay)
      time.sleep(delay)
      continue
    if not data:
      raise FetchError(f"ebook {n}: download of {url} returned an empty body")
    return data
