"""Inference: loading trained runs and sampling from them."""

from xbook.infer.generate import LoadedRun, generate_passage, load_run, sample_tokens

__all__ = ["LoadedRun", "generate_passage", "load_run", "sample_tokens"]
