"""`xbook eval`: text metrics tell degraded prose from human prose, the report renders in Chromium,
and the command writes eval.json and report.html.

The human novel is Jekyll and Hyde (pg43), held out of a small baseline of four other novels. Its
degraded copies: one paragraph looped in every chapter, every sentence shuffled across the book, and
the text stuffed with a few stock phrases.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from xbook.books import load_book
from xbook.evals import metrics
from xbook.evals.baseline import HumanBaseline
from xbook.evals.evaluate import evaluate_books
from xbook.evals.report import write_report
from xbook.evals.texts import EvalBook, from_book, load_books

REPO = Path(__file__).resolve().parents[1]
HELD_OUT = "pg43"
BASELINE = 4
STOCK = ("a tapestry of shimmering possibilities", "the weight of unspoken words",
         "her heart pounded in her chest", "a testament to the enduring power")


def _looped(book: EvalBook) -> EvalBook:
  chapters = []
  for chapter in book.chapters:
    paragraphs = metrics.paragraphs(chapter.text)
    loop = max(paragraphs[:5], key=len)
    chapters.append(dataclasses.replace(chapter, scenes=(chapter.text,) + (loop,) * 12))
  return dataclasses.replace(book, name="looped", chapters=tuple(chapters))


def _shuffled(book: EvalBook) -> EvalBook:
  sentences = [s for c in book.chapters for s in metrics.sentences(c.text)]
  random.Random(0).shuffle(sentences)
  chapters, at = [], 0
  for chapter in book.chapters:
    n = len(metrics.sentences(chapter.text))
    part = sentences[at:at + n]
    at += n
    text = "\n\n".join(" ".join(part[i:i + 5]) for i in range(0, len(part), 5))
    chapters.append(dataclasses.replace(chapter, scenes=(text,)))
  return dataclasses.replace(book, name="shuffled", chapters=tuple(chapters))


def _stuffed(book: EvalBook) -> EvalBook:
  rng = random.Random(0)
  chapters = []
  for chapter in book.chapters:
    out = []
    for sentence in metrics.sentences(chapter.text):
      out.append(sentence)
      if rng.random() < 0.25:
        out.append(f"It was {rng.choice(STOCK)}.")
    chapters.append(dataclasses.replace(chapter, scenes=(" ".join(out),)))
  return dataclasses.replace(book, name="stuffed", chapters=tuple(chapters))


@pytest.fixture(scope="module")
def record(corpus_dir):
  human = from_book(load_book(corpus_dir / f"{HELD_OUT}.txt"), name="human")
  baseline = HumanBaseline.build(corpus_dir, exclude={HELD_OUT}, limit=BASELINE)
  books = [human, _looped(human), _shuffled(human), _stuffed(human)]
  return evaluate_books(books, baseline, str(corpus_dir))


def _figure(record, book, metric):
  return record["books"][book]["figures"][metric]


@pytest.mark.parametrize("metric", ["repeat_rate_within", "longest_repeat"])
def test_looped_text_is_worst_on_repetition(record, metric):
  values = {b: _figure(record, b, metric) for b in record["books"]}
  assert max(values, key=values.get) == "looped", values
  assert values["human"] < values["looped"] / 3, values


@pytest.mark.parametrize("metric", ["distinct_1", "distinct_2"])
def test_looped_text_is_least_diverse(record, metric):
  values = {b: _figure(record, b, metric) for b in record["books"]}
  assert min(values, key=values.get) == "looped", values


def test_mtld_falls_with_stock_phrases(record):
  # MTLD measures diversity within runs of some 70-100 words, so a loop of a whole paragraph leaves it
  # nearly unchanged (measured: 86.2 human, 86.5 looped); stock phrases every few sentences lower it.
  values = {b: _figure(record, b, "mtld") for b in record["books"]}
  assert values["stuffed"] < 0.95 * values["human"], values


def test_shuffled_sentences_lose_cohesion(record):
  values = {b: _figure(record, b, "cohesion") for b in record["books"]}
  assert values["shuffled"] < 0.8 * values["human"], values
  assert min(values, key=values.get) == "shuffled", values


def test_stuffed_text_has_the_most_overrepresented_phrases(record):
  # The looped paragraph's own phrases are over-represented too (measured 595 per 1,000 words): the
  # stuffed text must stand out from the human and shuffled texts, which share their words.
  values = {b: _figure(record, b, "overrep_index") for b in record["books"]}
  assert values["stuffed"] > 2 * max(values["human"], values["shuffled"]), values
  offenders = [o["phrase"] for o in record["books"]["stuffed"]["overrepresented"][:8]]
  assert sum(any(p in s for s in STOCK) for p in offenders) >= 4, offenders
  assert record["books"]["stuffed"]["overrepresented"][0]["example"], "offenders are quoted in context"


def test_the_human_novel_sits_inside_the_human_distribution(record):
  pct = record["books"]["human"]["percentiles"]
  looped = record["books"]["looped"]["percentiles"]
  assert looped["repeat_rate_within"] == 100 and looped["longest_repeat"] == 100
  assert pct["longest_repeat"] < 100 and pct["repeat_rate_within"] < 100, pct
  assert len(record["baseline"]["books"]) == BASELINE and HELD_OUT not in record["baseline"]["books"]


def test_per_chapter_figures_follow_the_book(record):
  human = record["books"]["human"]
  assert len(human["chapters"]) == _figure(record, "human", "chapters") > 1
  assert all(0 <= c["repeat_rate_within"] < 1 and c["mtld"] > 0 for c in human["chapters"])


def test_plan_adherence_of_a_written_book(tmp_path):
  book = {"prompt": "p", "chapters": [
      {"index": 0, "title": "One", "summary": "Mara finds the lighthouse keeper's diary.",
       "scene_plans": ["Mara climbs the lighthouse (about 20 words).", "Mara reads the diary."],
       "texts": ["Mara climbed the stairs of the old lighthouse, slowly, one at a time, until the lamp "
                 "room opened before her like a bell.", "She sat down and read."]}]}
  (tmp_path / "run_a").mkdir()
  (tmp_path / "run_a" / "book.json").write_text(json.dumps(book))
  # xbook write's resume log beside the book is not a book.
  (tmp_path / "run_a" / "journal.jsonl").write_text(json.dumps({"stage": "header", "prompt": "p"}) + "\n")
  [loaded] = load_books(tmp_path)
  from xbook.evals.plans import plan_figures
  figures, chapters = plan_figures(loaded)
  assert loaded.name == "run_a" and loaded.planned
  assert chapters[0]["scenes_planned"] == chapters[0]["scenes_written"] == 2
  assert figures["scene_plan_adherence"] == pytest.approx((1.0 + 0.0) / 2)  # all of mara/climb/lighthouse; scene 2 names Mara by "She"
  assert figures["length_control"] == pytest.approx(23 / 20)  # 23 words written for 20 planned


def test_xbook_eval_writes_eval_json_and_report(corpus_dir, tmp_path):
  out = tmp_path / "eval"
  env = {**os.environ, "XBOOK_CORPUS": str(corpus_dir)}
  result = subprocess.run([sys.executable, "-m", "xbook.cli", "eval", "--books", str(corpus_dir / "pg46.txt"),
                           "--baseline", str(corpus_dir), "--baseline_limit", "2", "--out", str(out), "--json"],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  summary = json.loads(result.stdout.strip().splitlines()[-1])
  record = json.loads((out / "eval.json").read_text())
  assert summary["books"] == ["pg46"] and set(record["books"]["pg46"]["figures"]) >= set(metrics.METRICS)
  assert "pg46" not in record["baseline"]["books"]
  assert (out / "report.html").read_text().count("<svg") >= len(metrics.METRICS)


def _chromium():
  driver, browser = shutil.which("chromedriver"), shutil.which("chromium") or shutil.which("chromium-browser")
  if not (driver and browser):
    message = "chromium/chromedriver not installed (bash launch/setup.sh --test installs them with apt)"
    if os.environ.get("CI") == "true":
      pytest.fail(message)
    pytest.skip(message)
  from selenium import webdriver
  options = webdriver.ChromeOptions()
  options.binary_location = browser
  for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
               "--window-size=1400,2000"):
    options.add_argument(flag)
  options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
  return webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=driver))


def test_report_renders_in_headless_chromium(record, tmp_path):
  path = write_report(record, tmp_path / "report.html")
  html = path.read_text()
  # Self-contained: nothing to load (SVG namespace URIs are names, never fetched) and no script.
  assert not any(f'{attr}="http' in html for attr in ("src", "href", "url(")) and "<script" not in html
  browser = _chromium()
  try:
    browser.get(path.as_uri())
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    plots = browser.find_elements("css selector", "figure.plot svg")
    sizes = [p.size for p in plots]
    shot = tmp_path / "report.png"
    browser.save_screenshot(str(shot))
  finally:
    browser.quit()
  assert not errors, errors
  assert len(plots) >= len(metrics.METRICS) + len(metrics.CHAPTER_METRICS)
  assert all(s["width"] > 100 and s["height"] > 40 for s in sizes), sizes
  assert shot.stat().st_size > 20_000
