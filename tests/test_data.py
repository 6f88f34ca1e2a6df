"""Trajectories from real scaffolds: segment layout, SentencePiece vocabulary, the seqio task."""

from __future__ import annotations

import json

import numpy as np
import pytest
import seqio

from xbook.data import tasks, trajectory, vocab
from xbook.data.feature_converter import TrajectoryFeatureConverter, task_feature_lengths

SEQ_LEN = 256


def _windows(task_name: str, split: str = "train", length_multiple: int = 1):
  ds = seqio.get_dataset(task_name, task_feature_lengths=task_feature_lengths(SEQ_LEN),
                         dataset_split=split, shuffle=False,
                         feature_converter=TrajectoryFeatureConverter(length_multiple=length_multiple))
  return list(ds.as_numpy_iterator())


def test_interleaved_layout_puts_plans_before_the_prose_they_plan(scaffold_records):
  record = scaffold_records[0]
  segments = trajectory.scaffold_to_segments(record)
  kinds = [s.kind for s in segments]
  assert kinds[:4] == ["prompt", "premise", "synopsis", "outline"]
  position = 4
  for chapter in record["chapters"]:
    n = len(chapter["scenes"])
    assert kinds[position:position + 1 + 2 * n] == ["chapter_plan"] + ["scene_plan"] * n + ["text"] * n
    texts = [s.text for s in segments[position + 1 + n:position + 1 + 2 * n]]
    for scene, text in zip(chapter["scenes"], texts):
      assert scene["text"].strip() in text
    position += 1 + 2 * n
  assert position == len(segments)
  assert all(s.text.startswith(trajectory.MARKERS[s.kind]) for s in segments)
  assert segments[-1].text.endswith(trajectory.END_OF_BOOK)


def test_plans_first_layout_puts_every_plan_before_any_text(scaffold_records):
  record = scaffold_records[0]
  interleaved = trajectory.scaffold_to_segments(record, "interleaved")
  plans_first = trajectory.scaffold_to_segments(record, "plans_first")
  kinds = [s.kind for s in plans_first]
  n_text = kinds.count("text")
  assert kinds[-n_text:] == ["text"] * n_text and "text" not in kinds[:-n_text]
  assert sorted(s.text for s in plans_first) == sorted(s.text for s in interleaved)
  texts = [s.text for s in plans_first if s.kind == "text"]
  assert texts == [s.text for s in interleaved if s.kind == "text"]  # the prose keeps its order
  with pytest.raises(ValueError, match="unknown trajectory layout"):
    trajectory.scaffold_to_segments(record, "shuffled")


def test_vocabulary_has_seqio_ids_single_piece_markers_and_round_trips_prose(vocab_path, scaffold_records):
  processor = vocab.load_processor(vocab_path)
  assert (processor.pad_id(), processor.eos_id(), processor.unk_id()) == (0, 1, 2)
  for marker in trajectory.ALL_MARKERS:
    assert len(processor.encode(marker)) == 1, marker
  scene_text = scaffold_records[0]["chapters"][1]["scenes"][0]["text"]
  assert "\n" in scene_text
  assert processor.decode(processor.encode(scene_text)) == scene_text


def test_windows_tile_the_tokenized_trajectory_with_kind_weights(vocab_path, scaffold_file, scaffold_records):
  tasks.register_windows_task("test_windows", str(scaffold_file), str(vocab_path),
                              loss_weights={"prompt": 0.0, "outline": 0.5})
  windows = _windows("test_windows")
  processor = vocab.load_processor(vocab_path)
  weight_table = trajectory.loss_weight_table({"prompt": 0.0, "outline": 0.5})
  by_book = {}
  for record in scaffold_records:
    if record["split"] == "train":
      pieces = [(processor.encode(s.text), trajectory.KIND_ID[s.kind])
                for s in trajectory.scaffold_to_segments(record)]
      ids = [i for encoded, _ in pieces for i in encoded] + [vocab.EOS_ID]
      kinds = [kind for encoded, kind in pieces for _ in encoded] + [trajectory.KIND_ID["text"]]
      by_book[record["book"]["id"]] = (ids, kinds)
  real = [w["decoder_segment_ids"] > 0 for w in windows]
  stream = np.concatenate([w["decoder_target_tokens"][r] for w, r in zip(windows, real)])
  weight_stream = np.concatenate([w["decoder_loss_weights"][r] for w, r in zip(windows, real)])
  kind_stream = np.concatenate([w["decoder_segment_kinds"][r] for w, r in zip(windows, real)])
  expected = np.concatenate([np.array(ids) for ids, _ in by_book.values()])
  assert sorted(stream.tolist()) == sorted(expected.tolist())
  for ids, kinds in by_book.values():  # each book appears as one contiguous run of windows
    start = next(i for i in range(len(stream)) if stream[i:i + len(ids)].tolist() == ids)
    np.testing.assert_array_equal(kind_stream[start:start + len(ids)], kinds)
    np.testing.assert_array_equal(weight_stream[start:start + len(ids)],
                                  [weight_table[k] for k in kinds])
  first = windows[0]
  assert set(first) == {"decoder_input_tokens", "decoder_target_tokens", "decoder_loss_weights",
                        "decoder_segment_ids", "decoder_positions", "decoder_segment_kinds"}
  for name, array in first.items():
    assert array.shape == (SEQ_LEN,)
    assert array.dtype == (np.float32 if name == "decoder_loss_weights" else np.int32)
  np.testing.assert_array_equal(first["decoder_input_tokens"][1:], first["decoder_target_tokens"][:-1])
  assert first["decoder_input_tokens"][0] == 0


def test_records_of_other_splits_stay_out(vocab_path, scaffold_records, tmp_path):
  moved = [dict(r, split="validation" if i == 0 else "train") for i, r in enumerate(scaffold_records)]
  path = tmp_path / "scaffolds.jsonl"
  path.write_text("".join(json.dumps(r) + "\n" for r in moved), encoding="utf-8")
  tasks.register_windows_task("test_split", str(path), str(vocab_path))
  processor = vocab.load_processor(vocab_path)
  prompt_ids = processor.encode(trajectory.scaffold_to_segments(moved[0])[0].text)
  validation = _windows("test_split", split="validation")
  assert validation[0]["decoder_target_tokens"][:len(prompt_ids)].tolist() == prompt_ids
  train_starts = [w["decoder_target_tokens"][:len(prompt_ids)].tolist() for w in _windows("test_split")]
  assert prompt_ids not in train_starts


def test_length_must_divide_by_the_sequence_parallel_degree(vocab_path, scaffold_file):
  tasks.register_windows_task("test_multiple", str(scaffold_file), str(vocab_path))
  with pytest.raises(ValueError, match="multiple of the sequence-parallel degree 3"):
    _windows("test_multiple", length_multiple=3)
