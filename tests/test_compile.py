"""Ahead-of-time compilation for TPU slices on this CPU host (libtpu from jax[tpu])."""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import gin
import pytest

from xbook.gin_flags import configured, parse_gin
from xbook.train import aot, flops
from xbook.train import trainer as trainer_lib
from xbook.train.tpu_topology import GIB, parse_slice, standard_shape, topology_devices

REPO = Path(__file__).resolve().parents[1]
PAPER_CONFIGS = sorted(p for p in (REPO / "configs/paper").glob("*.gin") if p.name != "base.gin")
# Compiles for TPU slices: the session's compilation cache (conftest) cannot load them back.
pytestmark = pytest.mark.usefixtures("no_compilation_cache")


def test_accelerator_types_name_the_standard_slices():
  v5p = parse_slice("v5p-256")
  assert (v5p.shape, v5p.chips, v5p.hosts, v5p.topology_name) == ((4, 4, 8), 128, 32, "v5p:4x4x8")
  assert v5p.generation.hbm_bytes == 95 * GIB
  assert parse_slice("v5p-8").shape == (2, 2, 1)
  assert parse_slice("v5p-1024").shape == (8, 8, 8)
  v6e = parse_slice("v6e-8")
  assert (v6e.shape, v6e.hosts, v6e.accelerator_type, v6e.chips_per_host_bounds) == ((2, 4), 1, "v6e-8",
                                                                                     (2, 4, 1))
  assert parse_slice("v5litepod-256").shape == (16, 16)
  assert parse_slice("v5p:4x4x4").accelerator_type == "v5p-128"
  assert standard_shape(32, 3) == (2, 4, 4)


@pytest.mark.parametrize("name, message", [
    ("v5p-6", "power-of-two"), ("v5p-7", "two per"), ("v9-8", "unknown generation"),
    ("v5p:4x4", "3 dimensions"), ("tpu-big", "cannot read TPU slice")])
def test_bad_slice_names_are_explained(name, message):
  with pytest.raises(ValueError, match=message):
    parse_slice(name)


def test_topology_devices_are_one_per_chip_in_every_slice():
  devices = topology_devices(parse_slice("v5p-64"), num_slices=2)
  assert len(devices) == 64
  assert devices[0].platform == "tpu" and devices[0].device_kind.startswith("TPU v5")
  assert {d.slice_index for d in devices} == {0, 1}


def _demo_bindings(*extra: str, seq_len: int = 512) -> list[str]:
  return [f"train.seq_len = {seq_len}", "train.batch_size = 8", *extra]


@contextlib.contextmanager
def _compilation_cache_off():
  """conftest's `no_compilation_cache` for a module-scoped fixture (set up before function-scoped ones)."""
  import jax
  from jax.experimental.compilation_cache import compilation_cache as cache
  previous = jax.config.jax_enable_compilation_cache
  jax.config.update("jax_enable_compilation_cache", False)
  cache.reset_cache()
  try:
    yield
  finally:
    jax.config.update("jax_enable_compilation_cache", previous)
    cache.reset_cache()


REMATS = ("none", "full")


def _remat_trainer(remat: str) -> trainer_lib.Trainer:
  # 256 tokens: 2 ring steps of 2 blocks of 64, so diagonal, full and skipped block pairs all occur, in
  # about two thirds of the time 512 tokens take.
  gin.clear_config()
  try:
    parse_gin([str(REPO / "configs/runs/demo_ring.gin")], _demo_bindings(
        f"xbook.model.DecoderConfig.remat = '{remat}'", "xbook.model.DecoderConfig.d_model = 256",
        "xbook.model.DecoderConfig.mlp_dim = 1024", "xbook.model.DecoderConfig.n_layers = 3",
        "xbook.model.DecoderConfig.attention_block = 64", seq_len=256))
    return trainer_lib.trainer_from_gin(topology_devices(parse_slice("v5e-8")))
  finally:
    gin.clear_config()


@pytest.fixture(scope="module")
def remat_probes() -> dict[str, tuple[trainer_lib.Trainer, float]]:
  """{remat: (the demo ring trainer on a v5e-8 with that remat, the compiler's FLOPs of its step)}: the two
  settings' probes compiled at the same time, on two threads (the TPU compiler releases the GIL)."""
  with _compilation_cache_off():
    trainers = {remat: _remat_trainer(remat) for remat in REMATS}
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
      flops_by_remat = dict(zip(REMATS, pool.map(
          lambda remat: aot.compiler_flops_per_step(trainers[remat], list(trainers[remat].devices)), REMATS)))
  return {remat: (trainers[remat], flops_by_remat[remat]) for remat in REMATS}


@pytest.mark.parametrize("remat", REMATS)
def test_compiler_flops_match_the_remat_prediction(remat_probes, remat):
  """The unrolled probes count every layer, ring step and block: the ratio to the analytic FLOPs is
  what recomputation predicts (1.0 without remat, about 4/3 with full remat, plus the flash backward)."""
  trainer, compiler = remat_probes[remat]
  assert trainer.model_config.attention == "ring" and trainer.mesh.shape["sequence"] == 2
  tokens = trainer.batch_size * trainer.seq_len
  analytic = tokens * flops.training_flops_per_token(trainer.model_config, trainer.seq_len, causal=False)
  predicted = aot.predicted_flops_ratio(trainer)
  assert predicted == pytest.approx({"none": 1.0, "full": 4 / 3}[remat], rel=0.1)
  assert compiler / analytic == pytest.approx(predicted, rel=aot.RATIO_TOLERANCE)


def _xbook(*args: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-m", "xbook.cli", *args], cwd=REPO, capture_output=True,
                        text=True, timeout=600)


def test_compile_command_reports_memory_and_flops_as_json():
  result = _xbook("compile", "--gin_file=configs/runs/demo.gin", "--topology", "v5e-8", "--json")
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.loads(result.stdout.strip().splitlines()[-1])
  assert report["fits"] is True and report["hbm_bytes"] == 16 * GIB
  assert report["chips"] == 8 and report["mesh"] == {"data": 2, "fsdp": 2, "sequence": 1, "tensor": 2}
  assert 0 < report["total_bytes_per_chip"] < report["hbm_bytes"]
  assert report["total_bytes_per_chip"] == (report["argument_bytes"] + report["output_bytes"]
                                            - report["alias_bytes"] + report["temp_bytes"]
                                            + report["code_bytes"])
  assert report["ratio_ok"] is True
  # float32 parameters and Adam moments: the state is 3x the parameters, all of it an argument.
  assert report["opt_state_bytes"] == pytest.approx(2 * report["param_bytes"], rel=1e-3)
  assert 0 < report["param_bytes"] + report["opt_state_bytes"] < report["argument_bytes"]
  assert (report["param_dtype"], report["mu_dtype"]) == ("float32", "float32")
  assert report["analytic_flops"] > report["analytic_flops_causal"] > 0
  assert report["projected_tokens_per_s"] == pytest.approx(
      8 * 256 / report["projected_step_s"])


def test_a_step_that_does_not_fit_fails_with_the_numbers():
  # Dense attention over 64k tokens: the score matrix alone is far beyond a v5e chip's 16 GiB.
  result = _xbook("compile", "--gin_file=configs/runs/demo.gin", "--topology", "v5e-8",
                  "--gin.train.seq_len=65536", "--gin.train.batch_size=4")
  assert result.returncode == 1
  assert "DOES NOT FIT" in result.stdout
  assert "GiB per chip but a v5e-8 chip has 16 GiB of HBM" in result.stderr


def _scaled_down_trainer(config: Path) -> tuple[trainer_lib.Trainer, aot.TpuTarget]:
  """The paper config's trainer for its named slice, scaled down to 1 layer and 1/256 of the length."""
  gin.clear_config()
  try:
    parse_gin([str(config)], [])
    seq_len = gin.query_parameter("train.seq_len")
    gin.clear_config()
    parse_gin([str(config)], ["xbook.model.DecoderConfig.n_layers = 1", f"train.seq_len = {seq_len // 256}"])
    target = configured(aot.TpuTarget)
    return trainer_lib.trainer_from_gin(topology_devices(parse_slice(target.accelerator), target.num_slices)), target
  finally:
    gin.clear_config()


@pytest.fixture(scope="module")
def paper_step_memory(request) -> dict[str, tuple[trainer_lib.Trainer, aot.TpuTarget, dict[str, int] | Exception]]:
  """{paper config: (its scaled-down trainer, its TPU target, the step memory of its compiled program, or
  the error that compiling it raised)}, for the configs whose test this session runs.

  They are compiled once for the module, on two threads (the TPU compiler releases the GIL, and the suite
  runs on 2 cores); configs that differ only in their data (a plan format, a profile) build the same
  program and share one compile."""
  selected = [item.callspec.params["config"] for item in request.session.items
              if item.originalname == test_paper_configs_fit_their_topology_scaled_down.__name__]
  with _compilation_cache_off():
    return _compile_paper_configs(selected)


def _step_memory_or_error(trainer: trainer_lib.Trainer) -> dict[str, int] | Exception:
  try:
    return aot.step_memory(trainer)
  except Exception as error:  # noqa: BLE001 - raised again by the config's own test
    return error


def _compile_paper_configs(configs: list[Path]) -> dict[str, tuple]:
  trainers = {config.stem: _scaled_down_trainer(config) for config in configs}
  programs: dict[tuple, list[str]] = {}
  for name, (trainer, target) in trainers.items():
    program = (target.accelerator, target.num_slices, repr({field.name: getattr(trainer, field.name)
                                                             for field in dataclasses.fields(trainer)
                                                             if field.name != "devices"}))
    programs.setdefault(program, []).append(name)
  with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
    memories = pool.map(lambda names: _step_memory_or_error(trainers[names[0]][0]), list(programs.values()))
    by_name = {name: memory for names, memory in zip(programs.values(), memories) for name in names}
  return {name: (*trainers[name], by_name[name]) for name in trainers}


@pytest.mark.parametrize("config", PAPER_CONFIGS, ids=lambda p: p.stem)
def test_paper_configs_fit_their_topology_scaled_down(paper_step_memory, config):
  """Each paper config compiles for its named slice with its own mesh, attention and remat; scaled down
  to 1 layer and 1/256 of the length so that CI can afford it (`xbook compile` runs the full ones).

  1/256 leaves 64 to 128 tokens per chip: one attention block per chip, as at 1/64 (256 to 512 tokens,
  below every config's block of 1,024), so the same program in smaller shapes, compiled in a half to a
  quarter of the time."""
  trainer, target, memory = paper_step_memory[config.stem]
  if isinstance(memory, Exception):
    raise memory
  tpu_slice = parse_slice(target.accelerator)
  total = memory["argument"] + memory["output"] - memory["alias"] + memory["temp"] + memory["code"]
  assert 0 < total <= tpu_slice.generation.hbm_bytes
  assert trainer.mesh.size == tpu_slice.chips * target.num_slices


def test_probes_shrink_their_block_count_on_long_rings():
  """A 1-layer probe unrolls ring steps x blocks^2 block pairs; long rings get fewer, larger blocks."""
  assert aot.probe_blocks_per_chunk(1) == aot.PROBE_BLOCKS_PER_CHUNK
  for ring_steps in (8, 32, 64, 512):
    blocks = aot.probe_blocks_per_chunk(ring_steps)
    assert blocks >= 1
    assert blocks == 1 or ring_steps * blocks ** 2 <= aot.PROBE_MAX_BLOCK_PAIRS
    assert ring_steps * (blocks + 1) ** 2 > aot.PROBE_MAX_BLOCK_PAIRS or blocks == aot.PROBE_BLOCKS_PER_CHUNK
  assert [aot.probe_blocks_per_chunk(n) for n in (8, 32, 64)] == [4, 2, 1]


def test_precision_settings_set_the_state_bytes_per_chip():
  """Parameter and optimizer-state dtypes are gin settings; the compile report counts their bytes."""
  from xbook.model import DecoderConfig
  from xbook.train import aot
  from xbook.train.mesh import MeshConfig
  from xbook.train.optimizer import OptimizerConfig
  from xbook.train.trainer import Trainer
  model = DecoderConfig(vocab_size=512, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=16,
                        mlp_dim=128)

  def state_bytes(param_dtype, mu_dtype):
    trainer = Trainer(model_config=dataclasses.replace(model, param_dtype=param_dtype),
                      optimizer_config=OptimizerConfig(mu_dtype=mu_dtype),
                      mesh_config=MeshConfig(data=1, fsdp=4, sequence=1, tensor=2), batch_size=4,
                      seq_len=32)
    return (aot._bytes_per_chip(trainer.abstract_state.params),
            aot._bytes_per_chip(trainer.abstract_state.opt_state))

  params_f32, opt_f32 = state_bytes("float32", None)
  params_bf16, opt_bf16 = state_bytes("bfloat16", None)
  _, opt_mu_bf16 = state_bytes("float32", "bfloat16")
  assert params_bf16 == params_f32 // 2 and opt_bf16 == pytest.approx(opt_f32 / 2, rel=1e-3)
  assert opt_mu_bf16 == pytest.approx(0.75 * opt_f32, rel=1e-3)  # mu halves, nu stays float32
