"""Pretrained tokenizers through Hugging Face `tokenizers`: a `tokenizer.json` or a Mistral `tekken.json`.

Special ids come from the model's files, never assumed:
  tokenizer.json  each of BOS, EOS, pad and unk from the first of the files beside it that names it:
                  tokenizer_config.json and special_tokens_map.json (`bos_token`, ...: a token string
                  or {"content": ...}), then config.json (`bos_token_id`, ...; also under `text_config`,
                  as Ministral 3 nests it) and generation_config.json (`bos_token_id`, ...). An id list
                  (Llama 3.1's `eos_token_id`) means its first id. unk falls back to the BPE model's
                  `unk_token`. EOS is required.
  tekken.json     its special tokens `<s>` (BOS), `</s>` (EOS), `<pad>`, `<unk>` (xbook.data.tekken).

A model without a BOS token (Qwen2.5/3: `bos_token` null) starts every sequence with its
`<|endoftext|>`, the separator its pretraining put between documents, or with its EOS when it has no
such token. (Qwen's config.json names `<|endoftext|>` as `bos_token_id` anyway.)

Encoding adds no special token (no BOS or EOS from the post-processor: the feature converter puts BOS
before every sequence, xbook.data.pieces puts EOS after a book), tokenizes special-token strings that
occur in a book as the text they are (a novel may quote `</s>`), and never truncates or pads (some
tokenizer.json files carry a truncation length that would silently cut a chapter).

Speed: xbook encodes a book segment by segment (xbook.data.pieces.encode_book), and a text segment is a
scene, which the books segmenter keeps under 2,500 words (at most about 12,000 characters in the test
corpus), so a chapter costs time linear in its length (tests/test_vocab.py measures it). One call on a
long string is not quadratic either: the `Replace` normalizer of Llama 2/Mistral-style tokenizer.json
files was, in `tokenizers` before huggingface/tokenizers#1413 (merged February 2024; requirements.txt
pins a later version), but its time per character still grows 2-3x from 30,000 to 3,000,000 characters
(measured here; memory effects inside tokenizers). Segments are not split further: cutting a text at a
paragraph gives the ids of one call only for some pre-tokenizers (GPT-2's `\s+(?!\S)` tokenizes a
newline run at the end of a piece differently), and that cannot be checked for an arbitrary
tokenizer.json.
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping, Sequence

import tokenizers
from etils import epath

from xbook.data import tekken
from xbook.data.vocab_base import Vocabulary, find_marker_style

# Files beside a tokenizer.json that name its special tokens, in the order they are believed.
SPECIAL_TOKEN_FILES = ("tokenizer_config.json", "special_tokens_map.json", "config.json", "generation_config.json")
# Every file beside a tokenizer.json that is kept with it (Vocabulary.save copies them into a run's vocab/):
# those, and the chat template that newer model folders keep in a file of its own rather than as
# tokenizer_config.json's `chat_template` (xbook.infer.chat_template reads either).
SIDE_FILES = SPECIAL_TOKEN_FILES + ("chat_template.jinja",)
SPECIAL_NAMES = ("bos", "eos", "pad", "unk")
# The first input of a model that has no BOS (module docstring).
DOCUMENT_SEPARATOR = "<|endoftext|>"
TEKKEN_SPECIALS = {"bos": "<s>", "eos": "</s>", "pad": "<pad>", "unk": "<unk>"}


class TokenizersVocab(Vocabulary):
  """A pretrained tokenizer run by Hugging Face `tokenizers` (see the module docstring for its ids).

  Attributes (besides Vocabulary's):
    special_sources: {"bos", "eos", "pad", "unk": where its id was read, e.g. "tokenizer_config.json
      bos_token"}, for error messages and `xbook data inspect`.
  """

  def __init__(self, path: str, files: Mapping[str, bytes], tokenizer: tokenizers.Tokenizer,
               special: Mapping[str, tuple[int | None, str]]) -> None:
    tokenizer.no_truncation()
    tokenizer.no_padding()
    tokenizer.encode_special_tokens = True
    self._tokenizer = tokenizer
    self.special_sources = {name: source for name, (_, source) in special.items()}
    ids = {f"{name}_id": token_id for name, (token_id, _) in special.items()}
    super().__init__(path, files, size=_size(tokenizer),
                     marker_style=find_marker_style(self.encode, path), **ids)

  @classmethod
  def load_file(cls, path: str) -> TokenizersVocab:
    file = epath.Path(path)
    return load_json(file, file.read_bytes())

  def encode(self, text: str) -> list[int]:
    return self._tokenizer.encode(text, add_special_tokens=False).ids

  def decode(self, ids: Sequence[int]) -> str:
    return self._tokenizer.decode([int(i) for i in ids], skip_special_tokens=False)


def _size(tokenizer: tokenizers.Tokenizer) -> int:
  """The number of ids: the largest id of a token (added tokens included) plus one."""
  return max(tokenizer.get_vocab(with_added_tokens=True).values()) + 1


def _token_value(value: Any) -> str | None:
  """A token string of tokenizer_config.json / special_tokens_map.json: a string or {"content": ...}."""
  return value.get("content") if isinstance(value, dict) else value


def _named_id(name: str, tokenizer: tokenizers.Tokenizer, size: int, side: Mapping[str, Mapping[str, Any]],
              folder: str) -> tuple[int | None, str]:
  """(id, source) of special token `name` from the first side file that names it, else (None, "")."""
  for file_name, data in side.items():
    if file_name in ("tokenizer_config.json", "special_tokens_map.json"):
      field, token = f"{name}_token", _token_value(data.get(f"{name}_token"))
      if token is None:
        continue
      token_id = tokenizer.token_to_id(token) if isinstance(token, str) else None
      if token_id is None:
        raise ValueError(f"{folder}/{file_name}: {field} {token!r} is not a token of the tokenizer.json "
                         f"beside it; correct {field} or remove it")
      return token_id, f"{file_name} {field}"
    field = f"{name}_token_id"
    for scope, fields in (("", data), ("text_config.", data.get("text_config") or {})):
      value = fields.get(field)
      if isinstance(value, list):
        value = value[0] if value else None
      if value is None:
        continue
      if not isinstance(value, int) or not 0 <= value < size:
        raise ValueError(f"{folder}/{file_name}: {scope}{field} {value!r} is not an id of the tokenizer "
                         f"beside it (0..{size - 1}); correct it or remove it")
      return value, f"{file_name} {scope}{field}"
  return None, ""


def _read_side_files(folder: epath.Path) -> dict[str, tuple[Mapping[str, Any] | None, bytes]]:
  """{name: (parsed, raw bytes)} of the SIDE_FILES present in `folder`; parsed is the JSON of a
  SPECIAL_TOKEN_FILES file, None for the others (kept as they are)."""
  side = {}
  for name in SIDE_FILES:
    path = folder / name
    if path.is_file():
      raw = path.read_bytes()
      if name not in SPECIAL_TOKEN_FILES:
        side[name] = None, raw
        continue
      try:
        side[name] = json.loads(raw), raw
      except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from error
  return side


def _tokenizer_json_specials(tokenizer: tokenizers.Tokenizer, model: Mapping[str, Any],
                             side: Mapping[str, Mapping[str, Any]], folder: str
                             ) -> dict[str, tuple[int | None, str]]:
  """{"bos", "eos", "pad", "unk": (id, source)} of a tokenizer.json (module docstring)."""
  size = _size(tokenizer)
  special = {name: _named_id(name, tokenizer, size, side, folder) for name in SPECIAL_NAMES}
  if special["unk"][0] is None and isinstance(model.get("unk_token"), str):
    special["unk"] = tokenizer.token_to_id(model["unk_token"]), "tokenizer.json model.unk_token"
  if special["eos"][0] is None:
    raise ValueError(f"{folder}: no EOS token named in {', '.join(SPECIAL_TOKEN_FILES)}; trajectories need one to "
                     "end a book: set eos_token in tokenizer_config.json")
  if special["bos"][0] is None:
    separator = tokenizer.token_to_id(DOCUMENT_SEPARATOR)
    special["bos"] = ((separator, f"no BOS: the document separator {DOCUMENT_SEPARATOR}")
                      if separator is not None else (special["eos"][0], "no BOS: the EOS"))
  return special


def _load_tokenizer_json(file: epath.Path, data: bytes, parsed: Mapping[str, Any]) -> TokenizersVocab:
  try:
    tokenizer = tokenizers.Tokenizer.from_str(data.decode("utf-8"))
  except Exception as error:  # tokenizers raises plain Exceptions on malformed files
    raise ValueError(f"{file}: tokenizers cannot read it ({error})") from error
  side = _read_side_files(file.parent)
  special = _tokenizer_json_specials(tokenizer, parsed.get("model") or {},
                                     {name: parsed_side for name, (parsed_side, _) in side.items()
                                      if parsed_side is not None},
                                     os.fspath(file.parent))
  files = {file.name: data, **{name: raw for name, (_, raw) in side.items()}}
  return TokenizersVocab(os.fspath(file), files, tokenizer, special)


def _load_tekken(file: epath.Path, data: bytes, parsed: Mapping[str, Any]) -> TokenizersVocab:
  tokenizer = tekken.tekken_tokenizer(parsed, os.fspath(file))
  special = {}
  for name, token in TEKKEN_SPECIALS.items():
    token_id = tokenizer.token_to_id(token)
    special[name] = (token_id, f"tekken.json special token {token}") if token_id is not None else (None, "")
  if special["eos"][0] is None:
    raise ValueError(f"{file}: no special token {TEKKEN_SPECIALS['eos']}; trajectories need an EOS")
  if special["bos"][0] is None:
    special["bos"] = special["eos"][0], "no BOS: the EOS"
  return TokenizersVocab(os.fspath(file), {file.name: data}, tokenizer, special)


def load_json(file: epath.Path, data: bytes) -> TokenizersVocab:
  """The vocabulary of a tokenizer.json or tekken.json file (told apart by content) with content `data`."""
  try:
    parsed = json.loads(data)
  except json.JSONDecodeError as error:
    raise ValueError(f"{file}: not valid JSON ({error})") from error
  if isinstance(parsed, dict) and "model" in parsed:
    return _load_tokenizer_json(file, data, parsed)
  if isinstance(parsed, dict) and "config" in parsed and "vocab" in parsed:
    return _load_tekken(file, data, parsed)
  raise ValueError(f"{file}: neither a Hugging Face tokenizer.json (no `model`) nor a Mistral tekken.json "
                   "(no `config` and `vocab`)")
