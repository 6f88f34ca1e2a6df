"""Mistakes a user makes end in one `error:` line that names what is wrong and how to fix it, never in a
traceback, and change nothing; data that does not fit the config is refused, never read as if it did."""

from __future__ import annotations

import json

import pytest
import seqio

from xbook.data import cache, tasks


def test_a_cache_built_at_another_length_is_refused_naming_the_field_and_the_rebuild_command(
    tmp_path, scaffold_file, vocab_path):
  """A cache records what it was built from; a task at another seq_len refuses it before reading it."""
  built = tasks.register_task("xbook_test_provenance", "windows", str(scaffold_file), str(vocab_path),
                              cached_length=64)
  folder = tmp_path / "cache" / "xbook_test_provenance"
  folder.mkdir(parents=True)
  # What cache_task writes (its Beam pipeline is tested in test_data and test_train): provenance, COMPLETED.
  (folder / cache.PROVENANCE_FILE).write_text(json.dumps({**built.provenance, "splits": ["train"]}))
  (folder / "COMPLETED").write_text("")
  seqio.add_global_cache_dirs([str(tmp_path / "cache")])
  assert built.cache_dir == str(folder)
  with pytest.raises(cache.CacheMismatchError, match="holds the split.*train, not validation"):
    built.get_dataset({"targets": 64}, split="validation", use_cached=True)

  other = tasks.register_task("xbook_test_provenance", "windows", str(scaffold_file), str(vocab_path),
                              cached_length=128, loss_weights={"prompt": 1.0})
  with pytest.raises(cache.CacheMismatchError) as error:
    other.get_dataset({"targets": 128}, split="train", use_cached=True)
  message = str(error.value)
  assert "seq_len 64 in the cache, 128 here (train.seq_len)" in message
  assert "train.loss_weights" in message and "trajectory_layout" not in message
  assert f"xbook data cache --gin_file=YOUR_CONFIG.gin --out {tmp_path / 'cache'} --overwrite" in message

  (folder / cache.PROVENANCE_FILE).unlink()  # a cache from before provenance was recorded
  with pytest.raises(cache.CacheMismatchError, match="does not record what it was built from"):
    tasks.register_task("xbook_test_provenance", "windows", str(scaffold_file), str(vocab_path),
                        cached_length=64).cache_dir


def test_the_rebuild_command_repeats_the_command_lines_gin_config():
  command = cache.rebuild_command("out/cache", overwrite=True, gin_files=["configs/runs/demo.gin"],
                                  gin_bindings=["train.seq_len = 128", "train.vocab_path = 'a b/v.model'",
                                                "train.cache_dir = 'out/cache'"])
  assert command == ("xbook data cache --gin_file=configs/runs/demo.gin --gin.train.seq_len=128 "
                     "--gin.train.vocab_path=\"'a b/v.model'\" --out out/cache --overwrite")


@pytest.mark.parametrize("damage, expected", [
    ("truncate", r"bad\.jsonl:2: not a JSON line: .*the line ends before its record does"),
    ("wrong_type", r"bad\.jsonl:2 \(book pg43\): chapters\[0\]\.title: expected a string, got int 5"),
    ("unknown_field", r"bad\.jsonl:2 \(book pg43\): record: unknown field\(s\) \['colour'\]"),
])
def test_the_data_path_validates_records_as_scaffold_show_does(tmp_path, scaffold_records, vocab_path, damage,
                                                               expected):
  """A bad scaffold line is named (file, line, book, field) when the task is registered, before tf.data
  runs, with the messages of `xbook scaffold show` (xbook.scaffold.read_scaffolds)."""
  from xbook.scaffold import ScaffoldError, read_scaffolds
  good, record = scaffold_records
  record = json.loads(json.dumps(record))
  line = json.dumps(record)
  if damage == "truncate":
    line = line[:len(line) // 2]
  elif damage == "wrong_type":
    record["chapters"][0]["title"] = 5
    line = json.dumps(record)
  else:
    record["colour"] = "red"
    line = json.dumps(record)
  path = tmp_path / "bad.jsonl"
  path.write_text(json.dumps(good) + "\n" + line + "\n", encoding="utf-8")
  with pytest.raises(ScaffoldError, match=expected) as in_data:
    tasks.register_task("xbook_test_bad_records", "windows", str(path), str(vocab_path))
  with pytest.raises(ScaffoldError) as in_show:
    list(read_scaffolds(path))
  assert str(in_data.value) == str(in_show.value)


def test_a_missing_scaffold_file_is_named(tmp_path, vocab_path):
  with pytest.raises(FileNotFoundError, match=r"no scaffold file matches .*nothing-\*\.jsonl.*xbook scaffold build"):
    tasks.register_task("xbook_test_missing", "windows", str(tmp_path / "nothing-*.jsonl"), str(vocab_path))
