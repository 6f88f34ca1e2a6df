"""Each contract is declared in one module and read from there: example features, splits, segment kinds and
their loss weights, the abstract parameter tree; and the mesh says when it cannot follow the topology."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import flax.linen as nn
import jax
import numpy as np
import pytest

from xbook.books import splits
from xbook.data import feature_converter, features, pieces, tasks, trajectory, windows
from xbook.model import Decoder, DecoderConfig, abstract_params, param_shapes
from xbook.scaffold import schema
from xbook.train import mesh as mesh_lib

PACKAGE = Path(__file__).resolve().parents[1] / "xbook"


def test_feature_names_and_dtypes_come_from_one_module():
  assert {name: spec.dtype.as_numpy_dtype for name, spec in
          feature_converter.TrajectoryFeatureConverter.MODEL_FEATURES.items()} == features.EXAMPLE_FEATURES
  assert {name: spec.dtype.as_numpy_dtype for name, spec in
          feature_converter.TrajectoryFeatureConverter.TASK_FEATURES.items()} == features.TASK_FEATURES
  assert {name: dtype.as_numpy_dtype for name, dtype in tasks._FEATURE_DTYPES.items()} == features.TASK_FEATURES
  assert set(feature_converter.task_feature_lengths(16)) == set(features.TASK_FEATURES)
  short = {name: x[:1] for name, x in features.synthetic_batch(1, 8, 50).items()}
  for batch in (features.pad_batch(None, 2, 8), features.synthetic_batch(2, 8, 50), features.pad_batch(short, 2, 8)):
    assert {name: (x.dtype, x.shape) for name, x in batch.items()} == {
        name: (dtype, (2, 8)) for name, dtype in features.EXAMPLE_FEATURES.items()}
  padded = features.pad_batch(short, 2, 8)
  assert all((padded[name][:1] == short[name]).all() and not padded[name][1:].any() for name in short)
  example = pieces.assemble([pieces.Piece((5, 6), "text")], trajectory.loss_weight_table())
  assert {name: x.dtype for name, x in example.items()} == features.TASK_FEATURES


def test_splits_are_declared_once():
  assert schema.SPLITS is splits.SPLITS and tasks.SPLITS is splits.SPLITS
  declared = [str(path.relative_to(PACKAGE)) for path in sorted(PACKAGE.rglob("*.py"))
              if re.search(r"\(\s*\"train\",\s*\"validation\",\s*\"test\"\s*\)", path.read_text(encoding="utf-8"))]
  assert declared == ["books/splits.py"]


def test_previously_has_its_own_kind_under_the_outline_marker():
  # Appended: the ids of every other kind stay what runs, caches and metrics already hold.
  assert trajectory.SEGMENT_KINDS[-1] == "previously"
  assert trajectory.SEGMENT_KINDS[:-1] == trajectory.XBOOK_KINDS + trajectory.PAPER_KINDS
  for style in trajectory.MARKER_STYLES:
    segment = trajectory.make_segment("previously", "Previously:\n1. Fog: a town.", style)
    marker = trajectory.markers(style)[0]["outline"]
    assert segment.text.startswith(marker + "Previously:")
    assert trajectory.split_marker(segment) == (marker, segment.text[len(marker):])
  assert "previously" not in trajectory.MARKERS and len(trajectory.ALL_MARKERS) == len(trajectory.XBOOK_KINDS) + 1

  table = lambda weights: dict(zip(trajectory.SEGMENT_KINDS, trajectory.loss_weight_table(weights)))  # noqa: E731
  assert table(None)["previously"] == table(None)["outline"] == 1.0
  assert table({"outline": 0.5})["previously"] == 0.5  # a weight keyed by `outline` reaches it
  assert table({"outline": 0.5, "previously": 0.0})["previously"] == 0.0
  with pytest.raises(ValueError, match="unknown segment kind"):
    trajectory.loss_weight_table({"outlines": 1.0})


def _long_outline_record(n_chapters: int = 10) -> dict:
  chapters = [{"index": c, "title": f"Chapter {c + 1}", "summary": f"In chapter {c + 1} the fog over the town thickens.",
               "scenes": [{"summary": f"Scene {s} of chapter {c + 1}.", "text": f"Text of scene {s}, chapter {c + 1}. " * 8}
                          for s in range(2)]} for c in range(n_chapters)]
  return {"book": {"id": "pg0"}, "prompt": "Write a novel about fog.", "premise": "A town in fog.",
          "synopsis": "The fog comes and goes.", "chapters": chapters}


def test_windows_write_previously_segments_of_their_own_kind():
  encode = lambda text: list(text.encode("utf-8"))  # noqa: E731
  record = _long_outline_record()
  book = pieces.encode_book(record, encode, eos_id=1)
  weights = trajectory.loss_weight_table({"outline": 0.4})
  examples = windows.window_examples(record, book, encode, length=1024, weight_table=weights, repeat_weight=0.5)
  previously = trajectory.KIND_ID["previously"]
  with_previously = [e for e in examples if np.any(e["segment_kinds"] == previously)]
  assert len(with_previously) >= 2 and not np.any(examples[0]["segment_kinds"] == previously)
  for example in with_previously:
    tokens = example["targets"][example["segment_kinds"] == previously]
    assert bytes(tokens.tolist()).decode().startswith("<|outline|>Previously:\n")
    np.testing.assert_allclose(example["loss_weights"][example["segment_kinds"] == previously], 0.4 * 0.5)


TINY = DecoderConfig(vocab_size=64, d_model=16, n_layers=2, n_heads=2, n_kv_heads=1, head_dim=8, mlp_dim=32)


def test_abstract_params_are_the_decoders_tree_without_allocating_it():
  tokens = np.zeros((1, 4), np.int32)
  real = nn.unbox(jax.eval_shape(Decoder(TINY).init, jax.random.key(0), tokens, tokens + 1, tokens)["params"])
  cpu = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  abstract = abstract_params(TINY, cpu, dtype="bfloat16")
  assert jax.tree.structure(abstract) == jax.tree.structure(real)
  for leaf, x in zip(jax.tree.leaves(abstract), jax.tree.leaves(real)):
    assert leaf.shape == x.shape and leaf.dtype == np.dtype("bfloat16") and leaf.sharding == cpu
  # The tree does not depend on the attention implementation (traced with dense: no mesh or rules needed).
  ring = DecoderConfig(**{**TINY.__dict__, "attention": "ring"})
  assert jax.tree.map(lambda x: x.shape, param_shapes(ring)) == jax.tree.map(lambda x: x.shape, param_shapes(TINY))


def test_a_mesh_that_cannot_follow_the_topology_says_so(monkeypatch, caplog):
  def refuse(*args, **kwargs):
    raise NotImplementedError("no torus layout for this shape")

  monkeypatch.setattr(mesh_lib.mesh_utils, "create_device_mesh", refuse)
  with caplog.at_level(logging.WARNING, logger=mesh_lib.__name__):
    mesh = mesh_lib.make_mesh(mesh_lib.MeshConfig(data=1, fsdp=-1))
  assert mesh.devices.size == jax.device_count()
  assert "no torus layout for this shape" in caplog.text and "jax.devices() order" in caplog.text


def test_a_config_reads_its_gin_bindings_only_where_an_entry_point_asks():
  import gin

  from xbook.gin_flags import configured
  from xbook.train.aot import TpuTarget
  from xbook.train.optimizer import OptimizerConfig

  gin.clear_config()
  try:
    gin.parse_config(["OptimizerConfig.learning_rate = 0.5", "TpuTarget.accelerator = 'v6e-8'"])
    assert OptimizerConfig().learning_rate == 3e-4  # library code: the plain defaults
    assert configured(OptimizerConfig) == OptimizerConfig(learning_rate=0.5)
    assert type(configured(OptimizerConfig)) is OptimizerConfig
    # A flag over the binding; a flag that was not given (None) leaves the binding.
    assert configured(TpuTarget, accelerator="v5p-64", num_slices=None) == TpuTarget(accelerator="v5p-64")
    assert configured(TpuTarget, accelerator=None).accelerator == "v6e-8"
    assert "OptimizerConfig.learning_rate = 0.5" in gin.operative_config_str()  # recorded in config.gin
  finally:
    gin.clear_config()
