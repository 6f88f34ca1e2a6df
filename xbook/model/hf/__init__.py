"""Hugging Face Llama/Mistral/Qwen2/Ministral 3 checkpoints <-> xbook parameters (import and export)."""

from xbook.model.hf.adapter import read_peft_adapter, read_peft_config, write_peft_adapter
from xbook.model.hf.checkpoint import ImportedWeights, load_params, save_params
from xbook.model.hf.config import (MULTIMODAL_MODEL_TYPES, SUPPORTED_MODEL_TYPES, config_from_hf, config_to_hf,
                                   default_max_position, default_model_type)
from xbook.model.hf.convert import export_hf_checkpoint, import_hf_checkpoint
from xbook.model.hf.writer import DTYPES, check_out_dir, parse_size, write_hf_checkpoint

__all__ = ["DTYPES", "MULTIMODAL_MODEL_TYPES", "SUPPORTED_MODEL_TYPES", "check_out_dir", "config_from_hf",
           "config_to_hf", "default_max_position", "default_model_type", "export_hf_checkpoint",
           "import_hf_checkpoint", "ImportedWeights", "load_params", "parse_size", "read_peft_adapter",
           "read_peft_config", "save_params", "write_hf_checkpoint", "write_peft_adapter"]
