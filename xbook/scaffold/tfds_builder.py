"""`xbook_scaffolds`: the scaffold build as a TFDS dataset, built with Apache Beam.

The same records as `xbook scaffold build`, made by a Beam pipeline (one element per novel: load and
segment it, build its scaffold) so that the build runs on the DirectRunner on one machine and on
Dataflow, Flink or Spark for a corpus beyond one (README, "Scaffolds at scale"). The novels are read
from the builder's manual directory, which the workers must be able to read at the same path (a
shared or mounted filesystem on a cluster). Each book goes to the split of its author
(`xbook.books.split_for_author`, from the header, read on the launching machine), so train,
validation and test never share an author; a split without books is left out.

    import xbook.scaffold.tfds_builder  # registers the builder
    builder = tfds.builder("xbook_scaffolds", data_dir=DATA_DIR)
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        manual_dir=NOVELS_DIR, beam_options=PipelineOptions(["--runner=DirectRunner"])))
    records = [json.loads(x["scaffold"]) for x in tfds.as_numpy(builder.as_dataset(split="train"))]

Each example holds the whole `xbook.scaffold/1` record as a JSON string (`scaffold`, validated when
written and by `decode_scaffold` when read) next to a few scalar features for filtering without
decoding it: `id`, `title`, `author`, `split`, `n_words`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import tensorflow_datasets as tfds

from xbook.books import BookError, load_book, parse_header, split_for_author
from xbook.scaffold.build import ScaffoldTargets, build_scaffold
from xbook.scaffold.schema import SPLITS, validate_scaffold
from xbook.scaffold.summarizer import ExtractiveSummarizer, Summarizer

log = logging.getLogger(__name__)

NAME = "xbook_scaffolds"
TFDS_VERSION = "1.0.0"


# The Gutenberg header (title, author ...) lies within this many bytes of the start of a file.
HEADER_BYTES = 1 << 16
# The author of a book whose header names none, as `load_book` calls it.
UNKNOWN_AUTHOR = "unknown"


def _decode_head(head: bytes) -> str:
  """The first bytes of a book file as text, decoded as `load_book` decodes the whole file (UTF-8,
  else Windows-1252, else Latin-1), ignoring a UTF-8 character cut at the end."""
  try:
    return head.decode("utf-8")
  except UnicodeDecodeError as error:
    if error.start >= len(head) - 3 and error.reason == "unexpected end of data":
      return head[:error.start].decode("utf-8")
  try:
    return head.decode("cp1252")
  except UnicodeDecodeError:
    return head.decode("latin-1")


def header_split(path: str) -> str | None:
  """The split of the book at `path` by the author in its header (None: not a readable book).

  Only the head of the file is read, so that assigning a large corpus to splits stays cheap.
  """
  with open(path, "rb") as f:
    head = f.read(HEADER_BYTES)
  if not head.strip() or b"\x00" in head:
    log.warning("skipping %s: empty or binary; expected a Project Gutenberg plain-text book", path)
    return None
  author = parse_header(_decode_head(head))["author"] or UNKNOWN_AUTHOR
  return split_for_author(author)


def scaffold_example(path: str, split: str, summarizer: Summarizer, targets: ScaffoldTargets | None = None
                     ) -> Iterator[tuple[str, dict[str, Any]]]:
  """The (key, example) of the novel at `path`, which `header_split` put in `split`.

  A file that cannot be read or built as a book is skipped with a warning, as `xbook books segment`
  does; so is one whose whole text gives another author split than its head did (a file that mixes
  encodings), so that no author crosses splits. `targets`: the summaries' lengths (None: the defaults).
  """
  try:
    book = load_book(path)
  except BookError as error:
    log.warning("skipping %s: %s", path, error)
    return
  if split_for_author(book.author) != split:
    log.warning("skipping %s: author %r belongs to split %r, but the file's first %d bytes gave %r",
                path, book.author, split_for_author(book.author), HEADER_BYTES, split)
    return
  try:
    record = build_scaffold(book, summarizer, split=split, targets=targets)
  except ValueError as error:  # a book without chapters or with an empty scene
    log.warning("skipping %s: %s", path, error)
    return
  yield book.id, {"id": book.id, "title": book.title, "author": book.author, "split": split,
                  "n_words": record["book"]["n_words"],
                  "scaffold": json.dumps(record, ensure_ascii=False)}


def decode_scaffold(example: dict[str, Any]) -> dict[str, Any]:
  """The validated scaffold record of one example read back (bytes or str `scaffold` feature)."""
  text = example["scaffold"]
  record = json.loads(text.decode("utf-8") if isinstance(text, bytes) else text)
  validate_scaffold(record, where=f"{NAME} example {record.get('book', {}).get('id', '?')}")
  return record


class XbookScaffolds(tfds.core.GeneratorBasedBuilder):
  """Planning scaffolds (prompt, premise, synopsis, characters, settings, chapter and scene plans)
  of the Gutenberg novels in the manual directory, one `xbook.scaffold/1` record per book."""

  VERSION = tfds.core.Version(TFDS_VERSION)
  RELEASE_NOTES = {TFDS_VERSION: "xbook.scaffold/1 records with characters, settings, provenance, checks."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Put Project Gutenberg plain-text novels (`pg<number>.txt`, as `xbook books fetch --cache DIR` saves
them) in one directory and pass it as the manual directory:
`xbook scaffold tfds --manual_dir DIR --data_dir OUT` or
`tfds.download.DownloadConfig(manual_dir=DIR)`. Every `*.txt` file there is one book.
"""

  def __init__(self, *, summarizer: Summarizer | None = None, targets: ScaffoldTargets | None = None,
               **kwargs: Any) -> None:
    """Args: summarizer: the backend of every summary (default: `ExtractiveSummarizer()`); targets: the
    summaries' lengths (default: ScaffoldTargets' defaults); both are pickled to the Beam workers, which
    see no gin config of their own. kwargs: `tfds.core.GeneratorBasedBuilder` arguments (data_dir ...)."""
    self._summarizer = summarizer or ExtractiveSummarizer()
    self._targets = targets or ScaffoldTargets()
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description=__doc__,
        features=tfds.features.FeaturesDict({
            "id": tfds.features.Text(), "title": tfds.features.Text(),
            "author": tfds.features.Text(), "split": tfds.features.Text(),
            "n_words": tfds.features.Scalar(dtype=np.int64),
            "scaffold": tfds.features.Text(doc="the xbook.scaffold/1 record as JSON")}),
        homepage="https://www.gutenberg.org/")

  def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Any]:
    novels_dir = Path(dl_manager.manual_dir)
    paths = sorted(str(p) for p in novels_dir.glob("*.txt"))
    if not paths:
      raise FileNotFoundError(f"no *.txt novels in the manual directory {novels_dir}; "
                              f"{self.MANUAL_DOWNLOAD_INSTRUCTIONS}")
    by_split: dict[str, list[str]] = {}
    for path in paths:
      split = header_split(path)
      if split is not None:
        by_split.setdefault(split, []).append(path)
    # TFDS rejects an empty split: a small corpus may have no validation or test author.
    return {split: self._generate_examples(by_split[split], split) for split in SPLITS
            if split in by_split}

  def _generate_examples(self, paths: list[str], split: str) -> Any:
    beam = tfds.core.lazy_imports.apache_beam
    return (f"Novels {split}" >> beam.Create(paths)
            | f"Scaffolds {split}" >> beam.FlatMap(scaffold_example, split=split,
                                                   summarizer=self._summarizer, targets=self._targets))


def prepare(manual_dir: str, data_dir: str, beam_args: Sequence[str] = ("--runner=DirectRunner",),
            summarizer: Summarizer | None = None, targets: ScaffoldTargets | None = None) -> XbookScaffolds:
  """Build `xbook_scaffolds` from the novels in `manual_dir` into `data_dir` with Beam.

  Args:
    manual_dir: the directory of `*.txt` novels.
    data_dir: the TFDS data directory (local or gs://) that receives `xbook_scaffolds/<version>/`.
    beam_args: Beam pipeline options, e.g. `["--runner=DataflowRunner", "--project=P", ...]`.
    summarizer: the summary backend (default: `ExtractiveSummarizer()`).
    targets: the summaries' lengths (default: ScaffoldTargets' defaults).

  Returns:
    The prepared builder (an existing, complete dataset is kept as it is).
  """
  from apache_beam.options.pipeline_options import PipelineOptions
  builder = XbookScaffolds(data_dir=data_dir, summarizer=summarizer, targets=targets)
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=manual_dir, beam_options=PipelineOptions(list(beam_args))))
  return builder


def tfds_data_source(data_dir: str | None = None, version: str = TFDS_VERSION) -> Any:
  """A `seqio.TfdsDataSource` over the prepared `xbook_scaffolds` in `data_dir`.

  Its examples are the builder's features (`scaffold` is the record as JSON bytes): a seqio Task maps
  them to trajectories with `decode_scaffold` first.
  """
  import seqio
  return seqio.TfdsDataSource(tfds_name=f"{NAME}:{version}", tfds_data_dir=data_dir)
