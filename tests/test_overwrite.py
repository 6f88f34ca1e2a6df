"""No command silently replaces an output that is not its own resumable work (--overwrite does), and a
resumed `xbook write` says how much was done and counts only the stages it writes in its tokens/s."""

from __future__ import annotations

import json

import pytest

from xbook import cli
from xbook.infer import writer as writer_lib

from test_write import PROMPT, _scripted_writer


def _refused(args, match):
  with pytest.raises(SystemExit) as error:
    cli.main(args)
  assert match in str(error.value.code), error.value.code
  assert str(error.value.code).startswith("error: ") and "\n" not in str(error.value.code)


def test_books_segment_refuses_an_existing_output_without_overwrite(corpus_dir, tmp_path):
  out = tmp_path / "books.jsonl"
  out.write_text("earlier books\n")
  args = ["books", "segment", "--books", str(corpus_dir), "--ids", "pg46", "--out", str(out)]
  _refused(args, f"--out {out} exists already: pass --overwrite")
  assert out.read_text() == "earlier books\n"
  assert cli.main(args + ["--overwrite"]) == 0
  assert json.loads(out.read_text().splitlines()[0])["id"] == "pg46"


def test_vocab_train_and_scaffold_import_refuse_an_existing_output(scaffold_file, tmp_path):
  vocabulary = tmp_path / "vocab.model"
  vocabulary.write_bytes(b"a vocabulary runs were trained on")
  _refused(["vocab", "train", "--scaffolds", str(scaffold_file), "--out", str(vocabulary)],
           f"--out {vocabulary} exists already: pass --overwrite")
  scaffolds = tmp_path / "longpage.jsonl"
  scaffolds.write_text('{"earlier": "records"}\n')
  _refused(["scaffold", "import", "--longpage", str(tmp_path / "missing.parquet"), "--out", str(scaffolds)],
           f"--out {scaffolds} exists already")
  assert vocabulary.read_bytes() == b"a vocabulary runs were trained on"
  assert scaffolds.read_text() == '{"earlier": "records"}\n'


def test_write_refuses_a_folder_with_a_book_but_no_journal(tmp_path):
  out = tmp_path / "book"
  out.mkdir()
  (out / "book.md").write_text("# an earlier book\n")
  (out / "book.json").write_text("{}")
  args = ["write", "--run_dir", str(tmp_path / "no_run"), "--prompt", PROMPT, "--out", str(out)]
  with pytest.raises(ValueError, match=r"holds book\.json, book\.md but no journal\.jsonl .* pass --overwrite"):
    cli.main(args)
  assert (out / "book.md").read_text() == "# an earlier book\n" and (out / "book.json").read_text() == "{}"
  # With --overwrite the folder is accepted (the run is then looked for: there is none here).
  with pytest.raises(FileNotFoundError, match="model.json not found"):
    cli.main(args + ["--overwrite"])


ANSWERS = {"premise": "A miser.", "synopsis": "He changes.", "outline": "1. Fog: a town.\n2. Bells: a night.",
           "scene_plan": "At home.<|scene_plan|>In the street.", "text": "It was cold."}


def test_a_resumed_write_says_so_and_counts_only_new_stages(vocab_path, tmp_path, capsys):
  writer, _ = _scripted_writer(vocab_path, tmp_path, dict(ANSWERS))
  book = writer.write(PROMPT, seed=1, header={})
  assert "resuming" not in capsys.readouterr().err
  total = len(book["stages"])
  assert total == 3 + 2 * (1 + 2) and writer.progress.tokens == sum(s["tokens"] for s in book["stages"])
  journal = (tmp_path / writer_lib.JOURNAL).read_text().splitlines()
  (tmp_path / writer_lib.JOURNAL).write_text("\n".join(journal[:4]) + "\n")  # header, premise, synopsis, outline
  again, completer = _scripted_writer(vocab_path, tmp_path, dict(ANSWERS))
  resumed = again.write(PROMPT, seed=1, header={})
  assert "resuming: 3 of 7 stages done, from" in capsys.readouterr().err  # 2 chapters: their scenes unknown yet
  assert {kind for kind, _, _ in completer.calls} == {"scene_plan", "text"}
  assert again.progress.tokens == sum(s["tokens"] for s in resumed["stages"][3:])
  done, _ = _scripted_writer(vocab_path, tmp_path, dict(ANSWERS))
  done.write(PROMPT, seed=1, header={})
  assert f"resuming: {total} of {total} stages done (the book is complete)" in capsys.readouterr().err
  assert done.progress.tokens == 0
