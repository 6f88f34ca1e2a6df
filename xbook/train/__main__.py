"""`python -m xbook.train ...` is `xbook train ...` (t5x-style entry point)."""

import sys

from xbook.cli import main

if __name__ == "__main__":
  sys.exit(main(["train", *sys.argv[1:]]))
