"""Hugging Face Llama/Mistral checkpoints <-> xbook parameters (import and export)."""

from xbook.model.hf.checkpoint import load_params, save_params
from xbook.model.hf.config import SUPPORTED_MODEL_TYPES, config_from_hf, config_to_hf
from xbook.model.hf.convert import export_hf_checkpoint, import_hf_checkpoint

__all__ = ["SUPPORTED_MODEL_TYPES", "config_from_hf", "config_to_hf", "export_hf_checkpoint",
           "import_hf_checkpoint", "load_params", "save_params"]
