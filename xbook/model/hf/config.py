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


# HF rope_type -> xbook rope_scaling kind; "dynamic" (runtime NTK) and "longrope" have no xbook equivalent.
_ROPE_TYPES = {"default": "none", "linear": "linear", "yarn": "yarn", "llama3": "llama3"}
_ROPE_FIELDS = {"factor": "rope_factor", "original_max_position_embeddings": "rope_original_max_position",
                "low_freq_factor": "rope_low_freq_factor", "high_freq_factor": "rope_high_freq_factor",
                "beta_fast": "rope_beta_fast", "beta_slow": "rope_beta_slow"}
_ROPE_FIELDS_OF = {"none": (), "linear": ("factor",),
                   "yarn": ("factor", "original_max_position_embeddings", "beta_fast", "beta_slow"),
                   "llama3": ("factor", "original_max_position_embeddings", "low_freq_factor",
                              "high_freq_factor")}


def _rope(config_json: dict[str, Any]) -> dict[str, Any]:
  """The DecoderConfig rope fields of a checkpoint.

  transformers >= 5 writes `rope_parameters: {rope_type, rope_theta, ...}`; earlier versions write a
  top-level `rope_theta` and `rope_scaling: {type|rope_type, factor, ...}` (null when unscaled).
  """
  parameters = dict(config_json.get("rope_parameters") or config_json.get("rope_scaling") or {})
  rope_type = parameters.get("rope_type", parameters.get("type", "default"))
  if rope_type not in _ROPE_TYPES:
    raise ValueError(f"rope_type={rope_type!r} is not supported; supported: {sorted(_ROPE_TYPES)}")
  for field in ("attention_factor", "mscale", "mscale_all_dim"):
    if parameters.get(field) is not None:
      raise ValueError(f"rope parameter {field}={parameters[field]} is not supported: xbook's YaRN uses "
                       "the temperature 0.1 ln(factor) + 1")
  kind = _ROPE_TYPES[rope_type]
  fields = {"rope_theta": float(parameters.get("rope_theta", config_json.get("rope_theta", 10_000.0))),
            "rope_scaling": kind}
  if kind in ("yarn", "llama3") and parameters.get("original_max_position_embeddings") is None:
    parameters["original_max_position_embeddings"] = _required(config_json, "max_position_embeddings")
  for name in _ROPE_FIELDS_OF[kind]:
    if parameters.get(name) is not None:
      fields[_ROPE_FIELDS[name]] = parameters[name]
    elif name == "factor":
      raise ValueError(f"rope_type={rope_type!r} needs a 'factor'")
  return fields


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
      **_rope(config_json),
      norm_eps=float(config_json.get("rms_norm_eps", 1e-6)),
      tie_embeddings=bool(config_json.get("tie_word_embeddings", False)),
      sliding_window=sliding_window,
      attention_bias=model_type == "qwen2",
  )


def _rope_parameters(config: DecoderConfig) -> dict[str, Any]:
  kinds = {kind: rope_type for rope_type, kind in _ROPE_TYPES.items()}
  if config.rope_scaling not in kinds:
    raise ValueError(f"rope_scaling={config.rope_scaling!r} has no Hugging Face equivalent")
  parameters = {"rope_type": kinds[config.rope_scaling], "rope_theta": config.rope_theta}
  for name in _ROPE_FIELDS_OF[config.rope_scaling]:
    parameters[name] = getattr(config, _ROPE_FIELDS[name])
  return parameters


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
      "rope_parameters": _rope_parameters(config),
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
