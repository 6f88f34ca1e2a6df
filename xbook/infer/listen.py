"""The server's socket, bound before anything heavy loads: `xbook serve` checks its port first, so that a busy
port is reported in a moment rather than after jax and the model load. Imports the standard library only."""

from __future__ import annotations

import socket
import sys


def bind(host: str, port: int) -> socket.socket:
  """A socket bound to host:port (0: any free port), not yet listening: until it listens, connections
  are refused (a client retries elsewhere) rather than left hanging while the model loads. Raises
  OSError if the port is taken."""
  family = socket.AF_INET6 if ":" in host else socket.AF_INET
  sock = socket.socket(family, socket.SOCK_STREAM)
  sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
  try:
    sock.bind((host, port))
  except OSError:
    sock.close()
    raise
  return sock


def bind_or_report(host: str, port: int) -> socket.socket | None:
  """`bind(host, port)`, or None after printing one `error:` line to stderr that names the port and the fix."""
  try:
    return bind(host, port)
  except OSError as error:
    print(f"error: cannot listen on {host}:{port} ({error.strerror or error}); stop what uses it or pick "
          "another --port (0: any free one)", file=sys.stderr, flush=True)
    return None
