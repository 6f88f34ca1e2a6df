"""Trajectories from real scaffolds: segment layout, vocabularies, the book views as seqio tasks."""

from __future__ import annotations

import io
import json
import logging

import jax.numpy as jnp
import numpy as np
import pytest
import seqio
import sentencepiece as spm

from xbook import cli
from xbook.data import tasks, trajectory, vocab
from xbook.data.feature_converter import TrajectoryFeatureConverter, task_feature_lengths
from xbook.data.spec import DataSpec, TrajectoryFormat
from xbook.model.attention_mask import attention_mask

SEQ_LEN = 256
WINDOW_LEN = 4096  # below the global plan of both books (cut to 3/8) and their longest scenes (split)
FULL_LEN = 73728  # above both books' whole trajectories (72,762 and 65,968 tokens)
TEXT = trajectory.KIND_ID["text"]


def _spec(files, vocab_file, length: int = SEQ_LEN, **settings) -> DataSpec:
  return DataSpec.build(str(files), vocab.load_vocabulary(vocab_file), length, **settings)


def _register(name: str, files, vocab_file, view: str = "windows", **settings) -> seqio.Task:
  """The seqio adapter of a DataSpec's view (xbook.data.tasks), registered as `name`."""
  return tasks.register_task(name, _spec(files, vocab_file, **settings), view)


def _examples(task_name: str, split: str = "train", length_multiple: int = 1, length: int = SEQ_LEN,
             shard_info: seqio.ShardInfo | None = None):
  bos_id = seqio.get_mixture_or_task(task_name).output_features["targets"].vocabulary.bos_id
  ds = seqio.get_dataset(task_name, task_feature_lengths=task_feature_lengths(length),
                         dataset_split=split, shuffle=False, num_epochs=1, shard_info=shard_info,
                         feature_converter=TrajectoryFeatureConverter(bos_id=bos_id, length_multiple=length_multiple))
  return list(ds.as_numpy_iterator())


def _encoded(vocabulary, segments) -> list[int]:
  return [i for s in segments for i in vocabulary.encode(s.text)]


def _token_keys(examples) -> list[bytes]:
  """Each example's target tokens, hashable."""
  return [e["decoder_target_tokens"].tobytes() for e in examples]


def _check_contract(example, length: int, bos_id: int = vocab.PAD_ID) -> None:
  """Targets are inputs shifted by one within each sequence (BOS first), padding has no weight, positions
  count. An xbook vocabulary's BOS is its pad id 0."""
  real = example["decoder_segment_ids"] > 0
  assert example["decoder_target_tokens"].shape == (length,)
  assert np.all(np.diff(real.astype(np.int32)) <= 0)  # tokens first, then only padding
  assert np.all(example["decoder_loss_weights"][~real] == 0)
  targets, inputs = example["decoder_target_tokens"], example["decoder_input_tokens"]
  ids, positions = example["decoder_segment_ids"], example["decoder_positions"]
  starts = np.flatnonzero(real & (positions == 0))
  assert starts[0] == 0 and np.all(ids[starts] == np.arange(1, len(starts) + 1))
  inside = np.flatnonzero(real & (positions > 0))
  assert np.all(inputs[real & (positions == 0)] == bos_id)
  assert np.all(inputs[inside] == targets[inside - 1]) and np.all(ids[inside] == ids[inside - 1])
  assert np.all(positions[inside] == positions[inside - 1] + 1)


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
  with pytest.raises(ValueError, match="unknown plan order"):
    trajectory.scaffold_to_segments(record, "shuffled")


def test_vocabulary_has_seqio_ids_single_piece_markers_and_round_trips_prose(vocab_path, scaffold_records):
  vocabulary = vocab.load_vocabulary(vocab_path)
  assert (vocabulary.pad_id, vocabulary.eos_id, vocabulary.unk_id, vocabulary.bos_id) == (0, 1, 2, 0)
  for marker in trajectory.ALL_MARKERS:
    assert len(vocabulary.encode(marker)) == 1, marker
  scene_text = scaffold_records[0]["chapters"][1]["scenes"][0]["text"]
  assert "\n" in scene_text
  assert vocabulary.decode(vocabulary.encode(scene_text)) == scene_text


def test_records_of_other_splits_stay_out(vocab_path, scaffold_records, tmp_path):
  moved = [dict(r, split="validation" if i == 0 else "train") for i, r in enumerate(scaffold_records)]
  path = tmp_path / "scaffolds.jsonl"
  path.write_text("".join(json.dumps(r) + "\n" for r in moved), encoding="utf-8")
  _register("test_split", str(path), str(vocab_path))
  vocabulary = vocab.load_vocabulary(vocab_path)
  prompt_ids = vocabulary.encode(trajectory.scaffold_to_segments(moved[0])[0].text)
  validation = _examples("test_split", split="validation", length=WINDOW_LEN)
  assert validation[0]["decoder_target_tokens"][:len(prompt_ids)].tolist() == prompt_ids
  train_starts = [w["decoder_target_tokens"][:len(prompt_ids)].tolist() for w in _examples("test_split", length=WINDOW_LEN)]
  assert prompt_ids not in train_starts


def test_length_must_divide_by_the_sequence_parallel_degree(vocab_path, scaffold_file):
  _register("test_multiple", str(scaffold_file), str(vocab_path))
  with pytest.raises(ValueError, match="multiple of the sequence-parallel degree 3"):
    _examples("test_multiple", length_multiple=3)


def test_windows_cover_every_scene_text_once_behind_the_global_plan(vocab_path, scaffold_file,
                                                                    scaffold_records):
  weights = {"prompt": 0.0, "outline": 0.5}
  table = np.array(trajectory.loss_weight_table(weights))
  _register("test_windows", str(scaffold_file), str(vocab_path), loss_weights=weights)
  examples = _examples("test_windows", length=WINDOW_LEN)
  vocabulary = vocab.load_vocabulary(vocab_path)
  previously = vocabulary.encode(trajectory.MARKERS["outline"] + "Previously:")
  seen = 0
  for record in scaffold_records:
    segments = trajectory.scaffold_to_segments(record)
    prefix = _encoded(vocabulary, segments[:4])[:3 * WINDOW_LEN // 8]  # the global plan, cut to 3/8
    prefix_kinds = [trajectory.KIND_ID[s.kind] for s in segments[:4] for _ in vocabulary.encode(s.text)]
    book = [e for e in examples if e["decoder_target_tokens"][:len(prefix)].tolist() == prefix]
    assert len(book) > 2
    seen += len(book)
    text = np.concatenate([e["decoder_target_tokens"][e["decoder_segment_kinds"] == TEXT] for e in book])
    assert text.tolist() == _encoded(vocabulary, [s for s in segments if s.kind == "text"]) + [vocab.EOS_ID]
    n_previously = 0
    for i, example in enumerate(book):
      _check_contract(example, WINDOW_LEN)
      assert np.all(example["decoder_segment_ids"] <= 1)
      kinds, loss = example["decoder_segment_kinds"], example["decoder_loss_weights"]
      np.testing.assert_array_equal(kinds[:len(prefix)], prefix_kinds[:len(prefix)])
      np.testing.assert_array_equal(loss[:len(prefix)], table[kinds[:len(prefix)]] * (i == 0))
      real = example["decoder_segment_ids"] > 0
      assert np.all(loss[real & (kinds == TEXT)] == table[TEXT])
      body = example["decoder_target_tokens"][len(prefix):]
      if body[:len(previously)].tolist() == previously:  # the summaries of the chapters before
        n_previously += 1
        assert np.all(loss[len(prefix):][kinds[len(prefix):] == trajectory.KIND_ID["outline"]] == 0)
      assert np.all(np.isin(loss[real], [0.0, *table]))
    assert n_previously >= 2
  assert seen == len(examples)


def test_repeated_plans_take_the_repeat_weight_and_a_long_global_plan_is_cut(vocab_path, scaffold_records,
                                                                              caplog):
  vocabulary = vocab.load_vocabulary(vocab_path)
  table = np.array(trajectory.loss_weight_table())
  record = scaffold_records[1]
  from xbook.data import windows as windows_view
  windows_view._WARNED.clear()  # warned once per process: an earlier test may have built this book
  with caplog.at_level(logging.WARNING, logger="xbook.data.windows"):
    windows = TrajectoryFormat().book_examples("windows", vocabulary, length=WINDOW_LEN, repeat_weight=0.5)(record)
  assert "global plan is cut by" in caplog.text
  prefix = 3 * WINDOW_LEN // 8
  for i, window in enumerate(windows):
    assert len(window["targets"]) <= WINDOW_LEN
    expected = table[window["segment_kinds"][:prefix]] * (1.0 if i == 0 else 0.5)
    np.testing.assert_allclose(window["loss_weights"][:prefix], expected)


def test_full_view_is_the_whole_trajectory_and_skips_books_too_long(vocab_path, scaffold_file,
                                                                     scaffold_records, caplog):
  _register("test_full", str(scaffold_file), str(vocab_path), "full")
  examples = _examples("test_full", length=FULL_LEN)
  vocabulary = vocab.load_vocabulary(vocab_path)
  table = np.array(trajectory.loss_weight_table())
  assert len(examples) == len(scaffold_records)
  for example, record in zip(examples, scaffold_records):
    segments = trajectory.scaffold_to_segments(record)
    ids = _encoded(vocabulary, segments) + [vocab.EOS_ID]
    real = example["decoder_segment_ids"] > 0
    assert example["decoder_target_tokens"][real].tolist() == ids
    np.testing.assert_array_equal(example["decoder_loss_weights"][real],
                                  table[example["decoder_segment_kinds"][real]])
    _check_contract(example, FULL_LEN)
  with caplog.at_level(logging.WARNING, logger="xbook.data.pieces"):
    assert TrajectoryFormat().book_examples("full", vocabulary, length=WINDOW_LEN)(scaffold_records[0]) == []
  assert "skipped book pg46" in caplog.text


def test_stages_are_packed_without_attention_across_sequences(vocab_path, scaffold_file, scaffold_records):
  length = 1024
  _register("test_stages", str(scaffold_file), str(vocab_path), "stages")
  examples = _examples("test_stages", length=length)
  vocabulary = vocab.load_vocabulary(vocab_path)
  packed = 0
  for example in examples:
    _check_contract(example, length)
    ids, positions = example["decoder_segment_ids"], example["decoder_positions"]
    if ids.max() == 1:
      continue
    packed += 1
    mask = np.asarray(attention_mask(jnp.asarray(ids[None]), jnp.asarray(ids[None]),
                                     jnp.asarray(positions[None]), jnp.asarray(positions[None])))[0]
    query, key = np.nonzero(mask)
    assert np.all(ids[query] == ids[key]) and np.all(ids[query] > 0) and np.all(key <= query)
  assert packed > 0
  # Every scene text token is supervised exactly once, in order; the given context weighs nothing.
  learned = np.concatenate([e["decoder_target_tokens"][(e["decoder_segment_kinds"] == TEXT)
                                                       & (e["decoder_loss_weights"] > 0)] for e in examples])
  learned = learned[learned != vocab.EOS_ID]
  expected = [i for r in scaffold_records
              for i in _encoded(vocabulary, [s for s in trajectory.scaffold_to_segments(r)
                                             if s.kind == "text"])]
  assert learned.tolist() == expected
  first = examples[0]
  prompt = vocabulary.encode(trajectory.scaffold_to_segments(scaffold_records[0])[0].text)
  assert first["decoder_target_tokens"][:len(prompt)].tolist() == prompt
  assert np.all(first["decoder_loss_weights"][:len(prompt)] == 0)
  assert first["decoder_segment_kinds"][len(prompt)] == trajectory.KIND_ID["premise"]


def test_mixture_draws_from_every_view(vocab_path, scaffold_file):
  mixture = tasks.register_mixture("test_mixture", _spec(scaffold_file, vocab_path,
                                                        view_rates={"windows": 1.0, "stages": 2.0, "full": 0.5}))
  assert sorted(t.name for t in mixture.tasks) == ["test_mixture_full", "test_mixture_stages",
                                                   "test_mixture_windows"]
  by_task = {t.name: _examples(t.name, length=FULL_LEN) for t in mixture.tasks}
  assert all(by_task.values())
  mixed = _examples("test_mixture", length=FULL_LEN)
  assert sorted(_token_keys(mixed)) == sorted(k for examples in by_task.values() for k in _token_keys(examples))


def test_hosts_read_disjoint_shards_that_cover_the_task(vocab_path, scaffold_records, tmp_path):
  for i, record in enumerate(scaffold_records):
    (tmp_path / f"scaffolds-{i}.jsonl").write_text(json.dumps(record) + "\n", encoding="utf-8")
  _register("test_shards", str(tmp_path / "scaffolds-*.jsonl"), str(vocab_path))
  hosts = [set(_token_keys(_examples("test_shards", length=WINDOW_LEN, shard_info=seqio.ShardInfo(i, 2))))
           for i in range(2)]
  assert hosts[0] and hosts[1] and not hosts[0] & hosts[1]
  assert hosts[0] | hosts[1] == set(_token_keys(_examples("test_shards", length=WINDOW_LEN)))


def test_pretrained_tokenizer_writes_markers_as_text_tags(scaffold_records, tmp_path):
  """A SentencePiece model trained here stands in for a Llama/Mistral tokenizer.model: like those it has
  no xbook marker symbols and other special ids (unk 0, bos 1, eos 2, no pad), so the markers must be
  written as plain-text tags that tokenize to ordinary pieces, and books must end with the model's EOS."""
  model = io.BytesIO()
  paragraphs = [s.text for r in scaffold_records
                for s in trajectory.scaffold_to_segments(r, marker_style="tags")]
  spm.SentencePieceTrainer.train(sentence_iterator=iter(paragraphs), model_writer=model, vocab_size=800,
                                 unk_id=0, bos_id=1, eos_id=2, pad_id=-1, byte_fallback=True,
                                 max_sentence_length=1 << 16, minloglevel=2)
  path = tmp_path / "tokenizer.model"
  path.write_bytes(model.getvalue())
  vocabulary = vocab.load_vocabulary(path)
  assert vocabulary.marker_style == "tags" and vocabulary.bos_id == 1
  assert len(vocabulary.encode(trajectory.TAGS["premise"])) > 1
  scaffolds = tmp_path / "scaffolds.jsonl"
  scaffolds.write_text("".join(json.dumps(r) + "\n" for r in scaffold_records), encoding="utf-8")
  _register("test_pretrained", str(scaffolds), str(path))
  examples = _examples("test_pretrained", length=WINDOW_LEN)
  for example in examples:
    _check_contract(example, WINDOW_LEN, bos_id=vocabulary.bos_id)
    assert not np.any(example["decoder_target_tokens"][example["decoder_segment_ids"] > 0] == 0)
  first = examples[0]["decoder_target_tokens"]
  assert vocabulary.decode(first.tolist()).startswith("<prompt>")
  assert "<premise>" in vocabulary.decode(first.tolist())
  book_ends = [e for e in examples if vocabulary.eos_id in e["decoder_target_tokens"]]
  assert len(book_ends) == len(scaffold_records)
  # Generation starts a trajectory the way training laid them out: in text tags for this vocabulary.
  from xbook.infer.generate import prompt_prefix
  assert prompt_prefix(" A ghost story. ", vocabulary) == "<prompt>A ghost story.\n<premise>"


def test_data_inspect_shows_an_example_segment_by_segment(vocab_path, scaffold_file, capsys):
  common = ["data", "inspect", "--scaffolds", str(scaffold_file), "--vocab", str(vocab_path),
            "--seq_len", "1024"]
  assert cli.main(common + ["--task", "stages", "--index", "1", "--json"]) == 0
  shown = json.loads(capsys.readouterr().out)
  assert shown["examples"] > 10 and shown["index"] == 1
  spans = shown["segments"]
  assert spans[0]["start"] == 0 and all(a["end"] == b["start"] for a, b in zip(spans, spans[1:]))
  assert sum(shown["tokens_per_kind"].values()) == spans[-1]["end"] <= 1024
  assert {s["kind"] for s in spans} <= set(trajectory.SEGMENT_KINDS)
  assert cli.main(common + ["--task", "windows", "--max_chars", "40"]) == 0
  out = capsys.readouterr().out
  assert "weight 0.00  '<|prompt|>" in out and "premise" in out and "tokens per kind: prompt" in out


def test_plans_first_windows_put_their_plans_before_their_text(vocab_path, scaffold_records):
  vocabulary = vocab.load_vocabulary(vocab_path)
  record = scaffold_records[0]
  windows = TrajectoryFormat("plans_first").book_examples("windows", vocabulary, length=WINDOW_LEN)(record)
  for window in windows:
    kinds = window["segment_kinds"]
    first_text = np.flatnonzero(kinds == TEXT)[0]
    assert np.all(kinds[first_text:] == TEXT)
  text = np.concatenate([w["targets"][w["segment_kinds"] == TEXT] for w in windows])
  segments = trajectory.scaffold_to_segments(record, "plans_first")
  assert text.tolist() == _encoded(vocabulary, [s for s in segments if s.kind == "text"]) + [vocab.EOS_ID]


def test_offline_cache_holds_the_online_examples_in_shards_hosts_split(vocab_path, scaffold_records,
                                                                       tmp_path):
  """The Beam-built cache (DirectRunner) holds exactly the windows the task builds online, in TFRecord
  shards that two hosts read disjointly and that together cover the task."""
  from xbook.data import cache
  for i, record in enumerate(scaffold_records):
    (tmp_path / f"scaffolds-{i}.jsonl").write_text(json.dumps(record) + "\n", encoding="utf-8")
  pattern = str(tmp_path / "scaffolds-*.jsonl")
  _register("test_uncached", pattern, str(vocab_path))
  spec = _spec(pattern, vocab_path, WINDOW_LEN, cache_name="test_cached")
  task = tasks.cached_task(spec)
  with pytest.raises(ValueError, match="no cache placeholder"):
    cache.cache_task(seqio.get_mixture_or_task("test_uncached"), str(tmp_path / "cache"), num_shards=2)
  out = cache.cache_task(task, str(tmp_path / "cache"), num_shards=2, splits=["train"])
  assert sorted(p.name for p in (tmp_path / "cache" / "test_cached").iterdir() if "tfrecord" in p.name) == [
      "train.tfrecord-00000-of-00002", "train.tfrecord-00001-of-00002"]
  assert (tmp_path / "cache" / "test_cached" / "COMPLETED").is_file()
  seqio.add_global_cache_dirs([str(tmp_path / "cache")])
  assert seqio.get_mixture_or_task("test_cached").cache_dir == out

  def cached(shard_info=None):
    ds = seqio.get_dataset("test_cached", task_feature_lengths=task_feature_lengths(WINDOW_LEN),
                           dataset_split="train", shuffle=False, num_epochs=1, use_cached=True,
                           shard_info=shard_info,
                           feature_converter=TrajectoryFeatureConverter(bos_id=spec.bos_id))
    examples = list(ds.as_numpy_iterator())
    for example in examples:
      _check_contract(example, WINDOW_LEN)
    return _token_keys(examples)

  online = _token_keys(_examples("test_uncached", length=WINDOW_LEN))
  assert sorted(cached()) == sorted(online)
  hosts = [set(cached(seqio.ShardInfo(i, 2))) for i in range(2)]
  assert hosts[0] and hosts[1] and not hosts[0] & hosts[1]
  assert hosts[0] | hosts[1] == set(online)


def test_windows_repeat_no_plan_when_the_whole_outline_fits(vocab_path, scaffold_file, caplog):
  """With the whole outline in the global plan, no window adds a "Previously" segment (it would repeat
  summaries the window holds); the share of repeated plan tokens inside a window is then 0. Warnings
  about cut plans are logged once per book, not at every pass over the data."""
  from xbook.data import windows
  long_len = 16384  # 3/8 of it holds both books' global plans whole
  _register("test_no_previously", str(scaffold_file), str(vocab_path))
  vocabulary = vocab.load_vocabulary(vocab_path)
  previously = vocabulary.encode("Previously:")
  for example in _examples("test_no_previously", length=long_len):
    tokens = example["decoder_target_tokens"].tolist()
    assert not any(tokens[i:i + len(previously)] == previously for i in range(len(tokens)))
  windows._WARNED.clear()
  _register("test_warn_once", str(scaffold_file), str(vocab_path))
  with caplog.at_level(logging.WARNING, logger="xbook.data.windows"):
    for _ in range(2):  # two passes over the data
      _examples("test_warn_once", length=WINDOW_LEN)
  cut = [r for r in caplog.records if "global plan is cut" in r.getMessage()]
  assert len(cut) == 2  # one per book
