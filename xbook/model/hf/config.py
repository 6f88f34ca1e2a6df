"""Hugging Face `config.json` <-> DecoderConfig, for the architectures xbook's Decoder computes exactly."""

from __future__ import annotations

from typing import Any

from xbook.model.config import DecoderConfig

SUPPORTED_MODEL_TYPES = ("llama", "mistral")

_ARCHITECTURES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM"}


def _required(config_json: dict[str, Any], field: str) -> Any:
  if config_json.get(field) is None:
    raise ValueError(f"config.json has no {field!r}")
  return config_json[field]


def _rope_theta(config_json: dict[str, Any]) -> float:
  """The rotary base, refusing any scaled RoPE (xbook computes plain rotate-half RoPE only).

  transformers >= 5 writes `rope_parameters: {rope_type, rope_theta}`; earlier versions write a top-level
  `rope_theta` and `rope_scaling` (null when unscaled).
  """
  parameters = config_json.get("rope_parameters")
  if parameters is not None:
    if parameters.get("rope_type", "default") != "default":
      raise ValueError(f"rope_parameters.rope_type={parameters['rope_type']!r} is not supported: xbook "
                       "computes unscaled RoPE only (rope_type 'default')")
    return float(parameters.get("rope_theta", config_json.get("rope_theta", 10_000.0)))
  scaling = config_json.get("rope_scaling")
  if scaling is not None and scaling.get("rope_type", scaling.get("type")) != "default":
    raise ValueError(f"rope_scaling={scaling!r} is not supported: xbook computes unscaled RoPE only")
  return float(config_json.get("rope_theta", 10_000.0))


def config_from_hf(config_json: dict[str, Any]) -> DecoderConfig:
  """The DecoderConfig of a Hugging Face Llama or Mistral model.

  Args:
    config_json: the parsed `config.json` of the checkpoint.

  Returns:
    A DecoderConfig with float32 parameters and compute, layers scanned (the layout of
    xbook.model.hf.layout).

  Raises:
    ValueError: an unsupported `model_type`, or a feature the Decoder does not compute (named by its
      field: attention_bias, mlp_bias, hidden_act, rope scaling, sliding_window), or a missing field.
  """
  model_type = config_json.get("model_type")
  if model_type == "qwen2":
    raise ValueError("model_type='qwen2' is not supported: its q/k/v projections have biases and "
                     "xbook's attention has no biases yet")
  if model_type not in SUPPORTED_MODEL_TYPES:
    raise ValueError(f"model_type={model_type!r} is not supported; supported: {list(SUPPORTED_MODEL_TYPES)}")
  for field in ("attention_bias", "mlp_bias"):
    if config_json.get(field):
      raise ValueError(f"{field}=true is not supported: xbook's projections have no biases")
  if config_json.get("hidden_act", "silu") != "silu":
    raise ValueError(f"hidden_act={config_json['hidden_act']!r} is not supported: xbook's MLP is SwiGLU (silu)")
  if config_json.get("sliding_window") is not None:
    raise ValueError(f"sliding_window={config_json['sliding_window']} is not supported: xbook's attention "
                     "is full causal attention, it has no sliding window")
  n_heads = _required(config_json, "num_attention_heads")
  d_model = _required(config_json, "hidden_size")
  return DecoderConfig(
      vocab_size=_required(config_json, "vocab_size"),
      d_model=d_model,
      n_layers=_required(config_json, "num_hidden_layers"),
      n_heads=n_heads,
      n_kv_heads=config_json.get("num_key_value_heads") or n_heads,
      head_dim=config_json.get("head_dim") or d_model // n_heads,
      mlp_dim=_required(config_json, "intermediate_size"),
      rope_theta=_rope_theta(config_json),
      norm_eps=float(config_json.get("rms_norm_eps", 1e-6)),
      tie_embeddings=bool(config_json.get("tie_word_embeddings", False)),
  )


def config_to_hf(config: DecoderConfig, model_type: str = "llama") -> dict[str, Any]:
  """The `config.json` of `config` as a Hugging Face `model_type` model (readable by transformers 4 and 5).

  Raises:
    ValueError: `model_type` is not one of SUPPORTED_MODEL_TYPES.
  """
  if model_type not in SUPPORTED_MODEL_TYPES:
    raise ValueError(f"model_type={model_type!r} is not supported; supported: {list(SUPPORTED_MODEL_TYPES)}")
  config_json = {
      "architectures": [_ARCHITECTURES[model_type]],
      "model_type": model_type,
      "vocab_size": config.vocab_size,
      "hidden_size": config.d_model,
      "num_hidden_layers": config.n_layers,
      "num_attention_heads": config.n_heads,
      "num_key_value_heads": config.n_kv_heads,
      "head_dim": config.head_dim,
      "intermediate_size": config.mlp_dim,
      "hidden_act": "silu",
      "rms_norm_eps": config.norm_eps,
      "rope_theta": config.rope_theta,
      "rope_scaling": None,
      "rope_parameters": {"rope_type": "default", "rope_theta": config.rope_theta},
      "tie_word_embeddings": config.tie_embeddings,
      "torch_dtype": config.param_dtype,
  }
  if model_type == "llama":
    config_json.update(attention_bias=False, mlp_bias=False)
  else:
    config_json["sliding_window"] = None
  return config_json
