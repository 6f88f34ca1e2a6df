"""xbook: prompt-to-book training of long-context decoders on human-authored novels.

Layers (each imports only the ones before it): books -> scaffold -> data -> model -> train -> infer.
See ../shared/DESIGN.md for the contracts between them.
"""

import glob as _glob
import os as _os

__version__ = "0.1.0"


def _describe_tpu_host_when_chipless() -> None:
  """On a host without TPU chips, tell libtpu so instead of letting it ask GCE metadata.

  `jax[tpu]` installs libtpu everywhere, because `xbook compile` uses it to compile for TPU
  topologies on a CPU. On a machine with no TPU device nodes (/dev/accel* on v4/v5p, /dev/vfio/* on
  v5e/v6e), libtpu would otherwise query the GCE metadata server for its worker list at every jax
  start and log errors. Only unset variables are filled in; a TPU VM is left untouched.
  """
  if _glob.glob("/dev/accel*") or _glob.glob("/dev/vfio/[0-9]*"):
    return
  _os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
  _os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
  _os.environ.setdefault("TPU_ACCELERATOR_TYPE", "v5p-8")
  # Several processes (tests, a compile beside a training run) may load libtpu at once.
  _os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")


_describe_tpu_host_when_chipless()
