"""Scaffolds of real novels: extractive summaries, the record schema, JSONL files, the cache, resuming."""

from __future__ import annotations

import copy
import dataclasses
import json
import re
from pathlib import Path
from typing import Any, Mapping

import pytest

import xbook
from xbook.books import Book, load_book
from xbook.books.types import text_sha256
from xbook.scaffold import (ExtractiveSummarizer, ScaffoldError, ScaffoldTargets, SummaryCache,
                            build_scaffold, build_scaffolds, read_scaffolds, validate_scaffold,
                            write_scaffolds)
from xbook.scaffold import entities, extractive
from xbook.scaffold.checks import longest_copied_ngram
from xbook.scaffold.schema import comparable


@pytest.fixture(scope="module")
def carol(corpus_dir: Path) -> Book:
  """A Christmas Carol, the shortest novel of the corpus."""
  return load_book(corpus_dir / "pg46.txt")


@pytest.fixture(scope="module")
def carol_scaffold(carol: Book) -> dict[str, Any]:
  return build_scaffold(carol, ExtractiveSummarizer())


@dataclasses.dataclass
class CountingSummarizer:
  """The extractive backend, counting its calls; raises once `interrupt_after` calls have been made."""

  inner: ExtractiveSummarizer = dataclasses.field(default_factory=ExtractiveSummarizer)
  interrupt_after: int | None = None
  calls: int = 0

  name = ExtractiveSummarizer.name
  model = ExtractiveSummarizer.model
  prompt_version = ExtractiveSummarizer.prompt_version
  prompt_input = ExtractiveSummarizer.prompt_input

  @property
  def params(self) -> Mapping[str, Any]:
    return self.inner.params

  def chapter_source(self, chapter_text: str, scene_summaries) -> str:
    return self.inner.chapter_source(chapter_text, scene_summaries)

  def book_source(self, scene_summaries, taken) -> str:
    return self.inner.book_source(scene_summaries, taken)

  def summarize(self, text: str, level: str, target_words: int) -> str:
    if self.interrupt_after is not None and self.calls >= self.interrupt_after:
      raise KeyboardInterrupt("simulated interruption")
    self.calls += 1
    return self.inner.summarize(text, level, target_words)


def _calls_to_build(book: Book) -> int:
  """Scene summaries, then one call each for chapters, synopsis, premise and prompt."""
  return sum(len(c.scenes) + 1 for c in book.chapters) + 3


def _picked_sentences(summary: str, sentences: list[str]) -> list[int]:
  """Indices of the source sentences that, joined in order, make up `summary` (fails if they don't)."""
  picked, rest = [], summary
  for i, sentence in enumerate(sentences):
    if rest.startswith(sentence):
      picked.append(i)
      rest = rest[len(sentence):].lstrip()
  assert rest == "", f"summary is not a sequence of source sentences; left over: {rest[:80]!r}"
  return picked


# ------------------------------------------------------------------------------------------ extractive
def test_sentences_survive_titles_quotes_and_wrapped_lines():
  text = ('Mr. Scrooge met Dr. J. Jekyll\r\nat St. Paul\'s. "Bah!" said Scrooge, "Humbug!" He left.'
          '\r\n\r\n"A merry Christmas, uncle! God save you!" cried a voice. It was I. Then _Dick_ came.')
  assert extractive.split_sentences(text) == [
      "Mr. Scrooge met Dr. J. Jekyll at St. Paul's.", '"Bah!" said Scrooge, "Humbug!"', "He left.",
      '"A merry Christmas, uncle! God save you!" cried a voice.', "It was I.", "Then _Dick_ came."]
  curly = ("\u2018I\u2019m NOT a serpent! I tell you,\u2019 said Alice. The girls\u2019 room. "
           "\u201cNo. Go!\u201d")
  assert extractive.split_sentences(curly) == [
      "\u2018I\u2019m NOT a serpent! I tell you,\u2019 said Alice.", "The girls\u2019 room.",
      "\u201cNo. Go!\u201d"]
  story = "\u201cI travelled " + "far and " * 20 + "home. I rested. Then I slept.\u201d"
  assert extractive.split_sentences(story) == [story[:story.index("home.") + 5],
                                               "I rested. Then I slept.\u201d"]


def test_the_sentence_that_ties_the_topics_together_is_chosen():
  hub = "The keeper saw the storm drive the ship past the lighthouse into the harbour."
  text = " ".join([
      "The lighthouse stood alone on the black rock.", "A storm rose from the west at dusk.",
      "Bread was baked in the village every morning.", "The ship had lost its mainmast.", hub,
      "The harbour lay empty and still.", "The keeper lit the great lamp.",
      "Children sang in the school by the church."])
  assert extractive.summarize(text, target_words=len(hub.split())) == hub
  assert extractive.summarize(text, target_words=len(hub.split()) + 8).count(hub) == 1


def test_real_chapter_summary_is_central_sentences_in_order_within_budget(carol):
  stave = carol.chapters[0].text
  sentences = extractive.split_sentences(stave)
  summary = extractive.summarize(stave, target_words=300)
  assert 250 <= len(summary.split()) <= 300
  picked = _picked_sentences(summary, sentences)
  assert picked != list(range(len(picked))), "picked the first sentences, not the central ones"
  assert len(picked) < len(sentences) / 5
  assert extractive.summarize(stave, target_words=300) == summary


@pytest.mark.parametrize("target", [1, 20, 60, 150, 600])
def test_summaries_never_exceed_the_target_or_the_source(carol, target):
  scene = carol.chapters[1].scenes[2].text
  summary = extractive.summarize(scene, target_words=target)
  assert 0 < len(summary.split()) <= min(target, len(scene.split()))


def test_a_text_within_the_budget_comes_back_whole():
  text = "It was cold.\nBleak, biting weather:\n\nfoggy withal."
  expected = "It was cold. Bleak, biting weather:\n\nfoggy withal."
  assert extractive.summarize(text, target_words=50) == expected
  assert extractive.summarize(" \n\n ", target_words=50) == ""


def test_a_sentence_longer_than_the_budget_is_cut_and_marked():
  text = ("Marley was dead to begin with, and nobody doubted it. "
          "The register of his burial was signed by the clergyman and the clerk.")
  summary = extractive.summarize(text, target_words=4)
  assert len(summary.split()) == 4 and summary.endswith("...") and summary[:-3] in text


def test_premise_has_at_most_three_sentences_and_prompt_is_the_template(carol):
  summarizer = ExtractiveSummarizer()
  source = carol.chapters[2].text
  premise = summarizer.summarize(source, "premise", 80)
  assert 1 <= len(_picked_sentences(premise, extractive.split_sentences(source))) <= 3
  prompt = summarizer.summarize("Scrooge and\n\nFred, in London", "prompt", 60)
  assert prompt == "Write a novel about Scrooge and Fred, in London."
  with pytest.raises(ValueError, match="unknown scaffold level"):
    summarizer.summarize(source, "paragraph", 80)


def test_copied_ngram_ignores_case_and_punctuation():
  assert longest_copied_ngram("He said: the cold within him froze!", "The cold, within him, froze") == 5
  assert longest_copied_ngram("nothing shared here", "The cold within him") == 0


# -------------------------------------------------------------------------------------------- building
def test_carol_scaffold_end_to_end(carol, carol_scaffold):
  record = carol_scaffold
  validate_scaffold(record)
  assert record["book"] == carol.metadata()
  assert record["summarizer"]["backend"] == "extractive"
  for field in ("prompt", "premise", "synopsis"):
    assert record[field].strip()
  assert len(record["synopsis"].split()) <= 600 and len(record["premise"].split()) <= 80
  # The extractive prompt names who and where (the brief), so that it repeats nothing of the premise.
  assert record["prompt"] == f"Write a novel about {entities.prompt_brief(record['characters'], record['settings'])}."
  assert "Scrooge" in record["prompt"] and longest_copied_ngram(record["premise"], record["prompt"]) < 3
  for summary, chapter in zip(record["chapters"], carol.chapters, strict=True):
    assert summary["title"] == chapter.title and 0 < len(summary["summary"].split()) <= 200
    for scene_record, scene in zip(summary["scenes"], chapter.scenes, strict=True):
      assert scene_record["text"] == scene.text and scene_record["n_words"] == scene.n_words
      assert 0 < len(scene_record["summary"].split()) <= max(20, round(scene.n_words / 10))
  checks = record["checks"]
  assert checks["scenes_tile_chapters"] is True
  ratios = checks["compression"]
  assert 0.05 <= ratios["scene"] <= 0.11
  assert 0.1 <= ratios["chapter"] <= 1.0
  assert 0.2 <= ratios["synopsis"] <= 1.0
  assert 0.0 < ratios["premise"] <= 80 / len(record["synopsis"].split())
  summaries = [record["synopsis"], record["premise"]] + [c["summary"] for c in record["chapters"]] + [
      s["summary"] for c in record["chapters"] for s in c["scenes"]]
  copied = checks["max_copied_ngram"]
  assert 10 <= max(copied.values()) <= max(len(s.split()) for s in summaries)
  # Extractive summaries copy whole sentences, and no level takes a sentence of another, so that a
  # window's premise, synopsis, outline, chapter plan and scene plan repeat none of each other.
  sentences = lambda texts: {s for t in texts for s in extractive.split_sentences(t)}  # noqa: E731
  chapter_plans = sentences(c["summary"] for c in record["chapters"])
  scene_plans = sentences(s["summary"] for c in record["chapters"] for s in c["scenes"])
  premise, synopsis = sentences([record["premise"]]), sentences([record["synopsis"]])
  assert not chapter_plans & scene_plans and not synopsis & chapter_plans and not premise & synopsis
  assert premise <= scene_plans and synopsis <= scene_plans
  assert copied["premise"] == max(len(s.split()) for s in extractive.split_sentences(record["premise"]))


def test_building_is_deterministic(carol, carol_scaffold):
  assert comparable(build_scaffold(carol, ExtractiveSummarizer())) == comparable(carol_scaffold)


def test_provenance_dates_the_record_and_names_the_versions(carol, monkeypatch):
  monkeypatch.setenv("SOURCE_DATE_EPOCH", "1767225600")
  record = build_scaffold(carol, ExtractiveSummarizer())
  assert record["provenance"] == {"date": "2026-01-01T00:00:00Z", "xbook_version": xbook.__version__,
                                  "entities": entities.ALGORITHM}
  assert record["summarizer"]["prompt_version"] == ExtractiveSummarizer.prompt_version
  assert record["summarizer"]["params"]["redundancy"] == ExtractiveSummarizer().redundancy


# -------------------------------------------------------------------------------- characters, settings
def _entity(entities_: list[dict[str, Any]], name: str) -> dict[str, Any]:
  matches = [e for e in entities_ if e["name"] == name]
  assert len(matches) == 1, f"{name!r} not among {[e['name'] for e in entities_]}"
  return matches[0]


def test_carol_characters_merge_aliases_and_rank_roles(carol_scaffold):
  characters = carol_scaffold["characters"]
  assert 8 <= len(characters) <= entities.MAX_CHARACTERS
  scrooge = characters[0]
  assert scrooge["name"] == "Scrooge" and scrooge["role"] == "protagonist"
  assert {"Mr. Scrooge", "Mr. Ebenezer Scrooge"} <= set(scrooge["aliases"])
  assert [c["role"] for c in characters[1:4]] == ["major"] * 3
  assert {c["role"] for c in characters[4:]} == {"minor"}
  assert "Bob Cratchit" in _entity(characters, "Bob")["aliases"]
  assert "Jacob Marley" in _entity(characters, "Marley")["aliases"]
  assert _entity(characters, "Tiny Tim")["aliases"] == ["Tim"]
  # Same surname, different honorific and pronouns: two people.
  assert _entity(characters, "Fezziwig")["aliases"] == []
  assert _entity(characters, "Mrs. Fezziwig")["aliases"] == []
  mentions = [c["mentions"] for c in characters]
  assert mentions == sorted(mentions, reverse=True) and mentions[0] > 300
  for character in characters:
    low, high = entities.DESCRIPTION_WORDS
    assert low <= len(character["description"].split()) <= high
    names = [character["name"]] + character["aliases"]
    assert any(name in character["description"] for name in names)
  assert all(len({n for c in characters for n in [c["name"]] + c["aliases"]} & {name}) == 1
             for name in ("Scrooge", "Bob", "Marley")), "a name belongs to one character"


def test_jekyll_characters_and_settings(corpus_dir):
  characters, settings = entities.extract_entities(load_book(corpus_dir / "pg43.txt"))
  names = [c["name"] for c in characters]
  assert names[:3] == ["Mr. Utterson", "Hyde", "Jekyll"]
  assert {"Dr. Jekyll", "Henry Jekyll"} <= set(_entity(characters, "Jekyll")["aliases"])
  assert {"Mr. Hyde", "Edward Hyde"} <= set(_entity(characters, "Hyde")["aliases"])
  assert {"Poole", "Lanyon", "Mr. Enfield"} <= set(names)
  assert [s["name"] for s in settings][:2] == ["London", "Soho"]
  assert settings[0]["role"] == "primary" and "London" in settings[0]["description"]
  assert not {s["name"] for s in settings} & set(names)


def test_entity_counts_are_capped(carol):
  characters, settings = entities.extract_entities(carol, max_characters=3, max_settings=1)
  assert [c["name"] for c in characters] == ["Scrooge", "Bob", "Marley"] and len(settings) == 1


def test_targets_shape_the_record(carol):
  record = build_scaffold(carol, ExtractiveSummarizer(), split="test",
                          targets=ScaffoldTargets(chapter_words=150, synopsis_words=300))
  assert record["split"] == "test"
  assert record["summarizer"]["params"]["targets"]["synopsis_words"] == 300
  assert all(len(c["summary"].split()) <= 150 for c in record["chapters"])
  assert len(record["synopsis"].split()) <= 300
  with pytest.raises(ValueError, match="split"):
    build_scaffold(carol, ExtractiveSummarizer(), split="dev")


# ---------------------------------------------------------------------------------------------- schema
@pytest.mark.parametrize("path, expected, break_record", [
    ("schema", "'xbook.scaffold/1'", lambda r: r.update(schema="xbook.scaffold/2")),
    ("split", "one of", lambda r: r.update(split="dev")),
    ("record: unknown field", "['notes']", lambda r: r.update(notes="x")),
    ("chapters[2].scenes[1].summary", "non-empty string",
     lambda r: r["chapters"][2]["scenes"][1].update(summary="  ")),
    ("chapters[1].scenes[0]: missing", "['summary']",
     lambda r: r["chapters"][1]["scenes"][0].pop("summary")),
    ("chapters[3].scenes[1].n_words", "the number of words in its text",
     lambda r: r["chapters"][3]["scenes"][1].update(n_words=7)),
    ("chapters[0].index", "its position", lambda r: r["chapters"][0].update(index=3)),
    ("chapters[4].scenes", "a non-empty list", lambda r: r["chapters"][4].update(scenes=[])),
    ("book.sha256", "64 lowercase hex", lambda r: r["book"].update(sha256="abc")),
    ("book.n_chapters", "the number of chapters", lambda r: r["book"].update(n_chapters=9)),
    ("summarizer.params", "an object", lambda r: r["summarizer"].update(params=None)),
    ("checks.compression.premise", "finite number",
     lambda r: r["checks"]["compression"].update(premise="x")),
    ("checks.max_copied_ngram.scene", "integer",
     lambda r: r["checks"]["max_copied_ngram"].update(scene=-1)),
    ("checks.max_copied_ngram: missing", "['premise']",
     lambda r: r["checks"]["max_copied_ngram"].pop("premise")),
    ("record: missing", "['provenance']", lambda r: r.pop("provenance")),
    ("provenance.date", "ISO 8601 UTC", lambda r: r["provenance"].update(date="29/11/2026")),
    ("provenance.xbook_version", "non-empty string", lambda r: r["provenance"].update(xbook_version="")),
    ("provenance: unknown field", "['host']", lambda r: r["provenance"].update(host="x")),
    ("characters", "a list", lambda r: r.update(characters={"Scrooge": 1})),
    ("characters[0].role", "one of ('protagonist', 'major', 'minor')",
     lambda r: r["characters"][0].update(role="hero")),
    ("characters[1].aliases[0]", "non-empty string",
     lambda r: r["characters"][1].update(aliases=[""])),
    ("characters[2]: missing", "['description']", lambda r: r["characters"][2].pop("description")),
    ("characters[3].mentions", "integer", lambda r: r["characters"][3].update(mentions=2.5)),
    ("settings[0].role", "one of ('primary', 'secondary')",
     lambda r: r["settings"][0].update(role="protagonist")),
    ("settings[0].name", "non-empty string", lambda r: r["settings"][0].update(name=" ")),
])
def test_validation_names_the_book_and_the_field_path(carol_scaffold, path, expected, break_record):
  record = copy.deepcopy(carol_scaffold)
  break_record(record)
  with pytest.raises(ScaffoldError) as error:
    validate_scaffold(record, where="record 7")
  message = str(error.value)
  assert message.startswith("record 7 (book pg46): ")
  assert path in message and expected in message


def test_jsonl_round_trip_and_line_numbered_errors(tmp_path, carol_scaffold):
  path = write_scaffolds(tmp_path / "out" / "scaffolds.jsonl", [carol_scaffold, carol_scaffold])
  assert list(read_scaffolds(path)) == [carol_scaffold, carol_scaffold]
  assert [p.name for p in path.parent.iterdir()] == ["scaffolds.jsonl"]

  broken = copy.deepcopy(carol_scaffold)
  del broken["chapters"][2]["scenes"][0]["text"]
  before = path.read_bytes()
  with pytest.raises(ScaffoldError,
                     match=r"record 1 \(book pg46\): chapters\[2\]\.scenes\[0\]: missing"):
    write_scaffolds(path, [carol_scaffold, broken])
  assert path.read_bytes() == before, "a failed write must leave the file as it was"
  assert [p.name for p in path.parent.iterdir()] == ["scaffolds.jsonl"]

  lines = before.decode("utf-8").splitlines()
  path.write_text("\n".join([lines[0], "", json.dumps(broken)]) + "\n", encoding="utf-8")
  with pytest.raises(ScaffoldError, match=rf"{re.escape(str(path))}:3 \(book pg46\): chapters\[2\]"):
    list(read_scaffolds(path))
  path.write_text(lines[0] + "\n{not json\n", encoding="utf-8")
  with pytest.raises(ScaffoldError, match=rf"{re.escape(str(path))}:2: not a JSON line"):
    list(read_scaffolds(path))


# --------------------------------------------------------------------------------- cache and resuming
def test_a_second_build_with_the_cache_calls_the_summarizer_zero_times(tmp_path, carol, carol_scaffold):
  counting = CountingSummarizer()
  with SummaryCache(tmp_path / "cache.sqlite") as cache:
    assert build_scaffold(carol, counting, cache=cache)["chapters"] == carol_scaffold["chapters"]
    assert counting.calls == _calls_to_build(carol) and cache.misses == counting.calls
  rerun = CountingSummarizer()
  with SummaryCache(tmp_path / "cache.sqlite") as cache:
    assert build_scaffold(carol, rerun, cache=cache)["chapters"] == carol_scaffold["chapters"]
    assert rerun.calls == 0 and cache.hits == _calls_to_build(carol) and cache.misses == 0
  other_params = CountingSummarizer(inner=ExtractiveSummarizer(redundancy=0.5))
  with SummaryCache(tmp_path / "cache.sqlite") as cache:
    build_scaffold(carol, other_params, cache=cache)
    assert other_params.calls == _calls_to_build(carol), "other params must not hit the old entries"


def _one_book_per_stave(carol: Book) -> list[Book]:
  return [dataclasses.replace(carol, id=f"pg46-{i}", sha256=text_sha256(chapter.text),
                              chapters=(dataclasses.replace(chapter, index=0),))
          for i, chapter in enumerate(carol.chapters)]


def test_an_interrupted_build_resumes_with_the_books_it_had_not_finished(tmp_path, carol):
  books = _one_book_per_stave(carol)
  out = tmp_path / "out" / "scaffolds.jsonl"
  splits = {b.id: "validation" if b.id == "pg46-4" else "train" for b in books}
  finished = 2
  # Interrupted during the first call after the first call of book 2 (0-based), which the cache keeps.
  interrupted = CountingSummarizer(interrupt_after=sum(_calls_to_build(b) for b in books[:finished]) + 1)
  with SummaryCache(tmp_path / "cache.sqlite") as cache, pytest.raises(KeyboardInterrupt):
    build_scaffolds(books, interrupted, out, cache=cache, splits=splits, progress=False)
  kept = list(read_scaffolds(out))
  assert [r["book"]["id"] for r in kept] == ["pg46-0", "pg46-1"]
  assert [p.name for p in out.parent.iterdir()] == ["scaffolds.jsonl"]

  resumed = CountingSummarizer()
  with SummaryCache(tmp_path / "cache.sqlite") as cache:
    records = build_scaffolds(books, resumed, out, cache=cache, splits=splits, progress=False)
    assert cache.hits == 1
  assert resumed.calls == sum(_calls_to_build(b) for b in books[finished:]) - 1
  assert records[:finished] == kept
  assert list(read_scaffolds(out)) == records
  assert [r["book"]["id"] for r in records] == [b.id for b in books]
  assert [r["split"] for r in records] == ["train"] * 4 + ["validation"]

  again = CountingSummarizer()
  assert build_scaffolds(books, again, out, splits=splits, progress=False) == records
  assert again.calls == 0
  changed = dict(splits, **{"pg46-0": "test"})
  build_scaffolds(books, again, out, splits=changed, progress=False)
  assert again.calls == _calls_to_build(books[0]), "a record of another split is rebuilt"


def test_show_prints_characters_and_settings(tmp_path, carol_scaffold, capsys):
  from xbook import cli
  path = write_scaffolds(tmp_path / "scaffolds.jsonl", [carol_scaffold])
  assert cli.main(["scaffold", "show", str(path)]) == 0
  out = capsys.readouterr().out
  characters = out[out.index("\nCHARACTERS\n"):out.index("\nSETTINGS\n")].strip().splitlines()
  assert characters[1].startswith("  Scrooge (also Mr. Scrooge, ") and ", protagonist: " in characters[1]
  assert len(characters) == 1 + len(carol_scaffold["characters"])
  assert "  the Tank, primary: " in out
