"""Batches of trajectory windows for the trainer, from a DataSpec (xbook.data.spec).

Each host yields numpy batches of its share of the global batch: {feature: [per_host_batch, length]}
with the example features (xbook.data.features). With the zig-zag layout the length axis of every feature
is permuted once, here, so that causal ring attention over `sequence_shards` devices gets equal work per
device (xbook.data.zigzag).

The examples of a DataSpec (one view, or a mixture of views) are built from its scaffold records, here,
with `DataSpec.examples` (the function the seqio adapter xbook.data.tasks runs too):

* Books over hosts. Every host reads every scaffold file and keeps the records of the split whose index
  (in file order, then line order, among the records of that split) is `process_index` modulo the number
  of hosts: hosts hold disjoint sets of books that cover the split and differ in size by at most one,
  however the books are spread over files. A training pass (`repeat`) with fewer books than hosts gives
  host h the book h modulo their number.
* Order. Each epoch orders the host's books by a permutation drawn from (seed, host, stream, epoch) and
  cuts them into groups of `shuffle_books` books; the examples of a group are shuffled together (drawn
  from the same key and the group's index) and read out before the next group is built. Without
  `shuffle`, books and their examples come in file order. A mixture draws the view of each example from
  its rates, in blocks of draws seeded by (seed, host, block), and each view is such a stream.
* Position. The order depends on the books' example counts only, so the example at any position is
  found from the counts of the books before it, without building the examples of those books:
  `start_batch` is exact and costs at most one counting pass over the host's books (none for the books
  whose counts are known: in this process, or in `count_cache`, a folder where they are kept between
  runs). Building starts at the group of the position, and the next group is built in a thread while
  this one is read.

A DataSpec with an offline cache (`cache_dir`) is read through seqio: each host reads its own cache shards
and a resume skips the consumed batches.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import functools
import hashlib
import json
import logging
import os
import threading
import time
from typing import Any, Callable, Iterator, Mapping, Sequence

import jax
import numpy as np
import seqio
import tensorflow as tf

from xbook.atomic import atomic_open
from xbook.data import cache as data_cache
from xbook.data import records, tasks, zigzag
from xbook.data.feature_converter import TrajectoryFeatureConverter, task_feature_lengths
from xbook.data.features import TASK_FEATURES
from xbook.data.spec import DataSpec
from xbook.scaffold import scaffold_lines

log = logging.getLogger(__name__)

Batch = Mapping[str, np.ndarray]
Example = Mapping[str, np.ndarray]

DEFAULT_SHUFFLE_BOOKS = 8
_MIX_BLOCK = 4096  # draws of a mixture per seeded block
_COUNTS_FLUSH_S = 60.0


def trajectory_batches(spec: DataSpec, *, split: str, global_batch_size: int, seed: int,
                       sequence_shards: int = 1, length_layout: str = "contiguous", start_batch: int = 0,
                       repeat: bool = True, shuffle: bool = True, shuffle_books: int = DEFAULT_SHUFFLE_BOOKS,
                       count_cache: str | None = None, process_index: int | None = None,
                       process_count: int | None = None) -> Iterator[Batch]:
  """Deterministic batches of `spec`'s examples of `split`, from the `start_batch`-th on (the ones before
  were consumed), each [global_batch_size / hosts, spec.seq_len] per feature.

  With `shuffle` the order depends only on `seed` (and the host); without it windows come in book order.
  Either way a resumed run sees exactly the batches an uninterrupted run would have seen. Every
  sequence's first input token is the vocabulary's BOS. With `spec.cache_dir` the windows are read from
  the offline cache (seqio: each host reads its own shards, a resume skips the consumed batches).

  Args:
    sequence_shards: size of the `sequence` mesh axis; `spec.seq_len` must be a multiple of it (of twice
      it for the zig-zag layout).
    length_layout: "contiguous" or "zigzag" (xbook.data.zigzag.LENGTH_LAYOUTS).
    shuffle_books: books whose examples are shuffled together (module docstring); more mixes more,
      and costs more time before the first batch and more host memory.
    count_cache: a folder (local or gs://) keeping the books' example counts between runs, so that a
      resumed run counts no book again; None: counts are kept in this process only.
    process_index, process_count: this host and the number of hosts (default: jax's).
  """
  if length_layout not in zigzag.LENGTH_LAYOUTS:
    raise ValueError(f"unknown length_layout {length_layout!r}; expected one of {zigzag.LENGTH_LAYOUTS}")
  if shuffle_books < 1:
    raise ValueError(f"shuffle_books must be >= 1, got {shuffle_books}")
  num_hosts = jax.process_count() if process_count is None else process_count
  host = jax.process_index() if process_index is None else process_index
  if global_batch_size % num_hosts:
    raise ValueError(f"global batch {global_batch_size} is not divisible by {num_hosts} hosts")
  host_batch = global_batch_size // num_hosts
  converter = TrajectoryFeatureConverter(bos_id=spec.bos_id, pack=False,
                                         length_multiple=sequence_shards * (2 if length_layout == "zigzag" else 1))
  if spec.cache_dir:
    ds = _cached_examples(spec, split=split, seed=seed, repeat=repeat, shuffle=shuffle, converter=converter,
                          host=host, num_hosts=num_hosts).batch(host_batch, drop_remainder=repeat)
    if start_batch:
      log.info("input pipeline: skipping %d batches already consumed", start_batch)
      ds = ds.skip(start_batch)
  else:
    books = host_books(spec.scaffold_files, split, process_index=host, process_count=num_hosts, share=repeat)
    log.info("input pipeline: %s of %d %s books on this host, %d tokens each",
             " and ".join(f"{view} (rate {spec.view_rates[view]:g})" for view in spec.views), len(books), split,
             spec.seq_len)
    if start_batch:
      log.info("input pipeline: starting at batch %d (example %d of this host's %d books)", start_batch,
               start_batch * host_batch, len(books))
    examples = functools.partial(_book_examples, spec, books, start=start_batch * host_batch,
                                 seed_key=(seed, host), count_cache=count_cache, shuffle=shuffle, repeat=repeat,
                                 shuffle_books=shuffle_books)
    signature = {name: tf.TensorSpec([None], tf.as_dtype(dtype)) for name, dtype in TASK_FEATURES.items()}
    ds = tf.data.Dataset.from_generator(examples, output_signature=signature)
    ds = converter(ds, task_feature_lengths(spec.seq_len)).batch(host_batch, drop_remainder=repeat)
  batches = ds.prefetch(2).as_numpy_iterator()
  if length_layout == "zigzag":
    return (zigzag.apply_layout(batch, sequence_shards) for batch in batches)
  return batches


def _book_examples(spec: DataSpec, books: Sequence[Book], *, start: int, seed_key: tuple[int, int],
                   count_cache: str | None, **order: Any) -> Iterator[Example]:
  """The examples of `spec`'s views over this host's `books`, from position `start` on: one BookStream per
  view, mixed at the views' rates when there are several. Counts are flushed when the reader stops."""
  counts = [ExampleCounts(spec.examples_key(view), books, count_cache) for view in spec.views]
  streams = [BookStream(books, spec.examples(view), counts[i], seed_key=(*seed_key, i), **order)
             for i, view in enumerate(spec.views)]
  try:
    if len(streams) == 1:
      yield from streams[0].examples(start)
    else:
      yield from mixed(streams, [spec.view_rates[view] for view in spec.views], seed_key=seed_key, start=start,
                       repeat=order["repeat"])
  finally:
    for kept in counts:
      kept.flush()


def _cached_examples(spec: DataSpec, *, split: str, seed: int, repeat: bool, shuffle: bool,
                     converter: seqio.FeatureConverter, host: int, num_hosts: int) -> tf.data.Dataset:
  """The windows of `spec` from its offline cache, through seqio (each host reads its own shards)."""
  task = tasks.cached_task(spec)
  if task.cache_dir is None:
    raise FileNotFoundError(f"no completed cache of {spec.cache_name!r} in {spec.cache_dir}: build it with "
                            f"`{data_cache.rebuild_command(spec.cache_dir)}`")
  log.info("reading the examples of %s from its offline cache %s", spec.cache_name, task.cache_dir)
  shard_info = seqio.ShardInfo(host, num_hosts) if num_hosts > 1 else None
  return seqio.get_dataset(task, task_feature_lengths=task_feature_lengths(spec.seq_len),
                           dataset_split=split, shuffle=shuffle, num_epochs=None if repeat else 1,
                           shard_info=shard_info, seed=seed, use_cached=True, feature_converter=converter)


# ------------------------------------------------------------------------------------- books over hosts
@dataclasses.dataclass(frozen=True)
class Book:
  """One scaffold record of this host: its index among the split's records, its JSON line and the
  line's digest (which keys its example counts)."""

  index: int
  line: bytes = dataclasses.field(repr=False)
  digest: str = ""

  @classmethod
  def of(cls, index: int, line: bytes) -> "Book":
    return cls(index, line, _digest(line))


def host_books(scaffold_files: str | Sequence[str], split: str, *, process_index: int, process_count: int,
               share: bool = False) -> list[Book]:
  """The books of `split` that host `process_index` of `process_count` reads: the records whose index
  among the split's records (files in order, then lines) is `process_index` modulo `process_count`.

  Hosts get disjoint books that cover the split, their numbers differing by at most one, whatever the
  files. With `share` (training), when there are fewer books than hosts, host h gets book h modulo their
  number instead of none.
  """
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} is not in [0, {process_count})")
  mine, first, index = [], [], 0  # `first`: the split's first records, for `share`
  for path in records.list_scaffold_files(scaffold_files):
    # The files were validated when the DataSpec was built (xbook.data.spec.DataSpec.build).
    for text, record in scaffold_lines(path, records.open_text, validate=False):
      if record.get("split", "train") != split:
        continue
      line = text.encode("utf-8")
      if index % process_count == process_index:
        mine.append(Book.of(index, line))
      if share and index < process_count:
        first.append(line)
      index += 1
  if share and 0 < index < process_count:
    return [Book.of(process_index % index, first[process_index % index])]
  return mine


# ------------------------------------------------------------------------------------------ counts
_COUNTS: dict[tuple[str, str], int] = {}  # (examples key, book digest) -> examples, in this process
_COUNTS_LOCK = threading.Lock()


class ExampleCounts:
  """How many examples each of this host's books gives under one examples key: kept in this process,
  and in `folder` (one small JSON file per key and set of books, so each host reads and writes its own).

  Args:
    key: what decides the examples of a record (xbook.data.spec.DataSpec.examples_key).
    books: this host's books.
    folder: a folder (local or gs://) that keeps the counts between runs; None: this process only.
  """

  def __init__(self, key: str, books: Sequence[Book], folder: str | None = None) -> None:
    self.key, self.folder = key, folder
    self._digests = [book.digest for book in books]
    self._changed = False
    self._flushed_at = time.monotonic()
    if folder:
      self.path = os.path.join(folder, f"counts-{key}-{_digest(''.join(sorted(self._digests)))}.json")
      self._load()

  def get(self, book: Book) -> int | None:
    with _COUNTS_LOCK:
      return _COUNTS.get((self.key, book.digest))

  def put(self, book: Book, count: int) -> None:
    with _COUNTS_LOCK:
      if _COUNTS.get((self.key, book.digest)) == count:
        return
      _COUNTS[(self.key, book.digest)] = count
      self._changed = True
    if time.monotonic() - self._flushed_at > _COUNTS_FLUSH_S:
      self.flush()

  def _load(self) -> None:
    try:
      with tf.io.gfile.GFile(self.path, "r") as f:
        found = json.load(f)
    except tf.errors.NotFoundError:
      return
    except (ValueError, tf.errors.OpError) as error:
      log.warning("input pipeline: ignoring the unreadable example counts %s (%s)", self.path, error)
      return
    with _COUNTS_LOCK:
      for digest, count in found.items():
        _COUNTS.setdefault((self.key, digest), int(count))

  def flush(self) -> None:
    """Write the known counts of this host's books to `folder` if any is new."""
    with _COUNTS_LOCK:
      changed, self._changed = self._changed, False
      self._flushed_at = time.monotonic()
      known = {d: _COUNTS[(self.key, d)] for d in self._digests if (self.key, d) in _COUNTS}
    if not (self.folder and changed):
      return
    try:
      with atomic_open(self.path, "w") as f:
        json.dump(known, f, sort_keys=True)
    except (OSError, tf.errors.OpError) as error:
      log.warning("input pipeline: could not keep example counts in %s (%s)", self.folder, error)


def _digest(data: bytes | str) -> str:
  return hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()[:32]


# ------------------------------------------------------------------------------------------ streams
def _rng(*key: int) -> np.random.Generator:
  return np.random.default_rng([k % (1 << 63) for k in key])


class BookStream:
  """The examples of one view over this host's books, in a fixed order (module docstring), from any
  position.

  Args:
    books: this host's books.
    to_examples: one record (parsed JSON) -> its examples.
    counts: the example counts of this view (filled as books are built or counted).
    seed_key: (seed, host, stream) ints that seed every permutation.
    shuffle: permute books and examples; else file order.
    repeat: epochs without end; else one.
    shuffle_books: books per group whose examples are shuffled together.
  """

  def __init__(self, books: Sequence[Book], to_examples: Callable[[Mapping[str, Any]], list[Example]],
               counts: ExampleCounts, *, seed_key: Sequence[int], shuffle: bool, repeat: bool,
               shuffle_books: int) -> None:
    self.books, self.to_examples, self.counts = list(books), to_examples, counts
    self.seed_key, self.shuffle, self.repeat, self.group = tuple(seed_key), shuffle, repeat, shuffle_books
    # The examples of the last books counted (at most a group): those of the group a resumed run
    # starts in, which need not be built twice.
    self._counted: collections.OrderedDict[int, list[Example]] = collections.OrderedDict()
    self._lock = threading.Lock()

  # The order: epoch -> groups of book positions -> a permutation of the group's examples.
  def groups(self, epoch: int) -> list[np.ndarray]:
    order = np.arange(len(self.books))
    if self.shuffle:
      order = _rng(*self.seed_key, epoch, 0, 0).permutation(len(self.books))
    return [order[i:i + self.group] for i in range(0, len(order), self.group)]

  def _order_in_group(self, epoch: int, group: int, size: int) -> np.ndarray:
    if not self.shuffle:
      return np.arange(size)
    return _rng(*self.seed_key, epoch, 1, group).permutation(size)

  def build(self, book: int) -> list[Example]:
    """The examples of book `book` (a position in `books`), its count recorded."""
    with self._lock:
      examples = self._counted.pop(book, None)
    if examples is None:
      examples = self.to_examples(json.loads(self.books[book].line))
      known = self.counts.get(self.books[book])
      if known is not None and known != len(examples):
        log.warning("input pipeline: book %d gave %d examples where %d were counted (the examples changed "
                    "since: a resumed run does not start exactly where it stopped)", self.books[book].index,
                    len(examples), known)
      self.counts.put(self.books[book], len(examples))
    return examples

  def count(self, book: int) -> int:
    """The number of examples of book `book` (built if no count is known)."""
    known = self.counts.get(self.books[book])
    if known is not None:
      return known
    examples = self.build(book)
    with self._lock:
      self._counted[book] = examples
      while len(self._counted) > self.group:
        self._counted.popitem(last=False)
    return len(examples)

  def is_empty(self) -> bool:
    """Whether no book gives an example (counts books until one does)."""
    return not any(self.count(b) for g in self.groups(0) for b in g)

  def locate(self, position: int) -> tuple[int, int, int] | None:
    """(epoch, group, offset in the group) of example `position`; None past the end (or no example).

    Counts the books before the position only (every book once when it is past the first epoch).
    """
    remaining = position
    for g, group in enumerate(self.groups(0)):
      size = sum(self.count(b) for b in group)
      if remaining < size:
        return 0, g, remaining
      remaining -= size
    per_epoch = position - remaining
    if not self.repeat or per_epoch == 0:
      return None
    epoch, remaining = 1 + remaining // per_epoch, remaining % per_epoch
    for g, group in enumerate(self.groups(epoch)):
      size = sum(self.count(b) for b in group)
      if remaining < size:
        return epoch, g, remaining
      remaining -= size
    raise AssertionError("unreachable: the position lies in the epoch")

  def examples(self, start: int = 0) -> Iterator[Example]:
    """The examples from position `start` on (without end when repeating a stream that has any)."""
    started, counted = time.perf_counter(), sum(self.counts.get(book) is None for book in self.books)
    located = (0, 0, 0) if start == 0 else self.locate(start)
    if start:
      counted -= sum(self.counts.get(book) is None for book in self.books)
      log.info("input pipeline: example %d found in %.1f s, counting the examples of %d of %d books%s",
               start, time.perf_counter() - started, counted, len(self.books),
               "" if located else " (past the end)")
    self.counts.flush()
    if located is None or not self.books:
      return
    epoch, first_group, offset = located
    any_example = start > 0  # a position that was located lies in a stream with examples
    builder = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="xbook-books")
    try:
      upcoming = self._upcoming(epoch, first_group)
      pending = builder.submit(self._build_group, *next(upcoming))
      while True:
        (epoch, g), built = pending.result()
        if epoch > 0 and not any_example:
          return  # a whole epoch without an example: nothing to repeat
        any_example = any_example or bool(built)
        following = next(upcoming, None)
        if following is not None:  # build the next group while this one is read
          pending = builder.submit(self._build_group, *following)
        for i in self._order_in_group(epoch, g, len(built))[offset:]:
          yield built[i]
        offset = 0
        if following is None:
          return
    finally:
      builder.shutdown(wait=False, cancel_futures=True)

  def _upcoming(self, epoch: int, group: int) -> Iterator[tuple[int, int, np.ndarray]]:
    """(epoch, group index, books) of every group from (epoch, group) on."""
    while True:
      groups = self.groups(epoch)
      for g in range(group, len(groups)):
        yield epoch, g, groups[g]
      if not self.repeat:
        return
      epoch, group = epoch + 1, 0

  def _build_group(self, epoch: int, g: int, group: np.ndarray) -> tuple[tuple[int, int], list[Example]]:
    return (epoch, g), [example for b in group for example in self.build(int(b))]


def mixed(streams: Sequence[BookStream], rates: Sequence[float], *, seed_key: Sequence[int], start: int,
          repeat: bool) -> Iterator[Example]:
  """Examples of `streams`, each drawn from one stream at `rates`, from the `start`-th on.

  The draws come in seeded blocks, so the number taken from each stream before any position is known
  without reading them. A stream without examples is left out of the draws; without `repeat`, a draw
  of a stream that has run out is skipped, and the mixture ends when all have.
  """
  live = [i for i, stream in enumerate(streams) if not stream.is_empty()]
  if not live:
    return
  probabilities = np.array([rates[i] for i in live], np.float64)
  probabilities /= probabilities.sum()

  def block(b: int) -> np.ndarray:
    return np.asarray(live)[_rng(*seed_key, b, 2, 0).choice(len(live), _MIX_BLOCK, p=probabilities)]

  def draws(first: int = 0) -> Iterator[int]:
    b, offset = divmod(first, _MIX_BLOCK)
    while True:
      yield from block(b)[offset:].tolist()
      b, offset = b + 1, 0

  taken = [0] * len(streams)
  if repeat:  # every live stream has examples without end: the first `start` draws are all taken
    full, rest = divmod(start, _MIX_BLOCK)
    for b in range(full + 1):
      taken = (np.asarray(taken) + np.bincount(block(b)[:_MIX_BLOCK if b < full else rest],
                                               minlength=len(streams))).tolist()
    readers = [stream.examples(taken[i]) if i in live else None for i, stream in enumerate(streams)]
    for i in draws(start):
      yield next(readers[i])
    return
  drawn = draws()
  totals = {i: sum(streams[i].count(b) for b in range(len(streams[i].books))) for i in live} if start else {}
  skipped = 0
  while skipped < start:
    i = next(drawn)
    if all(taken[j] >= totals[j] for j in live):
      return
    if taken[i] < totals[i]:
      taken[i] += 1
      skipped += 1
  readers = {i: streams[i].examples(taken[i]) for i in live}
  for i in drawn:
    if not readers:
      return
    if i not in readers:
      continue
    example = next(readers[i], None)
    if example is None:
      del readers[i]
      continue
    yield example
