"""Hugging Face `config.json` <-> DecoderConfig, for the architectures xbook's Decoder computes exactly.

Llama and Mistral have bias-free projections; Qwen2 adds biases to the query, key and value projections
(not to the output projection), which is DecoderConfig.attention_bias. Mistral's sliding window maps to
DecoderConfig.sliding_window (dense attention).
"""

from __future__ import annotations

from typing import Any

from xbook.model.config import DecoderConfig

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2")

_ARCHITECTURES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM",
                  "qwen2": "Qwen2ForCausalLM"}


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
  if model_type not in SUPPORTED_MODEL_TYPES:
    raise ValueError(f"model_type={model_type!r} is not supported; supported: {list(SUPPORTED_MODEL_TYPES)}")
  for field in ("attention_bias", "mlp_bias"):
    if config_json.get(field):
      raise ValueError(f"{field}=true is not supported: xbook's {model_type} projections have no biases")
  if config_json.get("hidden_act", "silu") != "silu":
    raise ValueError(f"hidden_act={config_json['hidden_act']!r} is not supported: xbook's MLP is SwiGLU (silu)")
  if model_type == "qwen2":
    if config_json.get("use_sliding_window"):
      raise ValueError("use_sliding_window=true is not supported for qwen2 (its window applies to some "
                       "layers only)")
    sliding_window = None
  else:
    sliding_window = config_json.get("sliding_window")
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
      sliding_window=sliding_window,
      attention_bias=model_type == "qwen2",
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
  if config.attention_bias != (model_type == "qwen2"):
    raise ValueError(f"attention_bias={config.attention_bias} cannot be written as {model_type}: only "
                     "qwen2 has query/key/value biases")
  if config.sliding_window is not None and model_type != "mistral":
    raise ValueError(f"sliding_window={config.sliding_window} can only be written as mistral")
  if model_type == "llama":
    config_json.update(attention_bias=False, mlp_bias=False)
  elif model_type == "mistral":
    config_json["sliding_window"] = config.sliding_window
  else:
    config_json.update(use_sliding_window=False, sliding_window=None,
                       max_window_layers=config.n_layers)
  return config_json
