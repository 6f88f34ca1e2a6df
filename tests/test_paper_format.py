"""The paper's plan format and stage protocol: rendering, parsing, checks, records, backends, examples.

The expected streams below are written by hand from the format (xbook/scaffold/stage_protocol/, package
docstring), not produced by the renderer.
"""

from __future__ import annotations

import copy
import http.server
import json
import re
import threading
from collections import Counter

import gin
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from xbook import cli
from xbook.books import load_book
from xbook.books.io import write_books
from xbook.data import paper_stages, trajectory
from xbook.scaffold import stage_protocol as sp
from xbook.data.vocab import load_vocabulary
from xbook.scaffold import ScaffoldError, SummaryCache, validate_scaffold
from xbook.scaffold import measures, paper as paper_lib
from xbook.scaffold.build import run_scaffold_build
from xbook.scaffold.longpage import import_longpage
from xbook.scaffold.openai_backend import OpenAISummarizer
from xbook.scaffold.schema import write_scaffolds
from xbook.train import trainer as trainer_lib

EMB_1 = {"action": 10, "dialog": 40, "world_building": 5, "exposition": 20, "romantic": 0, "erotic": 0, "pacing": 55}
EMB_2 = {"action": 3, "dialog": 0, "world_building": 12, "exposition": 60, "romantic": 7, "erotic": 0, "pacing": 30}
LINE_1 = "action: 10, dialog: 40, world_building: 5, exposition: 20, romantic: 0, erotic: 0, pacing: 55"
LINE_2 = "action: 3, dialog: 0, world_building: 12, exposition: 60, romantic: 7, erotic: 0, pacing: 30"
HIGHLIGHT = ("A miser who loves nothing but his ledger is visited on Christmas Eve by the ghost of his partner "
             "and by three spirits, who show him the feasts he scorned, the poor he ignored and the lonely "
             "grave that waits for him, until he wakes on Christmas morning resolved to keep the day well "
             "and to become as good a friend as the old city knew.")
ARCHETYPE = ("A redemption story told as a ghost story: a closed heart is opened by visions of past, present "
             "and future, each vision raising the stakes, until the hero chooses to change while there is "
             "still time, and the ending rewards him with the family and the city he had shut out.")
SCENE_1A = 'Marley was dead, to begin with. There is no doubt whatever about that.'
SCENE_1B = '"Humbug!" said Scrooge to his nephew, and went back to his ledger.'
SCENE_2 = 'The first spirit stood by the bed, a strange figure like a child and like an old man.'


def _hand_record() -> dict:
  """A small valid scaffold record with a paper field: two chapters, three scenes."""
  chapters = [
      {"index": 0, "title": "Stave One", "summary": "Scrooge scorns Christmas.",
       "scenes": [{"index": 0, "summary": "Marley is dead.", "text": SCENE_1A, "n_words": len(SCENE_1A.split())},
                  {"index": 1, "summary": "Scrooge scorns his nephew.", "text": SCENE_1B,
                   "n_words": len(SCENE_1B.split())}]},
      {"index": 1, "title": "Stave Two", "summary": "The first spirit comes.",
       "scenes": [{"index": 0, "summary": "A spirit appears.", "text": SCENE_2, "n_words": len(SCENE_2.split())}]},
  ]
  n_words = sum(s["n_words"] for c in chapters for s in c["scenes"])
  paper = {
      "schema": "xbook.paper/1", "builder": {"method": "model", "version": "hand", "model": "hand"},
      "sources": {field: "model" for field in paper_lib.PAPER_SOURCE_FIELDS},
      "preview": {"highlight": HIGHLIGHT, "title": "A Christmas Carol",
                  "tags": ["ghost story", "Christmas", "redemption", "Victorian London", "novella",
                           "social conscience", "time travel"],
                  "archetype": ARCHETYPE},
      "world_rules": ["The dead may walk on Christmas Eve", "Spirits show what was, is and may be"],
      "writing_style": ["A warm omniscient narrator", "Short scenes, much dialogue"],
      "arcs": [{"name": "The Warning", "short": ["Marley warns Scrooge"], "medium": ["Marley's ghost warns Scrooge"],
                "long": ["Scrooge scorns Christmas", "Marley's ghost warns him"], "chapters": 1},
               {"name": "The Spirits", "short": ["The spirits visit"], "medium": ["The first spirit visits"],
                "long": ["The first spirit shows the past"], "chapters": 1}],
      "character_archetypes": [{"name": "Scrooge", "bullets": ["The miser who can change"]}],
      "characters": {"main": [{"name": "Ebenezer Scrooge", "bullets": ["A miser", "Learns to love Christmas"]}],
                     "side": [{"name": "Fred", "bullets": ["His cheerful nephew"]}]},
      "chapters": [
          {"name": "Stave One", "n_words": chapters[0]["scenes"][0]["n_words"] + chapters[0]["scenes"][1]["n_words"],
           "quoted_share": None, "embedding": EMB_1, "focuses": ["Scrooge", "Christmas"],
           "summary": ["Scrooge scorns Christmas", "Marley's ghost warns him"],
           "scenes": [{"title": "Marley Was Dead", "n_words": 13, "quoted_share": None, "embedding": EMB_2,
                       "focus": ["Marley"], "perspective": "Third person, omniscient",
                       "summary": ["The narrator insists Marley is dead"], "xbook_scenes": [0, 1]},
                      {"title": "Humbug", "n_words": 12, "quoted_share": None, "embedding": EMB_1,
                       "focus": ["Scrooge", "Fred"], "perspective": "Third person, omniscient",
                       "summary": ["Scrooge refuses his nephew"], "xbook_scenes": [1, 2]}]},
          {"name": "Stave Two", "n_words": chapters[1]["scenes"][0]["n_words"], "quoted_share": None,
           "embedding": EMB_2, "focuses": ["The first spirit"], "summary": ["The first spirit comes"],
           "scenes": [{"title": "The First Spirit", "n_words": 18, "quoted_share": None, "embedding": EMB_2,
                       "focus": ["The spirit"], "perspective": "Third person", "summary": ["A spirit appears"],
                       "xbook_scenes": [0, 1]}]}],
  }
  record = {
      "schema": "xbook.scaffold/1",
      "book": {"id": "hand1", "title": "A Christmas Carol", "author": "Charles Dickens", "language": "en",
               "source": "hand", "sha256": "0" * 64, "n_chapters": 2, "n_words": n_words,
               "chapters_by_length": False},
      "split": "train", "summarizer": {"backend": "hand", "model": "", "prompt_version": "", "params": {}},
      "provenance": {"date": "2026-01-31T12:00:00Z", "xbook_version": "0", "entities": "hand"},
      "prompt": "Write a ghost story set at Christmas.", "premise": "A miser meets ghosts.",
      "synopsis": "A miser meets ghosts and changes.", "characters": [], "settings": [], "chapters": chapters,
      "checks": {"scenes_tile_chapters": True,
                 "compression": dict.fromkeys(("scene", "chapter", "synopsis", "premise"), 0.1),
                 "max_copied_ngram": dict.fromkeys(("scene", "chapter", "synopsis", "premise"), 0)},
  }
  return json.loads(json.dumps(paper_lib.finish(record, paper)))  # as read from a file: no shared objects


PREVIEW = ("## Book Highlight\n" + HIGHLIGHT + "\n\n## Book Title\nA Christmas Carol\n\n## Book Tags\n"
           "- ghost story\n- Christmas\n- redemption\n- Victorian London\n- novella\n- social conscience\n"
           "- time travel\n\n## Book Archetype\n" + ARCHETYPE)
STAVE_ONE_BLOCK = ("### Stave One\n**Word Count:** 20\n**Embedding Space:** " + LINE_1 + "\n"
                   "**Narrative Focuses:** Scrooge; Christmas\n**Chapter Summary:**\n"
                   "- Scrooge scorns Christmas\n- Marley's ghost warns him")
STAVE_ONE_SCENES = ("#### Scene 1: Marley Was Dead\n**Word Count:** 10\n**Embedding Space:** " + LINE_2 + "\n"
                    "**Narrative Focus:** Marley\n**Narrative Perspective:** Third person, omniscient\n"
                    "**Scene Summary:**\n- The narrator insists Marley is dead\n\n"
                    "#### Scene 2: Humbug\n**Word Count:** 10\n**Embedding Space:** " + LINE_1 + "\n"
                    "**Narrative Focus:** Scrooge; Fred\n**Narrative Perspective:** Third person, omniscient\n"
                    "**Scene Summary:**\n- Scrooge refuses his nephew")
STAVE_ONE_TEXT = "### Stave One\n```\n" + SCENE_1A + "\n\n" + SCENE_1B + "\n```"
STAVE_TWO_TEXT = "### Stave Two\n```\n" + SCENE_2 + "\n```"
WORLD_RULES = "## World Rules\n- The dead may walk on Christmas Eve\n- Spirits show what was, is and may be"
ARCHETYPES = "## Character Archetypes\n### Scrooge\n- The miser who can change"
STYLE = "## Writing Style\n- A warm omniscient narrator\n- Short scenes, much dialogue"


def _frame(role: str, content: str) -> str:
  return "<|start_header_id|>" + role + "<|stop_header_id|>\n\n" + content + "<|eot_id|>"


EXPECTED_24B = (
    _frame("prompt", "Write a ghost story set at Christmas.")
    + _frame("book_plan", PREVIEW + "\n\n" + WORLD_RULES + "\n\n## Story Arcs\n### Arc 1: The Warning\n"
             "- Marley warns Scrooge\n\n### Arc 2: The Spirits\n- The spirits visit\n\n" + ARCHETYPES + "\n\n" + STYLE)
    + _frame("first_chapter_plan", STAVE_ONE_BLOCK)
    + _frame("first_chapter_scene_breakdown", "### Stave One\n" + STAVE_ONE_SCENES)
    + _frame("first_chapter_text", STAVE_ONE_TEXT))

BOOK_PLAN_14B = (
    WORLD_RULES + "\n\n## Short Story Arcs\n### Arc 1: The Warning\n- Marley warns Scrooge\n\n"
    "### Arc 2: The Spirits\n- The spirits visit\n\n" + ARCHETYPES + "\n\n" + STYLE + "\n\n"
    "## Medium Story Arcs\n### Arc 1: The Warning\n- Marley's ghost warns Scrooge\n\n"
    "### Arc 2: The Spirits\n- The first spirit visits\n\n"
    "## Long Story Arcs\n### Arc 1: The Warning\n- Scrooge scorns Christmas\n- Marley's ghost warns him\n\n"
    "### Arc 2: The Spirits\n- The first spirit shows the past\n\n"
    "## Number of Chapters\n### Arc 1: The Warning\n* 1\n\n### Arc 2: The Spirits\n* 1\n\n"
    "## Chapter Names\n### Arc 1: The Warning\n- Stave One\n\n### Arc 2: The Spirits\n- Stave Two\n\n"
    "## Chapters Embedding Space\n### Arc 1: The Warning\n#### Stave One\n" + LINE_1 + "\n\n"
    "### Arc 2: The Spirits\n#### Stave Two\n" + LINE_2 + "\n\n"
    "## Chapters Word Count\n### Arc 1: The Warning\n#### Stave One\n20\n\n### Arc 2: The Spirits\n#### Stave Two\n20")

EXPECTED_14B = (
    _frame("prompt", "Write a ghost story set at Christmas.")
    + _frame("book_preview", PREVIEW)
    + _frame("book_plan", BOOK_PLAN_14B)
    + _frame("first_chapter_plan", STAVE_ONE_BLOCK + "\n\n### Scene Breakdown\n" + STAVE_ONE_SCENES)
    + _frame("first_chapter_text", STAVE_ONE_TEXT)
    + _frame("full_book_chapters_plan", "### Stave Two\n**Word Count:** 20\n**Embedding Space:** " + LINE_2 + "\n"
             "**Narrative Focuses:** The first spirit\n**Chapter Summary:**\n- The first spirit comes")
    + _frame("book_characters_list", "### Main Characters\n#### Ebenezer Scrooge\n- A miser\n"
             "- Learns to love Christmas\n\n### Side Characters\n#### Fred\n- His cheerful nephew")
    + _frame("scene_breakdown", "### Stave Two\n#### Scene 1: The First Spirit\n**Word Count:** 20\n"
             "**Embedding Space:** " + LINE_2 + "\n**Narrative Focus:** The spirit\n"
             "**Narrative Perspective:** Third person\n**Scene Summary:**\n- A spirit appears")
    + _frame("chapter_text", STAVE_TWO_TEXT))


@pytest.mark.parametrize("profile, expected", [("24b_first_chapter", EXPECTED_24B), ("14b_full_book", EXPECTED_14B)])
def test_a_hand_written_record_renders_to_the_exact_stream_and_parses_back(profile, expected):
  record = _hand_record()
  validate_scaffold(record, "hand record")
  assert record["paper"]["checks"]["format_problems"] == []
  stream = sp.render(record, profile)
  assert stream == expected
  stages = sp.parse(stream, profile)
  assert "".join(sp.frame(role, content) for role, content in stages) == stream
  document = sp.to_document(stages, profile)
  assert document == sp.stage_document(record, profile)
  assert sp.render_document(document, profile) == stages
  # The document is the record's paper fields, word counts binned, with the chapters' texts.
  assert document["preview"] == record["paper"]["preview"]
  first = document["chapters"][0]
  assert first["text"] == SCENE_1A + "\n\n" + SCENE_1B and first["word_count"] == 20  # 25 words: ties go even
  assert [s["word_count"] for s in first["scenes"]] == [10, 10]
  if profile == "14b_full_book":
    assert document["arcs"] == record["paper"]["arcs"] and document["characters"] == record["paper"]["characters"]
    assert [c["name"] for c in document["chapters"]] == ["Stave One", "Stave Two"]
  else:
    assert document["arcs"] == [{"name": a["name"], "short": a["short"]} for a in record["paper"]["arcs"]]
    assert len(document["chapters"]) == 1 and "characters" not in document


def test_profiles_carry_the_released_models_stage_budgets_and_temperatures():
  first, full = sp.PROFILES["24b_first_chapter"], sp.PROFILES["14b_full_book"]
  assert first.context_length == 32_768 and full.context_length == 262_144
  assert first.roles == ("prompt", "book_plan", "first_chapter_plan", "first_chapter_scene_breakdown",
                         "first_chapter_text")
  assert full.roles == ("prompt", "book_preview", "book_plan", "first_chapter_plan", "first_chapter_text",
                        "full_book_chapters_plan", "book_characters_list", "scene_breakdown", "chapter_text")
  assert full.stage("book_plan").max_tokens == 50_000 and full.stage("chapter_text").max_tokens == 16_000
  assert {full.stage(r).temperature for r in ("book_preview",)} == {0.8}
  assert full.stage("first_chapter_plan").temperature == full.stage("full_book_chapters_plan").temperature == 0.6
  assert {full.stage(r).temperature for r in ("book_plan", "scene_breakdown", "book_characters_list")} == {0.45}
  assert full.stage("chapter_text").temperature == first.stage("first_chapter_text").temperature == 0.2
  assert full.stage("book_plan").section_temperatures["Chapter Names"] == 0.8
  assert sp.frame("prompt", "x") == "<|start_header_id|>prompt<|stop_header_id|>\n\nx<|eot_id|>"
  assert sp.render_context([("prompt", "x")], "book_plan").endswith(
      "<|eot_id|><|start_header_id|>book_plan<|stop_header_id|>\n\n")
  assert sp.trim_stage_text("\n\n## A  \n- b\n\n<|eot_id|>junk") == "## A\n- b"


def test_word_counts_are_binned_to_tens_fifties_hundreds_and_five_hundreds():
  cases = {0: 10, 14: 10, 15: 20, 94: 90, 95: 100, 125: 100, 126: 150, 175: 200, 999: 1000, 1050: 1000,
           1150: 1200, 10_249: 10_000, 10_250: 10_000, 10_251: 10_500, 123_456: 99_999}
  assert {n: sp.bin_word_count(n) for n in cases} == cases
  assert sp.word_count_range(100) == (95, 125) and sp.word_count_range(1000) == (975, 1050)
  with pytest.raises(ValueError, match="not a binned word count"):
    sp.word_count_range(123)
  assert sp.chapter_text_max_tokens(1000) == 2 * 1208  # 1050 words + 15%, two tokens a word


def test_check_stage_names_what_is_malformed():
  record = _hand_record()
  stages = dict(sp.render_stages(record, "14b_full_book"))
  context = sp.StageContext(n_chapters=2)
  plan = stages["book_plan"]
  assert sp.check_stage("book_plan", plan, context) == []
  assert any("sum to 2; the book has 3" in p for p in sp.check_stage("book_plan", plan, sp.StageContext(n_chapters=3)))
  missing = plan.replace("## Writing Style\n- A warm omniscient narrator\n- Short scenes, much dialogue\n\n", "")
  assert any("missing ['Writing Style']" in p for p in sp.check_stage("book_plan", missing, context))
  renamed = plan.replace("### Arc 2: The Spirits\n- The first spirit visits",
                         "### Arc 2: Ghosts\n- The first spirit visits")
  assert any("differ from the short story arcs" in p for p in sp.check_stage("book_plan", renamed, context))
  preview = stages["book_preview"].replace("- time travel\n", "")
  assert any("7-7 bullets, got 6" in p for p in sp.check_stage("book_preview", preview))
  bad_scores = stages["scene_breakdown"].replace("pacing: 30", "pacing: 300")
  assert any("embedding space" in p for p in sp.check_stage("scene_breakdown", bad_scores))
  planned = sp.context_from_stages(sp.render_stages(record, "14b_full_book")[:3], "14b_full_book", 2)
  assert [c["name"] for c in planned.chapters] == ["Stave One", "Stave Two"]
  wrong_chapter = stages["scene_breakdown"].replace("### Stave Two", "### Stave Nine")
  context_2 = sp.StageContext(chapters=planned.chapters, chapter=1, n_scenes=1, scene_word_counts=[20])
  assert sp.check_stage("scene_breakdown", stages["scene_breakdown"], context_2) == []
  assert any("the book plan's chapter 2 is 'Stave Two'" in p
             for p in sp.check_stage("scene_breakdown", wrong_chapter, context_2))
  assert any("1 scenes; the chapter has 2" in p for p in sp.check_stage("scene_breakdown", stages["scene_breakdown"],
                                                      sp.StageContext(n_scenes=2)))
  plan_wrong_count = stages["full_book_chapters_plan"].replace("**Word Count:** 20", "**Word Count:** 30")
  assert any("word_count 30 differs from the book plan's 20" in p for p in sp.check_stage(
      "full_book_chapters_plan", plan_wrong_count, sp.StageContext(chapters=planned.chapters)))
  assert sp.check_stage("chapter_text", "### Stave Two\n```\nprose") == [
      "chapter_text: the prose must end with a line ``` (closing its block)"]
  assert "no such stage" in sp.check_stage("book_preview", stages["book_preview"],
                                           {"profile": "24b_first_chapter"})[0]
  with pytest.raises(ValueError, match="framing token"):
    sp.frame("book_plan", "a <|eot_id|> inside")
  with pytest.raises(sp.StageFormatError, match="expects 'book_preview'"):
    sp.parse(sp.frame("prompt", "x") + sp.frame("book_plan", "y"), "14b_full_book")
  with pytest.raises(sp.StageFormatError, match="not closed"):
    sp.parse(sp.frame("prompt", "x")[:-3])
  # A book of one chapter has no later chapters' plan.
  one = json.loads(json.dumps(record))
  one["chapters"], one["paper"]["chapters"] = one["chapters"][:1], one["paper"]["chapters"][:1]
  one["paper"]["arcs"] = one["paper"]["arcs"][:1]
  roles = [role for role, _ in sp.parse(sp.render(one, "14b_full_book"), "14b_full_book")]
  assert "full_book_chapters_plan" not in roles and roles[-1] == "book_characters_list"


def test_the_record_validator_names_the_paper_field_path():
  record = _hand_record()
  broken = copy.deepcopy(record)
  broken["paper"]["chapters"][1]["scenes"][0]["embedding"]["dialog"] = 140
  with pytest.raises(ScaffoldError, match=r"hand \(book hand1\): paper.chapters\[1\].scenes\[0\].embedding.dialog"):
    validate_scaffold(broken, "hand")
  broken = copy.deepcopy(record)
  broken["paper"]["arcs"][0]["chapters"] = 2
  with pytest.raises(ScaffoldError, match="sum to 3; the record has 2 chapters"):
    validate_scaffold(broken, "hand")
  broken = copy.deepcopy(record)
  broken["paper"]["preview"]["tags"].pop()
  with pytest.raises(ScaffoldError, match=r"paper.preview.tags: expected 7-7 items"):
    validate_scaffold(broken, "hand")
  broken = copy.deepcopy(record)
  broken["paper"]["chapters"][0]["scenes"][1]["xbook_scenes"] = [0, 2]
  with pytest.raises(ScaffoldError, match=r"scenes\[1\].xbook_scenes: expected \[1, end\)"):
    validate_scaffold(broken, "hand")


# ---------------------------------------------------------------------------------- the shared novels
# (`novels` and `paper_records` are session fixtures of conftest.py: tests/test_stage_grammar.py reads them too)


def test_every_shared_novel_builds_a_valid_paper_record_with_measured_counts(novels, paper_records):
  assert len(novels) >= 16
  for book in novels:
    record = paper_records[book.id]
    validate_scaffold(record, book.id)
    paper = record["paper"]
    assert paper["checks"]["format_problems"] == [], (book.id, paper["checks"]["format_problems"][:3])
    assert paper["sources"]["preview.highlight"] == "approximation"
    assert paper["sources"]["chapters.n_words"] == "measured"
    # Chapter names are the book's headings, one per chapter; arcs tile the chapters.
    assert [c["name"] for c in paper["chapters"]] == [measures.chapter_name(c) for c in book.chapters]
    assert sum(a["chapters"] for a in paper["arcs"]) == len(book.chapters)
    document = sp.stage_document(record, "14b_full_book")
    plan = sp.parse_stage("book_plan", dict(sp.render_stages(record, "14b_full_book"))["book_plan"])
    assert [c["name"] for c in plan["chapters"]] == [measures.chapter_name(c) for c in book.chapters]
    for chapter, source, binned in zip(paper["chapters"], book.chapters, document["chapters"]):
      assert chapter["n_words"] == source.n_words and 1 <= len(chapter["scenes"]) <= 12
      # Scenes are xbook's scenes merged at scene boundaries; their binned counts sum to the chapter's
      # words within the sum of the bins' half widths.
      spans = [s["xbook_scenes"] for s in chapter["scenes"]]
      assert spans[0][0] == 0 and spans[-1][1] == len(source.scenes)
      assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
      assert len(chapter["scenes"]) == min(12, len(source.scenes))
      slack = sum(max(sp.bin_word_count(s["n_words"]) - sp.word_count_range(sp.bin_word_count(s["n_words"]))[0],
                      sp.word_count_range(sp.bin_word_count(s["n_words"]))[1] - sp.bin_word_count(s["n_words"]))
                  for s in chapter["scenes"])
      assert abs(sum(s["word_count"] for s in binned["scenes"]) - source.n_words) <= slack
      # The dialog score is the measured share of quoted words (kept to 4 decimals).
      assert chapter["quoted_share"] == round(measures.quoted_share(source.text), 4)
      assert chapter["embedding"]["dialog"] == measures.dialog_score(chapter["quoted_share"])
  carol = paper_records["pg46"]["paper"]
  assert [c["name"] for c in carol["chapters"]][0] == "STAVE I: MARLEY'S GHOST"
  assert [a["name"] for a in paper_records["pg98"]["paper"]["arcs"]][0].startswith("Book the First")


def test_quoted_share_and_narration_person():
  assert measures.quoted_share('"Bah!" said Scrooge, "Humbug!"') == 0.5
  assert measures.quoted_share("\u2018I can\u2019t,\u2019 said Alice.") == 0.5
  assert measures.quoted_share("'I can't,' said Alice. Then she left.") == pytest.approx(2 / 7)
  assert measures.narration_person("I walked home and I slept. She was not there.") == "first"
  assert measures.narration_person('He walked home. "I am tired," he said.') == "third"
  assert measures.merge_scenes([5, 1, 1, 9], max_scenes=3) == [(0, 1), (1, 3), (3, 4)]


# ---------------------------------------------------------------------------- the openai backend
def _answer(prompt: str) -> str:
  """A well-formed answer to an xbook request, built from what the request states."""
  if prompt.rstrip().endswith("PREVIEW (MARKDOWN):"):
    title = re.search(r"^TITLE: (.+)$", prompt, re.M).group(1)
    return (f"## Book Highlight\n{' '.join(['word'] * 60)}\n\n## Book Title\n{title}\n\n## Book Tags\n"
            + "".join(f"- tag {i}\n" for i in range(7)) + f"\n## Book Archetype\n{' '.join(['kind'] * 50)}")
  if prompt.rstrip().endswith("BOOK PLAN (MARKDOWN):"):
    n = int(re.search(r"novel of (\d+) chapters", prompt).group(1))
    return ("## World Rules\n- Rule\n\n## Short Story Arcs\n### Arc 1: All\n- s\n\n## Character Archetypes\n"
            "### Hero\n- brave\n\n## Writing Style\n- plain\n\n## Medium Story Arcs\n### Arc 1: All\n- m\n\n"
            f"## Long Story Arcs\n### Arc 1: All\n- l\n\n## Number of Chapters\n### Arc 1: All\n* {n}")
  if prompt.rstrip().endswith("CHAPTER PLAN (MARKDOWN):"):
    name, words = re.search(r"^### (.+)\n\*\*Word Count:\*\* (\d+)$", prompt, re.M).groups()
    dialog = int(re.search(r"so dialog is about\s+(\d+)", prompt).group(1))
    return (f"### {name}\n**Word Count:** {words}\n**Embedding Space:** action: 1, dialog: {dialog}, "
            "world_building: 2, exposition: 3, romantic: 4, erotic: 0, pacing: 5\n**Narrative Focuses:** a; b\n"
            "**Chapter Summary:**\n- It happens")
  if prompt.rstrip().endswith("SCENE BREAKDOWN (MARKDOWN):"):
    name = re.search(r"^### (.+)$", prompt, re.M).group(1)
    scenes = re.findall(r"^SCENE (\d+): (\d+) words, (\d+)% dialogue$", prompt, re.M)
    return f"### {name}\n" + "\n\n".join(
        f"#### Scene {k}: Title {k}\n**Word Count:** {w}\n**Embedding Space:** action: 1, dialog: {d}, "
        "world_building: 2, exposition: 3, romantic: 4, erotic: 0, pacing: 5\n**Narrative Focus:** x\n"
        "**Narrative Perspective:** Third person\n**Scene Summary:**\n- It happens" for k, w, d in scenes)
  if prompt.rstrip().endswith("CHARACTERS LIST (MARKDOWN):"):
    return "### Main Characters\n#### Hero\n- brave\n\n### Side Characters\n#### Friend\n- kind"
  return "A plan."  # xbook's own levels


class FakeChatServer:
  """A chat-completions endpoint on 127.0.0.1 answering in the format; with `malformed`, its first
  answer to each chapter plan drops a line and its first scene breakdowns get the dialog wrong."""

  def __init__(self, malformed: bool = False) -> None:
    self.malformed, self.requests, self.reasks = malformed, Counter(), 0
    self.lock = threading.Lock()
    server = self

    class Handler(http.server.BaseHTTPRequestHandler):
      def log_message(self, *args) -> None:
        pass

      def do_POST(self) -> None:  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        prompt = body["messages"][0]["content"]
        text = server.answer(prompt)
        data = json.dumps({"choices": [{"message": {"role": "assistant", "content": text}}],
                           "usage": {"prompt_tokens": 10, "completion_tokens": 5}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
    threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

  def answer(self, prompt: str) -> str:
    original = prompt.split("\n\n(Your previous answer")[0]
    kind = original.rstrip().rsplit("\n", 1)[-1]
    reask = original != prompt
    with self.lock:
      self.requests[kind] += 1
      self.reasks += reask
    text = _answer(original)
    if self.malformed and not reask and kind == "CHAPTER PLAN (MARKDOWN):":
      return text.replace("**Narrative Focuses:** a; b\n", "")
    if self.malformed and not reask and kind == "SCENE BREAKDOWN (MARKDOWN):":
      return re.sub(r"dialog: \d+", "dialog: 99", text)
    return text

  def close(self) -> None:
    self.httpd.shutdown()


@pytest.mark.parametrize("malformed", [False, True], ids=["well_formed", "malformed_first"])
def test_the_openai_backend_writes_the_paper_format_checked_reasked_and_cached(tmp_path, corpus_dir, malformed):
  book = load_book(corpus_dir / "pg46.txt")
  server = FakeChatServer(malformed=malformed)
  try:
    summarizer = OpenAISummarizer(base_url=server.url, model="fake", max_concurrency=4)
    with SummaryCache(tmp_path / "cache.sqlite") as cache:
      build = run_scaffold_build([book], summarizer, tmp_path / "out.jsonl", cache=cache, plan_format="paper",
                                 progress=False)
    assert [r.status for r in build.reports] == ["built"], build.reports[0].reason
    record = build.records[0]
    validate_scaffold(record, "built")
    paper = record["paper"]
    assert paper["builder"]["method"] == "model" and paper["sources"]["arcs.bullets"] == "model"
    assert paper["checks"]["format_problems"] == []
    assert paper["preview"]["title"] == "A Christmas Carol" and paper["arcs"][0]["chapters"] == 5
    assert [c["name"] for c in paper["chapters"]] == [measures.chapter_name(c) for c in book.chapters]
    n_chapters = len(book.chapters)
    assert server.requests["CHAPTER PLAN (MARKDOWN):"] == n_chapters * (2 if malformed else 1)
    assert server.requests["SCENE BREAKDOWN (MARKDOWN):"] == n_chapters * (2 if malformed else 1)
    assert server.reasks == (2 * n_chapters if malformed else 0)
    # A rebuild (its record removed) finds every accepted answer in the cache: no request at all.
    before = sum(server.requests.values())
    (tmp_path / "out.jsonl").unlink()
    with SummaryCache(tmp_path / "cache.sqlite") as cache:
      again = run_scaffold_build([book], summarizer, tmp_path / "out.jsonl", cache=cache, plan_format="paper",
                                 progress=False)
    assert sum(server.requests.values()) == before and again.reports[0].calls == 0
    assert again.records[0]["paper"] == paper
  finally:
    server.close()


# ---------------------------------------------------------------------------------- LongPage import
def _longpage_row(**overrides) -> dict:
  chapter = {"chapter": "The hero wakes.\n\n\"Up!\" cried her mother.\n\nShe ran to the gate.",
             "embedding_space": {"action": 20, "dialog": 30, "world_building": 5, "exposition": 10,
                                 "romantic": 0, "erotic": 0, "pacing": 60},
             "chapter_summary": ["She wakes", "She runs"], "narrative_focuses": "waking; running",
             "scene_breakdown": [{"scene_name": "Waking", "scene_word_count": 10,
                                  "scene_embedding_space": "action: 5, dialog: 40, world_building: 0, exposition: 10, "
                                                           "romantic: 0, erotic: 0, pacing: 50",
                                  "narrative_focus": ["Hero"], "narrative_perspective": "Third person",
                                  "scene_summary": ["She wakes"], "mood": "calm"}]}
  row = {"book_title": "The Gate", "book_author": "A. Writer", "prompt": "Write about a gate.",
         "book_highlight": HIGHLIGHT, "book_tags": ["a", "b", "c", "d", "e", "f", "g"],
         "book_archetype": ARCHETYPE, "world_rules": ["Gates open at dawn"],
         "story_arcs": json.dumps([{"arc_name": "Dawn", "arc_summary": ["She leaves"], "number_of_chapters": 2}]),
         "character_archetypes": json.dumps({"Hero": ["Restless"]}), "writing_style": ["Plain"],
         "book_characters": json.dumps({"main_characters": [{"name": "Hero", "description": ["Restless girl"]}],
                                        "side_characters": [{"name": "Mother", "description": ["Loud"]}]}),
         "book_chapters": json.dumps({"Chapter One": chapter,
                                      "Chapter Two": dict(chapter, chapter="She opens it.\n\nThe end.")}),
         "source_url": "https://example.org/gate"}
  row.update(overrides)
  return row


def test_longpage_rows_import_as_paper_records_and_unmapped_fields_are_reported(tmp_path, capsys):
  rows = [_longpage_row(), _longpage_row(book_tags=["a", "b"]), _longpage_row(book_title="Other", source_url=None)]
  path = tmp_path / "longpage.parquet"
  pq.write_table(pa.Table.from_pylist(rows), path)
  records, report = import_longpage(path)
  assert report.rows == 3 and report.records == 2
  assert report.failed == [(1, "RowError: book_tags: 2 tags; the format has exactly 7")]
  assert report.unmapped == {"source_url": 1, "book_chapters[*].scene_breakdown[*].mood": 2}
  assert any("medium arcs repeat the short arcs" in note for note in report.derived)
  record = records[0]
  validate_scaffold(record, "imported")
  paper = record["paper"]
  assert paper["builder"]["method"] == "import" and paper["sources"]["world_rules"] == "imported"
  assert paper["sources"]["chapters.n_words"] == "measured" and paper["chapters"][0]["n_words"] == 12
  assert paper["checks"]["format_problems"] == []
  assert record["chapters"][1]["scenes"][0]["text"] == "She opens it.\n\nThe end."
  stream = sp.render(record, "14b_full_book")
  assert "### Chapter Two\n```\nShe opens it.\n\nThe end.\n```<|eot_id|>" in stream
  assert sp.render(record, "24b_first_chapter").startswith(
      "<|start_header_id|>prompt<|stop_header_id|>\n\nWrite about a gate.<|eot_id|>")
  out = tmp_path / "imported.jsonl"
  assert cli.main(["scaffold", "import", "--longpage", str(path), "--out", str(out), "--json"]) == 1
  summary = json.loads(capsys.readouterr().out)
  assert summary["records"] == 2 and summary["unmapped"]["source_url"] == 1 and out.is_file()


# ------------------------------------------------------------------------------------- examples
@pytest.fixture(scope="module")
def paper_file(paper_records, tmp_path_factory):
  path = tmp_path_factory.mktemp("paper") / "paper.jsonl"
  write_scaffolds(path, [dict(paper_records[i], split="train") for i in ("pg46", "pg43")])
  return path


def _text_coverage(examples) -> dict[int, list[tuple[int, int]]]:
  covered: dict[int, list[tuple[int, int]]] = {}
  for example in examples:
    for part in example.parts:
      if part.role in sp.TEXT_ROLES and part.weight > 0:
        covered.setdefault(part.chapter, []).append((part.start, part.end))
  return covered


def test_full_book_examples_learn_every_chapter_text_exactly_once(paper_records, vocab_path):
  vocabulary = load_vocabulary(vocab_path)
  record = paper_records["pg46"]
  stages = paper_stages.encode_stages(sp.render_stages(record, "14b_full_book"), vocabulary.encode, "14b_full_book")
  text_lengths = {s.chapter: len(s) for s in stages if s.role in sp.TEXT_ROLES}
  total = sum(len(s) for s in stages)
  plans = sum(len(s) for s in stages if s.role in paper_stages.GLOBAL_ROLES)
  units = [len(s) for s in stages if s.role == "first_chapter_text"]
  units += [len(a) + len(b) for a, b in zip(stages[7::2], stages[8::2])]
  fitting = plans + max(units) + 100
  for length in (total, fitting, 4096):
    examples = paper_stages.book_examples(record, vocabulary.encode, profile="14b_full_book", length=length)
    assert all(len(e) <= length for e in examples)
    covered = _text_coverage(examples)
    assert sorted(covered) == list(range(len(record["chapters"])))
    for chapter, spans in covered.items():
      spans.sort()
      assert spans[0][0] == 0 and spans[-1][1] == text_lengths[chapter]
      assert all(a[1] == b[0] for a, b in zip(spans, spans[1:])), (length, chapter, spans)
    if length == total:
      assert len(examples) == 1
      assert vocabulary.decode(examples[0].features()["targets"].tolist()) == sp.render(record, "14b_full_book")
    elif length == fitting:
      # The head, then one example per later chapter: every plan, then the latest chapters that fit.
      assert len(examples) == len(record["chapters"])
      later = examples[1:]
      assert all(e.parts[0].role == "prompt" and e.parts[0].start == 0 for e in later)
      assert all({p.role for p in e.parts} >= set(paper_stages.GLOBAL_ROLES) for e in later)
      assert all(p.weight == 0 for e in later for p in e.parts if p.role in paper_stages.GLOBAL_ROLES)
      assert any(e.dropped_chapters for e in later)
  first = paper_stages.book_examples(record, vocabulary.encode, profile="24b_first_chapter", length=1 << 20)
  assert len(first) == 1 and [p.role for p in first[0].parts] == list(sp.PROFILES["24b_first_chapter"].roles)
  weights = first[0].features()["loss_weights"]
  assert weights[:len(first[0].parts[0].ids)].max() == 0 and weights.min() == 0 and weights.max() == 1
  assert first[0].features()["segment_kinds"][-1] == trajectory.KIND_ID["text"]
  assert paper_stages.role_weights({"prompt": 0.5, "chapter_plan": 2.0})["full_book_chapters_plan"] == 2.0
  with pytest.raises(ValueError, match="neither stage roles"):
    paper_stages.role_weights({"chapter_pln": 1.0})
  assert trajectory.SEGMENT_KINDS[:7] == trajectory.XBOOK_KINDS and len(trajectory.ALL_MARKERS) == 8


def _train_paper(run_dir, scaffold_file, vocab_path, profile: str, steps: int = 2):
  from test_train import MODEL
  gin.clear_config()
  gin.parse_config(["MeshConfig.data = 2", "MeshConfig.fsdp = 2", "MeshConfig.sequence = 1", "MeshConfig.tensor = 2",
                    f"paper_stages.profile = '{profile}'", "OptimizerConfig.warmup_steps = 1"])
  try:
    return trainer_lib.train(str(run_dir), scaffold_files=str(scaffold_file), vocab_path=str(vocab_path),
                             model_config=MODEL, steps=steps, batch_size=8, seq_len=256, checkpoint_every=steps,
                             log_every=1, plan_order="paper_stages", task_name=f"paper_{profile}")
  finally:
    gin.clear_config()


PAPER_LOSSES = {f"loss/{kind}" for kind in ("book_preview", "book_plan", "chapter_plan", "scene_plan",
                                             "characters", "text")}


@pytest.mark.parametrize("profile, kinds", [("24b_first_chapter", {"loss/book_plan", "loss/prompt"}),
                                            ("14b_full_book", set())])
def test_a_tiny_model_trains_on_the_paper_stages_layout(tmp_path, paper_file, vocab_path, profile, kinds):
  from xbook.train.metrics import read_metrics
  metrics = _train_paper(tmp_path / profile, paper_file, vocab_path, profile)
  assert np.isfinite(metrics["loss"])
  records = read_metrics(tmp_path / profile)
  assert len(records) == 2
  reported = {k for r in records for k in r}
  assert kinds <= reported and reported & PAPER_LOSSES


def test_data_inspect_shows_stages_and_the_raw_text_matches_the_rendered_stream(paper_file, vocab_path, tmp_path,
                                                                             capsys):
  common = ["data", "inspect", "--scaffolds", str(paper_file), "--vocab", str(vocab_path), "--seq_len", "65536",
            "--plan_order", "paper_stages", "--profile", "24b_first_chapter"]
  assert cli.main(common + ["--raw"]) == 0
  raw = capsys.readouterr().out
  assert cli.main(["scaffold", "show", str(paper_file), "--book", "pg46", "--profile", "24b_first_chapter"]) == 0
  assert raw == capsys.readouterr().out
  assert cli.main(common + ["--json", "--index", "1"]) == 0
  summary = json.loads(capsys.readouterr().out)
  assert [s["role"] for s in summary["stages"]] == list(sp.PROFILES["24b_first_chapter"].roles)
  assert summary["examples"] == 2 and summary["stages"][0]["loss_weight"] == 0.0


def test_scaffold_build_format_paper_on_the_command_line(corpus_dir, tmp_path, capsys):
  write_books(tmp_path / "books.jsonl", [load_book(corpus_dir / "pg46.txt")])
  out = tmp_path / "paper.jsonl"
  assert cli.main(["scaffold", "build", "--books", str(tmp_path / "books.jsonl"), "--out", str(out),
                   "--cache", str(tmp_path / "cache.sqlite"), "--format", "paper"]) == 0
  record = json.loads(out.read_text())
  assert record["paper"]["builder"]["method"] == "extractive"
  assert cli.main(["scaffold", "show", str(out)]) == 0
  assert "PAPER FORMAT (extractive" in capsys.readouterr().out
