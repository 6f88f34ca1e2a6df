"""The report pages: one self-contained HTML page (inline SVG plots, no script, no network) of a record.

A books record (eval.json) gets: a summary table (a row per figure, a column per book with its value and
human percentile, and the human median and 5th-95th percentile range), plan adherence and length
control of written books, each figure against the human baseline (human novels as grey dots, their
median and 5th-95th range, books as coloured markers), per-chapter curves along each book, and the
worst examples quoted: only those beyond the human range.

One rule marks a figure red: beyond the human 95th percentile on its bad side (both sides where either
extreme is bad; the record's `beyond`, xbook.evals.evaluate.beyond_human). A figure the book is too
short to measure (its `too_short`) is shown greyed with the reason, and never placed among the human
novels, in the table or the plots.

A perplexity record (perplexity.json) gets its table, a kind with no token scored shown "not scored";
a judges record (judges.json) its ranking. Every plot is an `<svg>` inside a `<figure class="plot">`
with a legend; ticks are whole numbers where the figure counts things.
"""

from __future__ import annotations

import html
import io
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FuncFormatter, MaxNLocator  # noqa: E402

from xbook.atomic import atomic_open  # noqa: E402
from xbook.evals.metrics import CHAPTER_METRICS, DECIMALS, too_short  # noqa: E402

# Book colours: no red, which marks figures beyond the human range.
COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22")
STYLE = """body{font-family:sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse}
td,th{border:1px solid #ccc;padding:3px 6px;font-size:13px;text-align:right}th{background:#eee}
th.label{text-align:left}.plots{display:flex;flex-wrap:wrap;gap:8px}figure.plot{margin:0;border:1px solid #eee}
figcaption{font-size:12px;text-align:center;max-width:360px;margin:auto}
blockquote{background:#f6f6f6;padding:6px;margin:4px 0}
td.bad{background:#fdd}td.short{color:#888;font-style:italic;text-align:left}td.none{color:#888}
.key{font-size:13px}.key span{padding:1px 6px}"""
RULE = ("<p class='key'><span style='background:#fdd'>red</span>: beyond the human 95th percentile on the side "
        "that is bad for the figure (both sides where either extreme is unlike a novel); "
        "<span style='color:#888;font-style:italic'>grey</span>: the book is too short to measure the "
        "figure as the human novels were measured, so it is not placed among them.</p>")


def svg(fig: plt.Figure) -> str:
  """The figure as an inline <svg> element (closed afterwards)."""
  buffer = io.StringIO()
  fig.savefig(buffer, format="svg", bbox_inches="tight")
  plt.close(fig)
  text = buffer.getvalue()
  return text[text.index("<svg"):]


def _figure(body: str, caption: str, metric: str = "") -> str:
  return (f'<figure class="plot" data-metric="{html.escape(metric)}">{body}'
          f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def fmt(value: Any, metric: str = "") -> str:
  """A figure as shown: counts whole (DECIMALS), word lengths to one decimal, shares to three; None "–"."""
  if value is None or (isinstance(value, float) and math.isnan(value)):
    return "–"
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    return str(value)
  decimals = 0 if isinstance(value, int) else DECIMALS.get(metric, 3 if abs(value) < 100 else 0)
  return f"{value:,.{decimals}f}"


def _tick(value: float, _position: Any = None) -> str:
  """A tick label: short, whole where it is whole (no "2.000"), three significant digits otherwise."""
  if abs(value - round(value)) < 1e-9:
    return f"{round(value):,}"
  return f"{value:.3g}" if abs(value) < 100 else f"{value:,.0f}"


def _axes(ax: plt.Axes, integer_x: bool = False, y: bool = True) -> None:
  """Few, short, non-overlapping tick labels (the y axis's too, unless it names things)."""
  ax.xaxis.set_major_locator(MaxNLocator(nbins=4, integer=integer_x, min_n_ticks=2))
  ax.xaxis.set_major_formatter(FuncFormatter(_tick))
  if y:
    ax.yaxis.set_major_locator(MaxNLocator(nbins=4))
    ax.yaxis.set_major_formatter(FuncFormatter(_tick))
  ax.tick_params(labelsize=7)


def _legend(ax: plt.Axes, entries: int) -> None:
  """The legend under the axes, two entries a row."""
  ax.legend(fontsize=6, loc="upper center", bbox_to_anchor=(0.5, -0.3), ncol=2 if entries > 1 else 1,
            frameon=False, handlelength=1.5)


def _colors(record: Mapping[str, Any]) -> dict[str, str]:
  return {name: COLORS[i % len(COLORS)] for i, name in enumerate(record.get("books", {}))}


def metric_plot(metric: str, label: str, record: Mapping[str, Any]) -> str:
  """Human values (grey dots, median line, 5th-95th range) and each book placed (a coloured marker);
  a book too short for the figure is named in the legend, not placed."""
  human = record["baseline"]["metrics"].get(metric, {})
  fig, ax = plt.subplots(figsize=(3.6, 0.9))
  values = list(human.get("values", {}).values())
  entries = 0
  if values:
    if "p5" in human:
      ax.axvspan(human["p5"], human["p95"], color="#eee", zorder=0, label="human 5th–95th percentile")
    ax.scatter(values, [0] * len(values), color="#999", s=18, label=f"human novels ({len(values)})", zorder=2)
    ax.axvline(human["median"], color="#666", lw=1, ls="--", label="human median")
    entries += 3
  for i, (name, book) in enumerate(record["books"].items()):
    value = book["figures"].get(metric)
    short = book.get("too_short", {}).get(metric)
    if short:
      ax.plot([], [], " ", label=f"{name}: {short}")
    elif value is not None:  # books a little apart in height, so that equal values stay visible
      ax.scatter([value], [0.15 + 0.3 * (i % 4) / 3], marker="v", s=50, color=_colors(record)[name],
                 label=name, zorder=3)
    entries += 1
  _axes(ax, integer_x=DECIMALS.get(metric) == 0, y=False)
  ax.set_yticks([])
  ax.set_ylim(-0.4, 0.6)
  _legend(ax, entries)
  return _figure(svg(fig), label, metric)


def _chapter_values(book: Mapping[str, Any], metric: str) -> list[float]:
  """A book's per-chapter values (NaN, a gap, where the chapter is too short for the metric)."""
  out = []
  for chapter in book["chapters"]:
    value = chapter.get(metric)
    out.append(float("nan") if value is None or too_short(metric, chapter) else value)
  return out


def chapter_plot(metric: str, label: str, record: Mapping[str, Any]) -> str:
  """The metric along each book that has it (x: chapter, whole numbers), with the human median as a
  dashed line; chapters too short for the metric are gaps, named in the legend."""
  fig, ax = plt.subplots(figsize=(3.6, 1.5))
  entries = 0
  for name, book in record["books"].items():
    if not any(c.get(metric) is not None for c in book["chapters"]):
      continue
    ys = _chapter_values(book, metric)
    shown = sum(not math.isnan(y) for y in ys)
    suffix = "" if shown == len(ys) else f" ({len(ys) - shown} of {len(ys)} chapters too short)"
    ax.plot(range(1, len(ys) + 1), ys, marker=".", color=_colors(record)[name], label=name + suffix)
    entries += 1
  human = record.get("baseline", {}).get("metrics", {}).get(metric)
  if human:
    ax.axhline(human["median"], color="#666", lw=1, ls="--", label="human median (whole novels)")
    entries += 1
  ax.set_xlabel("chapter", fontsize=7)
  _axes(ax, integer_x=True)
  _legend(ax, entries)
  return _figure(svg(fig), f"{label} by chapter", f"chapter:{metric}")


def _cell(name: str, book: Mapping[str, Any], metric: str) -> str:
  """One summary cell: value and percentile, red beyond the human range, grey when too short."""
  value = fmt(book["figures"].get(metric), metric)
  where = f'data-book="{html.escape(name)}" data-metric="{metric}"'
  short = book.get("too_short", {}).get(metric)
  if short:
    return f'<td class="short" {where}>{value} — {html.escape(short)}</td>'
  pct = book["percentiles"].get(metric)
  shown = value + (f" <small>({pct:.0f}%)</small>" if pct is not None else "")
  side = book.get("beyond", {}).get(metric)
  title = f' title="beyond the human 95th percentile ({side})"' if side else ""
  return f'<td class="{"bad" if side else ""}" {where}{title}>{shown}</td>'


def summary_table(record: Mapping[str, Any]) -> str:
  """A row per figure: each book's value (human percentile), then the human median and 5th-95th range."""
  books = record["books"]
  head = "".join(f"<th>{html.escape(name)}</th>" for name in books)
  rows = []
  for metric, spec in record["metrics"].items():
    human = record.get("baseline", {}).get("metrics", {}).get(metric, {})
    span = (f"{fmt(human['p5'], metric)} – {fmt(human['p95'], metric)}" if "p5" in human else "–")
    cells = "".join(_cell(name, book, metric) for name, book in books.items())
    rows.append(f"<tr><th class='label'>{html.escape(spec['label'])}</th>{cells}"
                f"<td>{fmt(human.get('median'), metric)}</td><td>{span}</td></tr>")
  return (f"<table class='summary'><tr><th class='label'>figure</th>{head}<th>human median</th>"
          f"<th>human 5th–95th</th></tr>{''.join(rows)}</table>")


PLAN_COLUMNS = (("plan_adherence", "chapter plan adherence"), ("scene_plan_adherence", "scene plan adherence"),
                ("scenes_planned", "scenes planned"), ("scenes_written", "scenes written"))


def plans_section(record: Mapping[str, Any]) -> str:
  """Plan adherence (share of the plan's content words found in the text) and length control (written /
  planned words) of the books that have plans: per book, then per chapter."""
  planned = {name: book for name, book in record["books"].items() if book.get("plans")}
  if not planned:
    return ""
  head = "".join(f"<th>{label}</th>" for _, label in PLAN_COLUMNS)
  rows = []
  for name, book in planned.items():
    plans = book["plans"]
    control = plans.get("length_control")
    shown = "no plan states a length" if control is None else f"{control:.2f} ({100 * control:.0f}% of planned words)"
    cells = "".join(f"<td>{fmt(plans.get(key), key)}</td>" for key, _ in PLAN_COLUMNS)
    rows.append(f"<tr><th class='label'>{html.escape(name)}</th>{cells}<td>{shown}</td></tr>")
  parts = ["<h2>Plans (written books)</h2><p>Plan adherence: the share of a plan's content words (names, "
           "places, events) found in the text it planned; length control: words written / words the scene "
           "plans asked for.</p>",
           f"<table class='plans'><tr><th class='label'>book</th>{head}<th>length control</th></tr>"
           f"{''.join(rows)}</table>"]
  for name, book in planned.items():
    chapter_rows = [{"chapter": i + 1, **{label: c.get(key) for key, label in PLAN_COLUMNS}}
                    for i, c in enumerate(book["chapters"])]
    parts += [f"<h3>{html.escape(name)}: by chapter</h3>",
              table(chapter_rows, ["chapter", *(label for _, label in PLAN_COLUMNS)],
                    {label: key for key, label in PLAN_COLUMNS})]
  return "".join(parts)


def _book_examples(book: Mapping[str, Any]) -> list[str]:
  """The quotes of one book whose figure is beyond the human range."""
  ex, beyond, parts = book["examples"], book.get("beyond", {}), []
  if ex.get("longest_repeat") and "longest_repeat" in beyond:
    parts.append(f"<p>Longest repeated span ({fmt(book['figures']['longest_repeat'], 'longest_repeat')} "
                 f"words):</p><blockquote>{html.escape(ex['longest_repeat'][:1500])}</blockquote>")
  worst = ex.get("most_repetitive_chapter") or {}
  if worst.get("ngram") and worst.get("beyond"):
    parts.append(f"<p>Most repetitive chapter: {worst['chapter']} ({html.escape(worst['title'])}), "
                 f"{100 * worst['rate']:.1f}% repeated 4-grams; “{html.escape(worst['ngram'])}” "
                 f"{worst['count']} times.</p>")
  rows = "".join(f"<tr><td>{html.escape(o['phrase'])}</td><td>{o['count']:,}</td><td>{o['ratio']}</td>"
                 f"<td style='text-align:left'>{html.escape(o['example'])}</td></tr>"
                 for o in book["overrepresented"])
  if rows and "overrep_index" in beyond:
    parts.append("<p>Top over-represented phrases (count, times the human rate, in context):</p>"
                 f"<table><tr><th>phrase</th><th>count</th><th>ratio</th><th>example</th></tr>{rows}</table>")
  return parts


def examples_section(record: Mapping[str, Any]) -> str:
  """Worst examples, per book: only those whose figure is beyond the human range (the red rule)."""
  parts = ["<p>Quoted only where the figure is beyond the human 95th percentile: the longest repeated "
           "span, the most repetitive chapter, the over-represented phrases.</p>"]
  for name, book in record["books"].items():
    quotes = _book_examples(book)
    parts.append(f"<h3>{html.escape(name)}</h3>")
    parts += quotes or ["<p class='within'>Nothing to quote: its repetition and over-represented phrases are "
                        "within the human range.</p>"]
  return "".join(parts)


def table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str], metric_of: Mapping[str, str] | None = None
          ) -> str:
  """A plain table of `rows` ({column: value}), values shown with `fmt` (as the metric `metric_of[column]`)."""
  metric_of = metric_of or {}
  head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
  body = "".join("<tr>" + "".join(f"<td>{html.escape(fmt(r.get(c), metric_of.get(c, c)))}</td>" for c in columns)
                 + "</tr>" for r in rows)
  return f"<table><tr>{head}</tr>{body}</table>"


PERPLEXITY_COLUMNS = ("tokens", "coverage", "words", "bytes", "nll_per_token", "ppl_per_token", "ppl_per_word",
                      "bits_per_byte")


def perplexity_table(perplexity: Mapping[str, Any]) -> str:
  """One row per book set; a set of which no token was scored says so instead of numbers."""
  head = "".join(f"<th>{c}</th>" for c in ("book set",) + PERPLEXITY_COLUMNS)
  rows = []
  for name, figures in perplexity.get("results", {}).items():
    if not figures.get("scored", figures.get("tokens", 0) > 0):
      cells = (f"<td>0</td><td>{fmt(figures.get('coverage'))}</td>"
               f"<td class='none' colspan='{len(PERPLEXITY_COLUMNS) - 2}'>not scored (no token of it in the "
               "windows)</td>")
    else:
      cells = "".join(f"<td>{fmt(figures.get(c), 'words' if c in ('tokens', 'words', 'bytes') else c)}</td>"
                      for c in PERPLEXITY_COLUMNS)
    rows.append(f"<tr><th class='label'>{html.escape(name)}</th>{cells}</tr>")
  about = (f"<p>Run {html.escape(str(perplexity.get('run_dir', '')))}, step {perplexity.get('step')}, windows "
           f"of {perplexity.get('seq_len')} tokens, plan order {perplexity.get('plan_order')}, split "
           f"{perplexity.get('split')}. Per word and per byte: the NLL over the words and UTF-8 bytes of the "
           "text of the tokens scored (coverage below 1: the windows cut long plans).</p>")
  return f"{about}<table class='perplexity'><tr>{head}</tr>{''.join(rows)}</table>"


def ranking_plot(ranking: list[Mapping[str, Any]]) -> str:
  fig, ax = plt.subplots(figsize=(4.5, 0.4 + 0.35 * len(ranking)))
  for y, row in enumerate(reversed(ranking)):
    ax.errorbar([row["score"]], [y], xerr=[[row["score"] - row["low"]], [row["high"] - row["score"]]],
                fmt="o", color="#1f77b4", capsize=3, label="score, 95% bootstrap interval" if not y else None)
  ax.set_yticks(range(len(ranking)), [r["system"] for r in reversed(ranking)], fontsize=7)
  ax.set_xlabel("Bradley-Terry score (log-odds)", fontsize=7)
  _axes(ax, y=False)
  ax.legend(fontsize=6, loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False)  # above: the x label is below
  return _figure(svg(fig), "judge ranking", "judges")


def books_sections(record: Mapping[str, Any]) -> list[str]:
  baseline = record.get("baseline", {})
  parts = [f"<p>Human baseline: {len(baseline.get('books', []))} novels from "
           f"{html.escape(str(baseline.get('source', '')))}; percentiles are the share of human novels below "
           "the book.</p>", RULE, "<h2>Summary</h2>", summary_table(record), plans_section(record),
           "<h2>Against the human baseline</h2><div class='plots'>"]
  parts += [metric_plot(m, spec["label"], record) for m, spec in record["metrics"].items()]
  parts += ["</div><h2>Along the book</h2><div class='plots'>"]
  parts += [chapter_plot(m, record["metrics"][m]["label"], record) for m in CHAPTER_METRICS]
  if any(book.get("plans") for book in record["books"].values()):
    parts.append(chapter_plot("plan_adherence", "chapter plan adherence", record))
  parts += ["</div>"]
  return parts


def render(record: Mapping[str, Any]) -> str:
  """The whole page of a books, perplexity or judges record."""
  parts = ["<!DOCTYPE html><html><head><meta charset='utf-8'><title>xbook eval</title>",
           f"<style>{STYLE}</style></head><body><h1>xbook eval</h1>"]
  if record.get("books"):
    parts += books_sections(record)
  if record.get("perplexity"):
    parts += ["<h2>Held-out perplexity</h2>", perplexity_table(record["perplexity"])]
  if record.get("judges"):
    judges = record["judges"]
    parts += ["<h2>Judges</h2>", table(judges["ranking"], ["system", "score", "low", "high", "wins", "games"])]
    parts += ["<div class='plots'>", ranking_plot(judges["ranking"]), "</div>"]
    if judges.get("failures"):
      parts += [f"<p>{len(judges['failures'])} judgements failed (not counted):</p>",
                table(judges["failures"][:50], ["pair", "order", "judge", "sample", "error"])]
  if record.get("books"):
    parts += ["<h2>Worst examples</h2>", examples_section(record)]
  parts.append("</body></html>")
  return "\n".join(parts)


def write_report(record: Mapping[str, Any], path: str | Path) -> Path:
  path = Path(path)
  with atomic_open(path, "w") as f:
    f.write(render(record))
  return path
