"""report.html: one self-contained page (inline SVG plots, no script, no network) of an eval.json.

Sections: a summary table (each book's figures with the human percentile), each metric against the
human baseline (the human novels as grey dots and their median, the evaluated books as coloured
markers), per-chapter curves along each book, perplexity and judge tables when present, and the worst
examples quoted (longest repeated span, most repetitive chapter, top over-represented phrases).
Every plot is an `<svg>` inside a `<figure class="plot">`.
"""

from __future__ import annotations

import html
import io
from pathlib import Path
from typing import Any, Mapping

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from xbook.atomic import atomic_open  # noqa: E402
from xbook.evals.metrics import CHAPTER_METRICS  # noqa: E402

COLORS = ("#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")
STYLE = """body{font-family:sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse}
td,th{border:1px solid #ccc;padding:3px 6px;font-size:13px;text-align:right}th{background:#eee}
.plots{display:flex;flex-wrap:wrap;gap:8px}figure.plot{margin:0;border:1px solid #eee}
figcaption{font-size:12px;text-align:center}blockquote{background:#f6f6f6;padding:6px;margin:4px 0}
td.bad{background:#fdd}"""


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


def metric_plot(metric: str, label: str, record: Mapping[str, Any]) -> str:
  """Human values (grey dots, median line) and each evaluated book (a coloured marker)."""
  human = record["baseline"]["metrics"].get(metric, {})
  fig, ax = plt.subplots(figsize=(3.6, 1.3))
  values = list(human.get("values", {}).values())
  ax.scatter(values, [0] * len(values), color="#999", s=18, label="human", zorder=2)
  if values:
    ax.axvline(human["median"], color="#666", lw=1, ls="--")
  for i, (name, book) in enumerate(record["books"].items()):
    value = book["figures"].get(metric)
    if value is not None:
      ax.scatter([value], [0.25], marker="v", s=60, color=COLORS[i % len(COLORS)], label=name, zorder=3)
  ax.set_yticks([])
  ax.set_ylim(-0.4, 0.6)
  ax.tick_params(labelsize=7)
  if len(record["books"]) <= 4:
    ax.legend(fontsize=6, loc="upper right", ncol=2, frameon=False)
  return _figure(svg(fig), label, metric)


def chapter_plot(metric: str, label: str, record: Mapping[str, Any]) -> str:
  """The metric along each book (x: chapter), with the human median as a dashed line."""
  fig, ax = plt.subplots(figsize=(3.6, 1.8))
  for i, (name, book) in enumerate(record["books"].items()):
    ys = [c.get(metric) for c in book["chapters"]]
    ax.plot(range(1, len(ys) + 1), ys, marker=".", color=COLORS[i % len(COLORS)], label=name)
  human = record["baseline"]["metrics"].get(metric)
  if human:
    ax.axhline(human["median"], color="#666", lw=1, ls="--")
  ax.set_xlabel("chapter", fontsize=7)
  ax.tick_params(labelsize=7)
  return _figure(svg(fig), f"{label} by chapter", f"chapter:{metric}")


def _number(value: Any) -> str:
  if value is None:
    return "–"
  return f"{value:,.3f}" if isinstance(value, float) and abs(value) < 100 else f"{value:,.0f}"


def summary_table(record: Mapping[str, Any]) -> str:
  metrics = record["metrics"]
  head = "".join(f"<th>{html.escape(m['label'])}</th>" for m in metrics.values())
  rows = []
  for name, book in record["books"].items():
    cells = []
    for metric, spec in metrics.items():
      pct = book["percentiles"].get(metric)
      bad = pct is not None and spec["worse"] and (pct >= 95 if spec["worse"] > 0 else pct <= 5)
      shown = _number(book["figures"].get(metric)) + (f" <small>({pct:.0f}%)</small>" if pct is not None else "")
      cells.append(f'<td class="{"bad" if bad else ""}">{shown}</td>')
    rows.append(f"<tr><th>{html.escape(name)}</th>{''.join(cells)}</tr>")
  return f"<table><tr><th>book</th>{head}</tr>{''.join(rows)}</table>"


def examples_section(record: Mapping[str, Any]) -> str:
  parts = []
  for name, book in record["books"].items():
    ex = book["examples"]
    parts.append(f"<h3>{html.escape(name)}</h3>")
    if ex.get("longest_repeat"):
      parts.append(f"<p>Longest repeated span ({book['figures']['longest_repeat']:.0f} words):</p>"
                   f"<blockquote>{html.escape(ex['longest_repeat'][:1500])}</blockquote>")
    worst = ex.get("most_repetitive_chapter") or {}
    if worst.get("ngram"):
      parts.append(f"<p>Most repetitive chapter: {worst['chapter']} ({html.escape(worst['title'])}), "
                   f"{100 * worst['rate']:.1f}% repeated 4-grams; “{html.escape(worst['ngram'])}” "
                   f"{worst['count']} times.</p>")
    rows = "".join(f"<tr><td>{html.escape(o['phrase'])}</td><td>{o['count']}</td><td>{o['ratio']}</td>"
                   f"<td style='text-align:left'>{html.escape(o['example'])}</td></tr>"
                   for o in book["overrepresented"])
    if rows:
      parts.append("<p>Top over-represented phrases (count, times the human rate, in context):</p>"
                   f"<table><tr><th>phrase</th><th>count</th><th>ratio</th><th>example</th></tr>{rows}</table>")
  return "".join(parts)


def table(rows: list[Mapping[str, Any]], columns: list[str]) -> str:
  head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
  body = "".join("<tr>" + "".join(f"<td>{html.escape(str(_number(r.get(c)) if not isinstance(r.get(c), str) else r.get(c)))}</td>"
                                  for c in columns) + "</tr>" for r in rows)
  return f"<table><tr>{head}</tr>{body}</table>"


def ranking_plot(ranking: list[Mapping[str, Any]]) -> str:
  fig, ax = plt.subplots(figsize=(4.5, 0.4 + 0.35 * len(ranking)))
  for y, row in enumerate(reversed(ranking)):
    ax.errorbar([row["score"]], [y], xerr=[[row["score"] - row["low"]], [row["high"] - row["score"]]],
                fmt="o", color="#1f77b4", capsize=3)
  ax.set_yticks(range(len(ranking)), [r["system"] for r in reversed(ranking)], fontsize=7)
  ax.set_xlabel("Bradley-Terry score (log-odds), 95% bootstrap interval", fontsize=7)
  return _figure(svg(fig), "judge ranking", "judges")


def render(record: Mapping[str, Any]) -> str:
  """The whole page for an eval.json record."""
  parts = ["<!DOCTYPE html><html><head><meta charset='utf-8'><title>xbook eval</title>",
           f"<style>{STYLE}</style></head><body><h1>xbook eval</h1>",
           f"<p>Human baseline: {len(record.get('baseline', {}).get('books', []))} novels from "
           f"{html.escape(str(record.get('baseline', {}).get('source', '')))}; percentiles are the share of "
           "human novels below the book.</p>"]
  if record.get("books"):
    parts += ["<h2>Summary</h2>", summary_table(record), "<h2>Against the human baseline</h2><div class='plots'>"]
    parts += [metric_plot(m, spec["label"], record) for m, spec in record["metrics"].items()]
    parts += ["</div><h2>Along the book</h2><div class='plots'>"]
    parts += [chapter_plot(m, record["metrics"][m]["label"], record) for m in CHAPTER_METRICS]
    parts += ["</div>"]
  if record.get("perplexity"):
    rows = [{"book set": k, **v} for k, v in record["perplexity"].get("results", {}).items()]
    columns = ["book set", "tokens", "nll_per_token", "ppl_per_token", "ppl_per_word", "bits_per_byte"]
    parts += ["<h2>Held-out perplexity</h2>", table(rows, columns)]
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
