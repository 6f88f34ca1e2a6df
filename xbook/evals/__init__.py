"""Evaluation: text metrics against a human baseline, held-out perplexity, pairwise judges, report.

`load_books` reads the books to evaluate (book.json/book.md from `xbook write`, .txt novels, books
JSONL); `metrics.book_metrics` measures one; `baseline.HumanBaseline` measures held-out novels the same
way and places a book in their distribution; `perplexity.run_perplexity` scores a run on held-out books;
`judges.judge_pairs` asks an OpenAI-compatible judge which of two texts is better and `judges.ranking`
fits a Bradley-Terry ranking with bootstrap intervals; `report.write_report` writes report.html.
"""

from xbook.evals.texts import EvalBook, EvalChapter, load_books

__all__ = ["EvalBook", "EvalChapter", "load_books"]
