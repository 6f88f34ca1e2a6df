"""SentencePiece vocabulary for trajectories, with the segment markers as user-defined symbols.

Special ids follow what `seqio.SentencePieceVocabulary` assumes (DESIGN.md, measured facts):
pad=0, EOS=1, UNK=2, no BOS. Newlines survive tokenization (identity normalization, byte fallback),
because paragraph breaks are part of the prose the model must learn to write.

A pretrained SentencePiece `tokenizer.model` (Llama, Mistral) works too: it has none of the marker
symbols, so trajectories write the markers as plain-text tags (xbook.data.trajectory.TAGS) and end with
the model's own EOS id. seqio pads with id 0, which such models reserve for <unk> (never emitted with
byte fallback), so padding stays unambiguous; the examples mark padding with segment id 0 anyway.
"""

from __future__ import annotations

import io
import logging
import os
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

import sentencepiece as spm
from etils import epath

from xbook.atomic import atomic_open
from xbook.data import trajectory

log = logging.getLogger(__name__)

PAD_ID, EOS_ID, UNK_ID = 0, 1, 2


def training_sentences(records: Iterable[Mapping[str, Any]], layout: str = "interleaved"
                       ) -> Iterator[str]:
  """Paragraph-sized pieces of every trajectory segment, markers included."""
  for record in records:
    for segment in trajectory.scaffold_to_segments(record, layout):
      for paragraph in segment.text.split("\n\n"):
        if paragraph.strip():
          yield paragraph


def train_vocab(records: Iterable[Mapping[str, Any]], out_path: str | os.PathLike[str], *,
                vocab_size: int = 8000, model_type: str = "unigram",
                max_sentences: int = 2_000_000, seed_sentencepiece_size: int = 200_000) -> Path:
  """Train a SentencePiece model on scaffold records and write it atomically to `out_path`.

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
  sentences = list(training_sentences(records))
  if not sentences:
    raise ValueError("no text to train a vocabulary on: the scaffold records are empty")
  out_path = Path(out_path)
  out_path.parent.mkdir(parents=True, exist_ok=True)
  log.info("training a %s SentencePiece vocabulary of %d pieces on %d paragraphs",
           model_type, vocab_size, len(sentences))
  model = io.BytesIO()
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
  with atomic_open(out_path, "wb") as f:
    f.write(model.getvalue())
  log.info("wrote vocabulary %s", out_path)
  return out_path


def marker_style(processor: spm.SentencePieceProcessor) -> str:
  """The marker style of a vocabulary: "symbols" when it holds every segment marker as a piece (trained
  by xbook), "tags" when it holds none of them (a pretrained tokenizer)."""
  known = [m for m in trajectory.ALL_MARKERS if processor.piece_to_id(m) != processor.unk_id()]
  if len(known) == len(trajectory.ALL_MARKERS):
    return "symbols"
  if known:
    missing = sorted(set(trajectory.ALL_MARKERS) - set(known))
    raise ValueError(f"vocabulary has some segment markers as pieces ({known}) but not {missing}; "
                     "retrain it with `xbook vocab train`, or use a tokenizer with none of them")
  return "tags"


def load_processor(path: str | os.PathLike[str]) -> spm.SentencePieceProcessor:
  """Load a SentencePiece model: an xbook vocabulary (checked for seqio's special ids) or a pretrained
  tokenizer without the marker symbols (checked for an EOS id and for id 0 being no ordinary piece)."""
  path = epath.Path(path)  # a local file or gs://bucket/...
  if not path.is_file():
    raise FileNotFoundError(f"SentencePiece model not found: {path} (train one with `xbook vocab train`)")
  processor = spm.SentencePieceProcessor(model_proto=path.read_bytes())
  if marker_style(processor) == "symbols":
    if (processor.pad_id(), processor.eos_id(), processor.unk_id()) != (PAD_ID, EOS_ID, UNK_ID):
      raise ValueError(f"{path}: expected pad/eos/unk ids {(PAD_ID, EOS_ID, UNK_ID)} as seqio assumes, "
                       f"got {(processor.pad_id(), processor.eos_id(), processor.unk_id())}")
    return processor
  if processor.eos_id() < 0:
    raise ValueError(f"{path}: this tokenizer defines no EOS id; trajectories need one to end a book")
  if not (processor.is_unknown(PAD_ID) or processor.is_control(PAD_ID)):
    raise ValueError(f"{path}: id {PAD_ID} is the ordinary piece {processor.id_to_piece(PAD_ID)!r}, but "
                     "seqio pads with id 0; use a tokenizer whose id 0 is <unk> or <pad>")
  return processor
