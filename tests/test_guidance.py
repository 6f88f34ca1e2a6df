"""llguidance over xbook's three vocabulary kinds (xbook.infer.guidance): a SentencePiece .model, a
tokenizer.json and a tekken.json, each built here; a stage grammar's matcher takes the vocabulary's own
tokens of a well-formed stage and masks the rest."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import llguidance
import numpy as np
import pytest
import tokenizers
from tokenizers import decoders, models, pre_tokenizers, trainers

from xbook.data import tekken
from xbook.data.vocab import load_vocabulary
from xbook.infer.guidance import llg_tokenizer, mask_for, match_text
from xbook.scaffold import stage_grammar as sg
from xbook.scaffold import stage_protocol as sp

EMBEDDING = "action: 10, dialog: 40, world_building: 5, exposition: 20, romantic: 0, erotic: 0, pacing: 55"
SCENES = ("### Stave One\n#### Scene 1: Marley Was Dead\n**Word Count:** 1300\n**Embedding Space:** " + EMBEDDING
          + "\n**Narrative Focus:** Scrooge; Marley\n**Narrative Perspective:** Third person narration\n"
          "**Scene Summary:**\n- Marley was dead, to begin with.\n- Scrooge signed the register.\n\n"
          "#### Scene 2: Humbug\n**Word Count:** 950\n**Embedding Space:** " + EMBEDDING
          + "\n**Narrative Focus:** Scrooge; Fred\n**Narrative Perspective:** Third person narration\n"
          "**Scene Summary:**\n- \"Humbug!\" said Scrooge to his nephew.")
SPECIALS = ("<s>", "</s>", "<|eot_id|>")


@pytest.fixture(scope="module")
def bpe(corpus_dir) -> tokenizers.Tokenizer:
  """A byte-level BPE of 600 tokens trained on A Christmas Carol."""
  tokenizer = tokenizers.Tokenizer(models.BPE())
  tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tokenizer.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=600, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                show_progress=False)
  tokenizer.train_from_iterator([(corpus_dir / "pg46.txt").read_text(encoding="utf-8")], trainer)
  return tokenizer


def _tokenizer_json(bpe: tokenizers.Tokenizer, folder: Path) -> Path:
  tokenizer = tokenizers.Tokenizer.from_str(bpe.to_str())
  tokenizer.add_special_tokens([tokenizers.AddedToken(s, special=True) for s in SPECIALS])
  folder.mkdir(parents=True)
  tokenizer.save(str(folder / "tokenizer.json"))
  (folder / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<s>", "eos_token": "</s>"}))
  return folder


def _tekken_json(bpe: tokenizers.Tokenizer, folder: Path) -> Path:
  """`bpe` as a Mistral tekken.json: ranks are the 256 bytes then the merges in order; 8 special ranks."""
  to_byte = {c: b for b, c in enumerate(tekken.byte_alphabet())}
  ranks = {bytes([b]): b for b in range(256)}
  for left, right in json.loads(bpe.to_str())["model"]["merges"]:
    ranks.setdefault(bytes(to_byte[c] for c in left + right), len(ranks))
  specials = ("<unk>", "<s>", "</s>", "[INST]", "[/INST]", "<pad>", "<SPECIAL_6>", "<SPECIAL_7>")
  data = {"config": {"pattern": r"[^\s]+|\s+", "default_vocab_size": len(specials) + len(ranks),
                     "default_num_special_tokens": len(specials), "version": "v7"},
          "vocab": [{"rank": r, "token_bytes": base64.b64encode(t).decode()} for t, r in ranks.items()],
          "special_tokens": [{"rank": r, "token_str": s, "is_control": True} for r, s in enumerate(specials)]}
  folder.mkdir(parents=True)
  (folder / "tekken.json").write_text(json.dumps(data))
  return folder


@pytest.fixture(scope="module")
def vocabularies(bpe, vocab_path, tmp_path_factory):
  root = tmp_path_factory.mktemp("guidance")
  return {"sentencepiece": load_vocabulary(vocab_path),
          "tokenizer.json": load_vocabulary(_tokenizer_json(bpe, root / "hf")),
          "tekken.json": load_vocabulary(_tekken_json(bpe, root / "mistral"))}


@pytest.mark.parametrize("kind", ["sentencepiece", "tokenizer.json", "tekken.json"])
def test_a_stage_grammar_masks_each_vocabulary_kind(vocabularies, kind):
  vocabulary = vocabularies[kind]
  tokenizer = llg_tokenizer(vocabulary)
  assert tokenizer.vocab_size == vocabulary.size and tokenizer.eos_token == vocabulary.eos_id
  grammar = sg.stage_grammar("14b_full_book", "scene_breakdown")
  assert sp.check_stage("scene_breakdown", SCENES) == [] and match_text(grammar.text, SCENES + sp.EOT) is None
  compiled = llguidance.LLMatcher.grammar_from_lark(grammar.text)
  assert llguidance.LLMatcher.validate_grammar(compiled, tokenizer) == ""
  matcher = llguidance.LLMatcher(tokenizer, compiled, log_level=0)
  ids = vocabulary.encode(SCENES + sp.EOT)
  first = mask_for(matcher, vocabulary.size)
  assert first.shape == (vocabulary.size,) and first.dtype == np.bool_
  assert first[ids[0]] and not first[vocabulary.encode("x")[0]] and not first[vocabulary.eos_id]
  assert 0 < first.sum() < vocabulary.size
  for i, token in enumerate(ids):  # the vocabulary's own tokens of a well-formed stage are all allowed
    assert mask_for(matcher, vocabulary.size)[token], (kind, i, vocabulary.decode(ids[max(0, i - 5):i + 1]))
    assert matcher.consume_token(token)
  assert matcher.is_accepting()
  assert np.flatnonzero(mask_for(matcher, vocabulary.size)).tolist() == [vocabulary.eos_id]
  # A malformed stage (a third scene numbered 4) is cut where it goes wrong.
  bad = vocabulary.encode(SCENES + "\n\n#### Scene 4: Ghosts")
  matcher.reset()
  assert matcher.try_consume_tokens(bad) < len(bad)


def test_the_end_marker_as_a_special_token(vocabularies):
  vocabulary = vocabularies["tokenizer.json"]
  # xbook encodes special-token strings as text (hf_vocab: encode_special_tokens), hence end="text" by default;
  # a server whose tokenizer has <|eot_id|> as one special token asks for end="special".
  assert len(vocabulary.encode(sp.EOT)) > 1
  eot = [tokenizers.Tokenizer.from_file(str(Path(vocabulary.path))).token_to_id(sp.EOT)]
  grammar = sg.stage_grammar("14b_full_book", "scene_breakdown", end="special")
  matcher = llguidance.LLMatcher(llg_tokenizer(vocabulary), llguidance.LLMatcher.grammar_from_lark(grammar.text),
                                 log_level=0)
  assert matcher.try_consume_tokens(vocabulary.encode(SCENES) + eot) == len(vocabulary.encode(SCENES)) + 1
  assert matcher.is_accepting()


@pytest.mark.parametrize("kind", ["sentencepiece", "tokenizer.json", "tekken.json"])
@pytest.mark.parametrize("role,budget", [("book_characters_list", 120), ("first_chapter_text", 60)])
def test_a_constraint_closes_its_grammar_within_the_budget_whatever_was_drawn(vocabularies, kind, role, budget):
  """Drawing uniformly among the allowed tokens (a model that never ends a field by itself), a constraint
  given its budget still ends complete: the text matches the grammar whole and passes check_stage."""
  from xbook.infer.structured import GrammarCompiler, GrammarSpec
  vocabulary = vocabularies[kind]
  grammar = sg.stage_grammar("14b_full_book", role, [("prompt", "A ghost story.")])
  compiler = GrammarCompiler(vocabulary)
  rng = np.random.default_rng(0)
  for trial in range(3):
    constraint = compiler.constraint(compiler.compile(GrammarSpec("grammar", grammar.text)), budget=budget,
                                     closers=grammar.closers)
    row = np.zeros(constraint.words, np.int32)
    while len(constraint.tokens) < budget and not constraint.is_stopped():
      constraint.fill_bitmask(row)
      allowed = np.flatnonzero(np.unpackbits(row.view(np.uint8), bitorder="little"))
      constraint.consume(int(rng.choice(allowed)))
    text = vocabulary.decode(constraint.tokens)
    assert constraint.is_stopped() and constraint.closed_by_budget > 0, (trial, text)
    assert match_text(grammar.text, text) is None, (trial, text)
    assert sp.check_stage(role, sp.trim_stage_text(text.removesuffix(sp.EOT))) == [], (trial, text)


def test_the_closing_ranking_is_made_once_per_tokenizer_with_its_after_a_blank_line_variant(vocabularies):
  """closing_tokens ranks a tokenizer's tokens from one cached table per tokenizer (a large vocabulary takes
  tens of milliseconds to rank); after a blank line the line-ending tokens lose their bonus, nothing else."""
  from xbook.infer import structured
  tokenizer = llg_tokenizer(vocabularies["tokenizer.json"])
  ranking = structured._preference(tokenizer)
  assert structured._preference(tokenizer) is ranking
  line_ends = np.asarray([b"\n" in text for text in ranking.texts])
  assert line_ends.any() and (~line_ends).any()
  np.testing.assert_array_equal(ranking.after_blank[~line_ends], ranking.score[~line_ends])
  np.testing.assert_array_equal(ranking.after_blank[line_ends], ranking.score[line_ends] - 4e6)
  assert ranking.score[line_ends].min() > ranking.score[~line_ends].max()  # a line end first, unless after a blank
