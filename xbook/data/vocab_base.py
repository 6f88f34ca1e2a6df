"""The interface every vocabulary implements, and its seqio face (xbook.data.vocab loads them).

`Vocabulary` is what the rest of xbook holds: the ids a tokenizer produces, its special ids, the marker style
of trajectories written in it, `encode`/`decode`, `save` and `seqio_vocabulary()`. Its implementations live
beside their tokenizers: `xbook.data.vocab.SentencePieceVocab` (SentencePiece models) and
`xbook.data.hf_vocab.TokenizersVocab` (tokenizer.json, tekken.json); `xbook.data.vocab.load_vocabulary`
chooses one by file. This module imports neither, so both may import it.

A vocabulary pickles as its class, path and fingerprint, and unpickles by loading its files again, once per
process (`restore`).
"""

from __future__ import annotations

import abc
import hashlib
import os
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import seqio
import tensorflow as tf
from etils import epath

from xbook.atomic import atomic_open
from xbook.data import trajectory


def find_marker_style(encode: Callable[[str], Sequence[int]], source: str) -> str:
  """"symbols" when every segment marker encodes to one token (an xbook vocabulary), "tags" when none
  does (a pretrained tokenizer); an error for a mix."""
  single = [m for m in trajectory.ALL_MARKERS if len(encode(m)) == 1]
  if len(single) == len(trajectory.ALL_MARKERS):
    return "symbols"
  if single:
    missing = sorted(set(trajectory.ALL_MARKERS) - set(single))
    raise ValueError(f"{source}: the vocabulary has some segment markers as single tokens ({single}) but "
                     f"not {missing}; retrain it with `xbook vocab train`, or use a tokenizer with none "
                     "of them")
  return "tags"


class Vocabulary(abc.ABC):
  """A tokenizer with the special ids a trajectory needs (see the subclasses for where each comes from).

  Attributes:
    path: the file it was loaded from (a `.model`, `tokenizer.json` or `tekken.json`; local or gs://).
    size: the number of ids the tokenizer can produce (0..size-1). A model may have more embedding rows
      (padded to a multiple); those are never sampled.
    bos_id: the first input token of every sequence.
    eos_id: the token that ends a book.
    pad_id: the tokenizer's pad token, or None.
    unk_id: the tokenizer's unknown token, or None.
    marker_style: "symbols" (every segment marker is one token: an xbook vocabulary) or "tags" (none is:
      a pretrained tokenizer; xbook.data.trajectory.MARKER_STYLES).
  """

  def __init__(self, path: str, files: Mapping[str, bytes], *, size: int, bos_id: int, eos_id: int,
               pad_id: int | None, unk_id: int | None, marker_style: str) -> None:
    """Sets the attributes (subclasses load their tokenizer first and find the marker style with it).

    Args:
      path: the loaded file.
      files: {file name: content} of every file needed to load it again, the loaded file first.
      size, bos_id, eos_id, pad_id, unk_id, marker_style: the attributes.
    """
    self.path, self._files = path, dict(files)
    self.size, self.bos_id, self.eos_id, self.pad_id, self.unk_id = size, bos_id, eos_id, pad_id, unk_id
    self.marker_style = marker_style
    for name, value in (("bos", bos_id), ("eos", eos_id), ("pad", pad_id), ("unk", unk_id)):
      if value is not None and not 0 <= value < size:
        raise ValueError(f"{path}: {name} id {value} is outside the {size} ids of the tokenizer")
    self.fingerprint = hashlib.sha256(b"".join(
        hashlib.sha256(name.encode() + b"\0" + data).digest() for name, data in sorted(files.items()))
    ).hexdigest()

  @classmethod
  @abc.abstractmethod
  def load_file(cls, path: str) -> Vocabulary:
    """The vocabulary of the file at `path` (local or gs://), as this class loads it."""

  @abc.abstractmethod
  def encode(self, text: str) -> list[int]:
    """Token ids of `text`, with no special token added (no BOS, no EOS)."""

  @abc.abstractmethod
  def decode(self, ids: Sequence[int]) -> str:
    """The text of `ids` (decode(encode(text)) == text for the text of books)."""

  def marker_ids(self) -> list[int]:
    """The ids of the segment markers (xbook.data.trajectory.ALL_MARKERS) when they are symbols, else []."""
    if self.marker_style != "symbols":
      return []
    return [self.encode(m)[0] for m in trajectory.ALL_MARKERS]

  def seqio_vocabulary(self) -> SeqioVocabulary:
    """This vocabulary as the `seqio.Vocabulary` of a task's `targets` feature."""
    return SeqioVocabulary(self)

  def save(self, dest_dir: str | os.PathLike[str]) -> str:
    """Copy the files needed to load this vocabulary into `dest_dir` (local or gs://, created if missing).

    Returns:
      The path to pass to `load_vocabulary` (the copy of the loaded file).
    """
    dest = epath.Path(dest_dir)
    for name, data in self._files.items():
      with atomic_open(dest / name, "wb") as f:
        f.write(data)
    return os.fspath(dest / next(iter(self._files)))

  def __eq__(self, other: Any) -> bool:
    # Equal when loaded from the same files (by content: a run directory's copy equals its source).
    return type(self) is type(other) and self.fingerprint == other.fingerprint

  def __hash__(self) -> int:
    return hash(self.fingerprint)

  def __reduce__(self) -> tuple[Any, tuple[type[Vocabulary], str, str]]:
    # Pickled (gin deep-copies, Beam workers) as its class, path and fingerprint: loaded again, once per process.
    return restore, (type(self), self.path, self.fingerprint)

  def __repr__(self) -> str:
    return (f"{type(self).__name__}({self.path!r}, size={self.size}, bos={self.bos_id}, eos={self.eos_id}, "
            f"pad={self.pad_id}, markers={self.marker_style})")


class SeqioVocabulary(seqio.Vocabulary):
  """A `Vocabulary` as seqio sees it (docs/architecture.md, "Facts", lists what seqio needs).

  `bos_id` is the vocabulary's first input (TrajectoryFeatureConverter reads it from here). seqio uses
  `pad_id` only to count tokens and to blank what follows EOS in `decode_tf`; it is the tokenizer's pad,
  else its EOS (examples mark padding with segment id 0, not by id). `decode` leaves out BOS, EOS and pad.
  Picklable and deep-copyable (the wrapped vocabulary pickles as its path and fingerprint); equal to
  another when they wrap the same files.
  """

  def __init__(self, vocabulary: Vocabulary) -> None:
    super().__init__(extra_ids=0)
    self.vocabulary = vocabulary

  @property
  def bos_id(self) -> int:
    return self.vocabulary.bos_id

  @property
  def eos_id(self) -> int:
    return self.vocabulary.eos_id

  @property
  def pad_id(self) -> int:
    return self.vocabulary.eos_id if self.vocabulary.pad_id is None else self.vocabulary.pad_id

  @property
  def unk_id(self) -> int | None:
    return self.vocabulary.unk_id

  @property
  def _base_vocab_size(self) -> int:
    return self.vocabulary.size

  def _encode(self, s: str) -> list[int]:
    return self.vocabulary.encode(s)

  def _decode(self, ids: Iterable[int]) -> str:
    v = self.vocabulary
    special = {v.bos_id, v.eos_id, v.pad_id} - {None}
    return v.decode([int(i) for i in ids if int(i) not in special])

  def _encode_tf(self, s: tf.Tensor) -> tf.Tensor:
    """A scalar string to int32 ids [n]."""
    ids = tf.py_function(lambda text: np.asarray(self._encode(text.numpy().decode("utf-8")), np.int32),
                         [s], Tout=tf.int32)
    ids.set_shape([None])
    return ids

  def _decode_tf(self, ids: tf.Tensor) -> tf.Tensor:
    """Ids [..., n] to strings [...]."""

    def decode(batch: tf.Tensor) -> np.ndarray:
      array = batch.numpy()
      rows = array.reshape(-1, array.shape[-1]) if array.ndim else array.reshape(1, 1)
      texts = [self._decode(row.tolist()).encode("utf-8") for row in rows]
      return np.array(texts, dtype=object).reshape(array.shape[:-1])

    text = tf.py_function(decode, [ids], Tout=tf.string)
    text.set_shape(ids.shape[:-1])
    return text

  def __eq__(self, other: Any) -> bool:
    return isinstance(other, SeqioVocabulary) and self.vocabulary == other.vocabulary

  def __hash__(self) -> int:
    return hash(self.vocabulary)

  def __str__(self) -> str:
    return f"SeqioVocabulary({self.vocabulary!r})"


# Vocabularies loaded in this process, by (path, fingerprint), so that unpickling one loads it only once.
_LOADED: dict[tuple[str, str], Vocabulary] = {}


def remember(vocabulary: Vocabulary) -> Vocabulary:
  """Keep `vocabulary` as this process's copy of its files (what `restore` returns); returns it."""
  _LOADED[(vocabulary.path, vocabulary.fingerprint)] = vocabulary
  return vocabulary


def restore(cls: type[Vocabulary], path: str, fingerprint: str) -> Vocabulary:
  """The vocabulary at `path` as it was pickled (an error if its files changed since)."""
  if (path, fingerprint) not in _LOADED:
    vocabulary = remember(cls.load_file(path))
    if vocabulary.fingerprint != fingerprint:
      raise ValueError(f"the vocabulary files at {path} changed since this vocabulary was pickled; "
                       "rebuild the task (or restart the job) with the current files")
  return _LOADED[(path, fingerprint)]
