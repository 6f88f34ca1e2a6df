"""Download Project Gutenberg files (books, the catalog) into a local cache, politely and resumably.

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
DEFAULT_BASE_URL = "https://www.gutenberg.org"
DEFAULT_URL_PATTERN = "{base_url}/cache/epub/{n}/pg{n}.txt"

_log = logging.getLogger(__name__)


class FetchError(RuntimeError):
  """A file could not be downloaded; the message names the file (e.g. "ebook 46") and the URL."""


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


class Fetcher:
  """Downloads files politely: spaced requests, retries with backoff, atomic writes, a file cache.

  All downloads through one Fetcher share its rate limit, so use one for a catalog and the books
  chosen from it.

  Args:
    min_interval_s: least time between the starts of two requests (rate limit).
    retries: further attempts after a transient failure (HTTP 5xx/429, timeout, connection error).
    backoff_s: wait before the first retry; doubled for each next one.
    timeout_s: socket timeout of one request.
  """

  def __init__(self, min_interval_s: float = 2.0, retries: int = 4, backoff_s: float = 2.0,
               timeout_s: float = 60.0):
    self.retries = retries
    self.backoff_s = backoff_s
    self.timeout_s = timeout_s
    self._throttle = _Throttle(min_interval_s)

  def fetch(self, url: str, path: Path, what: str) -> Path:
    """Download `url` to `path`, unless a non-empty file is already there.

    Args:
      url: what to download.
      path: where to keep it (its folder is created if missing).
      what: names the download in messages, e.g. "ebook 46".

    Raises:
      FetchError: the download failed for good (a 4xx other than 429, transient failures past the
        retries, or an empty body); the message names `what`, the URL and the last error.
    """
    if path.is_file() and path.stat().st_size > 0:
      _log.info("%s: cached at %s", what, path)
      return path
    data = self._download_with_retries(url, what)
    with atomic_open(path, "wb") as f:
      f.write(data)
    _log.info("%s: downloaded %s -> %s", what, url, path)
    return path

  def _download_with_retries(self, url: str, what: str) -> bytes:
    attempt = 0
    while True:
      self._throttle.wait()
      try:
        data = _download(url, self.timeout_s)
      except _REQUEST_ERRORS as error:
        if not _is_transient(error):
          raise FetchError(f"{what}: download of {url} failed: {error}") from error
        if attempt == self.retries:
          raise FetchError(f"{what}: download of {url} failed after {attempt + 1} attempts: "
                           f"{error}") from error
        delay = self.backoff_s * 2**attempt
        attempt += 1
        _log.warning("%s: %s (attempt %d of %d); retrying in %.1fs", what, error, attempt,
                     self.retries + 1, delay)
        time.sleep(delay)
        continue
      if not data:
        raise FetchError(f"{what}: download of {url} returned an empty body")
      return data


def fetch_books(ebook_numbers: Iterable[int], cache_dir: str | os.PathLike[str],
                base_url: str = DEFAULT_BASE_URL, url_pattern: str = DEFAULT_URL_PATTERN,
                fetcher: Fetcher | None = None, keep_going: bool = False) -> list[Path]:
  """Download books into `cache_dir` as pg<n>.txt, skipping those already there.

  Progress shows as a bar over the books; the `xbook.books.fetch` logger says what each one did
  (INFO) and warns of every retry.

  Args:
    ebook_numbers: Gutenberg ebook numbers.
    cache_dir: folder for the files (created when the first one is written).
    base_url: the server, without a trailing slash.
    url_pattern: the file's URL, formatted with `base_url` and `n` (the ebook number).
    fetcher: the downloader (rate limit, retries, timeout); default `Fetcher()`.
    keep_going: on a book that fails for good, log the error and go on with the next one (the
      book is left out of the result) instead of raising.

  Returns:
    The cached file of each book, in the order asked for.

  Raises:
    FetchError: unless `keep_going`, a book failed for good (a 4xx other than 429, or transient
      failures past the retries); the message names the ebook, the URL and the last error.
  """
  cache = Path(cache_dir)
  fetcher = fetcher or Fetcher()
  paths = []
  for n in tqdm(list(ebook_numbers), desc="fetch", unit="book"):
    url = url_pattern.format(base_url=base_url.rstrip("/"), n=n)
    try:
      paths.append(fetcher.fetch(url, cache / f"pg{n}.txt", f"ebook {n}"))
    except FetchError as error:
      if not keep_going:
        raise
      _log.error("%s", error)
  return paths
