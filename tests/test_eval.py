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
import re
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
def human(corpus_dir):
  return from_book(load_book(corpus_dir / f"{HELD_OUT}.txt"), name="human")


@pytest.fixture(scope="module")
def baseline(corpus_dir):
  return HumanBaseline.build(corpus_dir, exclude={HELD_OUT}, limit=BASELINE)


@pytest.fixture(scope="module")
def record(corpus_dir, human, baseline):
  books = [human, _looped(human), _shuffled(human), _stuffed(human)]
  return evaluate_books(books, baseline, str(corpus_dir))


# A written book too short for the 1,000-word windows: 2 chapters of 75 words, 93% of them in quotes,
# each scene planned with a length (80 and 100 words asked for).
SHORT_SCENES = (
    "“Mara, the keeper left his diary in the lamp room,” said Tom to his sister. “I found it under the iron "
    "stairs this morning, wrapped in oilcloth and tied with a blue ribbon. Will you read it with me tonight, "
    "before the storm comes in from the grey sea and the lamp must be lit again? I am afraid of what it says "
    "about the winter of the wreck, and of what the keeper saw.”",
    "“The diary says the ship came in at midnight,” Mara whispered to her brother. “He saw a green light on "
    "the rocks, and a woman in a grey coat waving from the deck. He wrote that he rang the bell until his "
    "hands bled, and nobody came. The next page is torn out. Someone in this village knows what happened to "
    "her, Tom, and I mean to find out who before the lamp goes dark.”")
SHORT_PLANS = (("The Diary", "Tom finds the keeper's diary and asks Mara to read it.",
                "Tom tells Mara about the diary he found under the stairs (about 80 words)."),
               ("The Wreck", "Mara reads of the wreck and resolves to find the woman.",
                "Mara reads the diary's account of the wreck and the woman in grey (about 100 words)."))


@pytest.fixture(scope="module")
def short_book(tmp_path_factory):
  """The short written book as `xbook write` writes it: short/book.json."""
  chapters = [{"index": i, "title": title, "summary": summary, "scene_plans": [plan], "texts": [text]}
              for i, ((title, summary, plan), text) in enumerate(zip(SHORT_PLANS, SHORT_SCENES))]
  path = tmp_path_factory.mktemp("written") / "short" / "book.json"
  path.parent.mkdir()
  path.write_text(json.dumps({"prompt": "A lighthouse mystery", "chapters": chapters}), "utf-8")
  return path


@pytest.fixture(scope="module")
def short_record(corpus_dir, human, baseline, short_book):
  return evaluate_books([human, *load_books(short_book)], baseline, str(corpus_dir))


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


def test_a_short_book_is_flagged_and_not_placed_in_percentiles(short_record):
  assert [len(metrics.words(t)) for t in SHORT_SCENES] == [75, 75]
  short = short_record["books"]["short"]
  assert short["figures"]["words"] == 150
  for metric in ("mtld", "distinct_1", "distinct_2"):  # 1,000-word windows
    assert short["too_short"][metric] == "too short to measure: 150 words < 1,000"
    assert short["percentiles"][metric] is None and metric not in short["beyond"]
  assert set(short["too_short"]) == {"mtld", "distinct_1", "distinct_2"}  # two chapters: across-chapter figures hold
  assert short_record["books"]["human"]["too_short"] == {}


def _share_below(value, values):
  return 100 * (sum(v < value for v in values) + 0.5 * sum(v == value for v in values)) / len(values)


def test_red_is_one_rule_on_the_bad_side_both_sides_where_both_are_bad(short_record, baseline):
  short = short_record["books"]["short"]
  assert short["figures"]["chapters"] == 2 and short["figures"]["chapter_words_mean"] == 75
  assert short["figures"]["dialogue_share"] == pytest.approx(140 / 150)  # 5 words of 75 outside quotes
  assert short["beyond"]["chapters"] == "low" and short["beyond"]["chapter_words_mean"] == "low"
  assert short["beyond"]["dialogue_share"] == "high"
  # The rule, from the human values: past the 95th percentile on a side that is bad for the figure.
  for name, book in short_record["books"].items():
    for metric, (_, worse) in metrics.METRICS.items():
      if metric in book["too_short"]:
        continue
      below = _share_below(book["figures"][metric], baseline.distribution(metric))
      expected = ("high" if below >= 95 and worse in (1, 2) else "low" if below <= 5 and worse in (-1, 2)
                  else None)
      assert book["beyond"].get(metric) == expected, (name, metric, below)


def test_plan_adherence_and_length_control_of_the_short_book(short_record):
  plans = short_record["books"]["short"]["plans"]
  assert plans["scenes_planned"] == plans["scenes_written"] == 2
  assert plans["length_control"] == pytest.approx((75 / 80 + 75 / 100) / 2)


def test_xbook_eval_writes_eval_json_and_report(corpus_dir, tmp_path):
  out = tmp_path / "eval"
  env = {**os.environ, "XBOOK_CORPUS": str(corpus_dir)}
  command = [sys.executable, "-m", "xbook.cli", "eval", "--books", str(corpus_dir / "pg46.txt"),
             "--baseline", str(corpus_dir), "--baseline_limit", "2", "--out", str(out), "--json"]
  result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  summary = json.loads(result.stdout.strip().splitlines()[-1])
  record = json.loads((out / "eval.json").read_text())
  assert summary["books"] == ["pg46"] and set(record["books"]["pg46"]["figures"]) >= set(metrics.METRICS)
  assert "pg46" not in record["baseline"]["books"]
  assert (out / "report.html").read_text().count("<svg") >= len(metrics.METRICS)
  # A second evaluation into the same folder is refused before any work, the first one's files kept.
  before = {p.name: p.read_bytes() for p in out.iterdir()}
  again = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
  assert again.returncode == 1 and "Traceback" not in again.stderr, again.stderr[-2000:]
  [line] = [x for x in again.stderr.splitlines() if x.startswith("error:")]
  assert "eval.json" in line and "--overwrite" in line, line
  assert {p.name: p.read_bytes() for p in out.iterdir()} == before


ARTIFACTS = Path(os.environ.get("XBOOK_TEST_ARTIFACTS") or REPO / "tests" / "artifacts")


def _artifact(name: str) -> Path:
  """A path in the test artifacts folder (tests/artifacts, git-ignored by its own .gitignore, or
  $XBOOK_TEST_ARTIFACTS), printed so that CI's log says where the file is."""
  ARTIFACTS.mkdir(parents=True, exist_ok=True)
  (ARTIFACTS / ".gitignore").write_text("*\n")
  path = ARTIFACTS / name
  print(f"test artifact: {path}")
  return path


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
               "--window-size=1400,2000", "--hide-scrollbars"):
    options.add_argument(flag)
  options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
  return webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=driver))


# Where each plot's text landed on the page, as the browser laid it out: [left, top, right, bottom] of
# the <svg>, its x tick labels, its legends and every other text (matplotlib's SVG groups).
LAYOUT_JS = """
const box = e => { const r = e.getBoundingClientRect(); return [r.left, r.top, r.right, r.bottom]; };
return [...document.querySelectorAll('figure.plot')].map(f => {
  const svg = f.querySelector('svg');
  const texts = [...svg.querySelectorAll('g[id^="text"]')].filter(t => !t.closest('g[id^="legend"]'));
  return {metric: f.dataset.metric, svg: box(svg), legends: [...svg.querySelectorAll('g[id^="legend"]')].map(box),
          ticks: [...svg.querySelectorAll('g[id^="xtick"] > g[id^="text"]')].map(box), texts: texts.map(box)};
});
"""


def _overlap(a, b, slack=0.5):
  return a[0] < b[2] - slack and b[0] < a[2] - slack and a[1] < b[3] - slack and b[1] < a[3] - slack


def _check_layout(plots):
  """Every plot has one legend, and its tick labels, labels and legend lie inside it without overlapping."""
  for plot in plots:
    where, (left, top, right, bottom) = plot["metric"], plot["svg"]
    assert len(plot["legends"]) == 1, where
    for box in plot["texts"] + plot["legends"]:
      assert left - 1 <= box[0] and box[2] <= right + 1 and top - 1 <= box[1] and box[3] <= bottom + 1, where
    ticks = sorted(plot["ticks"])
    assert len(ticks) >= 2, where
    assert all(a[2] <= b[0] for a, b in zip(ticks, ticks[1:])), (where, ticks)  # x tick labels apart
    assert not any(_overlap(plot["legends"][0], box) for box in plot["texts"]), where


def _render_in_chromium(path: Path, shot: Path):
  """Open the page, lay it out at full height and screenshot it; returns (browser errors, layout,
  {selector: elements as [text, displayed, background]})."""
  browser = _chromium()
  try:
    browser.get(path.as_uri())
    browser.set_window_size(1400, browser.execute_script("return document.body.scrollHeight") + 50)
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    layout = browser.execute_script(LAYOUT_JS)
    cells = {sel: [(e.text, e.is_displayed(), e.value_of_css_property("background-color"),
                    e.get_attribute("data-metric"))
                   for e in browser.find_elements("css selector", sel)]
             for sel in ("td.short", "td.bad", "td.bad[data-book=short]", "table.plans", "p.within",
                         "td[data-metric=chapters]")}
    browser.save_screenshot(str(shot))
  finally:
    browser.quit()
  return errors, layout, cells


def test_report_renders_in_headless_chromium(record, tmp_path):
  path = write_report(record, tmp_path / "report.html")
  html = path.read_text()
  # Self-contained: nothing to load (SVG namespace URIs are names, never fetched) and no script.
  assert not any(f'{attr}="http' in html for attr in ("src", "href", "url(")) and "<script" not in html
  shot = _artifact("report_degraded_books.png")
  errors, layout, _ = _render_in_chromium(path, shot)
  assert not errors, errors
  assert len(layout) >= len(metrics.METRICS) + len(metrics.CHAPTER_METRICS)
  assert all(p["svg"][2] - p["svg"][0] > 100 and p["svg"][3] - p["svg"][1] > 40 for p in layout)
  _check_layout(layout)
  assert shot.stat().st_size > 20_000


RED = (255, 221, 221)  # td.bad's background, #fdd


def test_a_short_books_report_in_headless_chromium(short_record, tmp_path):
  from PIL import Image
  path = write_report(short_record, tmp_path / "report.html")
  shot = _artifact("report_short_book.png")
  errors, layout, cells = _render_in_chromium(path, shot)
  assert not errors, errors
  _check_layout(layout)
  # The flag is on the page, the figures it concerns are not placed.
  flagged = [text for text, shown, _, _ in cells["td.short"] if shown]
  assert len(flagged) == 3 and all("too short to measure: 150 words < 1,000" in t for t in flagged), flagged
  red = {metric for _, shown, colour, metric in cells["td.bad[data-book=short]"]
         if shown and colour.replace("rgba", "rgb").replace(", 1)", ")") == f"rgb{RED}"}
  assert red >= {"chapters", "chapter_words_mean", "dialogue_share"}, cells["td.bad[data-book=short]"]
  assert red == set(short_record["books"]["short"]["beyond"])  # red where, and only where, the rule says
  assert [t for t, *_ in cells["td[data-metric=chapters]"]][1].split()[0] == "2"  # a count, not "2.000"
  assert cells["table.plans"] and "0.84 (84% of planned words)" in cells["table.plans"][0][0]
  assert cells["p.within"]  # no worst example quoted for books within the human range
  # matplotlib's SVG keeps each text as a comment beside its glyphs: the legends of the three windowed
  # figures name the short book as too short, and no tick reads like "2.000".
  html = path.read_text()
  assert html.count("<!-- short: too short to measure: 150 words &lt; 1,000 -->") == 3
  assert not re.search(r"<!-- -?[\d,]+\.0+ -->", html)
  # The screenshot shows the red cells.
  image = Image.open(shot).convert("RGB")
  assert image.height > 2000 and sum(1 for px in image.getdata() if px == RED) > 5_000
