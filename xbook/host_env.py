"""Environment set-up that the entry points run before jax starts; importing xbook changes nothing.

Entry points (the `xbook` command's `main`, launch/ and benchmarks/ scripts, tests/conftest.py) call
`describe_chipless_tpu_host()` first. A script that imports xbook as a library and runs jax on a machine
without TPU chips calls it too, before its first jax computation, or libtpu logs metadata errors.
"""

from __future__ import annotations

import glob
import os


def describe_chipless_tpu_host() -> None:
  """On a host without TPU chips, tell libtpu so instead of letting it ask GCE metadata.

  `jax[tpu]` installs libtpu everywhere, because `xbook compile` uses it to compile for TPU
  topologies on a CPU. On a machine with no TPU device nodes (/dev/accel* on v4/v5p, /dev/vfio/* on
  v5e/v6e), libtpu would otherwise query the GCE metadata server for its worker list at every jax
  start and log errors. Only unset variables are filled in; a TPU VM is left untouched. libtpu reads
  them when jax first initializes its backends, so calling this after `import jax` is still in time.
  """
  if glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*"):
    return
  os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
  os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
  os.environ.setdefault("TPU_ACCELERATOR_TYPE", "v5p-8")
  # Several processes (tests, a compile beside a training run) may load libtpu at once.
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
