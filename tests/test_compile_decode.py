"""`xbook compile --decode`: the inference engine's programs compiled for a TPU slice on this CPU (libtpu)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import gin
import pytest

from xbook.infer import aot_decode
from xbook.model import DecoderConfig
from xbook.train.mesh import MeshConfig

REPO = Path(__file__).resolve().parents[1]
# A scaled-down inference config: GQA with 8 kv heads over tensor = 8, as both released models.
SMALL = DecoderConfig(vocab_size=2048, d_model=128, n_layers=6, n_heads=16, n_kv_heads=8, head_dim=16,
                      mlp_dim=256, dtype="bfloat16")
TARGET = aot_decode.DecodeTarget(accelerator="v5e-8", batch=1, context_len=4096, prefill_chunk=256)
MESH = MeshConfig(data=1, fsdp=1, sequence=1, tensor=8)
# Compiles for a TPU slice: the session's compilation cache (conftest) cannot load them back.
pytestmark = pytest.mark.usefixtures("no_compilation_cache")
_SMALL_REPORT: list[aot_decode.DecodeCompileReport] = []


def _small_report() -> aot_decode.DecodeCompileReport:
  """SMALL at TARGET compiled with all its layers, once for the tests that need it."""
  if not _SMALL_REPORT:
    _SMALL_REPORT.append(aot_decode.compile_decode(SMALL, TARGET, MESH))
  return _SMALL_REPORT[0]


def test_the_engine_compiles_for_a_tpu_slice_with_its_memory_and_floor():
  report = _small_report()
  assert report.fits and report.chips == 8 and report.mesh["tensor"] == 8
  keys_values = SMALL.n_layers * 2 * (SMALL.n_kv_heads // 8) * SMALL.head_dim * TARGET.context_len * 2
  positions_segments_lengths = 2 * TARGET.context_len * 4 + 4
  assert report.cache_bytes == keys_values + positions_segments_lengths  # kv heads over tensor, bf16
  assert report.param_bytes < 2 * SMALL.num_params() / 8 * 1.2  # bf16 weights, sharded 8 ways
  assert report.total_bytes_per_chip >= report.param_bytes + report.cache_bytes
  floor = 1e3 * (report.param_bytes + report.cache_bytes) / aot_decode.HBM_BANDWIDTH["v5e"]
  assert report.floor_ms_per_token == pytest.approx(floor)
  assert report.projected_ms_per_token is None or report.projected_ms_per_token > 0
  # Twice the slots: the cache doubles, and the decode step holds it.
  two = aot_decode.compile_decode(SMALL, dataclasses.replace(TARGET, batch=2), MESH)
  assert two.cache_bytes == 2 * report.cache_bytes
  assert two.decode_bytes >= two.param_bytes + two.cache_bytes


def test_two_and_four_layer_probes_extrapolate_to_the_full_model():
  """The probes' linear extrapolation to 6 layers: the total within 5% of compiling all 6."""
  full = _small_report()
  probed = aot_decode.compile_decode(SMALL, TARGET, MESH, probe_layers=True)
  assert probed.extrapolated_from_layers == aot_decode.PROBE_LAYERS
  assert (probed.param_bytes, probed.cache_bytes) == (full.param_bytes, full.cache_bytes)
  assert probed.total_bytes_per_chip == pytest.approx(full.total_bytes_per_chip, rel=0.05)
  # The decode program alone extrapolates high (9.8 MB against 6.0 MB here): an upper estimate, never low.
  assert probed.decode_bytes >= full.decode_bytes


def test_xbook_compile_decode_prints_the_report_and_the_largest_batch(capsys, monkeypatch):
  # The command in this process: the libtpu client the tests above started compiles it too.
  from xbook import cli
  monkeypatch.chdir(REPO)
  gin.clear_config()
  try:
    status = cli.main(["compile", "--gin_file=configs/models/tiny.gin", "--gin_file=configs/inference/base.gin",
                       "--gin.MeshConfig.tensor=2", "--gin.MeshConfig.fsdp=4", "--topology", "v5e-8", "--decode",
                       "--context_len", "2048", "--largest_batch", "--json"])
  finally:
    gin.clear_config()
  out = capsys.readouterr().out
  assert status == 0, out[-3000:]
  reports = json.loads(out.strip().splitlines()[-1])
  one = reports["batch_1"]
  largest = next(r for name, r in reports.items() if name.startswith("largest_batch"))
  assert one["fits"] and largest["fits"] and largest["batch"] > 1
  assert largest["total_bytes_per_chip"] <= largest["hbm_bytes"]
  assert largest["cache_bytes"] > (largest["batch"] - 1) * one["cache_bytes"]
