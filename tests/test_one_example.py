"""One definition of an example: the trainer's online reader (xbook.train.input_pipeline) and the seqio Task
adapter (xbook.data.tasks) give the same examples of a DataSpec, for every view of every plan order, on real
novels (the conftest scaffolds, and paper-format records of the same two books)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import seqio

from xbook.data import tasks
from xbook.data.feature_converter import TrajectoryFeatureConverter, task_feature_lengths
from xbook.data.spec import PROFILES, VIEWS, DataSpec, TrajectoryFormat
from xbook.data.vocab import load_vocabulary
from xbook.train.input_pipeline import trajectory_batches

# Windows and stages at a short length (many examples per book); the full view long enough that both books'
# whole trajectories fit (72,762 and 65,968 tokens in xbook's plan orders; 78,289 for pg46 in the 14b profile).
LENGTHS = {"windows": 1024, "stages": 1024, "full": 81920}
FORMATS = [TrajectoryFormat("interleaved"), TrajectoryFormat("plans_first")] + [
    TrajectoryFormat("paper_stages", profile) for profile in PROFILES]
CASES = [(f, view) for f in FORMATS for view in VIEWS if view in f.views]
# Weights other than the defaults, so that a setting dropped on either path shows.
WEIGHTS = {False: {"prompt": 0.25, "outline": 0.5}, True: {"prompt": 0.25, "book_plan": 0.5}}


@pytest.fixture(scope="module")
def paper_file(paper_records, scaffold_records, tmp_path_factory):
  """The paper-format records of the conftest's two books, in the train split."""
  path = tmp_path_factory.mktemp("paper") / "paper.jsonl"
  ids = [record["book"]["id"] for record in scaffold_records]
  path.write_text("".join(json.dumps(dict(paper_records[i], split="train")) + "\n" for i in ids), encoding="utf-8")
  return path


def _online(spec: DataSpec) -> list[dict[str, np.ndarray]]:
  batches = trajectory_batches(spec, split="train", global_batch_size=1, seed=0, repeat=False, shuffle=False,
                               process_index=0, process_count=1)
  return [{name: value[0] for name, value in batch.items()} for batch in batches]


def _through_seqio(task: seqio.Task, spec: DataSpec) -> list[dict[str, np.ndarray]]:
  ds = seqio.get_dataset(task, task_feature_lengths=task_feature_lengths(spec.seq_len), dataset_split="train",
                         shuffle=False, num_epochs=1, feature_converter=TrajectoryFeatureConverter(bos_id=spec.bos_id))
  return list(ds.as_numpy_iterator())


@pytest.mark.parametrize("trajectory_format,view", CASES,
                         ids=[f"{f.plan_order}-{f.profile or 'xbook'}-{view}" for f, view in CASES])
def test_the_online_reader_and_the_seqio_task_give_the_same_examples(trajectory_format, view, scaffold_file,
                                                                    paper_file, vocab_path):
  files = paper_file if trajectory_format.is_paper else scaffold_file
  spec = DataSpec.build(str(files), load_vocabulary(vocab_path), LENGTHS[view], trajectory_format=trajectory_format,
                        loss_weights=WEIGHTS[trajectory_format.is_paper], repeat_weight=0.5, view_rates={view: 1.0})
  online = _online(spec)
  name = f"test_one_example_{trajectory_format.plan_order}_{trajectory_format.profile}_{view}"
  via_seqio = _through_seqio(tasks.register_task(name, spec, view), spec)
  assert len(online) == len(via_seqio) >= 2  # at least one example per book
  for i, (a, b) in enumerate(zip(online, via_seqio)):
    assert a.keys() == b.keys()
    for feature in a:
      np.testing.assert_array_equal(a[feature], b[feature], err_msg=f"example {i}, {feature}")
  weights = np.concatenate([e["decoder_loss_weights"] for e in online])
  assert 0.5 in set(np.round(weights, 6).tolist())  # the weights given reached the examples
