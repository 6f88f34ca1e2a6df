"""The one reader of JSON records (xbook.json_records) and the two records read through it: a run's model.json
(RunInfo.read) and an imported-weights folder's (ImportedWeights.read). Each refusal names the file and the fix."""

from __future__ import annotations

import json

import pytest

from xbook.json_records import read_json_record
from xbook.model.hf.checkpoint import ImportedWeights
from xbook.train.run_info import RunInfo

HINTS = {"missing_hint": "is it a folder of ours?", "fix": "write it again", "what": "the record"}


def test_a_json_object_is_read_as_it_is(tmp_path):
  record = {"model": {"d_model": 8}, "seq_len": 16, "started_from": None}
  (tmp_path / "model.json").write_text(json.dumps(record), encoding="utf-8")
  assert read_json_record(tmp_path / "model.json", **HINTS) == record
  assert read_json_record(str(tmp_path / "model.json"), **HINTS) == record


def test_a_missing_unreadable_or_non_object_record_is_refused_with_the_callers_hint(tmp_path):
  with pytest.raises(FileNotFoundError, match=r"model\.json not found: is it a folder of ours\?$"):
    read_json_record(tmp_path / "model.json", **HINTS)
  for text, message in {"{not json": r"model\.json: not valid JSON \(.*\); write it again$",
                        "[1, 2]": r"model\.json: expected a JSON object \(the record\), got list; write it again$",
                        '"model"': r"model\.json: expected a JSON object \(the record\), got str; write it again$"
                        }.items():
    (tmp_path / "model.json").write_text(text, encoding="utf-8")
    with pytest.raises(ValueError, match=message):
      read_json_record(tmp_path / "model.json", **HINTS)


@pytest.mark.parametrize("reader, missing, fix", [
    (ImportedWeights.read, r"a folder written by `xbook weights import`\?", "import the weights again"),
    (RunInfo.read, r"a run directory made by `xbook train`\?", "restore it from the run's copy or retrain"),
])
def test_both_model_json_readers_name_their_own_fix(tmp_path, reader, missing, fix):
  with pytest.raises(FileNotFoundError, match=rf"model\.json not found: is .*{missing}"):
    reader(tmp_path)
  for text in ("{not json", "[1, 2]"):
    (tmp_path / "model.json").write_text(text, encoding="utf-8")
    with pytest.raises(ValueError, match=rf"model\.json: .*; {fix}$"):
      reader(tmp_path)
