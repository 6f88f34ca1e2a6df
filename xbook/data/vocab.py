"""Vocabularies: one interface over xbook's SentencePiece model and the tokenizers of pretrained models.

`load_vocabulary(path)` reads any of
  - an xbook vocabulary (`xbook vocab train`: a SentencePiece `.model` with the segment markers as
    user-defined symbols; pad 0, EOS 1, UNK 2, no BOS, as `seqio.SentencePieceVocabulary` assumes
    (docs/architecture.md, "Facts"); newlines survive (identity normalization, byte fallback), because
    paragraph breaks are part of the prose the model must learn to write),
  - a pretrained SentencePiece `tokenizer.model` (Llama 2, older Mistral),
  - a Hugging Face `tokenizer.json` (Llama 3, Qwen, Mistral's converted repos) with the special tokens
    named in the files beside it (xbook.data.hf_vocab),
  - a Mistral `tekken.json` (xbook.data.tekken),
  - or a folder holding one of them (a Hugging Face model folder: tokenizer.json, else tekken.json, else
    tokenizer.model),
as a local path or gs://... (etils.epath), and returns a `Vocabulary`: the ids it can produce (`size`),
its BOS, EOS, pad and unk ids, the marker style of trajectories written in it, `encode`/`decode`, the
`seqio.Vocabulary` that tasks declare, and `save`, which copies its files into a run directory.
The interface itself (`Vocabulary`, `SeqioVocabulary`) lives in xbook.data.vocab_base, which both this
module and xbook.data.hf_vocab import; it is re-exported here.

Pretrained tokenizers hold none of xbook's marker symbols, so trajectories write the markers as plain-text
tags (xbook.data.trajectory.TAGS) and end a book with the model's own EOS. Padding is marked by segment
id 0 in the examples, whatever the pad id: id 0 is a real token for Llama 3 and Qwen.
"""

from __future__ import annotations

import io
import logging
import os
import re
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import sentencepiece as spm
from etils import epath

from xbook.atomic import atomic_open, is_url
from xbook.data import hf_vocab, trajectory
# The interface, re-exported: callers hold a `vocab.Vocabulary` (xbook.data.vocab_base says why it lives apart).
from xbook.data.vocab_base import _LOADED, SeqioVocabulary, Vocabulary, find_marker_style, remember  # noqa: F401

log = logging.getLogger(__name__)

PAD_ID, EOS_ID, UNK_ID = 0, 1, 2

# Files that a folder may hold, in the order load_vocabulary prefers them.
FOLDER_FILES = ("tokenizer.json", "tekken.json", "tokenizer.model")


class SentencePieceVocab(Vocabulary):
  """A SentencePiece model: an xbook vocabulary, or a pretrained tokenizer.model (Llama 2, Mistral v1-v3).

  xbook vocabulary (markers are symbols): pad 0, EOS 1, UNK 2 and no BOS. `bos_id` is 0 (the pad id):
  every xbook run so far was trained with id 0 as the first input, and keeps working.
  Pretrained (markers are tags): BOS, EOS, pad and unk ids are the model's own; a model without a BOS id
  starts sequences with its EOS (the token that separates documents in a stream). It must define an EOS.
  """

  def __init__(self, path: str, data: bytes) -> None:
    self._processor = processor = spm.SentencePieceProcessor(model_proto=data)
    style = find_marker_style(self.encode, path)
    if style == "symbols":
      ids = (processor.pad_id(), processor.eos_id(), processor.unk_id())
      if ids != (PAD_ID, EOS_ID, UNK_ID):
        raise ValueError(f"{path}: expected pad/eos/unk ids {(PAD_ID, EOS_ID, UNK_ID)} of an xbook "
                         f"vocabulary, got {ids}; retrain it with `xbook vocab train`")
      bos_id = PAD_ID
    elif processor.eos_id() < 0:
      raise ValueError(f"{path}: this tokenizer defines no EOS id; trajectories need one to end a book")
    else:
      bos_id = processor.bos_id() if processor.bos_id() >= 0 else processor.eos_id()
    super().__init__(path, {Path(path).name: data}, size=processor.get_piece_size(), bos_id=bos_id,
                     eos_id=processor.eos_id(), pad_id=_id_or_none(processor.pad_id()),
                     unk_id=_id_or_none(processor.unk_id()), marker_style=style)

  @classmethod
  def load_file(cls, path: str) -> SentencePieceVocab:
    return cls(path, epath.Path(path).read_bytes())

  def encode(self, text: str) -> list[int]:
    return self._processor.encode(text)

  def decode(self, ids: Sequence[int]) -> str:
    return self._processor.decode([int(i) for i in ids])


def _id_or_none(i: int) -> int | None:
  return i if i >= 0 else None  # SentencePiece says -1 for "none"


def _resolve(path: str | os.PathLike[str]) -> epath.Path:
  """The vocabulary file named by `path` (a file, or a folder holding one of FOLDER_FILES)."""
  if not is_url(path):
    path = Path(path).resolve()
  path = epath.Path(path)
  if path.is_dir():
    for name in FOLDER_FILES:
      if (path / name).is_file():
        return path / name
    raise FileNotFoundError(f"{path} holds none of {', '.join(FOLDER_FILES)}: pass a vocabulary file, or "
                            "a Hugging Face model folder with its tokenizer files")
  if not path.is_file():
    raise FileNotFoundError(f"vocabulary not found: {path} (train one with `xbook vocab train`, or pass a "
                            "model's tokenizer.json, tekken.json or tokenizer.model)")
  return path


def load_vocabulary(path: str | os.PathLike[str]) -> Vocabulary:
  """Load the vocabulary at `path` (module docstring: which files, local or gs://)."""
  file = _resolve(path)
  data = file.read_bytes()
  if file.name.endswith(".model"):
    vocabulary: Vocabulary = SentencePieceVocab(os.fspath(file), data)
  elif file.name.endswith(".json"):
    vocabulary = hf_vocab.load_json(file, data)
  else:
    raise ValueError(f"{file}: not a vocabulary file; expected a SentencePiece .model, a tokenizer.json "
                     "or a tekken.json")
  return remember(vocabulary)


def training_sentences(records: Iterable[Mapping[str, Any]], plan_order: str = "interleaved"
                       ) -> Iterator[str]:
  """Paragraph-sized pieces of every trajectory segment, markers included."""
  for record in records:
    for segment in trajectory.scaffold_to_segments(record, plan_order):
      for paragraph in segment.text.split("\n\n"):
        if paragraph.strip():
          yield paragraph


def train_vocab(records: Iterable[Mapping[str, Any]], out_path: str | os.PathLike[str], *,
                vocab_size: int = 8000, model_type: str = "unigram",
                max_sentences: int = 2_000_000, seed_sentencepiece_size: int = 200_000) -> Path:
  """Train a SentencePiece model on the scaffold records of split "train"; write it atomically to `out_path`.

  Records of other splits (validation, test) are left out, so that held-out books do not shape the
  vocabulary.

  Args:
    records: scaffold records (schema `xbook.scaffold/1`); plans and human text are both used.
    out_path: where the `.model` file goes.
    vocab_size: number of pieces, special ids and markers included.
    model_type: "unigram" or "bpe".
    max_sentences: cap on the paragraphs sampled for training.
    seed_sentencepiece_size: unigram seed vocabulary size.

  Returns:
    The path of the written model.
  """
  if model_type not in ("unigram", "bpe"):
    raise ValueError(f"model_type must be 'unigram' or 'bpe', got {model_type!r}")
  least = 3 + len(trajectory.ALL_MARKERS) + 256  # pad, EOS, UNK; the segment markers; the byte pieces
  if vocab_size <= least:
    raise ValueError(f"--vocab_size {vocab_size}: expected an integer > {least} ({len(trajectory.ALL_MARKERS)} "
                     "segment markers, 3 special ids and 256 byte pieces, plus the characters of the text; "
                     "e.g. 2048 for a few novels, 8000 or more for a corpus)")
  records = list(records)
  train = [r for r in records if r.get("split", "train") == "train"]
  if len(train) < len(records):
    log.info("vocabulary: left out %d records of other splits than train", len(records) - len(train))
  sentences = list(training_sentences(train))
  if not sentences:
    raise ValueError(f"no text to train a vocabulary on: none of the {len(records)} scaffold records is "
                     "of split train")
  out_path = Path(out_path)
  out_path.parent.mkdir(parents=True, exist_ok=True)
  log.info("training a %s SentencePiece vocabulary of %d pieces on %d paragraphs of %d books",
           model_type, vocab_size, len(sentences), len(train))
  model = io.BytesIO()
  try:
    _train_sentencepiece(model, sentences, vocab_size, model_type, max_sentences, seed_sentencepiece_size)
  except RuntimeError as error:  # SentencePiece's own check, after it counted the text's characters
    needed = re.search(r"smaller than required_chars\. \d+ vs (\d+)", str(error))
    if needed is None:
      raise
    raise ValueError(f"--vocab_size {vocab_size}: this text needs at least {needed.group(1)} pieces (its "
                     f"characters, the markers, special ids and byte pieces); pass --vocab_size {needed.group(1)} "
                     "or more") from None
  with atomic_open(out_path, "wb") as f:
    f.write(model.getvalue())
  log.info("wrote vocabulary %s", out_path)
  return out_path


def _train_sentencepiece(model: io.BytesIO, sentences: list[str], vocab_size: int, model_type: str,
                         max_sentences: int, seed_sentencepiece_size: int) -> None:
  """SentencePiece training with xbook's settings (train_vocab's), into `model`."""
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(sentences), model_writer=model,
      vocab_size=vocab_size, model_type=model_type,
      pad_id=PAD_ID, eos_id=EOS_ID, unk_id=UNK_ID, bos_id=-1,
      user_defined_symbols=list(trajectory.ALL_MARKERS),
      byte_fallback=True, character_coverage=0.9995,
      normalization_rule_name="identity", remove_extra_whitespaces=False, add_dummy_prefix=False,
      split_digits=True, max_sentence_length=1 << 16,
      input_sentence_size=max_sentences, shuffle_input_sentence=True,
      seed_sentencepiece_size=seed_sentencepiece_size,
      hard_vocab_limit=False, num_threads=os.cpu_count() or 1, minloglevel=2)
