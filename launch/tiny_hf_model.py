"""Write a tiny Hugging Face checkpoint (config.json, safetensors, tokenizer.json) to practise fine-tuning on.

The README's fine-tuning walk-through starts from a Hugging Face model folder. A real base model
(Mistral Small 3, Ministral 3) is tens of gigabytes and needs the hub; this writes a folder of the same
layout that a CPU can fine-tune in seconds: a random Mistral-architecture decoder of about 1M parameters
and a byte-level BPE tokenizer (Mistral-style special tokens first: <unk> 0, <s> 1, </s> 2, <pad> 3)
trained with Hugging Face `tokenizers` on the given novels.

Usage: python launch/tiny_hf_model.py --books DIR --out DIR [--vocab_size 2048] [--seed 0]
Example: python launch/tiny_hf_model.py --books ../shared/corpus/gutenberg --out demo_out/tiny-mistral
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import tokenizers
from tokenizers import decoders, models, pre_tokenizers, processors, trainers

from xbook.host_env import describe_chipless_tpu_host
from xbook.model import Decoder, DecoderConfig
from xbook.model.hf.writer import write_hf_checkpoint

SPECIALS = ("<unk>", "<s>", "</s>", "<pad>")
# The tiny decoder of configs/runs/finetune_demo.gin (keep the two in step).
ARCHITECTURE = dict(d_model=128, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=32, mlp_dim=384,
                    rope_theta=1_000_000.0, norm_eps=1e-5)


def train_tokenizer(books: list[Path], vocab_size: int) -> tokenizers.Tokenizer:
  """A byte-level BPE of `vocab_size` ids (specials first) trained on the text of `books`."""
  tokenizer = tokenizers.Tokenizer(models.BPE())
  tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tokenizer.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIALS), show_progress=False,
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
  tokenizer.train_from_iterator((p.read_text(encoding="utf-8", errors="replace") for p in books), trainer)
  # As Mistral's tokenizer.json: encoding with special tokens prepends <s> (xbook itself never asks it to).
  tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A $B",
                                                           special_tokens=[("<s>", 1)])
  return tokenizer


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                   epilog=__doc__.split("\n\n", 2)[2],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--books", required=True, type=Path, help="folder of Gutenberg .txt novels")
  parser.add_argument("--out", required=True, type=Path, help="the Hugging Face folder to write (new or empty)")
  parser.add_argument("--vocab_size", type=int, default=2048)
  parser.add_argument("--max_books", type=int, default=4, help="novels to train the tokenizer on")
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)
  books = sorted(args.books.glob("*.txt"))[:args.max_books]
  if not books:
    print(f"error: no .txt novels in {args.books}; pass --books a folder of Gutenberg plain-text files",
          file=sys.stderr)
    return 1
  print(f"training a {args.vocab_size}-id byte-level BPE on {len(books)} novels")
  tokenizer = train_tokenizer(books, args.vocab_size)
  config = DecoderConfig(vocab_size=tokenizer.get_vocab_size(), **ARCHITECTURE)
  tokens = jnp.zeros((1, 8), jnp.int32)
  params = Decoder(config).init(jax.random.key(args.seed), tokens, tokens + 1,
                                jnp.arange(8)[None])["params"]
  params = jax.tree.map(np.asarray, nn.unbox(params))
  tokenizer_config = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>",
                      "tokenizer_class": "PreTrainedTokenizerFast"}
  files = write_hf_checkpoint(
      args.out, config, params, model_type="mistral", dtype="float32", max_position_embeddings=4096,
      token_ids={"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 3},
      extra_files={"tokenizer.json": tokenizer.to_str().encode(),
                   "tokenizer_config.json": json.dumps(tokenizer_config, indent=2).encode()})
  print(f"wrote {args.out}: {', '.join(files)} ({config.num_params() / 1e6:.2f}M parameters)")
  return 0


if __name__ == "__main__":
  describe_chipless_tpu_host()  # an entry point: the environment jax starts in (xbook.host_env)
  sys.exit(main())
