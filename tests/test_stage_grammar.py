"""The stage grammars (xbook.scaffold.stage_grammar): every rendered stage of the shared novels matches its
grammar, checked with llguidance itself; stages that check_stage rejects do not."""

from __future__ import annotations

import re

import pytest

from xbook.infer.guidance import match_text
from xbook.scaffold import stage_grammar as sg
from xbook.scaffold import stage_protocol as sp

EOT = sp.EOT


def _grammar(profile: str, role: str, before) -> str:
  return sg.stage_grammar(profile, role, before).text


def test_every_stage_of_every_shared_novel_matches_its_grammar_in_both_profiles(paper_records):
  assert len(paper_records) >= 16
  matched, total, failures = 0, 0, []
  for book, record in paper_records.items():
    for profile in sp.PROFILES:
      stages = sp.render_stages(record, profile)
      for i, (role, content) in enumerate(stages):
        if role == "prompt":
          continue
        total += 1
        why = match_text(_grammar(profile, role, stages[:i]), content + EOT)
        matched += why is None
        if why is not None:
          failures.append(f"{book} {profile} stage {i} {role}: {why}")
  print(f"stage grammars: {matched}/{total} rendered stages of {len(paper_records)} novels match")
  assert not failures, failures[:3]


def test_word_count_lexeme_is_exactly_the_bins():
  pattern = re.compile(sg._WORD_COUNT)
  for n in range(0, 100_001):
    assert bool(pattern.fullmatch(str(n))) == (n >= 10 and sp.bin_word_count(n) == n), n


@pytest.fixture(scope="module")
def carol(paper_records):
  """A Christmas Carol's 14b stages and 24b stages as (role, content) lists."""
  record = paper_records["pg46"]
  return {profile: sp.render_stages(record, profile) for profile in sp.PROFILES}


def _index(stages, role: str, occurrence: int = 0) -> int:
  return [i for i, (r, _) in enumerate(stages) if r == role][occurrence]


def _scene_blocks(content: str) -> list[str]:
  return re.split(r"\n\n(?=#### Scene )", content.split("\n", 1)[1])


def _renumbered(blocks: list[str]) -> list[str]:
  return [re.sub(r"^#### Scene \d+:", f"#### Scene {k}:", b) for k, b in enumerate(blocks, start=1)]


# (name, profile, role, occurrence, mutation): each mutation makes a stage that check_stage rejects.
MALFORMED = [
    ("a wrong section", "14b_full_book", "book_plan", 0, lambda c: c.replace("## World Rules", "## World Laws")),
    ("sections out of order", "14b_full_book", "book_preview", 0,
     lambda c: "\n\n".join([c.split("\n\n")[1], c.split("\n\n")[0], *c.split("\n\n")[2:]])),
    ("six tags", "14b_full_book", "book_preview", 0, lambda c: re.sub(r"\n- [^\n]*\n\n## Book Archetype",
                                                                       "\n\n## Book Archetype", c)),
    ("a highlight of Greek words", "14b_full_book", "book_preview", 0,
     lambda c: re.sub(r"## Book Highlight\n[^\n]*", "## Book Highlight\n" + " ".join(["Ελληνικά"] * 60), c)),
    ("an embedding space with 6 axes", "14b_full_book", "first_chapter_plan", 0,
     lambda c: re.sub(r"(\*\*Embedding Space:\*\* [^\n]*), pacing: \d+", r"\1", c, count=1)),
    ("a score of 100", "24b_first_chapter", "first_chapter_scene_breakdown", 0,
     lambda c: re.sub(r"pacing: \d+", "pacing: 100", c, count=1)),
    ("a word count not in a bin", "14b_full_book", "scene_breakdown", 0,
     lambda c: re.sub(r"\*\*Word Count:\*\* \d+", "**Word Count:** 1234", c, count=1)),
    ("a chapter word count other than the book plan's", "14b_full_book", "full_book_chapters_plan", 0,
     lambda c: re.sub(r"\*\*Word Count:\*\* (\d+)", lambda m: f"**Word Count:** {int(m.group(1)) + 100}", c,
                      count=1)),
    ("13 scenes", "14b_full_book", "scene_breakdown", 0,
     lambda c: c.split("\n", 1)[0] + "\n" + "\n\n".join(_renumbered((_scene_blocks(c) * 13)[:13]))),
    ("scenes numbered 1, 3", "24b_first_chapter", "first_chapter_scene_breakdown", 0,
     lambda c: c.split("\n", 1)[0] + "\n" + _scene_blocks(c)[0] + "\n\n"
     + _scene_blocks(c)[0].replace("#### Scene 1:", "#### Scene 3:")),
    ("a chapter text without its ### name header", "14b_full_book", "chapter_text", 0, lambda c: c.split("\n", 1)[1]),
    ("a chapter text of another chapter", "14b_full_book", "chapter_text", 1,
     lambda c: "### STAVE I: MARLEY'S GHOST\n" + c.split("\n", 1)[1]),
    ("a chapter text without its closing fence", "24b_first_chapter", "first_chapter_text", 0,
     lambda c: c[:-len("\n```")]),
    ("a chapter text holding a stage header", "14b_full_book", "first_chapter_text", 0,
     lambda c: c.replace("\n\n", "\n\n<|start_header_id|>user<|stop_header_id|>\n\n", 1)),
    ("a bullet of 301 characters", "14b_full_book", "book_characters_list", 0,
     lambda c: re.sub(r"\n- [^\n]*", "\n- " + "x" * 301, c, count=1)),
    ("21 main characters", "14b_full_book", "book_characters_list", 0,
     lambda c: c.replace("### Side Characters", "\n\n".join(f"#### Extra {k}\n- a bullet" for k in range(21))
                         + "\n\n### Side Characters")),
    ("a missing chapter block", "14b_full_book", "full_book_chapters_plan", 0, lambda c: c.split("\n\n### ", 1)[1]),
    ("a chapter plan without its summary", "24b_first_chapter", "first_chapter_plan", 0,
     lambda c: c.split("\n**Chapter Summary:**")[0]),
    ("an arc numbered 2 first", "24b_first_chapter", "book_plan", 0, lambda c: c.replace("### Arc 1:", "### Arc 2:")),
]


@pytest.mark.parametrize("name, profile, role, occurrence, mutate", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_a_stage_that_check_stage_rejects_does_not_match_its_grammar(carol, name, profile, role, occurrence, mutate):
  stages = carol[profile]
  i = _index(stages, role, occurrence)
  before, content = stages[:i], stages[i][1]
  context = sp.context_from_stages(before, profile)
  grammar = _grammar(profile, role, before)
  assert sp.check_stage(role, content, context) == [] and match_text(grammar, content + EOT) is None
  broken = mutate(content)
  assert broken != content
  assert sp.check_stage(role, broken, context), f"check_stage accepts {name}"
  assert match_text(grammar, broken + EOT) is not None, f"the grammar accepts {name}"


def test_a_stage_must_end_with_the_end_marker_and_nothing_after_it(carol):
  stages = carol["14b_full_book"]
  i = _index(stages, "scene_breakdown")
  grammar = _grammar("14b_full_book", "scene_breakdown", stages[:i])
  content = stages[i][1]
  assert "ends before" in match_text(grammar, content)
  assert "not allowed" in match_text(grammar, content + EOT + "\n")
  assert "not allowed" in match_text(grammar, content + "\n" + EOT)  # the canonical layout: no trailing newline
  assert "not allowed" in match_text(grammar, "\n" + content + EOT)


def test_other_end_markers_and_what_the_grammar_takes_from_earlier_stages(carol):
  stages = carol["14b_full_book"]
  i = _index(stages, "scene_breakdown", 1)
  content = stages[i][1]
  bare = sg.stage_grammar("14b_full_book", "scene_breakdown", stages[:i], end=None)
  assert bare.structured_outputs() == {"grammar": bare.text} and match_text(bare.text, content) is None
  assert "<|eot_id|>" in sg.stage_grammar("14b_full_book", "chapter_text", stages[:i], end="special").text
  # Without the earlier stages, the chapter name is free; with them it is the book plan's third chapter.
  renamed = "### Another Chapter\n" + content.split("\n", 1)[1]
  assert match_text(_grammar("14b_full_book", "scene_breakdown", ()), renamed + EOT) is None
  assert match_text(_grammar("14b_full_book", "scene_breakdown", stages[:i]), renamed + EOT) is not None
  with pytest.raises(ValueError, match="the prompt is given, not written"):
    sg.stage_grammar("14b_full_book", "prompt", ())
  with pytest.raises(ValueError, match="profile 24b_first_chapter has no stage 'chapter_text'"):
    sg.stage_grammar("24b_first_chapter", "chapter_text", ())
  with pytest.raises(ValueError, match="end must be one of"):
    sg.stage_grammar("14b_full_book", "book_preview", (), end="eos")
  done = stages + [("scene_breakdown", content), ("chapter_text", "x")] * 3
  with pytest.raises(ValueError, match="there is no chapter"):
    sg.stage_grammar("14b_full_book", "chapter_text", done)


def _plan_sections(plan: str) -> list[str]:
  """A rendered book plan cut before each `## ` section (each piece but the last ends with a blank line)."""
  return re.split(r"(?<=\n\n)(?=## )", plan)


def test_the_book_plan_section_by_section_matches_and_later_sections_repeat_the_written_ones(paper_records):
  for book, record in paper_records.items():
    for profile in sp.PROFILES:
      pieces = _plan_sections(dict(sp.render_stages(record, profile))["book_plan"])
      written = ""
      for k, piece in enumerate(pieces):
        grammar = sg.book_plan_section_grammar(profile, written)
        last = k == len(pieces) - 1
        assert match_text(grammar.text, piece + (EOT if last else "")) is None, (book, profile, k)
        written += piece
  # What one grammar of the whole plan cannot say, the section grammars do (check_stage rejects each).
  plan = dict(sp.render_stages(paper_records["pg46"], "14b_full_book"))["book_plan"]
  pieces = _plan_sections(plan)
  titles = [p.split("\n", 1)[0][3:] for p in pieces]
  before = lambda title: "".join(pieces[:titles.index(title)])  # noqa: E731
  piece = lambda title: pieces[titles.index(title)]  # noqa: E731
  names = re.findall(r"^- (.*)$", piece("Chapter Names"), re.MULTILINE)
  broken = {
      "Medium Story Arcs": piece("Medium Story Arcs").replace("### Arc 1: ", "### Arc 1: The Other "),
      "Chapter Names": piece("Chapter Names").replace(f"- {names[-1]}\n", ""),  # its arc names 2 chapters
      "Chapters Embedding Space": piece("Chapters Embedding Space").replace(f"#### {names[1]}", "#### Elsewhere"),
  }
  for title, text in broken.items():
    whole = plan.replace(piece(title), text)
    assert sp.check_stage("book_plan", whole, sp.StageContext()), title
    assert match_text(_grammar("14b_full_book", "book_plan", ()), whole + EOT) is None, title
    assert match_text(sg.book_plan_section_grammar("14b_full_book", before(title)).text, text) is not None, title
  with pytest.raises(ValueError, match="whole sections"):
    sg.book_plan_section_grammar("14b_full_book", pieces[1])
  with pytest.raises(ValueError, match="every section is written"):
    sg.book_plan_section_grammar("14b_full_book", plan + "\n\n")
