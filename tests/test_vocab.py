"""Vocabularies: xbook's SentencePiece model and pretrained tokenizers (tokenizer.json, Tekken) behind one
interface, checked on real novels against `tokenizers` itself.

The pretrained tokenizers are built here: a byte-level BPE trained with `tokenizers` on three novels
(Llama 3's pre-tokenizer regex), dressed as a Llama-3-style folder (BOS, EOS and pad named in
tokenizer_config.json, a BOS-adding post-processor, a truncation length), as a Qwen-style folder (no
BOS), and written out as a Mistral tekken.json; and a Llama-2-style tokenizer.json (the `Replace`
normalizer, byte fallback).
"""

from __future__ import annotations

import base64
import copy
import json
import pickle
import shutil
import time
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import seqio
import tensorflow as tf
import tokenizers
from tokenizers import decoders, models, normalizers, pre_tokenizers, processors, trainers

from xbook.data import pieces, tasks, tekken, trajectory, vocab
from xbook.data.feature_converter import TrajectoryFeatureConverter, task_feature_lengths
from xbook.data.spec import DataSpec
from xbook.infer import generate
from xbook.infer.chat_template import load_chat_template
from xbook.model import Decoder, DecoderConfig

# Llama 3's pre-tokenizer regex (also transformers' default for tiktoken files).
PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
           r"|\s*[\r\n]+|\s+(?!\S)|\s+")
TRAINING_BOOKS = ("pg46.txt", "pg11.txt", "pg43.txt")
NON_ASCII = ("Ça, c'est l'été — naïve façade. Ελληνικά κείμενα. Русский текст. 日本語のテキスト。 "
             "“Quoted,” she said… 🎄🎅 ½ ∑ x² ﬁ\tend\n\n")
LLAMA3_SPECIALS = ("<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>", "<|pad|>")
QWEN_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
# Mistral's first special tokens (ids 0..11); the rest up to TEKKEN_SPECIALS are fillers.
MISTRAL_SPECIALS = ("<unk>", "<s>", "</s>", "[INST]", "[/INST]", "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]",
                    "[TOOL_RESULTS]", "[/TOOL_RESULTS]", "[TOOL_CALLS]", "[IMG]", "<pad>")
TEKKEN_SPECIALS = 16
WINDOW_LEN = 4096


def _read(path: Path) -> str:
  return path.read_text(encoding="utf-8")


def _write_json(path: Path, data) -> None:
  path.write_text(json.dumps(data), encoding="utf-8")


@pytest.fixture(scope="module")
def bpe(corpus_dir) -> tokenizers.Tokenizer:
  """A byte-level BPE of 2,000 tokens trained on three novels (no special tokens yet)."""
  tokenizer = tokenizers.Tokenizer(models.BPE())
  tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
      pre_tokenizers.Split(tokenizers.Regex(PATTERN), behavior="isolated"),
      pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
  tokenizer.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=2000, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                show_progress=False)
  tokenizer.train_from_iterator([_read(corpus_dir / n) for n in TRAINING_BOOKS] + [NON_ASCII], trainer)
  return tokenizer


def _folder(bpe: tokenizers.Tokenizer, folder: Path, specials, tokenizer_config: dict, bos: str | None = None,
            side_files: dict | None = None) -> Path:
  """`bpe` with `specials` added, as `folder`/tokenizer.json, with `tokenizer_config` and other side
  files ({file name: JSON}) beside it."""
  tokenizer = tokenizers.Tokenizer.from_str(bpe.to_str())
  tokenizer.add_special_tokens([tokenizers.AddedToken(s, special=True) for s in specials])
  if bos:  # a post-processor that adds BOS, as Llama 3's tokenizer.json has
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", special_tokens=[(bos, tokenizer.token_to_id(bos))])
  tokenizer.enable_truncation(max_length=64)  # some published files carry one: it must not cut chapters
  folder.mkdir(parents=True)
  tokenizer.save(str(folder / "tokenizer.json"))
  _write_json(folder / "tokenizer_config.json", tokenizer_config)
  for name, data in (side_files or {}).items():
    _write_json(folder / name, data)
  return folder


@pytest.fixture(scope="module")
def llama3_folder(bpe, tmp_path_factory) -> Path:
  ids = {s: bpe.get_vocab_size() + i for i, s in enumerate(LLAMA3_SPECIALS)}
  return _folder(
      bpe, tmp_path_factory.mktemp("hf") / "llama3", LLAMA3_SPECIALS,
      {"bos_token": "<|begin_of_text|>", "eos_token": {"content": "<|end_of_text|>", "special": True},
       "pad_token": "<|pad|>"}, bos="<|begin_of_text|>",
      side_files={
          "config.json": {"bos_token_id": ids["<|begin_of_text|>"], "eos_token_id": ids["<|eot_id|>"]},
          "generation_config.json": {"eos_token_id": [ids["<|eot_id|>"], ids["<|end_of_text|>"]]}})


@pytest.fixture(scope="module")
def qwen_folder(bpe, tmp_path_factory) -> Path:
  return _folder(bpe, tmp_path_factory.mktemp("hf") / "qwen", QWEN_SPECIALS,
                 {"bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"})


def _byte_ranks(bpe: tokenizers.Tokenizer) -> dict[bytes, int]:
  """Tiktoken ranks of `bpe`'s tokens: the 256 bytes, then the merged tokens in merge order."""
  to_byte = {c: b for b, c in enumerate(tekken.byte_alphabet())}
  as_bytes = lambda token: bytes(to_byte[c] for c in token)  # noqa: E731
  ranks = {bytes([b]): b for b in range(256)}
  for left, right in json.loads(bpe.to_str())["model"]["merges"]:
    ranks.setdefault(as_bytes(left) + as_bytes(right), len(ranks))
  return ranks


@pytest.fixture(scope="module")
def tekken_file(bpe, tmp_path_factory) -> Path:
  """`bpe` written out as a Mistral tekken.json."""
  ranks = _byte_ranks(bpe)
  data = {"config": {"pattern": PATTERN, "default_vocab_size": TEKKEN_SPECIALS + len(ranks),
                     "default_num_special_tokens": TEKKEN_SPECIALS, "version": "v7"},
          "vocab": [{"rank": r, "token_bytes": base64.b64encode(t).decode(),
                     "token_str": t.decode("utf-8", errors="replace")} for t, r in ranks.items()],
          "special_tokens": [{"rank": r, "token_str": s, "is_control": True}
                             for r, s in enumerate(MISTRAL_SPECIALS)]}
  path = tmp_path_factory.mktemp("mistral") / "tekken.json"
  _write_json(path, data)
  return path


def test_tokenizer_json_round_trips_every_novel_with_the_ids_of_tokenizers(llama3_folder, corpus_dir):
  v = vocab.load_vocabulary(llama3_folder)
  reference = tokenizers.Tokenizer.from_file(str(llama3_folder / "tokenizer.json"))
  reference.no_truncation()
  for path in sorted(corpus_dir.glob("*.txt")):
    text = _read(path)
    assert v.decode(v.encode(text)) == text, path.name
  long_novel = _read(corpus_dir / "pg1342.txt")
  for text in (long_novel, NON_ASCII * 50):
    assert v.encode(text) == reference.encode(text, add_special_tokens=False).ids
  # No BOS from the post-processor (it adds one when asked), no truncation at the file's 64 tokens.
  bos = v.bos_id
  assert reference.encode("Once upon a time").ids[0] == bos
  assert bos not in v.encode("Once upon a time") and len(v.encode(long_novel)) > 64
  # A special token's text inside a book is text, not the control token.
  assert v.eos_id not in v.encode("He wrote <|end_of_text|> on the wall.")
  assert v.marker_style == "tags" and v.marker_ids() == []
  assert v.size == 2000 + len(LLAMA3_SPECIALS)


def test_special_ids_come_from_the_files_beside_tokenizer_json(llama3_folder, qwen_folder, tmp_path):
  ids = {s: 2000 + i for i, s in enumerate(LLAMA3_SPECIALS)}
  v = vocab.load_vocabulary(llama3_folder / "tokenizer.json")
  assert (v.bos_id, v.eos_id, v.pad_id) == (ids["<|begin_of_text|>"], ids["<|end_of_text|>"], ids["<|pad|>"])
  assert v.special_sources["eos"] == "tokenizer_config.json eos_token"
  folder = Path(shutil.copytree(llama3_folder, tmp_path / "edited"))
  config = json.loads((folder / "tokenizer_config.json").read_text())
  _write_json(folder / "tokenizer_config.json", dict(config, eos_token="<|eot_id|>"))
  assert vocab.load_vocabulary(folder).eos_id == ids["<|eot_id|>"]
  (folder / "tokenizer_config.json").unlink()  # then config.json names them, and no pad
  v = vocab.load_vocabulary(folder)
  assert (v.bos_id, v.eos_id, v.pad_id) == (ids["<|begin_of_text|>"], ids["<|eot_id|>"], None)
  _write_json(folder / "config.json", {"text_config": {"bos_token_id": ids["<|pad|>"]}})  # Ministral 3
  v = vocab.load_vocabulary(folder)
  assert v.bos_id == ids["<|pad|>"] and v.special_sources["bos"] == "config.json text_config.bos_token_id"
  assert v.eos_id == ids["<|eot_id|>"]  # the first of generation_config.json's list
  _write_json(folder / "tokenizer_config.json", {"eos_token": "<|nope|>"})
  with pytest.raises(ValueError, match=r"tokenizer_config.json: eos_token '<\|nope\|>' is not a token"):
    vocab.load_vocabulary(folder)
  for name in ("tokenizer_config", "config", "generation_config"):
    (folder / f"{name}.json").unlink()
  with pytest.raises(ValueError, match="no EOS token named"):
    vocab.load_vocabulary(folder)
  # Qwen names no BOS: sequences start with its document separator <|endoftext|>.
  qwen = vocab.load_vocabulary(qwen_folder)
  endoftext = 2000 + QWEN_SPECIALS.index("<|endoftext|>")
  assert (qwen.bos_id, qwen.eos_id, qwen.pad_id) == (endoftext, 2000 + QWEN_SPECIALS.index("<|im_end|>"),
                                                     endoftext)


def test_tekken_encodes_like_the_bpe_it_was_written_from(bpe, tekken_file, corpus_dir):
  v = vocab.load_vocabulary(tekken_file.parent)
  assert (v.unk_id, v.bos_id, v.eos_id, v.pad_id) == (0, 1, 2, 11)
  ranks = _byte_ranks(bpe)
  to_byte = {c: b for b, c in enumerate(tekken.byte_alphabet())}
  id_to_bytes = {i: bytes(to_byte[c] for c in token) for token, i in bpe.get_vocab().items()}
  assert v.size == TEKKEN_SPECIALS + len(ranks)
  for text in (_read(corpus_dir / "pg2701.txt"), NON_ASCII * 50, "<s>[INST] a book's </s>"):
    expected = [ranks[id_to_bytes[i]] + TEKKEN_SPECIALS for i in bpe.encode(text).ids]
    assert v.encode(text) == expected  # special tokens' text in a book is text
    assert v.decode(expected) == text
  try:  # transformers' own Tekken conversion, where it is installed
    from transformers.integrations.mistral.tokenizer import MistralConverter
  except ImportError:
    return
  converted = MistralConverter(vocab_file=str(tekken_file)).converted()
  text = _read(corpus_dir / "pg1342.txt")
  assert v.encode(text) == converted.encode(text, add_special_tokens=False).ids


def test_tekken_keeps_only_default_vocab_size_ids(tekken_file, tmp_path):
  data = json.loads(tekken_file.read_text())
  data["config"]["default_vocab_size"] -= 100
  small = tmp_path / "tekken.json"
  _write_json(small, data)
  v = vocab.load_vocabulary(small)
  assert v.size == data["config"]["default_vocab_size"]
  assert max(v.encode(NON_ASCII * 10 + "The quick brown fox, said the Queen.")) < v.size
  del data["special_tokens"]
  _write_json(small, data)
  with pytest.raises(ValueError, match="no `special_tokens` list"):
    vocab.load_vocabulary(small)


def _llama2_style_folder(corpus_dir, folder: Path) -> Path:
  """A Llama-2/Mistral-style tokenizer.json: Prepend + Replace normalizer, byte fallback BPE."""
  tokenizer = tokenizers.Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
  tokenizer.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
  tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="never")  # for training only
  tokenizer.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(),
                                         decoders.Fuse(), decoders.Strip(" ", 1, 0)])
  specials = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
  tokenizer.train_from_iterator([_read(corpus_dir / "pg46.txt")], trainers.BpeTrainer(
      vocab_size=1000, special_tokens=specials, show_progress=False))
  tokenizer.pre_tokenizer = None
  folder.mkdir()
  tokenizer.save(str(folder / "tokenizer.json"))
  _write_json(folder / "tokenizer_config.json",
              {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"})
  return folder


def _best_seconds(function, argument, repeats: int) -> float:
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    function(argument)
    times.append(time.perf_counter() - start)
  return min(times)


def _chapter(text: str, scene_chars: int = 8000) -> list[dict]:
  """`text` as one scaffold chapter cut at paragraphs into scenes of about `scene_chars` characters (the
  books segmenter bounds scenes at 2,500 words)."""
  scenes, start = [], 0
  while start < len(text):
    end = text.find("\n\n", start + scene_chars)
    end = len(text) if end < 0 else end + 2
    scenes.append({"index": len(scenes), "summary": "A scene.", "text": text[start:end]})
    start = end
  return [{"index": 0, "title": "CHAPTER I.", "summary": "A chapter.", "scenes": scenes}]


def test_encoding_time_is_linear_in_the_chapter_length(llama3_folder, scaffold_records, corpus_dir, tmp_path):
  """A 10x longer chapter takes at most 20x the time to encode as xbook encodes books (scene by scene),
  with Llama 3's regex and with the Llama 2/Mistral `Replace` normalizer (quadratic in tokenizers before
  0.15.2: huggingface/tokenizers#1449 measured ~100x for 10x). One call on a 10x longer string stays far
  from quadratic too, but its time per character grows with the string's size (memory effects inside
  tokenizers: 17-31x measured here for 10x), so the bound there is 50x, half of quadratic."""
  text = _read(corpus_dir / "pg2701.txt")
  short, long = text[:60_000], text[:600_000]
  for folder in (llama3_folder, _llama2_style_folder(corpus_dir, tmp_path / "llama2")):
    v = vocab.load_vocabulary(folder)
    assert v.decode(v.encode(short)) == short
    encode_book = lambda chapter: pieces.encode_book(  # noqa: E731
        dict(scaffold_records[0], chapters=chapter), v.encode, v.eos_id, marker_style=v.marker_style)
    ratio = _best_seconds(encode_book, _chapter(long), 2) / _best_seconds(encode_book, _chapter(short), 5)
    assert ratio < 20, (folder.name, "chapter", ratio)
    ratio = _best_seconds(v.encode, long, 3) / _best_seconds(v.encode, short, 5)
    assert ratio < 50, (folder.name, "one call", ratio)


def test_a_folder_prefers_tokenizer_json_and_save_makes_a_self_contained_copy(llama3_folder, tekken_file,
                                                                             vocab_path, tmp_path):
  folder = Path(shutil.copytree(llama3_folder, tmp_path / "model"))
  shutil.copy(tekken_file, folder / "tekken.json")
  shutil.copy(vocab_path, folder / "tokenizer.model")
  assert vocab.load_vocabulary(folder).path == str(folder / "tokenizer.json")
  (folder / "tokenizer.json").unlink()
  assert vocab.load_vocabulary(folder).path == str(folder / "tekken.json")
  (folder / "tekken.json").unlink()
  assert vocab.load_vocabulary(folder).marker_style == "symbols"
  (folder / "tokenizer.model").unlink()
  with pytest.raises(FileNotFoundError, match="holds none of tokenizer.json, tekken.json, tokenizer.model"):
    vocab.load_vocabulary(folder)
  for source in (llama3_folder, tekken_file, vocab_path):
    original = vocab.load_vocabulary(source)
    saved = original.save(tmp_path / "runs" / Path(source).name / "vocab")
    copy_ = vocab.load_vocabulary(saved)
    assert copy_ == original and Path(saved).parent == tmp_path / "runs" / Path(source).name / "vocab"
    assert (copy_.bos_id, copy_.eos_id, copy_.pad_id, copy_.size) == (original.bos_id, original.eos_id,
                                                                      original.pad_id, original.size)
    assert copy_.encode(NON_ASCII) == original.encode(NON_ASCII)
  assert sorted(p.name for p in (tmp_path / "runs" / "llama3" / "vocab").iterdir()) == [
      "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"]



def test_a_chat_template_jinja_beside_the_tokenizer_is_copied_with_the_vocabulary(llama3_folder, tmp_path):
  # Newer Hugging Face folders keep the chat template in chat_template.jinja, not in tokenizer_config.json.
  folder = Path(shutil.copytree(llama3_folder, tmp_path / "model"))
  template = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{{ eos_token }}{% endfor %}"
  (folder / "chat_template.jinja").write_text(template, encoding="utf-8")
  original = vocab.load_vocabulary(folder)
  without = vocab.load_vocabulary(llama3_folder)
  assert (original.bos_id, original.eos_id, original.pad_id) == (without.bos_id, without.eos_id, without.pad_id)
  saved = Path(original.save(tmp_path / "run" / "vocab")).parent
  assert (saved / "chat_template.jinja").read_bytes() == (folder / "chat_template.jinja").read_bytes()
  assert sorted(p.name for p in saved.iterdir()) == [
      "chat_template.jinja", "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"]
  assert vocab.load_vocabulary(saved) == original
  assert load_chat_template(saved).render([{"role": "user", "content": "Hi"}]) == "<user>Hi<|end_of_text|>"

def test_seqio_vocabulary_pickles_deep_copies_and_compares_equal(llama3_folder, qwen_folder, tmp_path):
  v = vocab.load_vocabulary(llama3_folder)
  seqio_vocab = v.seqio_vocabulary()
  for copied in (pickle.loads(pickle.dumps(seqio_vocab)), copy.deepcopy(seqio_vocab)):
    assert copied == seqio_vocab and copied.encode(NON_ASCII) == v.encode(NON_ASCII)
  assert seqio_vocab == vocab.load_vocabulary(llama3_folder).seqio_vocabulary()
  assert seqio_vocab != vocab.load_vocabulary(qwen_folder).seqio_vocabulary()
  assert (seqio_vocab.bos_id, seqio_vocab.eos_id, seqio_vocab.vocab_size) == (v.bos_id, v.eos_id, v.size)
  ids = seqio_vocab.encode_tf(tf.constant(NON_ASCII)).numpy().tolist()
  assert ids == v.encode(NON_ASCII)
  assert seqio_vocab.decode(ids + [v.eos_id, 5, 6]) == NON_ASCII  # up to EOS, EOS left out
  batch = np.array([ids + [v.eos_id], ids + [v.eos_id]], np.int32)
  assert [t.decode() for t in seqio_vocab.decode_tf(batch).numpy().tolist()] == [NON_ASCII] * 2
  # A pickle of a vocabulary whose files changed since is refused, not silently different.
  folder = Path(shutil.copytree(llama3_folder, tmp_path / "changing"))
  pickled = pickle.dumps(vocab.load_vocabulary(folder))
  _write_json(folder / "tokenizer_config.json", {"eos_token": "<|eot_id|>"})
  vocab._LOADED.clear()
  with pytest.raises(ValueError, match="changed since"):
    pickle.loads(pickled)


def _task_examples(task_name: str, length: int, bos_id: int) -> list[dict]:
  ds = seqio.get_dataset(task_name, task_feature_lengths=task_feature_lengths(length), dataset_split="train",
                         shuffle=False, num_epochs=1,
                         feature_converter=TrajectoryFeatureConverter(bos_id=bos_id))
  return list(ds.as_numpy_iterator())


def test_a_task_in_a_pretrained_vocabulary_starts_with_bos_and_ends_each_book_with_one_eos(
    llama3_folder, scaffold_file, scaffold_records):
  v = vocab.load_vocabulary(llama3_folder)
  task = tasks.register_task("test_vocab_llama3", DataSpec.build(str(scaffold_file), v, WINDOW_LEN))
  assert task.output_features["targets"].vocabulary.bos_id == v.bos_id
  examples = _task_examples("test_vocab_llama3", WINDOW_LEN, v.bos_id)
  book_ends = 0
  for example in examples:
    real = example["decoder_segment_ids"] > 0
    targets, inputs = example["decoder_target_tokens"][real], example["decoder_input_tokens"][real]
    assert inputs[0] == v.bos_id and v.bos_id not in targets  # BOS once, as the first input only
    np.testing.assert_array_equal(inputs[1:], targets[:-1])
    if v.eos_id in targets:
      book_ends += 1
      assert np.flatnonzero(targets == v.eos_id).tolist() == [len(targets) - 1]
      assert v.decode(targets[:-1].tolist()).endswith(trajectory.END_OF_BOOK_TAG)
  assert book_ends == len(scaffold_records)
  first = v.decode(examples[0]["decoder_target_tokens"][examples[0]["decoder_segment_ids"] > 0].tolist())
  assert first.startswith("<prompt>") and "\n<premise>" in first and "<|premise|>" not in first


@pytest.mark.parametrize("kind", ["tokenizer.json", "xbook"])
def test_generation_encodes_the_prompt_as_training_encodes_segments(kind, llama3_folder, vocab_path,
                                                                   scaffold_records):
  v = vocab.load_vocabulary(llama3_folder if kind == "tokenizer.json" else vocab_path)
  record = scaffold_records[0]
  book = pieces.encode_book(record, v.encode, v.eos_id, marker_style=v.marker_style)
  prompt, premise = book[0].ids, book[1].ids
  n_marker = len(v.encode(trajectory.markers(v.marker_style)[0]["premise"]))
  assert generate.prompt_ids(record["prompt"], v) == list(prompt + premise[:n_marker])
  assert v.decode(generate.prompt_ids(record["prompt"], v)) == generate.prompt_prefix(record["prompt"], v)
  if kind == "xbook":  # symbols split the text: the ids of existing runs' data are unchanged
    segments = trajectory.scaffold_to_segments(record)
    assert [s.ids for s in book] == [tuple(v.encode(s.text)) + (v.eos_id,) * (i == len(segments) - 1)
                                     for i, s in enumerate(segments)]
    assert v.bos_id == 0 and v.seqio_vocabulary().bos_id == 0


def test_sampling_starts_with_bos_and_never_samples_padded_embedding_rows(llama3_folder):
  v = vocab.load_vocabulary(llama3_folder)
  config = DecoderConfig(vocab_size=2048, d_model=32, n_layers=1, n_heads=2, n_kv_heads=1, head_dim=16,
                         mlp_dim=64)
  model = Decoder(config)
  tokens = jnp.zeros((1, 8), jnp.int32)
  params = nn.unbox(model.init(jax.random.key(0), tokens, tokens + 1, jnp.arange(8)[None])["params"])
  run = generate.LoadedRun(model=model, params=params, vocabulary=v, step=0)
  prefix = generate.prompt_ids("A ghost story.", v)
  buffer = jnp.asarray([prefix + [0] * (128 - len(prefix))], jnp.int32)
  logits = generate._next_logits(model, params, buffer, len(prefix), v.bos_id, v.size)
  assert np.all(np.isneginf(logits[v.size:])) and np.all(np.isfinite(logits[:v.size]))
  inputs = jnp.asarray([[v.bos_id] + prefix], jnp.int32)  # the next token's logits, without padding
  expected = model.apply({"params": params}, inputs, jnp.ones_like(inputs), jnp.arange(len(prefix) + 1)[None])
  np.testing.assert_allclose(logits[:v.size], expected[0, -1, :v.size], rtol=1e-5, atol=1e-5)
  sampled = generate.sample_tokens(run, prefix, max_new_tokens=16, temperature=5.0, top_k=2048, seed=1)
  assert sampled and max(sampled) < v.size


def test_vocab_train_reads_only_the_train_split(scaffold_records, tmp_path, monkeypatch):
  seen = []
  original = vocab.training_sentences

  def recording(records, *args):
    records = list(records)
    seen.extend(r["book"]["id"] for r in records)
    return original(records, *args)

  monkeypatch.setattr(vocab, "training_sentences", recording)
  held_out = dict(scaffold_records[1], split="validation")
  vocab.train_vocab([scaffold_records[0], held_out], tmp_path / "v.model", vocab_size=400)
  assert seen == [scaffold_records[0]["book"]["id"]]
  with pytest.raises(ValueError, match="none of the 1 scaffold records is of split train"):
    vocab.train_vocab([held_out], tmp_path / "w.model", vocab_size=400)
