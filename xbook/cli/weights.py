"""`xbook weights`: Hugging Face checkpoints in (import, also peft adapters) and out (export)."""

from __future__ import annotations

import argparse
from pathlib import Path

from xbook.cli.common import add_command, add_group, source_constant


def add_parser(subparsers) -> None:
  """The `weights` group: import, export."""
  architectures = ", ".join(source_constant("xbook.model.hf.config", "SUPPORTED_MODEL_TYPES"))
  weights = add_group(subparsers, "weights", f"Pretrained weights: Hugging Face checkpoints ({architectures}).",
                      "xbook weights import --hf ~/models/Ministral-3-14B-Base-2512 --out weights/ministral3-14b")
  _add_import(weights, architectures)
  _add_export(weights)


def _add_import(weights, architectures: str) -> None:
  MULTIMODAL_MODEL_TYPES = source_constant("xbook.model.hf.config", "MULTIMODAL_MODEL_TYPES")
  p = add_command(
      weights, "import",
      f"Convert a Hugging Face safetensors checkpoint to xbook parameters (Orbax). Architectures: "
      f"{architectures}; multimodal {', '.join(MULTIMODAL_MODEL_TYPES)} checkpoints (Ministral 3, "
      "Mistral Small 3.x) give their language model, the vision tower is skipped.",
      "xbook weights import --hf ~/models/Ministral-3-14B-Base-2512 --out weights/ministral3-14b\n"
      "xbook weights import --hf ~/models/Qwen2.5-7B --out weights/qwen2.5-7b\n"
      "xbook weights import --adapter exported/books-lora --base weights/ministral3-14b --out weights/books-lora",
      _weights_import)
  p.add_argument("--hf", default=None, help="folder with config.json and model.safetensors (or shards)")
  p.add_argument("--out", required=True, help="new folder for model.json and the Orbax params")
  p.add_argument("--adapter", default=None,
                 help="a peft LoRA adapter folder (adapter_config.json, adapter_model.safetensors) to import on "
                      "--base: the folder written holds the base and the adapters")
  p.add_argument("--base", default=None, help="with --adapter: the base's folder from `xbook weights import --hf`")
  p.set_defaults(path_flags=("out",))


def _add_export(weights) -> None:
  SUPPORTED_MODEL_TYPES = source_constant("xbook.model.hf.config", "SUPPORTED_MODEL_TYPES")
  DTYPES = source_constant("xbook.model.hf.writer", "DTYPES")
  p = add_command(weights, "export",
                  "Write a trained run (--run_dir) or imported weights (--params) as a Hugging Face checkpoint: "
                  "sharded safetensors with model.safetensors.index.json, config.json, generation_config.json "
                  "and, for a run, its tokenizer files; loadable by transformers and vLLM as it is.",
                  "xbook weights export --run_dir runs/ministral3-books --out exported/ministral3-books\n"
                  "xbook weights export --run_dir runs/demo --step 200 --dtype float32 --out exported/demo\n"
                  "xbook weights export --params weights/tiny-llama --out exported/tiny-llama\n"
                  "xbook weights export --run_dir runs/books-lora --adapter --out exported/books-lora", _weights_export)
  p.add_argument("--adapter", action="store_true",
                 help="a LoRA run's adapters alone, as a peft adapter folder (adapter_config.json, "
                      "adapter_model.safetensors) that peft and vLLM load onto the base; without it a LoRA run "
                      "is written merged into its base")
  p.add_argument("--run_dir", default=None, help="a run directory written by `xbook train` (local or gs://)")
  p.add_argument("--step", type=int, default=None, help="checkpoint step of --run_dir (default: the latest)")
  p.add_argument("--params", default=None, help="folder written by `xbook weights import`")
  p.add_argument("--out", required=True, help="new (or empty) local folder for the checkpoint")
  p.set_defaults(path_flags=("out",))
  p.add_argument("--dtype", choices=DTYPES, default=None,
                 help="tensor dtype (default: bfloat16 for a run, the parameters' own for --params)")
  p.add_argument("--model_type", choices=SUPPORTED_MODEL_TYPES, default=None,
                 help="architecture to write (default: the one imported; for a run, qwen2 with q/k/v "
                      "biases, ministral3 with query scaling, mistral with a sliding window, else llama)")
  p.add_argument("--max_shard_size", default="5GB", help="most bytes per safetensors file (default 5GB)")
  p.add_argument("--max_position_embeddings", type=int, default=None,
                 help="config.json's context length (default: the imported checkpoint's; for a run, the "
                      "scaled RoPE's, else the run's seq_len)")
  p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out folder")


def _weights_import(args: argparse.Namespace) -> int:
  if args.adapter is not None:
    return _adapter_import(args)
  if args.hf is None:
    raise SystemExit("error: xbook weights import: give --hf HF_DIR (a Hugging Face model folder), or --adapter "
                     "PEFT_DIR with --base DIR (a peft adapter on imported weights)")
  hf = Path(args.hf)
  if "://" not in args.hf and not (hf / "config.json").is_file():
    what = "is not a folder" if not hf.is_dir() else "has no config.json"
    raise FileNotFoundError(f"--hf {args.hf} {what}: pass a Hugging Face model folder with config.json and "
                            "model.safetensors (or its shards), e.g. from `huggingface-cli download MODEL "
                            "--local-dir DIR`")
  from xbook.data import vocab
  from xbook.model.hf import import_hf_checkpoint
  config = import_hf_checkpoint(args.hf, args.out)
  # The model's own tokenizer goes beside its weights, so that `train.vocab_path` and
  # `train.init_from` can name the same folder.
  try:
    vocabulary = vocab.load_vocabulary(args.hf)
  except FileNotFoundError:
    tokenizer = "no tokenizer files found (pass train.vocab_path yourself)"
  else:
    tokenizer = (f"tokenizer {Path(vocabulary.save(args.out)).name}: {vocabulary.size} ids, "
                 f"BOS {vocabulary.bos_id}, EOS {vocabulary.eos_id}")
  print(f"imported {args.hf} -> {args.out}: {config.n_layers} layers, d_model {config.d_model}, "
        f"{config.num_params() / 1e6:.1f}M parameters; {tokenizer}")
  return 0


def _adapter_import(args: argparse.Namespace) -> int:
  """`weights import --adapter PEFT --base DIR`: a peft adapter on imported base weights, as one xbook
  parameter folder (base and adapters) that export, warm starts and inference read."""
  if args.base is None:
    raise SystemExit("error: xbook weights import --adapter PEFT_DIR needs --base DIR, the base's weights as "
                     "`xbook weights import --hf` wrote them")
  from xbook.model.hf.adapter import import_peft_adapter
  config = import_peft_adapter(args.adapter, args.base, args.out)
  print(f"imported the adapter {args.adapter} on {args.base} -> {args.out}: rank {config.lora.rank}, alpha "
        f"{config.lora.alpha:g}, targets {', '.join(config.lora.targets)}; {config.lora_params()} adapter parameters")
  return 0


def _weights_export(args: argparse.Namespace) -> int:
  if (args.params is None) == (args.run_dir is None):
    raise SystemExit("error: xbook weights export: give exactly one of --params DIR (imported weights) "
                     "and --run_dir DIR (a trained run)")
  if args.params is not None:
    if args.step is not None:
      raise SystemExit("error: --step applies to --run_dir only (imported weights have no steps)")
    from xbook.model.hf import export_hf_checkpoint
    files = export_hf_checkpoint(args.params, args.out, model_type=args.model_type, dtype=args.dtype,
                                 max_shard_size=args.max_shard_size,
                                 max_position_embeddings=args.max_position_embeddings, overwrite=args.overwrite,
                                 adapter=args.adapter)
    source = args.params
  else:
    from xbook.infer.export import export_run
    result = export_run(args.run_dir, args.out, step=args.step, dtype=args.dtype or "bfloat16",
                        model_type=args.model_type, max_shard_size=args.max_shard_size,
                        max_position_embeddings=args.max_position_embeddings, overwrite=args.overwrite,
                        adapter=args.adapter)
    files, source = result.files, f"{args.run_dir} (step {result.step}, {result.model_type}, {result.dtype})"
  print(f"exported {source} -> {args.out}: {', '.join(files)}")
  return 0
