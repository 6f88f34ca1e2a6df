"""KV-cache decoding (xbook.infer.decode) against full recompute, against transformers, and its sampler.

Run with XLA_FLAGS=--xla_force_host_platform_device_count=8 (tests/run.sh sets it): the ring and mesh
cases need several simulated devices and skip otherwise.
"""

from __future__ import annotations

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from xbook.infer import decode as decoding
from xbook.model import Decoder, DecoderConfig
from xbook.train.mesh import MeshConfig, make_mesh
from xbook.train.partitioning import DEFAULT_RULES

VOCAB = 96  # divides over a tensor axis of 2
# Mixed prompt lengths; the 30-token prompt is prefilled in two chunks of 16.
PROMPT_LENGTHS = (5, 17, 30)
NEW_TOKENS = 20
SMALL = dict(min_bucket=64, prefill_chunk=16)  # a cache of 64 slots from the start: one decode compile
GROWING = dict(min_bucket=16, prefill_chunk=16)  # a cache of 32 slots, grown to 64 while decoding
WIDTH = 64  # the full-recompute window: longest prompt + NEW_TOKENS, to a multiple of the blocks


def tiny(**overrides) -> DecoderConfig:
  base = dict(vocab_size=VOCAB, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8, mlp_dim=48)
  return DecoderConfig(**{**base, **overrides})


def init_params(config: DecoderConfig, seed: int = 0) -> dict:
  """Random parameters of Decoder(config), drawn with numpy (compiling the model's init takes seconds):
  norm scales around 1, biases around 0, kernels with a standard deviation of 0.2."""
  tokens = jnp.zeros((1, 8), jnp.int32)
  shapes = nn.unbox(jax.eval_shape(lambda: Decoder(config).init(jax.random.key(0), tokens, tokens + 1, tokens)))
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    name = path[-1].key
    if name == "scale":
      return rng.uniform(0.5, 1.5, leaf.shape).astype(leaf.dtype)
    scale = 1.0 if name == "embedding" else 0.5 if name.endswith("bias") else 0.2
    return (scale * rng.normal(size=leaf.shape)).astype(leaf.dtype)

  return jax.tree_util.tree_map_with_path(draw, shapes["params"])


def prompts_of(lengths=PROMPT_LENGTHS, seed: int = 0) -> list[list[int]]:
  rng = np.random.default_rng(seed)
  return [rng.integers(0, VOCAB, n).tolist() for n in lengths]


def full_recompute_greedy(params, config, prompts, n_new, mesh=None) -> list[list[int]]:
  """Greedy tokens by running the training forward pass on the whole growing window at every step."""
  batch = len(prompts)
  tokens = np.zeros((batch, WIDTH), np.int32)
  for row, prompt in enumerate(prompts):
    tokens[row, :len(prompt)] = prompt
  lengths = np.array([len(p) for p in prompts])
  positions = np.tile(np.arange(WIDTH, dtype=np.int32), (batch, 1))
  forward = jax.jit(lambda t, s: Decoder(config).apply({"params": params}, t, s, positions))
  out = [[] for _ in prompts]
  for _ in range(n_new):
    segment_ids = (positions < lengths[:, None]).astype(np.int32)
    if mesh is None:
      logits = forward(tokens, segment_ids)
    else:
      with jax.set_mesh(mesh), nn.logical_axis_rules(DEFAULT_RULES):
        logits = forward(tokens, segment_ids)
    chosen = np.asarray(logits)[np.arange(batch), lengths - 1].argmax(-1)
    for row in range(batch):
      tokens[row, lengths[row]] = chosen[row]
      out[row].append(int(chosen[row]))
    lengths = lengths + 1
  return out


needs_devices = pytest.mark.skipif(
    jax.device_count() < 4, reason="set XLA_FLAGS=--xla_force_host_platform_device_count=8")

CONFIGS = {
    # Every feature the layers have, on the reference kernel with its layers scanned.
    "dense_scanned": tiny(n_kv_heads=1, tie_embeddings=True, attention_bias=True, rope_scaling="yarn",
                          rope_factor=4.0, rope_original_max_position=16, rope_attention_factor=1.3,
                          query_scale_beta=0.5, query_scale_period=8, sliding_window=12),
    "dense_unrolled": tiny(scan_layers=False, remat="full", rope_scaling="llama3", rope_factor=8.0,
                           rope_original_max_position=16),
    # The cache path is the same program for both (always dense): one decode compile serves them.
    "blockwise": tiny(attention="blockwise", attention_block=8, rope_scaling="ntk", rope_factor=2.0),
    "ring": tiny(attention="ring", attention_block=8, rope_scaling="ntk", rope_factor=2.0),
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_cached_greedy_equals_full_recompute(name):
  config = CONFIGS[name]
  if name == "ring" and jax.device_count() < 2:
    pytest.skip("ring attention needs 2 devices for its sequence axis")
  params = init_params(config)
  prompts = prompts_of()
  mesh = None
  if name == "ring":
    mesh = make_mesh(MeshConfig(data=1, fsdp=1, sequence=2, tensor=1), jax.devices()[:2])
  want = full_recompute_greedy(params, config, prompts, NEW_TOKENS, mesh=mesh)
  buckets = GROWING if name == "dense_unrolled" else SMALL
  got = decoding.generate(params, config, prompts, decoding.GREEDY, max_tokens=NEW_TOKENS, **buckets)
  assert [c.token_ids for c in got] == want
  assert all(c.finish_reason == "length" and c.stop_reason is None for c in got)
  assert [c.prompt_tokens for c in got] == list(PROMPT_LENGTHS)


def test_scanned_cached_layers_equal_the_unrolled_ones_and_training_logits():
  """The Decoder's own cache path on scanned parameters (not what generate runs) gives training's
  logits for a prefill chunk written into a cache."""
  config = CONFIGS["dense_scanned"]
  params = init_params(config)
  tokens = np.asarray(prompts_of((12,)), np.int32)
  positions = np.arange(12, dtype=np.int32)[None]
  want = jax.jit(Decoder(config).apply)({"params": params}, tokens, np.ones_like(tokens), positions)
  cache = decoding.init_cache(config, 1, 16)
  cache, layer_cache, chunk_positions = cache.admit(jnp.ones((1, 12), bool))
  for cfg, tree in ((config, params), (decoding.decode_config(config), decoding.unstack_layers(params, config))):
    logits, (keys, values) = jax.jit(Decoder(cfg).apply)({"params": tree}, tokens, np.ones_like(tokens),
                                                         chunk_positions, layer_cache)
    np.testing.assert_allclose(np.asarray(logits), np.asarray(want), atol=2e-5, rtol=2e-5)
    assert len(keys) == config.n_layers and keys[0].shape == (1, 1, 8, 16) and values[0].shape == (1, 1, 16, 8)
    assert not np.asarray(keys[0])[..., 12:].any(), "slots past the chunk stay empty"


def test_rows_decode_independently_of_their_batch():
  config = CONFIGS["dense_unrolled"]
  params = decoding.place_params(init_params(config), config)
  prompts = prompts_of()
  sampling = [decoding.SamplingParams(temperature=0.9, top_k=20, seed=s) for s in (1, 2, 3)]
  first = decoding.generate(params, config, prompts, sampling, max_tokens=NEW_TOKENS, **GROWING)
  again = decoding.generate(params, config, prompts, sampling, max_tokens=NEW_TOKENS, **GROWING)
  assert [c.token_ids for c in again] == [c.token_ids for c in first]
  # The same request in another row, beside other requests, samples the same tokens.
  others = prompts_of(seed=1)
  moved = decoding.generate(params, config, [prompts[1], others[0], others[2]],
                            [sampling[1], decoding.GREEDY, dataclasses.replace(sampling[0], seed=9)],
                            max_tokens=NEW_TOKENS, **GROWING)
  assert moved[0].token_ids == first[1].token_ids
  reseeded = [dataclasses.replace(s, seed=s.seed + 10) for s in sampling]
  reseeded = decoding.generate(params, config, prompts, reseeded, max_tokens=NEW_TOKENS, **GROWING)
  assert all(a.token_ids != b.token_ids for a, b in zip(reseeded, first))


@needs_devices
def test_sharded_over_a_mesh_equals_one_device_and_compiles_once():
  config = tiny()
  params = init_params(config)
  prompts = prompts_of()
  want = decoding.generate(params, config, prompts, max_tokens=NEW_TOKENS, **SMALL)
  mesh = make_mesh(MeshConfig(data=1, fsdp=2, sequence=1, tensor=2), jax.devices()[:4])
  with jax.set_mesh(mesh):
    placed = decoding.place_params(params, config, mesh=mesh)
  kernel = placed.tree["layers_0"]["attention"]["key"]
  assert kernel.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor", None)
  got = decoding.generate(placed, config, prompts, max_tokens=NEW_TOKENS, mesh=mesh, **SMALL)
  assert [c.token_ids for c in got] == [c.token_ids for c in want]
  compiles = decoding.compile_counts()
  decoding.generate(placed, config, prompts, max_tokens=NEW_TOKENS, mesh=mesh, **SMALL)
  assert decoding.compile_counts() == compiles


# ------------------------------------------------------------------------------------------- sampling
PROBS = np.array([0.30, 0.20, 0.15, 0.12, 0.08, 0.06, 0.04, 0.03, 0.02])  # most likely first
# Two more ids: impossible here, the most likely of all beyond a vocabulary limit of 9 below.
LOGITS = np.concatenate([np.log(PROBS), [-np.inf, -np.inf]])
DRAWS = 4000


def draw(logits: np.ndarray, params: decoding.SamplingParams, vocab_size_limit: int | None = None) -> np.ndarray:
  """DRAWS samples of one logit vector, each row with its own seed."""
  rows = [dataclasses.replace(params, seed=s) for s in range(DRAWS)]
  batch = jnp.asarray(np.tile(logits.astype(np.float32), (DRAWS, 1)))
  limit = len(logits) if vocab_size_limit is None else vocab_size_limit
  return np.asarray(decoding.sample(batch, decoding.RowSampling.of(rows), jnp.zeros(DRAWS, jnp.int32),
                                    jnp.int32(limit)))


@pytest.mark.parametrize("settings, allowed", [
    (dict(top_k=3), {0, 1, 2}),
    (dict(top_p=0.6), {0, 1, 2}),  # 0.30 + 0.20 < 0.6 <= 0.30 + 0.20 + 0.15
    (dict(top_p=0.45), {0, 1}),
    (dict(min_p=0.45), {0, 1, 2}),  # p >= 0.135
    (dict(top_k=4, top_p=0.9, min_p=0.3), {0, 1, 2, 3}),  # top_p of the top 4's renormalized 0.77 mass
    (dict(top_k=5, min_p=0.6), {0, 1}),  # p >= 0.18
])
def test_sampling_stays_in_its_set_with_the_renormalized_frequencies(settings, allowed):
  tokens = draw(LOGITS, decoding.SamplingParams(temperature=1.0, **settings))
  assert set(tokens.tolist()) == allowed
  probs = PROBS[sorted(allowed)] / PROBS[sorted(allowed)].sum()
  frequencies = np.bincount(tokens, minlength=len(LOGITS))[sorted(allowed)] / DRAWS
  np.testing.assert_allclose(frequencies, probs, atol=4 * np.sqrt(0.25 / DRAWS))


def test_temperature_sharpens_and_greedy_takes_the_argmax():
  hot = draw(LOGITS, decoding.SamplingParams(temperature=2.0))
  cold = draw(LOGITS, decoding.SamplingParams(temperature=0.25))
  assert np.mean(cold == 0) > 0.6 > np.mean(hot == 0)
  assert set(draw(LOGITS, decoding.GREEDY).tolist()) == {0}


def test_ids_beyond_the_vocabulary_limit_are_never_sampled():
  logits = np.concatenate([np.log(PROBS), [5.0, 6.0]])  # two padded embedding rows, the most likely of all
  assert set(draw(logits, decoding.GREEDY, vocab_size_limit=9).tolist()) == {0}
  assert max(draw(logits, decoding.SamplingParams(temperature=1.0), vocab_size_limit=9)) < 9
  config = tiny()
  params = init_params(config)
  prompts = prompts_of()
  limit = 40
  free = decoding.generate(params, config, prompts, max_tokens=30, **SMALL)
  assert max(t for c in free for t in c.token_ids) >= limit, "pick a prompt where the limit matters"
  limited = decoding.generate(params, config, prompts, decoding.SamplingParams(temperature=1.5, seed=3),
                              max_tokens=30, vocab_size_limit=limit, **SMALL)
  assert max(t for c in limited for t in c.token_ids) < limit


def hex_text(ids: list[int]) -> str:
  """A toy detokenizer: two characters per token, so stop strings can start and end inside tokens."""
  return "".join(f"{i:02x}" for i in ids)


def test_stop_strings_across_tokens_and_stop_tokens_end_requests():
  config = tiny()
  params = decoding.place_params(init_params(config), config)
  prompts = prompts_of()
  free = decoding.generate(params, config, prompts, max_tokens=NEW_TOKENS, **SMALL)
  text = hex_text(free[0].token_ids)
  stop = text[11:17]  # from inside the 6th token to inside the 9th
  start = text.find(stop)
  got = decoding.generate(params, config, prompts, [decoding.SamplingParams(temperature=0.0, stop=(stop,)),
                                                   decoding.GREEDY, decoding.GREEDY],
                          max_tokens=NEW_TOKENS, decode=hex_text, sync_every=3, **SMALL)
  assert got[0].finish_reason == "stop" and got[0].stop_reason == stop
  assert got[0].text == text[:start] and stop not in got[0].text
  assert got[0].token_ids == free[0].token_ids[:start // 2]
  assert [c.token_ids for c in got[1:]] == [c.token_ids for c in free[1:]], "other rows go on"
  assert got[1].text == hex_text(free[1].token_ids)

  stop_token = free[1].token_ids[7]
  first = free[1].token_ids.index(stop_token)
  got = decoding.generate(params, config, prompts, max_tokens=NEW_TOKENS, stop_token_ids=[stop_token], **SMALL)
  assert got[1].finish_reason == "stop" and got[1].stop_reason == stop_token
  assert got[1].token_ids == free[1].token_ids[:first]


def test_streamed_tokens_are_the_completion_and_a_cancelled_request_frees_its_row():
  config = tiny()
  params = decoding.place_params(init_params(config), config)
  prompts = prompts_of()
  free = decoding.generate(params, config, prompts, max_tokens=NEW_TOKENS, **SMALL)
  stop = hex_text(free[2].token_ids)[13:17]
  streamed: dict[int, list[int]] = {0: [], 1: [], 2: []}
  reasons: dict[int, list] = {0: [], 1: [], 2: []}

  def on_tokens(row, ids, finish_reason):
    assert reasons[row][-1:] != ["stop"] and reasons[row][-1:] != ["length"], "no call after the last"
    streamed[row] += ids
    reasons[row].append(finish_reason)
    return not (row == 1 and len(streamed[1]) >= 4)  # the client of request 1 goes away

  got = decoding.generate(params, config, prompts, max_tokens=NEW_TOKENS, stop=(stop,), decode=hex_text,
                          sync_every=2, on_tokens=on_tokens, **SMALL)
  assert got[1].finish_reason == "cancelled" and len(got[1].token_ids) < NEW_TOKENS
  assert got[1].token_ids == free[1].token_ids[:len(got[1].token_ids)]
  assert got[2].finish_reason == "stop" and got[2].stop_reason == stop
  for row in (0, 2):
    assert streamed[row] == got[row].token_ids
    assert reasons[row][-1] == got[row].finish_reason and set(reasons[row][:-1]) <= {None}
  assert streamed[1] == got[1].token_ids[:len(streamed[1])] and reasons[1][-1] is None


def test_per_request_max_tokens_and_argument_errors():
  config = tiny()
  params = decoding.place_params(init_params(config), config)
  prompts = prompts_of()
  got = decoding.generate(params, config, prompts, [decoding.SamplingParams(temperature=0.0, max_tokens=n)
                                                    for n in (3, 9, 1)], **SMALL)
  assert [len(c.token_ids) for c in got] == [3, 9, 1]
  with pytest.raises(ValueError, match="decode"):
    decoding.generate(params, config, prompts, max_tokens=4, stop=("ab",))
  with pytest.raises(ValueError, match="cache_len=32"):
    decoding.generate(params, config, prompts, max_tokens=4, cache_len=32)
  with pytest.raises(ValueError, match="vocab_size_limit"):
    decoding.generate(params, config, prompts, max_tokens=4, vocab_size_limit=VOCAB + 1)
  with pytest.raises(ValueError, match="at least one token"):
    decoding.generate(params, config, [[]], max_tokens=4)
  with pytest.raises(ValueError, match="top_p=0"):
    decoding.SamplingParams(top_p=0)


# --------------------------------------------------------------------------------------- transformers
@functools.lru_cache(maxsize=None)
def _transformers():
  transformers = pytest.importorskip("transformers")
  torch = pytest.importorskip("torch")
  return transformers, torch


@pytest.mark.parametrize("model_type, overrides", [
    ("llama", {"rope_theta": 5000.0}),
    ("mistral", {"sliding_window": 8, "tie_word_embeddings": True}),
])
def test_greedy_equals_transformers_generate(tmp_path, model_type, overrides):
  transformers, torch = _transformers()
  from xbook.model.hf import import_hf_checkpoint, load_params
  torch.manual_seed(0)
  hf_config = transformers.AutoConfig.for_model(
      model_type, vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
      num_attention_heads=8, num_key_value_heads=2, **overrides)
  model = transformers.AutoModelForCausalLM.from_config(hf_config).eval()
  with torch.no_grad():
    for name, param in model.named_parameters():
      if name.endswith("norm.weight"):
        param.uniform_(0.5, 1.5)
  model.save_pretrained(tmp_path / "hf")
  import_hf_checkpoint(tmp_path / "hf", tmp_path / "xbook")
  config, params, _ = load_params(tmp_path / "xbook")
  prompts = [np.random.default_rng(n).integers(0, 128, n).tolist() for n in (3, 11, 6)]
  got = decoding.generate(params, config, prompts, max_tokens=16, **SMALL)
  for prompt, completion in zip(prompts, got):
    with torch.no_grad():
      out = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                           max_new_tokens=16, do_sample=False, eos_token_id=None, pad_token_id=0)
    assert completion.token_ids == out[0, len(prompt):].tolist()
