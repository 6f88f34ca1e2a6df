"""Shared test fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from xbook.host_env import describe_chipless_tpu_host

# The test session is an entry point: it sets up the environment jax starts in (importing xbook does not),
# and the commands the tests run as subprocesses inherit it.
describe_chipless_tpu_host()


@pytest.fixture(scope="session")
def corpus_dir() -> Path:
  """The Gutenberg test corpus: $XBOOK_CORPUS, else ../shared/corpus/gutenberg beside the clone.

  A missing corpus fails the test under CI (CI=true) and skips it elsewhere.
  """
  default = Path(__file__).resolve().parents[2] / "shared/corpus/gutenberg"
  path = Path(os.environ.get("XBOOK_CORPUS") or default)
  if not (path / "MANIFEST.tsv").is_file():
    message = (f"Gutenberg test corpus not found at {path} (no MANIFEST.tsv); put it at {default} "
               f"or point XBOOK_CORPUS at it")
    if os.environ.get("CI") == "true":
      pytest.fail(message)
    pytest.skip(message)
  return path


# Real scaffolds of two short novels by different authors, built once per test session with the
# offline extractive summarizer, and a small SentencePiece vocabulary trained on them.
PIPELINE_BOOKS = ("pg46.txt", "pg43.txt")


@pytest.fixture(scope="session")
def scaffold_records(corpus_dir):
  from xbook.books import load_book
  from xbook.scaffold import ExtractiveSummarizer, build_scaffold
  summarizer = ExtractiveSummarizer()
  return [build_scaffold(load_book(corpus_dir / name), summarizer, split="train")
          for name in PIPELINE_BOOKS]


@pytest.fixture(scope="session")
def scaffold_file(scaffold_records, tmp_path_factory):
  from xbook.scaffold import write_scaffolds
  path = tmp_path_factory.mktemp("scaffolds") / "scaffolds.jsonl"
  write_scaffolds(path, scaffold_records)
  return path


@pytest.fixture(scope="session")
def vocab_path(scaffold_records, tmp_path_factory):
  from xbook.data.vocab import train_vocab
  return train_vocab(scaffold_records, tmp_path_factory.mktemp("vocab") / "vocab.model", vocab_size=1024)


# Every novel of the shared corpus, and its paper-format scaffold record built with the extractive summarizer
# (about 45 s on one core, spread over the cores by tests/parallel_records.py): the paper-format tests and the
# stage-grammar tests share them.
@pytest.fixture(scope="session")
def novels(corpus_dir):
  from xbook.books import load_book
  return [load_book(path) for path in sorted(corpus_dir.glob("*.txt"))]


@pytest.fixture(scope="session")
def paper_records(novels):
  from parallel_records import build_paper_records
  return build_paper_records(novels)


# One persistent XLA compilation cache for the whole session: a program compiled once (the tiny train step
# that many runs share, a resumed run's step) is loaded from disk by every later test and by the commands
# the tests start as subprocesses (they inherit JAX_COMPILATION_CACHE_DIR), instead of compiled again.
# Results are unchanged: a cache hit is the executable that the same program compiled to. A cache the
# caller already set (JAX_COMPILATION_CACHE_DIR) is kept; JAX_COMPILATION_CACHE_DIR= (empty) turns it off.
@pytest.fixture(scope="session", autouse=True)
def session_compilation_cache(tmp_path_factory):
  import jax
  from jax.experimental.compilation_cache import compilation_cache as cache
  directory = os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(tmp_path_factory.mktemp("jax_cache")))
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
  jax.config.update("jax_compilation_cache_dir", directory)
  jax.config.update("jax_persistent_cache_min_compile_time_secs",
                    float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]))
  cache.reset_cache()  # a compile before this fixture (at import) must not leave the cache off
  yield directory


@pytest.fixture
def no_compilation_cache(monkeypatch):
  """The session's compilation cache off for one test and its subprocesses: for ahead-of-time TPU compiles,
  which a compile-only TPU client writes to the cache but cannot load back (jax warns and compiles again)."""
  import jax
  from jax.experimental.compilation_cache import compilation_cache as cache
  monkeypatch.setenv("JAX_ENABLE_COMPILATION_CACHE", "false")
  previous = jax.config.jax_enable_compilation_cache
  jax.config.update("jax_enable_compilation_cache", False)
  cache.reset_cache()
  yield
  jax.config.update("jax_enable_compilation_cache", previous)
  cache.reset_cache()
