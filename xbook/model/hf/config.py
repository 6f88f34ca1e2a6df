"""Hugging Face `config.json` <-> DecoderConfig, for the architectures xbook's Decoder computes exactly.

Llama and Mistral have bias-free projections; Qwen2 adds biases to the query, key and value projections
(not to the output projection), which is DecoderConfig.attention_bias. Mistral's sliding window maps to
DecoderConfig.sliding_window (dense attention). Ministral 3 is Mistral with YaRN whose attention factor is
set by `mscale`/`mscale_all_dim` (DecoderConfig.rope_attention_factor) and position-dependent query
scaling (`llama_4_scaling_beta`: DecoderConfig.query_scale_beta). Its checkpoints are multimodal
(`model_type: mistral3`, the text model's config under `text_config` beside a `vision_config`); only the
language model is read.
"""

from __future__ import annotations

import logging
from typing import Any

from xbook.model.config import DecoderConfig
from xbook.model.rope import yarn_attention_factor

log = logging.getLogger(__name__)

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "ministral3")

# Multimodal wrappers whose language model (`text_config`) xbook reads; the vision tower is skipped.
MULTIMODAL_MODEL_TYPES = ("mistral3",)

# transformers' Mistral3Config.tie_word_embeddings default: the wrapper's flag, not text_config's, decides
# whether lm_head is tied (PreTrainedModel.get_expanded_tied_weights_keys reads the top-level config).
_MULTIMODAL_TIE_DEFAULT = {"mistral3": True}

_ARCHITECTURES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM",
                  "qwen2": "Qwen2ForCausalLM", "ministral3": "Ministral3ForCausalLM"}


def _required(config_json: dict[str, Any], field: str) -> Any:
  if config_json.get(field) is None:
    raise ValueError(f"config.json has no {field!r}")
  return config_json[field]


def text_config(config_json: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
  """The language model's config of a checkpoint, and the multimodal wrapper's model_type (or None).

  A wrapper's `text_config` is returned with the wrapper's `tie_word_embeddings` (which is what
  transformers ties by); its `vision_config` is ignored (logged).

  Raises:
    ValueError: a quantized checkpoint (`quantization_config`), or a wrapper without `text_config`.
  """
  quantization = config_json.get("quantization_config")
  if quantization:
    method = quantization.get("quant_method", "?") if isinstance(quantization, dict) else "?"
    raise ValueError(f"config.json has quantization_config (quant_method={method!r}): xbook imports "
                     "unquantized weights only; use the checkpoint's bf16/fp32 release or dequantize it first")
  wrapper = config_json.get("model_type")
  if wrapper not in MULTIMODAL_MODEL_TYPES:
    return config_json, None
  if not isinstance(config_json.get("text_config"), dict):
    raise ValueError(f"config.json of model_type={wrapper!r} has no 'text_config' (the language model)")
  text = dict(config_json["text_config"])
  text["tie_word_embeddings"] = config_json.get("tie_word_embeddings", _MULTIMODAL_TIE_DEFAULT[wrapper])
  if config_json.get("vision_config") is not None:
    log.info("%s checkpoint: reading its language model (%s); skipping the vision tower (%s) and the "
             "multimodal projector", wrapper, text.get("model_type"),
             config_json["vision_config"].get("model_type", "vision_config"))
  return text, wrapper


# HF rope_type -> xbook rope_scaling kind; "dynamic" (runtime NTK) and "longrope" have no xbook equivalent.
_ROPE_TYPES = {"default": "none", "linear": "linear", "yarn": "yarn", "llama3": "llama3"}
_ROPE_FIELDS = {"factor": "rope_factor", "original_max_position_embeddings": "rope_original_max_position",
                "low_freq_factor": "rope_low_freq_factor", "high_freq_factor": "rope_high_freq_factor",
                "beta_fast": "rope_beta_fast", "beta_slow": "rope_beta_slow"}
_ROPE_FIELDS_OF = {"none": (), "linear": ("factor",),
                   "yarn": ("factor", "original_max_position_embeddings", "beta_fast", "beta_slow"),
                   "llama3": ("factor", "original_max_position_embeddings", "low_freq_factor",
                              "high_freq_factor")}
_ATTENTION_FACTOR_FIELDS = ("attention_factor", "mscale", "mscale_all_dim")


def _rope_parameters_of(config_json: dict[str, Any]) -> dict[str, Any]:
  """transformers >= 5 writes `rope_parameters: {rope_type, rope_theta, ...}`; earlier versions write a
  top-level `rope_theta` and `rope_scaling: {type|rope_type, factor, ...}` (null when unscaled)."""
  return dict(config_json.get("rope_parameters") or config_json.get("rope_scaling") or {})


def _rope(config_json: dict[str, Any]) -> dict[str, Any]:
  """The DecoderConfig rope fields of a checkpoint."""
  parameters = _rope_parameters_of(config_json)
  rope_type = parameters.get("rope_type", parameters.get("type", "default"))
  if rope_type not in _ROPE_TYPES:
    raise ValueError(f"rope_type={rope_type!r} is not supported; supported: {sorted(_ROPE_TYPES)}")
  kind = _ROPE_TYPES[rope_type]
  if kind != "yarn":
    for field in _ATTENTION_FACTOR_FIELDS:
      if parameters.get(field) is not None:
        raise ValueError(f"rope parameter {field}={parameters[field]} is not supported with "
                         f"rope_type={rope_type!r} (only yarn has an attention factor)")
  fields = {"rope_theta": float(parameters.get("rope_theta", config_json.get("rope_theta", 10_000.0))),
            "rope_scaling": kind}
  if kind in ("yarn", "llama3") and parameters.get("original_max_position_embeddings") is None:
    parameters["original_max_position_embeddings"] = _required(config_json, "max_position_embeddings")
  for name in _ROPE_FIELDS_OF[kind]:
    if parameters.get(name) is not None:
      fields[_ROPE_FIELDS[name]] = parameters[name]
    elif name == "factor":
      raise ValueError(f"rope_type={rope_type!r} needs a 'factor'")
  if kind == "yarn":
    if parameters.get("truncate", True) is False:
      raise ValueError("rope parameter truncate=false is not supported: xbook's YaRN rounds the "
                       "correction range (truncate=true, the default)")
    factor = float(parameters["factor"])
    given = yarn_attention_factor(factor, *(parameters.get(f) for f in _ATTENTION_FACTOR_FIELDS))
    if given != yarn_attention_factor(factor):  # keep the default as None: plain YaRN configs unchanged
      fields["rope_attention_factor"] = given
  return fields


def _query_scale(config_json: dict[str, Any], model_type: str) -> dict[str, Any]:
  """Ministral 3's query scaling: transformers' Ministral3Attention reads `llama_4_scaling_beta` and
  `original_max_position_embeddings` from rope_parameters (other architectures ignore them)."""
  if model_type != "ministral3":
    return {}
  parameters = _rope_parameters_of(config_json)
  beta = parameters.get("llama_4_scaling_beta")
  if not beta:
    return {}
  period = parameters.get("original_max_position_embeddings")
  if period is None:
    raise ValueError("rope_parameters.llama_4_scaling_beta is set but rope_parameters has no "
                     "'original_max_position_embeddings' (the period of the query scaling)")
  return {"query_scale_beta": float(beta), "query_scale_period": int(period)}


def config_from_hf(config_json: dict[str, Any]) -> DecoderConfig:
  """The DecoderConfig of a Hugging Face Llama, Mistral, Qwen2 or Ministral 3 model.

  Args:
    config_json: the parsed `config.json` of the checkpoint; a multimodal wrapper (MULTIMODAL_MODEL_TYPES)
      is read through its `text_config`.

  Returns:
    A DecoderConfig with float32 parameters and compute, layers scanned (the layout of
    xbook.model.hf.layout).

  Raises:
    ValueError: an unsupported `model_type`, or a feature the Decoder does not compute (named by its
      field: attention_bias, mlp_bias, hidden_act, rope scaling, sliding_window, quantization_config), or
      a missing field.
  """
  config_json, _ = text_config(config_json)
  model_type = config_json.get("model_type")
  if model_type not in SUPPORTED_MODEL_TYPES:
    raise ValueError(f"model_type={model_type!r} is not supported; supported: {list(SUPPORTED_MODEL_TYPES)} "
                     f"and the multimodal {list(MULTIMODAL_MODEL_TYPES)} (their language model)")
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
      **_query_scale(config_json, model_type),
      norm_eps=float(config_json.get("rms_norm_eps", 1e-6)),
      tie_embeddings=bool(config_json.get("tie_word_embeddings", False)),
      sliding_window=sliding_window,
      attention_bias=model_type == "qwen2",
  )


def default_model_type(config: DecoderConfig) -> str:
  """The architecture that writes `config` with the fewest surprises: qwen2 for query/key/value biases,
  ministral3 for query scaling, mistral for a sliding window, else llama."""
  if config.attention_bias:
    return "qwen2"
  if config.query_scale_beta:
    return "ministral3"
  return "mistral" if config.sliding_window is not None else "llama"


def _rope_parameters(config: DecoderConfig, model_type: str) -> dict[str, Any]:
  kinds = {kind: rope_type for rope_type, kind in _ROPE_TYPES.items()}
  if config.rope_scaling not in kinds:
    raise ValueError(f"rope_scaling={config.rope_scaling!r} has no Hugging Face equivalent")
  parameters = {"rope_type": kinds[config.rope_scaling], "rope_theta": config.rope_theta}
  for name in _ROPE_FIELDS_OF[config.rope_scaling]:
    parameters[name] = getattr(config, _ROPE_FIELDS[name])
  if config.rope_attention_factor is not None:
    if config.rope_attention_factor == 1.0:
      # Ministral 3's form: equal mscale and mscale_all_dim give a factor of 1.
      parameters.update(mscale=1.0, mscale_all_dim=1.0)
    else:
      parameters["attention_factor"] = config.rope_attention_factor
  if config.query_scale_beta:
    if model_type != "ministral3":
      raise ValueError(f"query_scale_beta={config.query_scale_beta} cannot be written as {model_type}: "
                       "only ministral3 scales queries by position (--model_type ministral3)")
    period = parameters.setdefault("original_max_position_embeddings", config.query_scale_period)
    if period != config.query_scale_period:
      raise ValueError(f"query_scale_period={config.query_scale_period} differs from "
                       f"rope_original_max_position={period}: ministral3 uses one value for both")
    parameters["llama_4_scaling_beta"] = config.query_scale_beta
  return parameters


def default_max_position(config: DecoderConfig) -> int | None:
  """The context a scaled RoPE was made for (original x factor, yarn and llama3), else None."""
  if config.rope_scaling in ("yarn", "llama3"):
    return int(config.rope_original_max_position * config.rope_factor)
  return None


def config_to_hf(config: DecoderConfig, model_type: str = "llama") -> dict[str, Any]:
  """The `config.json` of `config` as a Hugging Face `model_type` model (readable by transformers 4 and 5;
  ministral3 by transformers >= 5).

  `max_position_embeddings` is the scaled context of a yarn or llama3 RoPE, and absent otherwise (the
  caller sets it); token ids are the caller's to add.

  Raises:
    ValueError: `model_type` is not one of SUPPORTED_MODEL_TYPES, or cannot express a feature of
      `config` (named by its field, with the model_type that can).
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
      "rope_parameters": _rope_parameters(config, model_type),
      "tie_word_embeddings": config.tie_embeddings,
      "torch_dtype": config.param_dtype,
  }
  if default_max_position(config) is not None:
    config_json["max_position_embeddings"] = default_max_position(config)
  if config.attention_bias != (model_type == "qwen2"):
    raise ValueError(f"attention_bias={config.attention_bias} cannot be written as {model_type}: only "
                     "qwen2 has query/key/value biases")
  if config.sliding_window is not None and model_type not in ("mistral", "ministral3"):
    raise ValueError(f"sliding_window={config.sliding_window} can only be written as mistral or ministral3")
  if model_type == "llama":
    config_json.update(attention_bias=False, mlp_bias=False)
  elif model_type in ("mistral", "ministral3"):
    config_json["sliding_window"] = config.sliding_window
  else:
    config_json.update(use_sliding_window=False, sliding_window=None,
                       max_window_layers=config.n_layers)
  if config.query_scale_beta:
    # transformers reads rope_parameters.llama_4_scaling_beta (above). vLLM's Mistral model is reported
    # to read this top-level form instead (model_executor/models/mistral.py; vLLM does not install here,
    # so unverified); transformers keeps it as an inert attribute.
    config_json["llama_4_scaling"] = {"beta": config.query_scale_beta,
                                      "original_max_position_embeddings": config.query_scale_period}
  return config_json
