"""Attention accuracy, speed and memory: the same as `xbook bench attention` (xbook.train.attention_bench).

Example:
  .venv/bin/python benchmarks/attention.py --impl ring --seq 8192 --devices 8 --length_layout zigzag --json
  .venv/bin/python benchmarks/attention.py --memory_sweep
"""

import argparse
import sys

from xbook.host_env import describe_chipless_tpu_host
from xbook.train import attention_bench

if __name__ == "__main__":
  describe_chipless_tpu_host()  # an entry point: the environment jax starts in (xbook.host_env)
  parser = argparse.ArgumentParser(description=attention_bench.__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  attention_bench.add_arguments(parser)
  sys.exit(attention_bench.run(parser.parse_args()))
