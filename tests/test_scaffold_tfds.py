"""The `xbook_scaffolds` TFDS dataset, built by Apache Beam's DirectRunner from three real novels."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import tensorflow_datasets as tfds

from xbook.books import load_book
from xbook.scaffold import ExtractiveSummarizer, build_scaffold
from xbook.scaffold.schema import comparable
from xbook.scaffold.tfds_builder import NAME, decode_scaffold, prepare, tfds_data_source

# Short novels by three authors: Dickens falls in validation, Stevenson and Wells in train.
NOVELS = {"pg46": "validation", "pg43": "train", "pg35": "train"}


@pytest.fixture(scope="module")
def manual_dir(corpus_dir: Path, tmp_path_factory) -> Path:
  """The novels, linked into a directory of their own, with an empty file the build must skip."""
  directory = tmp_path_factory.mktemp("manual")
  for book_id in NOVELS:
    (directory / f"{book_id}.txt").symlink_to(corpus_dir / f"{book_id}.txt")
  (directory / "pg0.txt").write_bytes(b"")
  return directory


@pytest.fixture(scope="module")
def data_dir(manual_dir: Path, tmp_path_factory) -> Path:
  directory = tmp_path_factory.mktemp("tfds")
  prepare(str(manual_dir), str(directory), ["--runner=DirectRunner"])
  return directory


def _examples(dataset) -> list[dict[str, Any]]:
  return list(tfds.as_numpy(dataset))


def test_beam_build_equals_the_library_build(manual_dir, data_dir):
  builder = tfds.builder(NAME, data_dir=str(data_dir))
  assert {name: split.num_examples for name, split in builder.info.splits.items()} == {
      "train": 2, "validation": 1}, "no test split: none of the three authors hashes to it"
  summarizer = ExtractiveSummarizer()
  seen = {}
  for split in builder.info.splits:
    for example in _examples(builder.as_dataset(split=split)):
      record = decode_scaffold(example)
      book_id = example["id"].decode()
      seen[book_id] = split
      assert record["split"] == split == example["split"].decode()
      assert record["book"]["title"] == example["title"].decode()
      assert record["book"]["n_words"] == example["n_words"]
      expected = build_scaffold(load_book(manual_dir / f"{book_id}.txt"), summarizer, split=split)
      assert comparable(record) == comparable(expected)
  assert seen == NOVELS


def test_tfds_load_and_seqio_source_read_the_records(data_dir):
  validation = _examples(tfds.load(f"{NAME}:1.0.0", split="validation", data_dir=str(data_dir)))
  carol = decode_scaffold(validation[0])
  assert [e["id"] for e in validation] == [b"pg46"] and carol["characters"][0]["name"] == "Scrooge"

  source = tfds_data_source(str(data_dir))
  assert set(source.splits) == {"train", "validation"}
  train = list(source.get_dataset("train", shuffle=False).as_numpy_iterator())
  records = [decode_scaffold(example) for example in train]
  assert sorted(r["book"]["id"] for r in records) == ["pg35", "pg43"]
  jekyll = next(r for r in records if r["book"]["id"] == "pg43")
  assert [c["name"] for c in jekyll["characters"][:3]] == ["Mr. Utterson", "Hyde", "Jekyll"]
  assert json.loads(train[0]["scaffold"])["schema"] == "xbook.scaffold/1"


def test_a_manual_dir_without_novels_is_named(tmp_path):
  (tmp_path / "novels").mkdir()
  (tmp_path / "novels" / "MANIFEST.tsv").write_text("file\tebook_number\n", encoding="utf-8")
  with pytest.raises(FileNotFoundError, match=r"no \*\.txt novels in the manual directory .*novels"):
    prepare(str(tmp_path / "novels"), str(tmp_path / "tfds"), ["--runner=DirectRunner"])
