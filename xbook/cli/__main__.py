"""`python -m xbook.cli ...`: the `xbook` command (xbook.cli)."""

import sys

from xbook.cli import main

if __name__ == "__main__":
  sys.exit(main())
