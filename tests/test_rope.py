"""RoPE frequencies and long-context scalings against the transformers reference implementation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import transformers
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

from xbook.model import DecoderConfig
from xbook.model.rope import RopeScaling, rope_frequencies, yarn_attention_factor

HEAD_DIM = 128


@pytest.mark.parametrize("rope_type, parameters, scaling", [
    ("default", {"rope_theta": 500000.0}, RopeScaling()),
    ("linear", {"rope_theta": 10000.0, "factor": 4.0}, RopeScaling("linear", 4.0)),
    ("llama3", {"rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192},
     RopeScaling("llama3", 8.0, original_max_position=8192, low_freq_factor=1.0, high_freq_factor=4.0)),
    ("yarn", {"rope_theta": 1000000.0, "factor": 4.0, "original_max_position_embeddings": 32768},
     RopeScaling("yarn", 4.0, original_max_position=32768)),
    ("yarn", {"rope_theta": 10000.0, "factor": 16.0, "original_max_position_embeddings": 4096,
              "beta_fast": 16.0, "beta_slow": 2.0},
     RopeScaling("yarn", 16.0, original_max_position=4096, beta_fast=16.0, beta_slow=2.0)),
    # The attention factor given, or set by mscale / mscale_all_dim (equal for Ministral 3: factor 1).
    ("yarn", {"rope_theta": 1000000.0, "factor": 16.0, "original_max_position_embeddings": 16384,
              "mscale": 1.0, "mscale_all_dim": 1.0},
     RopeScaling("yarn", 16.0, original_max_position=16384, attention_factor=1.0)),
    ("yarn", {"rope_theta": 10000.0, "factor": 40.0, "original_max_position_embeddings": 4096,
              "mscale": 0.707, "mscale_all_dim": 1.0},
     RopeScaling("yarn", 40.0, original_max_position=4096,
                 attention_factor=yarn_attention_factor(40.0, mscale=0.707, mscale_all_dim=1.0))),
    ("yarn", {"rope_theta": 10000.0, "factor": 4.0, "original_max_position_embeddings": 4096,
              "attention_factor": 1.5},
     RopeScaling("yarn", 4.0, original_max_position=4096, attention_factor=1.5)),
])
def test_frequencies_and_attention_factor_match_transformers(rope_type, parameters, scaling):
  config = transformers.LlamaConfig(hidden_size=HEAD_DIM * 4, num_attention_heads=4,
                                    max_position_embeddings=131072,
                                    rope_parameters={"rope_type": rope_type, **parameters})
  reference = LlamaRotaryEmbedding(config)  # the frequencies the transformers model itself uses
  got_freq, got_factor = rope_frequencies(HEAD_DIM, parameters["rope_theta"], scaling)
  np.testing.assert_allclose(got_freq, reference.inv_freq.numpy(), rtol=1e-6)
  assert got_factor == pytest.approx(reference.attention_scaling)


def test_ntk_scaling_raises_the_base():
  factor, theta = 8.0, 10000.0
  got, attention_factor = rope_frequencies(HEAD_DIM, theta, RopeScaling("ntk", factor))
  base = theta * factor ** (HEAD_DIM / (HEAD_DIM - 2))
  np.testing.assert_allclose(got, base ** -(np.arange(0, HEAD_DIM, 2) / HEAD_DIM), rtol=1e-12)
  assert attention_factor == 1.0
  # The highest frequency is kept; the lowest is stretched by about `factor`.
  plain, _ = rope_frequencies(HEAD_DIM, theta)
  assert plain[-1] / got[-1] == pytest.approx(factor, rel=0.05)
  assert math.isclose(got[0], plain[0])


def test_decoder_config_validates_the_scaling():
  assert DecoderConfig(vocab_size=8, rope_scaling="yarn", rope_factor=4.0).rope.kind == "yarn"
  with pytest.raises(ValueError, match="rope scaling 'rope3'"):
    DecoderConfig(vocab_size=8, rope_scaling="rope3")
  with pytest.raises(ValueError, match="factor must be positive"):
    DecoderConfig(vocab_size=8, rope_scaling="linear", rope_factor=0.0)
  with pytest.raises(ValueError, match="attention_factor=2.0 needs the 'yarn' scaling"):
    DecoderConfig(vocab_size=8, rope_scaling="linear", rope_factor=2.0, rope_attention_factor=2.0)
