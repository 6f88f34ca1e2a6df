"""`xbook vocab`: xbook's own SentencePiece vocabulary with the segment markers."""

from __future__ import annotations

import argparse
import json
import sys

from xbook.cli.common import add_command, add_group, refuse_overwrite


def add_parser(subparsers) -> None:
  """The `vocab` group: train."""
  vocab = add_group(subparsers, "vocab", "xbook's SentencePiece vocabulary with the segment markers (pretrained "
                    "models bring their own: tokenizer.json, tekken.json or tokenizer.model).",
                    "xbook vocab train --scaffolds out/scaffolds.jsonl --out out/vocab.model")
  p = add_command(vocab, "train", "Train a SentencePiece vocabulary (markers as user-defined symbols) on the scaffolds "
                  "of split train (validation and test books are left out).",
                  "xbook vocab train --scaffolds out/scaffolds.jsonl --out out/vocab.model --vocab_size 8000",
                  _vocab_train)
  p.add_argument("--scaffolds", required=True, help="scaffold JSONL file")
  p.add_argument("--out", required=True, help="output .model path")
  p.add_argument("--vocab_size", type=int, default=8000)
  p.add_argument("--model_type", choices=("unigram", "bpe"), default="unigram")
  p.add_argument("--overwrite", action="store_true", help="replace an existing --out vocabulary (runs trained "
                 "on it keep their own copy in RUN/vocab/)")
  p.add_argument("--json", action="store_true", help="print a JSON summary")


def _vocab_train(args: argparse.Namespace) -> int:
  refuse_overwrite(args.out, args.overwrite)
  from xbook.data import vocab
  from xbook.scaffold import read_scaffolds
  records = list(read_scaffolds(args.scaffolds))
  path = vocab.train_vocab(records, args.out, vocab_size=args.vocab_size, model_type=args.model_type)
  size = vocab.load_vocabulary(path).size
  n_train = sum(r.get("split", "train") == "train" for r in records)
  print(json.dumps({"vocab": str(path), "pieces": size, "asked": args.vocab_size, "train_books": n_train})
        if args.json else f"vocabulary: {path} ({size} pieces, from the {n_train} books of split train)")
  if size < args.vocab_size:
    print(f"note: {size} pieces, not the {args.vocab_size} asked for: the text of {n_train} train book(s) "
          f"holds no more pieces worth a vocabulary entry (SentencePiece treats --vocab_size as an upper "
          f"bound). Train on more books for a bigger vocabulary; DecoderConfig.vocab_size needs at least {size}",
          file=sys.stderr)
  return 0
