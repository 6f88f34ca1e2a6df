"""Mistral Tekken vocabularies (`tekken.json`) as Hugging Face `tokenizers` byte-level BPE tokenizers.

Tekken is a tiktoken-style byte-level BPE. Facts of the format (Mistral's published files, the loader of
`mistral-common` and the converter in `transformers`, `integrations/mistral/tokenizer.py`):

  config          `pattern` (the regex that splits text into pre-tokens), `default_vocab_size` (all ids,
                  131,072 for Mistral Small 3.x), `default_num_special_tokens` (1,000 for Mistral)
  vocab           ordinary tokens in rank order: {"rank", "token_bytes" (base64), "token_str"}; only the
                  first `default_vocab_size - default_num_special_tokens` are used
  special_tokens  {"rank", "token_str", "is_control"}; ranks not listed are fillers `<SPECIAL_{rank}>`

Ids: special token of rank r has id r (Mistral: <unk> 0, <s> 1, </s> 2, <pad> 11); ordinary token of
rank r has id `r + default_num_special_tokens`.

Encoding (tiktoken's rule): split the text with `pattern`; a pre-token that is itself a token is taken
whole; otherwise, starting from its bytes, repeatedly join the adjacent pair whose concatenation has the
lowest rank, while some pair concatenates to a token. A `tokenizers` BPE model gives exactly this when
(a) every split (left, right) of a token into two tokens is a merge, ordered by the rank of the token it
makes (two pairs that make the same token can never be adjacent and competing, so their order is
irrelevant), and (b) `ignore_merges` is set (a whole pre-token in the vocabulary is taken whole). BPE
tokens are written in GPT-2's byte-to-character alphabet, which `tokenizers`' ByteLevel pre-tokenizer and
decoder use.
"""

from __future__ import annotations

import base64
from typing import Any, Mapping

import tokenizers
from tokenizers import decoders, models, pre_tokenizers

# mistral-common's name for special ranks that a tekken.json does not list.
FILLER_SPECIAL = "<SPECIAL_{rank}>"


def byte_alphabet() -> list[str]:
  """The character that stands for each byte (index) in byte-level BPE tokens (GPT-2's alphabet).

  Bytes that are printable Latin-1 characters ('!'..'~', '¡'..'¬', '®'..'ÿ') stand for themselves; the
  other 68 bytes, in increasing order, for chr(256), chr(257), ...
  """
  printable = set(range(0x21, 0x7F)) | set(range(0xA1, 0xAD)) | set(range(0xAE, 0x100))
  alphabet, extra = [], 0
  for byte in range(256):
    if byte in printable:
      alphabet.append(chr(byte))
    else:
      alphabet.append(chr(256 + extra))
      extra += 1
  return alphabet


def _config_int(data: Mapping[str, Any], key: str, default: int, source: str) -> int:
  value = data["config"].get(key, default)
  if not isinstance(value, int) or value < 0:
    raise ValueError(f"{source}: config.{key} must be a non-negative integer, got {value!r}")
  return value


def _special_tokens(data: Mapping[str, Any], num_special: int, source: str) -> list[str]:
  """Special token strings by id (rank), fillers where the file lists none."""
  listed = data.get("special_tokens")
  if listed is None:
    raise ValueError(f"{source}: no `special_tokens` list (an old Tekken format); use a newer tekken.json "
                     "or the model's tokenizer.json")
  specials = [FILLER_SPECIAL.format(rank=rank) for rank in range(num_special)]
  seen = set()
  for i, entry in enumerate(listed):
    rank, text = entry.get("rank"), entry.get("token_str")
    if not isinstance(rank, int) or not 0 <= rank < num_special or rank in seen:
      raise ValueError(f"{source}: special_tokens[{i}].rank {rank!r} is not a new rank below "
                       f"default_num_special_tokens {num_special}")
    if not isinstance(text, str) or not text:
      raise ValueError(f"{source}: special_tokens[{i}].token_str must be a non-empty string, got {text!r}")
    seen.add(rank)
    specials[rank] = text
  return specials


def _ordinary_tokens(data: Mapping[str, Any], n_ordinary: int, source: str) -> list[bytes]:
  """Ordinary tokens' bytes in rank order (the first `n_ordinary`)."""
  entries = data["vocab"][:n_ordinary]
  tokens = []
  for i, entry in enumerate(entries):
    if entry.get("rank", i) != i:
      raise ValueError(f"{source}: vocab[{i}] has rank {entry.get('rank')!r}; ranks must be 0, 1, 2, ...")
    tokens.append(base64.b64decode(entry["token_bytes"]))
  if len(set(tokens)) != len(tokens):
    raise ValueError(f"{source}: vocab lists the same token bytes twice")
  missing = sorted(set(range(256)) - {t[0] for t in tokens if len(t) == 1})
  if missing:
    raise ValueError(f"{source}: vocab lacks the single bytes {missing[:8]}...; a byte-level BPE needs all "
                     "256 (is default_vocab_size too small?)")
  return tokens


def _merges(ranks: Mapping[bytes, int]) -> list[tuple[bytes, bytes]]:
  """Every split of a token into two tokens, ordered by the rank of the token (module docstring)."""
  merges = []
  for token, rank in ranks.items():
    for cut in range(1, len(token)):
      left, right = token[:cut], token[cut:]
      if left in ranks and right in ranks:
        merges.append((rank, ranks[left], ranks[right], left, right))
  merges.sort()
  return [(left, right) for *_, left, right in merges]


def tekken_tokenizer(data: Mapping[str, Any], source: str = "tekken.json") -> tokenizers.Tokenizer:
  """A `tokenizers.Tokenizer` that encodes and decodes like the Tekken vocabulary `data`.

  Args:
    data: the parsed tekken.json (module docstring).
    source: the file's name, for error messages.

  Returns:
    A byte-level BPE with the special tokens at ids 0..num_special-1 (as special added tokens) and
    ordinary token of rank r at id r + num_special; no normalizer and no post-processor.
  """
  for key in ("config", "vocab"):
    if key not in data:
      raise ValueError(f"{source}: not a Tekken vocabulary (no `{key}`)")
  pattern = data["config"].get("pattern")
  if not isinstance(pattern, str):
    raise ValueError(f"{source}: config.pattern must be the pre-tokenizer regex, got {pattern!r}")
  num_special = _config_int(data, "default_num_special_tokens", len(data.get("special_tokens") or ()),
                            source)
  vocab_size = _config_int(data, "default_vocab_size", num_special + len(data["vocab"]), source)
  specials = _special_tokens(data, num_special, source)
  ordinary = _ordinary_tokens(data, vocab_size - num_special, source)
  alphabet = byte_alphabet()
  as_text = {token: "".join(alphabet[b] for b in token) for token in ordinary}
  ranks = {token: rank for rank, token in enumerate(ordinary)}
  vocab = {as_text[token]: rank + num_special for token, rank in ranks.items()}
  clashes = sorted(set(specials) & set(vocab))
  if clashes:
    raise ValueError(f"{source}: special tokens {clashes} are also ordinary tokens; one string cannot "
                     "have two ids in a tokenizers vocabulary")
  vocab.update({text: rank for rank, text in enumerate(specials)})
  merges = [(as_text[left], as_text[right]) for left, right in _merges(ranks)]
  tokenizer = tokenizers.Tokenizer(models.BPE(vocab, merges, ignore_merges=True, fuse_unk=False))
  tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
      pre_tokenizers.Split(tokenizers.Regex(pattern), behavior="isolated", invert=False),
      pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
  tokenizer.decoder = decoders.ByteLevel()
  tokenizer.add_special_tokens([tokenizers.AddedToken(text, special=True, normalized=False)
                                for text in specials])
  return tokenizer
