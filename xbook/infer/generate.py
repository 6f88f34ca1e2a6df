"""Sampling from a trained run: load its parameters and continue a trajectory from a prompt.

This decoder recomputes the whole (fixed-length, padded) window for every new token: simple and exact,
fine for short passages on small models. A KV cache and hierarchical book generation build on it.

A run's vocabulary is any that xbook.data.vocab.load_vocabulary reads (an xbook SentencePiece model, a
pretrained tokenizer.model, tokenizer.json or tekken.json). Generation feeds it as training did: the
prefix is encoded segment by segment (prompt_ids, with xbook.data.pieces.encode_segment), the first
input is the vocabulary's BOS, sampling stops at its EOS, and embedding rows beyond the tokenizer's
`size` (a padded embedding) are never sampled.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from xbook.data import pieces, trajectory
from xbook.data.vocab import Vocabulary
from xbook.infer import decode
from xbook.model import Decoder, abstract_params
from xbook.train import adapters
from xbook.train.checkpoints import RunCheckpoints
from xbook.train.run_info import RunInfo

log = logging.getLogger(__name__)


@dataclasses.dataclass
class LoadedRun:
  """A run's model, parameters (on one device, or placed on a mesh) and vocabulary, at `step`."""

  model: Decoder
  params: dict
  vocabulary: Vocabulary
  step: int


def load_run(run: RunInfo | str | os.PathLike[str], step: int | None = None, *,
             mesh: jax.sharding.Mesh | None = None, rules: Any = None) -> LoadedRun:
  """Restore a run's parameters (its latest checkpoint unless `step` is given) and load its vocabulary.

  `run` is the run's RunInfo (xbook.train.run_info), or its directory (local or gs://), read here. With a
  `mesh`, every parameter is restored straight onto it, sharded by its logical axes and `rules` (decoding's:
  xbook.infer.decode.inference_rules), so no host or device ever holds the whole model; else onto the first
  device. A LoRA run's adapters are merged into its recorded base once, here (xbook.train.adapters).

  Raises:
    FileNotFoundError: no model.json, or no checkpoint (of `step`).
    ValueError: a model.json that misstates a field, or a vocabulary larger than the model's embedding.
  """
  info = run if isinstance(run, RunInfo) else RunInfo.read(run)
  # Everything the record gives is taken here, at once: the vocabulary, the model, a LoRA run's base.
  vocabulary, config = info.load_vocabulary(), info.model
  lora_base = info.lora_base() if config.lora is not None else None
  checkpoints = RunCheckpoints(str(info.run_dir))
  try:
    step = step if step is not None else checkpoints.latest_step()
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {checkpoints.directory}")
    if mesh is None:
      target = abstract_params(config, jax.sharding.SingleDeviceSharding(jax.devices()[0]))
    else:
      target = abstract_params(config, mesh=mesh, rules=rules)
    if lora_base is not None:  # a LoRA run: its adapters merged into its base once, here
      params, config = adapters.load_merged(checkpoints, step, target, config, lora_base)
    else:
      params = checkpoints.restore(step, target)["params"]
  finally:
    checkpoints.close()
  log.info("loaded %s at step %d", info.run_dir, step)
  return LoadedRun(model=Decoder(config), params=params, vocabulary=vocabulary, step=step)


def prompt_prefix(prompt: str, vocabulary: Vocabulary) -> str:
  """The text of the start of a trajectory for a user's request: the prompt segment, then the premise
  marker, in the vocabulary's marker style (symbols for an xbook vocabulary, text tags for a pretrained
  one). Its ids are prompt_ids'."""
  markers, _ = trajectory.markers(vocabulary.marker_style)
  return f"{trajectory.make_segment('prompt', prompt, vocabulary.marker_style).text}{markers['premise']}"


def prompt_ids(prompt: str, vocabulary: Vocabulary) -> list[int]:
  """The ids of prompt_prefix(prompt), encoded as training encodes a trajectory: the prompt segment
  (xbook.data.pieces.encode_segment), then the premise marker on its own."""
  style = vocabulary.marker_style
  segment = trajectory.make_segment("prompt", prompt, style)
  return [*pieces.encode_segment(vocabulary.encode, segment),
          *vocabulary.encode(trajectory.markers(style)[0]["premise"])]


# The sampling window is padded to a multiple of this many tokens, so that requests of similar length
# share one compiled forward pass (positions after the one being predicted do not change its logits).
WINDOW_MULTIPLE = 128


@functools.partial(jax.jit, static_argnums=0)
def _next_logits(model: Decoder, params: dict, tokens: jax.Array, length: jax.Array, bos_id: jax.Array,
                 size: jax.Array) -> jax.Array:
  """Logits `[vocab]` of the token at position `length` of `tokens` `[1, window]` (later ones ignored),
  -inf for the ids at or beyond the tokenizer's `size` (embedding rows no token has)."""
  # Input at position i is the token before it; the vocabulary's BOS starts the sequence.
  inputs = jnp.concatenate([jnp.full((1, 1), bos_id, jnp.int32), tokens[:, :-1]], axis=1)
  positions = jnp.arange(tokens.shape[1])[None]
  segment_ids = (positions <= length).astype(jnp.int32)
  logits = model.apply({"params": params}, inputs, segment_ids, positions)[0, length]
  return jnp.where(jnp.arange(logits.shape[-1]) < size, logits, -jnp.inf)


def sample_tokens(run: LoadedRun, prefix_ids: list[int], *, max_new_tokens: int,
                  temperature: float = 0.8, top_k: int = 40, seed: int = 0) -> list[int]:
  """Continue `prefix_ids` by up to `max_new_tokens` tokens; stops at the vocabulary's EOS. temperature 0
  is greedy. Only ids below the vocabulary's `size` are sampled."""
  total = len(prefix_ids) + max_new_tokens
  window = -(-total // WINDOW_MULTIPLE) * WINDOW_MULTIPLE
  buffer = np.zeros((1, window), np.int32)
  buffer[0, :len(prefix_ids)] = prefix_ids

  rng = jax.random.key(seed)
  vocabulary = run.vocabulary
  generated: list[int] = []
  for length in range(len(prefix_ids), total):
    logits = _next_logits(run.model, run.params, jnp.asarray(buffer), length, vocabulary.bos_id,
                          vocabulary.size)
    if temperature <= 0:
      token = int(jnp.argmax(logits))
    else:
      rng, sub = jax.random.split(rng)
      top_values, top_ids = jax.lax.top_k(logits / temperature, min(top_k, logits.shape[-1]))
      token = int(top_ids[jax.random.categorical(sub, top_values)])
    if token == vocabulary.eos_id:
      break
    buffer[0, length] = token
    generated.append(token)
  return generated


def generate_passage(run: LoadedRun, prompt: str, *, max_new_tokens: int = 128,
                     temperature: float = 0.8, top_k: int = 40, seed: int = 0, mesh: jax.sharding.Mesh | None = None,
                     rules: Any = None) -> str:
  """Text the model writes after a user's prompt (markers included, so the plan levels show), with the
  KV-cache decoder (xbook.infer.decode); it stops at the vocabulary's EOS.

  Raises:
    ValueError: a sampling setting out of range (e.g. a negative temperature), naming it.
  """
  vocabulary = run.vocabulary
  sampling = decode.SamplingParams(temperature=temperature, top_k=top_k, seed=seed)
  [completion] = decode.generate(
      run.params, run.model.config, [[vocabulary.bos_id, *prompt_ids(prompt, vocabulary)]], sampling,
      max_tokens=max_new_tokens, stop_token_ids=[vocabulary.eos_id], vocab_size_limit=vocabulary.size,
      mesh=mesh, rules=rules)
  return vocabulary.decode(completion.token_ids)
