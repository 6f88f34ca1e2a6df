"""llguidance over xbook's vocabularies: the tokenizer a grammar's matcher needs, its token mask, and a
grammar-against-text check.

llguidance (the library behind vLLM's `guidance` structured-outputs backend) computes, for a grammar and
the tokens drawn so far, which token ids keep the output inside the grammar. It needs every id's bytes and
which ids are special (those never match grammar text). `llg_tokenizer` gives it that for the three kinds of
xbook vocabulary (xbook.data.vocab):
  - a SentencePiece `.model` (xbook's own, or a pretrained tokenizer.model): each piece's text with `▁` as
    a space, byte pieces `<0x..>` as their byte; control and unknown pieces are special;
  - a Hugging Face `tokenizer.json` and a Mistral `tekken.json` (both run by `tokenizers`,
    xbook.data.hf_vocab): the tokenizer's own JSON, which llguidance reads (byte-level BPE, byte fallback,
    added special tokens).
The size is the vocabulary's `size` (ids 0..size-1); a model's padded embedding rows are beyond it.

`mask_for(matcher, size)` is the allowed ids as a numpy bool array; `match_text(grammar, text)` checks a
Lark grammar against a text byte by byte (what tests and `xbook.scaffold.stage_grammar` users need).
"""

from __future__ import annotations

import functools

import llguidance
import numpy as np

from xbook.data.vocab import SentencePieceVocab, Vocabulary


class _SentencePieceTokens:
  """A SentencePiece vocabulary in the shape llguidance.TokenizerWrapper reads."""

  def __init__(self, vocabulary: SentencePieceVocab) -> None:
    processor = vocabulary._processor  # noqa: SLF001 - the pieces are only reachable through it
    self.tokens: list[bytes] = []
    self.special_token_ids: list[int] = []
    for i in range(vocabulary.size):
      piece = processor.id_to_piece(i)
      if processor.is_byte(i):
        self.tokens.append(bytes([int(piece[3:5], 16)]))
      elif processor.is_control(i) or processor.is_unknown(i):
        self.tokens.append(piece.encode("utf-8"))
        self.special_token_ids.append(i)
      else:
        self.tokens.append(piece.replace("\u2581", " ").encode("utf-8"))
    self.eos_token_id = vocabulary.eos_id
    self.bos_token_id = vocabulary.bos_id
    self._encode = vocabulary.encode

  def __call__(self, text: str | bytes) -> list[int]:
    return list(self._encode(text.decode("utf-8", errors="replace") if isinstance(text, bytes) else text))


def llg_tokenizer(vocabulary: Vocabulary) -> llguidance.LLTokenizer:
  """The llguidance tokenizer of `vocabulary` (module docstring: how each kind is read); its EOS is the
  vocabulary's. Building one takes up to a second for a 131k vocabulary: keep it per vocabulary.

  Raises:
    ValueError: for a vocabulary of another kind than SentencePiece or `tokenizers`.
  """
  if isinstance(vocabulary, SentencePieceVocab):
    wrapper = llguidance.TokenizerWrapper(_SentencePieceTokens(vocabulary))
    return llguidance.LLTokenizer(wrapper, n_vocab=vocabulary.size, eos_token=vocabulary.eos_id)
  backend = getattr(vocabulary, "_tokenizer", None)
  if backend is None or not hasattr(backend, "to_str"):
    raise ValueError(f"{vocabulary!r}: structured outputs need a SentencePiece .model, a tokenizer.json or a "
                     "tekken.json vocabulary")
  return llguidance.LLTokenizer(backend.to_str(), n_vocab=vocabulary.size, eos_token=vocabulary.eos_id)


def mask_for(matcher: llguidance.LLMatcher, size: int) -> np.ndarray:
  """The ids in 0..size-1 the matcher allows next, as a bool array of `size` (True: allowed).

  Raises:
    ValueError: when the matcher is in an error state (its error says why).
  """
  if matcher.is_error():
    raise ValueError(f"the grammar matcher failed: {matcher.get_error()}")
  words = np.frombuffer(matcher.compute_bitmask(), dtype="<u4")
  bits = np.unpackbits(words.view(np.uint8), bitorder="little")
  if bits.size < size:
    raise ValueError(f"the matcher's mask covers {bits.size} ids, fewer than the vocabulary's {size}")
  return bits[:size].astype(bool)


class _ByteTokens:
  """256 one-byte tokens and an end of sequence: a tokenizer that feeds a matcher text byte by byte."""

  tokens = [bytes([b]) for b in range(256)] + [b"<eos>"]
  eos_token_id = 256
  bos_token_id = None
  special_token_ids = [256]

  def __call__(self, text: str | bytes) -> list[int]:
    return list(text.encode("utf-8") if isinstance(text, str) else text)


@functools.cache
def byte_tokenizer() -> llguidance.LLTokenizer:
  """An llguidance tokenizer whose tokens are the 256 bytes (id = byte value) and an EOS (id 256)."""
  return llguidance.LLTokenizer(llguidance.TokenizerWrapper(_ByteTokens()), slices=[])


def grammar_error(lark: str, tokenizer: llguidance.LLTokenizer | None = None) -> str | None:
  """Why llguidance cannot compile the Lark grammar (for `tokenizer`, default bytes), or None if it can."""
  error = llguidance.LLMatcher.validate_grammar(llguidance.LLMatcher.grammar_from_lark(lark),
                                                tokenizer or byte_tokenizer())
  return error or None


def match_text(lark: str, text: str) -> str | None:
  """None when llguidance's matcher for the Lark grammar accepts exactly `text` (every byte allowed and the
  grammar complete at its end); otherwise where and why it does not."""
  matcher = llguidance.LLMatcher(byte_tokenizer(), llguidance.LLMatcher.grammar_from_lark(lark), log_level=0)
  if matcher.is_error():
    return f"the grammar does not compile: {matcher.get_error()}"
  data = text.encode("utf-8")
  consumed = matcher.try_consume_tokens(list(data))
  if consumed < len(data):
    return (f"byte {consumed} is not allowed: {data[max(0, consumed - 40):consumed]!r} then "
            f"{data[consumed:consumed + 20]!r}")
  if not matcher.is_accepting():
    return f"the text ends before the grammar does (after {data[-40:]!r})"
  return None

