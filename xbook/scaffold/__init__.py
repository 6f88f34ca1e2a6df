"""Scaffolds: multi-resolution summaries of a Book (scene, chapter, synopsis, premise, prompt).

`build_scaffolds` turns books into `xbook.scaffold/1` JSONL records with a summarizer backend and a
cache of its calls; `read_scaffolds` (over `scaffold_lines`, which also gives each record's line) and
`write_scaffolds` are the only readers and writers of the files.
With `plan_format="paper"` a record also holds the plans in the format of the paper's released models
(its `paper` field: xbook.scaffold.paper, measured fields in xbook.scaffold.measures); LongPage rows
import into the same records (xbook.scaffold.longpage).
"""

from xbook.scaffold.build import ScaffoldTargets, build_scaffold, build_scaffolds
from xbook.scaffold.cache import SummaryCache, cache_key
from xbook.scaffold.schema import (SCHEMA, SPLITS, ScaffoldError, read_scaffolds, scaffold_lines,
                                   validate_scaffold, write_scaffolds)
from xbook.scaffold.summarizer import LEVELS, ExtractiveSummarizer, Summarizer

__all__ = [
    "LEVELS", "SCHEMA", "SPLITS", "ExtractiveSummarizer", "ScaffoldError", "ScaffoldTargets",
    "Summarizer", "SummaryCache", "build_scaffold", "build_scaffolds", "cache_key", "read_scaffolds",
    "scaffold_lines", "validate_scaffold", "write_scaffolds",
]
