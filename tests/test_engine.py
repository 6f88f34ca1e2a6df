"""The inference engine (xbook.infer.engine): continuous batching, prefix reuse, cancellation, structured
outputs and decoding on a mesh, against decode.generate (itself checked against full recompute and
transformers in tests/test_decode.py).

Run with XLA_FLAGS=--xla_force_host_platform_device_count=8 (tests/run.sh sets it).
"""

from __future__ import annotations

import json
import re

import jax
import numpy as np
import pytest

from xbook.infer import decode as decoding
from xbook.infer.engine import Engine, EngineRequest
from xbook.train.mesh import MeshConfig, make_mesh

from test_decode import VOCAB, init_params, prompts_of, tiny

GREEDY = decoding.SamplingParams(temperature=0.0, max_tokens=24)
SEEDED = decoding.SamplingParams(temperature=1.0, top_k=20, seed=11, max_tokens=24)
ENGINE = dict(slots=4, max_len=128, prefill_chunk=16, sync_every=8)


@pytest.fixture(scope="module")
def model():
  config = tiny()
  return config, init_params(config)


def _alone(model, prompt, sampling) -> list[int]:
  config, params = model
  [completion] = decoding.generate(params, config, [prompt], sampling, min_bucket=64, prefill_chunk=16)
  return completion.token_ids


def _logits_after(model, ids: list[int]) -> np.ndarray:
  """The next-token logits after `ids`, by one prefill (the reference for a divergence's gap)."""
  config, params = model
  placed = decoding.place_params(params, config)
  cache = decoding.init_cache(config, 1, decoding.bucket(len(ids) + 1, minimum=64))
  _, logits = decoding.prefill(placed, config, cache, [ids], chunk=64, min_bucket=64)
  return np.asarray(logits)[0]


def _same_or_float_rounding(model, prompt, got, want):
  """got == want, or they part where the two best logits are within float32 rounding of each other (so
  another batch shape may rank them the other way): the first divergence is located and its gap shown."""
  if got == want:
    return
  first = next(i for i, (a, b) in enumerate(zip(got, want)) if a != b)
  logits = _logits_after(model, prompt + want[:first])
  gap = abs(float(logits[got[first]] - logits[want[first]]))
  assert gap < 1e-4 * max(1.0, float(np.abs(logits).max())), (
      f"tokens part at {first} ({got[first]} vs {want[first]}) with a logit gap of {gap}: not float rounding")


@pytest.mark.parametrize("sampling", [GREEDY, SEEDED], ids=["greedy", "seeded"])
def test_a_request_admitted_mid_decode_gets_the_tokens_it_gets_alone(model, sampling):
  config, params = model
  long_prompt, short_prompt = prompts_of((30, 7), seed=3)
  engine = Engine(params, config, **ENGINE)
  first = engine.submit(EngineRequest(long_prompt, decoding.SamplingParams(temperature=0.0, max_tokens=90)))
  for _ in range(3):  # the first request is prefilled and decoding when the second arrives
    engine.step()
  assert not first.done() and engine.stats()["running"] == 1
  second = engine.submit(EngineRequest(short_prompt, sampling))
  while not (first.done() and second.done()):
    engine.step()
  _same_or_float_rounding(model, short_prompt, second.result().token_ids, _alone(model, short_prompt, sampling))
  _same_or_float_rounding(model, long_prompt, first.result().token_ids,
                          _alone(model, long_prompt, decoding.SamplingParams(temperature=0.0, max_tokens=90)))


def test_many_requests_over_few_slots_equal_decode_generate(model):
  config, params = model
  prompts = prompts_of((5, 17, 30, 3, 12, 9), seed=5)
  samplings = [GREEDY, SEEDED] * 3
  got = Engine(params, config, **ENGINE).generate([EngineRequest(p, s) for p, s in zip(prompts, samplings)])
  for prompt, sampling, completion in zip(prompts, samplings, got):
    _same_or_float_rounding(model, prompt, completion.token_ids, _alone(model, prompt, sampling))
    assert completion.finish_reason == "length" and completion.prompt_tokens == len(prompt)


def test_prefix_reuse_prefills_only_the_new_tokens_and_gives_the_full_prefill_tokens(model):
  config, params = model
  engine = Engine(params, config, **ENGINE)
  no_reuse = Engine(params, config, **{**ENGINE, "prefix_reuse": False})
  prompt = prompts_of((20,), seed=7)[0]
  for stage in range(3):  # each "stage" is the previous prompt, its answer and a few new tokens
    [completion] = engine.generate([EngineRequest(prompt, GREEDY)])
    [fresh] = no_reuse.generate([EngineRequest(prompt, GREEDY)])
    assert completion.token_ids == fresh.token_ids == _alone(model, prompt, GREEDY)
    assert fresh.cached_tokens == 0
    if stage:
      # everything stored (the prompt and the answer but its last token, which was never fed) is reused
      assert completion.cached_tokens == len(prompt) - 4, (stage, completion.cached_tokens, len(prompt))
    prompt = prompt + completion.token_ids + [1, 2, 3]
  stats = engine.stats()
  new_tokens = stats["prompt_tokens"] - stats["reused_tokens"]
  assert stats["prefilled_tokens"] == new_tokens and stats["prefix_hits"] == 2


def test_a_cancelled_request_frees_its_slot_for_the_next(model):
  config, params = model
  engine = Engine(params, config, **{**ENGINE, "slots": 1})
  long_prompt, short_prompt = prompts_of((10, 6), seed=9)
  first = engine.submit(EngineRequest(long_prompt, decoding.SamplingParams(temperature=0.0, max_tokens=100)))
  second = engine.submit(EngineRequest(short_prompt, GREEDY))
  engine.step()
  engine.step()
  assert engine.stats()["waiting"] == 1
  first.cancel()
  while not second.done():
    engine.step()
  assert first.result().finish_reason == "cancelled" and len(first.result().token_ids) < 100
  assert second.result().token_ids == _alone(model, short_prompt, GREEDY)
  assert engine.stats()["cancelled"] == 1 and engine.stats()["running"] == 0


def test_streaming_stop_strings_and_stop_tokens(model):
  config, params = model
  prompt = prompts_of((9,), seed=2)[0]
  decode_text = lambda ids: " ".join(map(str, ids))  # noqa: E731 - a toy detokenizer
  want = _alone(model, prompt, GREEDY)
  stop_token = want[5]
  pieces: list[list[int]] = []
  engine = Engine(params, config, decode=decode_text, **ENGINE)
  [by_token, by_string] = engine.generate([
      EngineRequest(prompt, GREEDY, stop_token_ids=(stop_token,),
                    on_tokens=lambda ids, reason: pieces.append(ids) or True),
      EngineRequest(prompt, decoding.SamplingParams(temperature=0.0, max_tokens=24,
                                                    stop=(f" {want[3]} {want[4]}",)))])
  cut = want.index(stop_token)
  assert by_token.token_ids == want[:cut] and by_token.stop_reason == stop_token
  assert sum(pieces, []) == want[:cut]
  assert by_string.finish_reason == "stop" and by_string.token_ids == want[:3]


def test_sharded_over_tensor_and_sequence_equals_one_device(model):
  """8 devices: tensor = 4 over heads, MLP, vocab and the 4 kv heads, sequence = 2 over the KV cache's
  length; greedy tokens as on one device."""
  if jax.device_count() < 8:
    pytest.skip("needs 8 devices: XLA_FLAGS=--xla_force_host_platform_device_count=8")
  from xbook.infer.placement import inference_mesh, parse_mesh_flag
  config = tiny(n_heads=8, n_kv_heads=4)
  params = init_params(config, seed=1)
  model = (config, params)
  mesh, rules = inference_mesh(parse_mesh_flag("tensor=4,sequence=2"), shard_cache_length=True)
  assert dict(mesh.shape) == {"data": 1, "fsdp": 1, "sequence": 2, "tensor": 4}
  prompts = prompts_of((5, 17, 30), seed=4)
  sharded = Engine(params, config, mesh=mesh, rules=rules, **ENGINE)
  keys = sharded.cache.keys[0]
  assert keys.sharding.spec[-1] == "sequence", keys.sharding  # the cache's length is split
  got = sharded.generate([EngineRequest(p, GREEDY) for p in prompts])
  want = Engine(params, config, **ENGINE).generate([EngineRequest(p, GREEDY) for p in prompts])
  assert [c.token_ids for c in got] == [c.token_ids for c in want]
  assert [c.token_ids for c in want] == [_alone(model, p, GREEDY) for p in prompts]
  by_generate = decoding.generate(params, config, prompts, decoding.GREEDY, max_tokens=24, mesh=mesh, rules=rules,
                                  min_bucket=64, prefill_chunk=16)
  assert [c.token_ids for c in by_generate] == [c.token_ids for c in want]


def test_parse_mesh_flag_names_the_bad_part():
  from xbook.infer.placement import parse_mesh_flag
  assert parse_mesh_flag("tensor=4,fsdp=-1") == MeshConfig(data=1, fsdp=-1, sequence=1, tensor=4)
  with pytest.raises(ValueError, match="'heads=2' is not AXIS=SIZE"):
    parse_mesh_flag("heads=2")
  with pytest.raises(ValueError, match="'tensor=0'"):
    parse_mesh_flag("tensor=0")
  make_mesh  # noqa: B018 - imported for the mesh tests' namespace


# ------------------------------------------------------------------------------------- structured outputs
EOS = VOCAB - 1


class _ByteTokenizer:
  """A vocabulary of VOCAB ids: 0..VOCAB-2 the printable ASCII bytes from 32, VOCAB-1 EOS (for llguidance's
  TokenizerWrapper; the structured-output tests on the real vocabulary kinds are in test_serve)."""

  eos_token_id, bos_token_id = EOS, None
  tokens = [bytes([32 + i]) for i in range(VOCAB - 1)] + [b"<eos>"]
  special_token_ids = [EOS]

  def __call__(self, text: bytes) -> list[int]:
    return [b - 32 for b in text]


@pytest.fixture(scope="module")
def byte_tokenizer():
  import llguidance
  return llguidance.LLTokenizer(llguidance.TokenizerWrapper(_ByteTokenizer()))


def _text(ids: list[int]) -> str:
  return bytes(32 + i for i in ids if i != EOS).decode()


@pytest.mark.parametrize("kind, value, check", [
    ("regex", r"[a-f]{3}-[0-9]{2,4}", lambda t: re.fullmatch(r"[a-f]{3}-[0-9]{2,4}", t)),
    ("choice", ["yes", "no", "maybe"], lambda t: t in ("yes", "no", "maybe")),
    ("json", {"type": "object", "properties": {"n": {"type": "integer"}, "s": {"type": "string", "maxLength": 5}},
              "required": ["n", "s"], "additionalProperties": False},
     lambda t: isinstance(json.loads(t)["n"], int) and len(json.loads(t)["s"]) <= 5),
    ("grammar", 'start: "chapter " NUM\nNUM: /[1-9][0-9]?/', lambda t: re.fullmatch(r"chapter [1-9][0-9]?", t)),
])
def test_constrained_outputs_always_parse(model, byte_tokenizer, kind, value, check):
  from xbook.infer.structured import GrammarConstraint, GrammarSpec, compile_grammar
  config, params = model
  grammar = compile_grammar(GrammarSpec(kind, value), byte_tokenizer)
  engine = Engine(params, config, **ENGINE)
  requests = [EngineRequest(p, decoding.SamplingParams(temperature=1.0, seed=seed, max_tokens=60), stop_token_ids=(EOS,),
                            constraint=GrammarConstraint(byte_tokenizer, grammar))
              for seed, p in enumerate(prompts_of((4, 9, 13, 6, 11, 3), seed=8))]
  for completion in engine.generate(requests):
    assert completion.finish_reason == "stop", completion
    assert check(_text(completion.token_ids)), _text(completion.token_ids)


def test_constrained_greedy_equals_unconstrained_where_it_obeyed(model, byte_tokenizer):
  """A grammar that admits what the unconstrained greedy answer wrote changes nothing."""
  from xbook.infer.structured import GrammarConstraint, GrammarSpec, compile_grammar
  config, params = model
  # the first prompt whose free greedy answer does not end the sequence (a text grammar has no EOS inside)
  prompt, free = next((p, f) for seed in range(50) for p in prompts_of((12,), seed=seed)
                      if EOS not in (f := _alone(model, p, GREEDY)))
  pattern = re.escape(_text(free)) + "(.*)"  # the free answer, then anything
  grammar = compile_grammar(GrammarSpec("regex", pattern), byte_tokenizer)
  [constrained] = Engine(params, config, **ENGINE).generate(
      [EngineRequest(prompt, GREEDY, constraint=GrammarConstraint(byte_tokenizer, grammar))])
  assert constrained.token_ids == free
