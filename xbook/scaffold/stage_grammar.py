"""The stage grammars, at their old address: a shim over xbook.scaffold.stage_protocol.grammars.

The grammars moved into the stage-protocol package (issue 26, a package by concern); their contract is the
docstring of xbook.scaffold.stage_protocol.grammars. This module re-exports its names so that
`from xbook.scaffold import stage_grammar` and `from xbook.scaffold.stage_grammar import stage_grammar` keep
working (xbook.infer.paper_writer and the tests use them); new code imports the package module.
"""

from __future__ import annotations

from xbook.scaffold.stage_protocol.grammars import (
    END_MARKERS, TEXT_CLOSE, _WORD_COUNT, Grammar, book_plan_section_grammar, stage_grammar)

__all__ = ["END_MARKERS", "TEXT_CLOSE", "_WORD_COUNT", "Grammar", "book_plan_section_grammar", "stage_grammar"]
