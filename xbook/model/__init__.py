"""Flax decoder (Llama/Mistral family) and its attention implementations."""

from xbook.model.attention import ATTENTION_IMPLS, dense_attention, get_attention
from xbook.model.config import DecoderConfig
from xbook.model.decoder import Decoder, abstract_params, param_shapes
from xbook.model.lora import LoraConfig

__all__ = ["ATTENTION_IMPLS", "Decoder", "DecoderConfig", "LoraConfig", "abstract_params", "dense_attention",
           "get_attention", "param_shapes"]
