"""What the `xbook` program prints when something goes wrong, and what it keeps off the terminal.

`user_message(error)` turns the mistakes a user makes into one line (printed as `error: ...`): the
errors xbook raises on purpose, with a message naming what is wrong and the fix (a ValueError,
RuntimeError or their subclasses raised from xbook's own code: ScaffoldError, BookError,
CacheMismatchError, GinConfigError, ...), and missing, misplaced or unreadable files and folders (any
OSError with a file name, TensorFlow's NotFoundError). Anything else is a bug and keeps its traceback.
`--verbose` (or XBOOK_VERBOSE=1) prints the traceback of user errors too, and lets libraries log.

`quiet_native_stderr()` filters the start-up noise that TensorFlow, XLA and libtpu write straight to file
descriptor 2 from C++ (TF_CPP_MIN_LOG_LEVEL no longer silences it since TensorFlow 2.19): oneDNN and
CUDA-driver notices, cuInit failures on a machine without a GPU, libtpu's metadata warnings on a machine
without a TPU. Every other byte is passed through as it comes (progress bars included).
"""

from __future__ import annotations

import atexit
import errno
import logging
import os
import re
import sys
import threading
import traceback
from pathlib import Path

from xbook import host_env

PACKAGE = Path(__file__).resolve().parent
VERBOSE_ENV = "XBOOK_VERBOSE"

# Why a user error may be raised by xbook code on purpose: their messages are written for the user.
_DELIBERATE = (ValueError, RuntimeError, NotImplementedError)


def verbose() -> bool:
  return os.environ.get(VERBOSE_ENV, "").strip().lower() not in ("", "0", "false", "no")


def _raised_in_xbook(error: BaseException) -> bool:
  """Whether the innermost frame of `error`'s traceback is xbook's own code (a deliberate raise)."""
  tb = error.__traceback__
  if tb is None:
    return False
  while tb.tb_next is not None:
    tb = tb.tb_next
  try:
    Path(tb.tb_frame.f_code.co_filename).resolve().relative_to(PACKAGE)
  except ValueError:
    return False
  return True


def _os_message(error: OSError) -> str | None:
  name = error.filename
  if name is None:
    return None
  name = os.fspath(name)
  if error.errno == errno.ENOENT or isinstance(error, FileNotFoundError):
    parent = Path(name).parent
    where = "" if parent.is_dir() or str(parent) in ("", ".") else f" (the folder {parent} does not exist either)"
    return f"no such file or folder: {name}{where}; check the path"
  if isinstance(error, NotADirectoryError) or error.errno == errno.ENOTDIR:
    return f"{name} is a file, not a folder (or a path through it is): pass a folder"
  if isinstance(error, IsADirectoryError) or error.errno == errno.EISDIR:
    return f"{name} is a folder, not a file: pass a file"
  if isinstance(error, FileExistsError) or error.errno == errno.EEXIST:
    if Path(name).is_file():
      return f"{name} is a file where a folder is needed: pass a folder, or move the file away"
    return f"{name} exists already{': ' + str(error.strerror) if error.strerror else ''}"
  if isinstance(error, PermissionError) or error.errno in (errno.EACCES, errno.EPERM):
    return f"no permission to use {name}: check its owner and mode, or pick another path"
  return f"{name}: {error.strerror or error}"


_GIN_CONTEXT = re.compile(r"\s+In call to configurable '[^']*' \(<[^>]*>\)")


def user_message(error: BaseException) -> str | None:
  """The one-line message of a mistake the user can fix, or None for a bug (keep its traceback)."""
  message = _message(error)
  return _GIN_CONTEXT.sub("", message) if message else message


def _message(error: BaseException) -> str | None:
  tf_errors = getattr(sys.modules.get("tensorflow"), "errors", None)
  if tf_errors is not None and isinstance(error, tf_errors.NotFoundError):
    return f"{error.message.splitlines()[0] if error.message else error}; check the path"
  if isinstance(error, OSError):
    written_by_xbook = _raised_in_xbook(error) and not str(error).startswith("[Errno")
    if written_by_xbook:
      return " ".join(str(error).split()) or None
    return _os_message(error) if error.filename is not None else None
  if isinstance(error, _DELIBERATE) and _raised_in_xbook(error):
    text = " ".join(str(error).split())
    return text or None
  from xbook.cli_gin import GinConfigError  # noqa: PLC0415 - small, already imported by the CLI
  if isinstance(error, GinConfigError):
    return str(error)
  return None


def with_fix(error: BaseException, message: str) -> str:
  """`message` with the generic fix of its error type where the message itself has none."""
  scaffold_error = any(c.__name__ == "ScaffoldError" for c in type(error).__mro__)  # no import of xbook.scaffold
  if scaffold_error and "xbook scaffold" not in message:
    return message + " (fix or delete that line, or rebuild the file with `xbook scaffold build`)"
  return message


def report(error: BaseException) -> int | None:
  """Print `error` as one `error:` line if it is a user's mistake (its traceback too when verbose);
  returns the exit status, or None to let it propagate as a bug."""
  message = user_message(error)
  if message is None:
    return None
  if verbose():
    traceback.print_exception(error)
  print(f"error: {with_command_line_config(with_fix(error, message))}", file=sys.stderr, flush=True)
  return 1


def with_command_line_config(message: str) -> str:
  """`message` with the gin flags of this command line in the rebuild command that xbook.data.cache wrote
  with a placeholder for them (library code never reads the command line; this is the entry point)."""
  cache = sys.modules.get("xbook.data.cache")  # loaded wherever its placeholder was written
  if cache is None or cache.CONFIG_PLACEHOLDER not in message:
    return message
  from xbook import gin_flags  # noqa: PLC0415 - start-up: gin loads only for a message that needs it
  files, bindings = gin_flags.parsed()
  return message.replace(cache.CONFIG_PLACEHOLDER, cache.config_flags(files, bindings))


# -------------------------------------------------------------------------------------------- noise
# Whole lines written to fd 2 by native code that say nothing a user of xbook can act on.
NOISE = re.compile("|".join([
    r"WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR",
    r"WARNING: Logging before InitGoogle\(\) is written to STDERR",
    r"I\d{4} [\d:. ]+\s*\d+ \S+\.(cc|h):\d+\] ",  # absl INFO lines of C++ code
    r"E\d{4} [\d:. ]+\s*\d+ cuda_(platform|executor|diagnostics|dnn|fft|blas)\.cc:\d+\] ",  # no GPU here
    r"E\d{4} [\d:. ]+\s*\d+ common_lib\.cc:\d+\] INVALID_ARGUMENT: Error: unexpected worker hostname 'WARNING: "
    r"could not determine TPU",  # libtpu on a machine that is not a TPU VM
    r"Failed to find host bounds for accelerator type: WARNING: could not determine TPU accelerator type",
    r"=== Source Location Trace: ===",
    r"learning/45eac/tfrc/runtime/libtpu_init_utils\.cc:\d+",
    r".*\.cc:\d+\] (oneDNN custom operations are on|Could not find cuda drivers on your machine)",
]))
_PREFIXES = ("WARNING: All log", "WARNING: Logging before", "Failed to find host bounds", "=== Source Location",
             "learning/")
_NATIVE_LINE = re.compile(r"[IWE]\d{4} ")


def _maybe_noise(fragment: str) -> bool:
  """Whether an unfinished line could still turn out to be noise (so it is held until its end)."""
  return bool(_NATIVE_LINE.match(fragment[:6])) or any(
      p.startswith(fragment) or fragment.startswith(p) for p in _PREFIXES)


class _StderrFilter:
  """Replace fd 2 by a pipe whose reader drops NOISE lines and forwards everything else at once."""

  def __init__(self) -> None:
    self.original = os.dup(2)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)
    self.read_end = read_end
    self.thread = threading.Thread(target=self._pump, name="xbook-stderr-filter", daemon=True)
    self.thread.start()
    atexit.register(self.close)

  def _write(self, text: str) -> None:
    data = text.encode("utf-8", "replace")
    while data:
      data = data[os.write(self.original, data):]

  def _pump(self) -> None:
    held = ""
    while True:
      try:
        chunk = os.read(self.read_end, 65536)
      except OSError:
        break
      if not chunk:
        break
      held += chunk.decode("utf-8", "replace")
      out = []
      *lines, held = held.split("\n")
      out += [line + "\n" for line in lines if not NOISE.match(line)]
      if held and not _maybe_noise(held):
        out.append(held)
        held = ""
      if out:
        self._write("".join(out))
    if held and not NOISE.match(held):
      self._write(held)

  def close(self) -> None:
    try:
      sys.stderr.flush()
    except (OSError, ValueError):
      pass
    os.dup2(self.original, 2)  # writers of fd 2 from now on bypass the pipe; its last bytes drain below
    self.thread.join(timeout=2)


_FILTER: _StderrFilter | None = None


def quiet_native_stderr() -> None:
  """Filter fd 2 for the rest of the process (once; not when verbose, nor where fd 2 cannot be duplicated)."""
  global _FILTER
  if _FILTER is not None or verbose():
    return
  try:
    _FILTER = _StderrFilter()
  except OSError:
    _FILTER = None


def quiet_environment() -> None:
  """Environment variables that keep libraries quiet, set before they are imported (the user's win), and
  libtpu told that a host without TPU chips has none (xbook.host_env; `main` calls this first)."""
  host_env.describe_chipless_tpu_host()
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
  os.environ.setdefault("GLOG_minloglevel", "2")


class _DropNoise(logging.Filter):
  """Python log records of libraries that say nothing a user can act on."""

  PATTERNS = re.compile(r"apitools not found|Using yield and return in the process method")

  def filter(self, record: logging.LogRecord) -> bool:
    return not self.PATTERNS.search(record.getMessage())


def setup_logging() -> None:
  """xbook's own progress at INFO; libraries (Beam, orbax, absl, tensorflow) only when they warn, Beam
  only on errors, unless verbose (then every library's INFO too)."""
  logging.basicConfig(level=logging.INFO if verbose() else logging.WARNING,
                      format="[xbook %(asctime)s] %(message)s", datefmt="%H:%M:%S")
  logging.getLogger("xbook").setLevel(logging.INFO)
  if verbose():
    return
  logging.getLogger("absl").setLevel(logging.WARNING)
  logging.getLogger("apache_beam").setLevel(logging.ERROR)
  for handler in logging.getLogger().handlers:
    handler.addFilter(_DropNoise())
