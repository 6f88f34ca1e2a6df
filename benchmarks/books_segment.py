"""Speed of cleaning and segmenting a corpus of Gutenberg books on the CPU.

Reads every .txt file of a corpus folder, then times, in one run and per stage, reading (bytes to
text), cleaning (header, footer, licence and back matter removed) and segmenting (chapters, then
scenes). Prints the corpus size in MB (10^6 bytes of files), the seconds of each stage, seconds per MB
of cleaning and of segmenting, and books per second over the three stages.

Example:
  .venv/bin/python benchmarks/books_segment.py --corpus ../shared/corpus/gutenberg --json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from xbook.books.gutenberg import clean_gutenberg
from xbook.books.load import read_book_text, segment_text

_DEFAULT_CORPUS = Path(__file__).resolve().parents[2] / "shared/corpus/gutenberg"


def measure(files: list[Path]) -> dict[str, float]:
  """Seconds spent reading, cleaning and segmenting `files`, summed over the files."""
  seconds = {"read": 0.0, "clean": 0.0, "segment": 0.0}
  for path in files:
    started = time.perf_counter()
    raw, _ = read_book_text(path)
    read = time.perf_counter()
    text, _ = clean_gutenberg(raw)
    cleaned = time.perf_counter()
    segment_text(text)
    segmented = time.perf_counter()
    seconds["read"] += read - started
    seconds["clean"] += cleaned - read
    seconds["segment"] += segmented - cleaned
  return seconds


def main(argv: list[str]) -> int:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--corpus", default=os.environ.get("XBOOK_CORPUS") or str(_DEFAULT_CORPUS),
                      help="folder of Gutenberg .txt files (default: $XBOOK_CORPUS, else "
                           "../shared/corpus/gutenberg beside the clone)")
  parser.add_argument("--json", action="store_true", help="print one JSON object")
  args = parser.parse_args(argv)
  files = sorted(Path(args.corpus).glob("*.txt"))
  if not files:
    raise SystemExit(f"error: {args.corpus} holds no .txt files")
  megabytes = sum(path.stat().st_size for path in files) / 1e6
  seconds = measure(files)
  total = sum(seconds.values())
  result = {"corpus": args.corpus, "books": len(files), "megabytes": round(megabytes, 3),
            **{f"{stage}_s": round(s, 4) for stage, s in seconds.items()}, "total_s": round(total, 4),
            "clean_s_per_mb": round(seconds["clean"] / megabytes, 4),
            "segment_s_per_mb": round(seconds["segment"] / megabytes, 4),
            "books_per_s": round(len(files) / total, 2)}
  if args.json:
    print(json.dumps(result))
    return 0
  print(f"corpus {args.corpus}: {len(files)} books, {megabytes:.2f} MB")
  for stage in seconds:
    print(f"  {stage:<8} {seconds[stage]:7.3f} s  {seconds[stage] / megabytes:7.4f} s/MB")
  print(f"  {'total':<8} {total:7.3f} s  {total / megabytes:7.4f} s/MB  {len(files) / total:.1f} books/s")
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
