"""KV-cache decoding speed against transformers: the same as `xbook bench decode` (xbook.infer.decode_bench).

Example:
  .venv/bin/python benchmarks/decode.py --run_dir runs/demo --json
"""

import argparse
import sys

from xbook.host_env import describe_chipless_tpu_host
from xbook.infer import decode_bench

if __name__ == "__main__":
  describe_chipless_tpu_host()  # an entry point: the environment jax starts in (xbook.host_env)
  parser = argparse.ArgumentParser(description=decode_bench.__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  decode_bench.add_arguments(parser)
  sys.exit(decode_bench.run(parser.parse_args()))
