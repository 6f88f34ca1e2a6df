"""The training input by records: books spread evenly over hosts whatever the files, and any batch found
exactly without building the books before it (xbook.train.input_pipeline)."""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging

import numpy as np
import pytest

from xbook.data.spec import DataSpec
from xbook.data.vocab import load_vocabulary
from xbook.train import input_pipeline
from xbook.train.input_pipeline import host_books, trajectory_batches
from xbook.train.trainer import INPUT_COUNTS_DIR

from tiny_runs import train_tiny

SEQ_LEN = 512
BATCH = 8


def _same(a, b) -> bool:
  return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def _rows(batches) -> list[bytes]:
  """The real rows of batches, hashable."""
  return [row.tobytes() for batch in batches for row, ids in zip(batch["decoder_target_tokens"],
                                                                  batch["decoder_segment_ids"]) if ids.any()]


@pytest.fixture(scope="module")
def windows_data(scaffold_file, vocab_path):
  return DataSpec.build(str(scaffold_file), load_vocabulary(vocab_path), SEQ_LEN)


@pytest.fixture
def builds(monkeypatch):
  """The ids of the books built into examples from now on, with no example count known."""
  built = []
  original = DataSpec.examples

  def counting(self, view):
    examples = original(self, view)

    def counted(record):
      built.append(record["book"]["id"])
      return examples(record)
    return counted

  monkeypatch.setattr(DataSpec, "examples", counting)
  monkeypatch.setattr(input_pipeline, "_COUNTS", {})
  return built


def test_hosts_get_disjoint_even_shares_of_the_books_whatever_the_files(tmp_path):
  ids, books = itertools.count(), {"train": [], "validation": []}
  for f, size in enumerate([9, 1, 0, 4, 2]):  # by file, 2 hosts would read 11 and 5 books
    lines = []
    for _ in range(size):
      i = next(ids)
      split = "validation" if i % 5 == 3 else "train"
      lines.append(json.dumps({"split": split, "book": {"id": f"b{i}"}}) + "\n")
      books[split].append(f"b{i}")
    (tmp_path / f"scaffolds-{f}.jsonl").write_text("".join(lines))
  pattern = str(tmp_path / "scaffolds-*.jsonl")
  for split in books:
    for hosts in (2, 3):
      shares = [[json.loads(book.line)["book"]["id"]
                 for book in host_books(pattern, split, process_index=h, process_count=hosts)]
                for h in range(hosts)]
      read = [book for share in shares for book in share]
      assert sorted(read) == sorted(books[split]) and len(set(read)) == len(read), (split, shares)
      assert max(map(len, shares)) - min(map(len, shares)) <= 1, (split, shares)
  # A training pass over fewer books than hosts gives every host a book, each book to as many hosts.
  shared = [host_books(pattern, "validation", process_index=h, process_count=5, share=True) for h in range(5)]
  assert [len(s) for s in shared] == [1] * 5
  assert len(books["validation"]) == 3 and sorted(s[0].index for s in shared) == [0, 0, 1, 1, 2]
  with pytest.raises(ValueError, match="process_index"):
    host_books(pattern, "train", process_index=2, process_count=2)


def test_two_hosts_read_one_book_each_from_one_file(windows_data):
  """Both books in one file: by file, one host would read both; by record, each reads its own."""
  def host(h):
    return _rows(trajectory_batches(windows_data, split="train", global_batch_size=4, seed=0,
                                    repeat=False, shuffle=False, process_index=h, process_count=2))
  one_host = _rows(trajectory_batches(windows_data, split="train", global_batch_size=4, seed=0, repeat=False, shuffle=False))
  hosts = [host(0), host(1)]
  assert hosts[0] and hosts[1] and not set(hosts[0]) & set(hosts[1])
  assert sorted(hosts[0] + hosts[1]) == sorted(one_host)


@pytest.mark.parametrize("shuffle,repeat,shuffle_books", [(True, True, 1), (True, True, 8), (False, False, 1),
                                                          (True, False, 1)])
def test_a_resumed_pipeline_yields_the_batches_of_an_uninterrupted_one(windows_data, shuffle, repeat,
                                                                       shuffle_books):
  def batches(start):
    return trajectory_batches(windows_data, split="train", global_batch_size=BATCH, seed=3,
                              start_batch=start, shuffle=shuffle, repeat=repeat, shuffle_books=shuffle_books)
  straight = list(itertools.islice(batches(0), 152))  # 2.5 epochs (61 batches each) when repeating
  if not repeat:
    assert len(straight) == 61 and straight[-1]["decoder_target_tokens"].shape[0] <= BATCH
  for start in sorted({1, 33, 60, 61, 103, 149, len(straight) - 1} - {151}):
    resumed = list(itertools.islice(batches(start), 2))
    assert all(_same(a, b) for a, b in zip(resumed, straight[start:start + 2])), start
    assert len(resumed) == len(straight[start:start + 2]), start
  if not repeat:
    assert list(batches(len(straight))) == []
  if shuffle:  # another seed, another order
    other = next(trajectory_batches(windows_data, split="train", global_batch_size=BATCH, seed=4, shuffle_books=shuffle_books))
    assert not _same(other, straight[0])


def test_a_resume_builds_no_book_before_its_position(windows_data, builds, tmp_path):
  """A run resumed deep into training counts each book once (none with kept counts), then builds only
  the group it starts in and the next, instead of every book of every epoch before."""
  def first(start, count_cache=None):
    return next(trajectory_batches(windows_data, split="train", global_batch_size=BATCH, seed=0, start_batch=start, shuffle_books=1, count_cache=count_cache))
  cold = first(1000, count_cache=str(tmp_path))  # about 30 epochs in
  assert len(builds) <= 4 and set(builds) == {"pg46", "pg43"}, builds
  assert list(tmp_path.glob("counts-*.json"))
  del builds[:]
  assert _same(first(1000), cold) and len(builds) <= 2, builds  # counts known in this process
  input_pipeline._COUNTS.clear()
  del builds[:]
  assert _same(first(1000, count_cache=str(tmp_path)), cold) and len(builds) <= 2, builds  # kept counts


def test_a_resumed_run_finds_its_position_from_the_counts_it_kept(tmp_path, scaffold_file, vocab_path, builds,
                                                                  caplog):
  """train() keeps its books' example counts in the run directory: a resume in a new process (no counts
  in memory) counts no book again."""
  run = tmp_path / "run"
  train_tiny(run, scaffold_file, vocab_path, steps=2)
  assert list((run / INPUT_COUNTS_DIR).glob("counts-*.json"))
  input_pipeline._COUNTS.clear()  # as in a new process
  with caplog.at_level(logging.INFO, logger=input_pipeline.__name__):
    train_tiny(run, scaffold_file, vocab_path, steps=3)
  assert "input pipeline: starting at batch 2" in caplog.text
  assert "counting the examples of 0 of" in caplog.text, caplog.text


def test_a_mixture_resumes_exactly_and_leaves_out_a_view_without_examples(scaffold_file, vocab_path):
  # At this length no book fits whole: the `full` view has no example and is never drawn.
  mixture = DataSpec.build(str(scaffold_file), load_vocabulary(vocab_path), SEQ_LEN,
                           view_rates={"windows": 2.0, "stages": 1.0, "full": 1.0})

  def view(name):
    return dataclasses.replace(mixture, view_rates={name: 1.0})
  assert list(trajectory_batches(view("full"), split="train", global_batch_size=BATCH, seed=0)) == []
  views = {name: set(_rows(trajectory_batches(view(name), split="train", global_batch_size=BATCH, seed=0,
                                              repeat=False, shuffle=False)))
           for name in ("windows", "stages")}
  for repeat in (True, False):
    def batches(start):
      return trajectory_batches(mixture, split="train", global_batch_size=BATCH, seed=1, start_batch=start,
                                repeat=repeat)
    straight = list(itertools.islice(batches(0), 120))
    rows = set(_rows(straight))
    assert rows & views["windows"] and rows & views["stages"] and rows <= views["windows"] | views["stages"]
    for start in (1, 45, len(straight) - 1):
      assert _same(next(batches(start)), straight[start]), (repeat, start)


def test_the_previously_segment_is_searched_from_the_end_in_few_encodings():
  """windows._earliest_fitting finds the first fitting start as a scan from 0 would, for a predicate that
  holds from some point on, in a few calls near the end (the scan encoded the outline once per start)."""
  from xbook.data.windows import _earliest_fitting
  for end in range(40):
    for threshold in range(end + 2):
      calls = []

      def fits(first):
        calls.append(first)
        return first >= threshold
      expected = next((first for first in range(end) if fits(first)), None)
      calls.clear()
      assert _earliest_fitting(end, fits) == expected, (end, threshold)
      assert len(calls) <= 2 * max(1, end - threshold).bit_length() + 1, (end, threshold, calls)
