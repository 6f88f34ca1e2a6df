"""Export a trained run as a Hugging Face checkpoint that transformers and vLLM load as they are.

`export_run` restores one checkpoint's parameters on the host (in the export dtype when it is narrower
than the stored one, so a bf16 export never holds a float32 copy), writes them with
xbook.model.hf.write_hf_checkpoint (sharded safetensors, index, config.json, generation_config.json) and
copies the run's tokenizer files beside them:

  vocab_path names       copied as
  an xbook `*.model`     tokenizer.model, plus a tokenizer_config.json written for it (transformers'
                         generic TokenizersBackend builds the tokenizer from the SentencePiece proto;
                         it encodes exactly as sentencepiece does)
  one of TOKENIZER_FILES every one of TOKENIZER_FILES in its folder (a pretrained model's tokenizer)
  a folder               every one of TOKENIZER_FILES in it

Token ids (config.json, generation_config.json) are the vocabulary's: `xbook.data.vocab.load_vocabulary`
when it exists (its `bos_id` is the first input the run was trained with), else those of the
SentencePiece model. The files are copied here rather than with `Vocabulary.save`, which keeps the names
xbook loads (`vocab.model`), not the ones transformers looks for (`tokenizer.model`). xbook vocabularies have no BOS of their own; training starts every input with id 0
(the pad piece), so that is the exported BOS, and the written tokenizer_config.json adds it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Any

import jax
import jax.numpy as jnp
from etils import epath

from xbook.data.vocab import load_vocabulary
from xbook.model import DecoderConfig, abstract_params
from xbook.model.hf import (DTYPES, check_out_dir, default_max_position, default_model_type,
                            write_hf_checkpoint)
from xbook.model.hf.adapter import write_peft_adapter
from xbook.train import adapters
from xbook.train.checkpoints import RunCheckpoints
from xbook.train.run_info import RunInfo

log = logging.getLogger(__name__)

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tekken.json",
                   "tokenizer.model")


@dataclasses.dataclass(frozen=True)
class RunExport:
  """What `export_run` wrote: the folder, the checkpoint step, the architecture, dtype and files."""

  out_dir: str
  step: int
  model_type: str
  dtype: str
  files: list[str]


def _restore_params(run: RunInfo, step: int | None, dtype: str, *,
                    adapters_only: bool = False) -> tuple[dict[str, Any], int, DecoderConfig]:
  """(parameters, step, their DecoderConfig) of the run's checkpoint `step` (default the latest) on the host
  CPU, cast by Orbax on read to `dtype` where that is narrower than the parameters' own.

  A LoRA run's are its adapters merged into its base (xbook.train.adapters, read in the base's own
  dtype, which its fingerprint is checked in), with the base's DecoderConfig; with `adapters_only`, its
  adapters and its own DecoderConfig."""
  config = run.model
  checkpoints = RunCheckpoints(str(run.run_dir))
  try:
    steps = checkpoints.all_steps()
    if not steps:
      raise FileNotFoundError(f"no checkpoint in {checkpoints.directory}")
    step = steps[-1] if step is None else step
    if step not in steps:
      raise FileNotFoundError(f"--step {step}: {checkpoints.directory} has the steps {steps}")
    stored, wanted = jnp.dtype(config.param_dtype), jnp.dtype(dtype)
    read_as = wanted if wanted.itemsize < stored.itemsize and config.lora is None else stored
    cpu = jax.sharding.SingleDeviceSharding(jax.devices("cpu")[0])
    target = abstract_params(config, cpu, dtype=read_as)
    if config.lora is None:
      params = checkpoints.restore(step, target)["params"]
    elif adapters_only:
      params = adapters.restore_adapters(checkpoints, step, target)
    else:
      params, config = adapters.load_merged(checkpoints, step, target, config, run.lora_base())
  finally:
    checkpoints.close()
  return params, step, config


def _tokenizer_files(vocab: epath.Path) -> dict[str, bytes]:
  """{HF file name: content} of the run's tokenizer (module docstring: which files)."""
  if vocab.is_dir():
    folder = vocab
  elif vocab.name in TOKENIZER_FILES:
    folder = vocab.parent
  elif vocab.name.endswith(".model"):
    return {"tokenizer.model": vocab.read_bytes()}
  else:
    raise ValueError(f"vocab_path {vocab}: not a SentencePiece .model, nor one of {TOKENIZER_FILES}")
  files = {name: (folder / name).read_bytes() for name in TOKENIZER_FILES if (folder / name).is_file()}
  if not files:
    raise FileNotFoundError(f"vocab_path {vocab}: none of {TOKENIZER_FILES} found in {folder}")
  return files


def _sentencepiece_ids(data: bytes) -> dict[str, Any]:
  """Special ids and pieces of a SentencePiece model: BOS its own, else 0 for an xbook vocabulary (pad 0,
  what training starts inputs with), else its EOS (as xbook.data.vocab does for pretrained models)."""
  import sentencepiece as spm
  processor = spm.SentencePieceProcessor(model_proto=data)
  ids = {"bos": processor.bos_id(), "eos": processor.eos_id(), "pad": processor.pad_id(),
         "unk": processor.unk_id()}
  if ids["bos"] < 0:
    ids["bos"] = 0 if ids["pad"] == 0 else ids["eos"]
  return {name: (i, processor.id_to_piece(i)) if i >= 0 else (None, None) for name, i in ids.items()}


def _token_ids(vocab: epath.Path, files: dict[str, bytes]) -> dict[str, int | None]:
  """bos/eos/pad ids for config.json: the vocabulary's, as training used them (module docstring)."""
  if vocab.is_dir():
    vocab = next((vocab / name for name in ("tokenizer.json", "tekken.json", "tokenizer.model")
                  if (vocab / name).is_file()), vocab)
  if vocab.is_file():
    vocabulary = load_vocabulary(os.fspath(vocab))
    return {"bos_token_id": vocabulary.bos_id, "eos_token_id": vocabulary.eos_id,
            "pad_token_id": vocabulary.pad_id}
  if "tokenizer.model" not in files:
    log.warning("no token ids for config.json: cannot read the vocabulary at %s", vocab)
    return {}
  ids = _sentencepiece_ids(files["tokenizer.model"])
  return {f"{name}_token_id": ids[name][0] for name in ("bos", "eos", "pad")}


def _sentencepiece_tokenizer_config(data: bytes) -> bytes:
  """tokenizer_config.json for a lone tokenizer.model: transformers' TokenizersBackend converts the proto
  (normalizer, byte fallback, user-defined markers as they are) and adds the BOS training starts with."""
  pieces = _sentencepiece_ids(data)
  config = {"tokenizer_class": "TokenizersBackend", "add_bos_token": True, "add_eos_token": False,
            "clean_up_tokenization_spaces": False}
  config.update({f"{name}_token": piece for name, (_, piece) in pieces.items() if piece is not None})
  return (json.dumps(config, indent=2) + "\n").encode()


def export_run(run_dir: RunInfo | str | os.PathLike[str], out_dir: str | os.PathLike[str], *, step: int | None = None,
               dtype: str = "bfloat16", model_type: str | None = None, max_shard_size: str | int = "5GB",
               max_position_embeddings: int | None = None, overwrite: bool = False,
               adapter: bool = False) -> RunExport:
  """Write a trained run as a Hugging Face checkpoint folder with its tokenizer; a LoRA run's adapters
  merged into its base (the base read from the folder its model.json records), or with `adapter`, its
  adapters alone as a peft adapter folder (xbook.model.hf.adapter; no tokenizer, no base weights).

  Args:
    run_dir: a run (its xbook.train.run_info.RunInfo, or its directory written by `xbook train`, local or
      gs://: model.json, checkpoints/).
    out_dir: the new local folder (absent or empty, unless `overwrite`).
    step: the checkpoint to export; default the latest.
    dtype: of the written tensors: "bfloat16" (default), "float16" or "float32".
    model_type: the architecture written (xbook.model.hf.SUPPORTED_MODEL_TYPES); default the one the
      run's weights were imported from (model.json's `started_from`), else `default_model_type` of
      the run's DecoderConfig.
    max_shard_size: the most bytes per safetensors file ("5GB", "500MB", ...).
    max_position_embeddings: config.json's context; default the scaled RoPE's context (yarn, llama3),
      else the run's training length (RunInfo.seq_len).
    overwrite: replace a non-empty `out_dir`.
    adapter: write a LoRA run's adapters as a peft folder (adapter_config.json,
      adapter_model.safetensors) that peft.PeftModel.from_pretrained loads onto the base.

  Raises:
    FileNotFoundError: no model.json, no checkpoint (or not `step`), or no tokenizer file.
    FileExistsError: `out_dir` is not empty and `overwrite` is false.
    ValueError: a dtype, shard size or model_type that cannot be written.
  """
  if dtype not in DTYPES:
    raise ValueError(f"dtype={dtype!r}; expected one of {DTYPES}")
  check_out_dir(out_dir, overwrite)  # fail before restoring anything
  run = run_dir if isinstance(run_dir, RunInfo) else RunInfo.read(run_dir)
  if adapter:
    return _export_adapter(run, out_dir, step=step, dtype=dtype, overwrite=overwrite)
  config = adapters.base_config(run.model)
  # The architecture the run's weights were imported from, when it was warm-started from imported weights.
  model_type = (model_type or (run.started_from or {}).get("hf_model_type") or default_model_type(config))
  files = _tokenizer_files(run.vocab_path)
  if "tokenizer.model" in files and not {"tokenizer.json", "tokenizer_config.json"} & files.keys():
    files["tokenizer_config.json"] = _sentencepiece_tokenizer_config(files["tokenizer.model"])
  token_ids = _token_ids(run.vocab_path, files)
  length = max_position_embeddings or default_max_position(config) or run.seq_len
  params, step, config = _restore_params(run, step, dtype)
  log.info("exporting %s step %d as %s (%s)", run.run_dir, step, model_type, dtype)
  written = write_hf_checkpoint(out_dir, config, params, model_type=model_type, dtype=dtype,
                                max_shard_size=max_shard_size, max_position_embeddings=length,
                                token_ids=token_ids, extra_files=files, overwrite=overwrite)
  return RunExport(out_dir=os.fspath(out_dir), step=step, model_type=model_type, dtype=dtype, files=written)


def _export_adapter(run: RunInfo, out_dir: str | os.PathLike[str], *, step: int | None, dtype: str,
                    overwrite: bool) -> RunExport:
  """export_run(adapter=True): a LoRA run's adapters as a peft adapter folder."""
  if run.model.lora is None:
    raise ValueError(f"--adapter: {run.run_dir} is a full fine-tune (its model.json has no DecoderConfig.lora); "
                     "export it without --adapter")
  params, step, config = _restore_params(run, step, dtype, adapters_only=True)
  base = run.started_from or {}
  files = write_peft_adapter(out_dir, config, params, dtype=dtype, base_model=base.get("path"),
                             overwrite=overwrite)
  model_type = base.get("hf_model_type") or default_model_type(adapters.base_config(config))
  log.info("exported the adapters of %s step %d (base %s)", run.run_dir, step, base.get("path"))
  return RunExport(out_dir=os.fspath(out_dir), step=step, model_type=model_type, dtype=dtype, files=files)
