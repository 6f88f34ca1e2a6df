"""Sampling from a trained run: load its parameters and continue a trajectory from a prompt.

This decoder recomputes the whole (fixed-length, padded) window for every new token: simple and exact,
fine for short passages on small models. A KV cache and hierarchical book generation build on it.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import sentencepiece as spm
from etils import epath

from xbook.data import trajectory
from xbook.data.vocab import load_processor, marker_style
from xbook.model import Decoder, DecoderConfig
from xbook.train.checkpoints import RunCheckpoints

log = logging.getLogger(__name__)


@dataclasses.dataclass
class LoadedRun:
  """A run's model, parameters (on one device) and vocabulary, at `step`."""

  model: Decoder
  params: dict
  processor: spm.SentencePieceProcessor
  step: int


def load_run(run_dir: str | Path, step: int | None = None) -> LoadedRun:
  """Restore the parameters of `run_dir` (its latest checkpoint unless `step` is given)."""
  run_dir = epath.Path(run_dir)  # a local folder or gs://bucket/...
  info_path = run_dir / "model.json"
  if not info_path.is_file():
    raise FileNotFoundError(f"{info_path} not found: is {run_dir} a run directory made by `xbook train`?")
  info = json.loads(info_path.read_text(encoding="utf-8"))
  config = DecoderConfig(**info["model"])
  model = Decoder(config)
  checkpoints = RunCheckpoints(str(run_dir))
  step = step if step is not None else checkpoints.latest_step()
  if step is None:
    raise FileNotFoundError(f"no checkpoint in {checkpoints.directory}")
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  tokens = jnp.zeros((1, 8), jnp.int32)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), tokens, tokens + 1,
                                             jnp.arange(8)[None]))["params"]
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
                          nn.unbox(shapes))
  params = checkpoints.restore(step, abstract)["params"]
  checkpoints.close()
  log.info("loaded %s at step %d", run_dir, step)
  return LoadedRun(model=model, params=params, processor=load_processor(info["vocab_path"]), step=step)


def prompt_prefix(prompt: str, processor: spm.SentencePieceProcessor) -> str:
  """The start of a trajectory for a user's request: the prompt segment, then the premise marker, in
  the vocabulary's marker style (symbols for an xbook vocabulary, text tags for a pretrained one)."""
  markers, _ = trajectory.markers(marker_style(processor))
  return f"{markers['prompt']}{prompt.strip()}\n{markers['premise']}"


# The sampling window is padded to a multiple of this many tokens, so that requests of similar length
# share one compiled forward pass (positions after the one being predicted do not change its logits).
WINDOW_MULTIPLE = 128


@functools.partial(jax.jit, static_argnums=0)
def _next_logits(model: Decoder, params: dict, tokens: jax.Array, length: jax.Array) -> jax.Array:
  """Logits `[vocab]` of the token at position `length` of `tokens` `[1, window]` (later ones ignored)."""
  # Input at position i is the token before it; BOS (0) starts the sequence.
  inputs = jnp.concatenate([jnp.zeros((1, 1), jnp.int32), tokens[:, :-1]], axis=1)
  positions = jnp.arange(tokens.shape[1])[None]
  segment_ids = (positions <= length).astype(jnp.int32)
  logits = model.apply({"params": params}, inputs, segment_ids, positions)
  return logits[0, length]


def sample_tokens(run: LoadedRun, prefix_ids: list[int], *, max_new_tokens: int,
                  temperature: float = 0.8, top_k: int = 40, seed: int = 0) -> list[int]:
  """Continue `prefix_ids` by up to `max_new_tokens` tokens; stops at EOS. temperature 0 is greedy."""
  total = len(prefix_ids) + max_new_tokens
  window = -(-total // WINDOW_MULTIPLE) * WINDOW_MULTIPLE
  buffer = np.zeros((1, window), np.int32)
  buffer[0, :len(prefix_ids)] = prefix_ids

  rng = jax.random.key(seed)
  generated: list[int] = []
  for length in range(len(prefix_ids), total):
    logits = _next_logits(run.model, run.params, jnp.asarray(buffer), length)
    if temperature <= 0:
      token = int(jnp.argmax(logits))
    else:
      rng, sub = jax.random.split(rng)
      top_values, top_ids = jax.lax.top_k(logits / temperature, min(top_k, logits.shape[-1]))
      token = int(top_ids[jax.random.categorical(sub, top_values)])
    if token == run.processor.eos_id():
      break
    buffer[0, length] = token
    generated.append(token)
  return generated


def generate_passage(run: LoadedRun, prompt: str, *, max_new_tokens: int = 128,
                     temperature: float = 0.8, top_k: int = 40, seed: int = 0) -> str:
  """Text the model writes after a user's prompt (markers included, so the plan levels show)."""
  prefix = prompt_prefix(prompt, run.processor)
  ids = sample_tokens(run, run.processor.encode(prefix), max_new_tokens=max_new_tokens,
                      temperature=temperature, top_k=top_k, seed=seed)
  return run.processor.decode(ids)
