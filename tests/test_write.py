"""`xbook write`: a whole book from a prompt, stage by stage, resumable to the same book after a kill.

The run is a tiny model trained for a few steps on real scaffolds: it writes nonsense, but the book is
complete (every chapter of its outline, every scene of its scene plans) and its stages are recorded.
The context rules and the re-asking of malformed plans are checked with a scripted completer.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import gin
import pytest

from xbook.data import trajectory, vocab
from xbook.gin_flags import configured
from xbook.infer import write_books
from xbook.infer import writer as writer_lib
from xbook.train.run_info import RunInfo

from tiny_runs import train_tiny

REPO = Path(__file__).resolve().parents[1]
SEQ_LEN = 256
# Small budgets and at most 2 chapters of 2 scenes: a complete book in a few seconds on the CPU.
SMALL = ["WriteConfig.premise_tokens = 12", "WriteConfig.synopsis_tokens = 16",
         "WriteConfig.outline_tokens = 24", "WriteConfig.scene_plans_tokens = 16",
         "WriteConfig.text_tokens = 24", "WriteConfig.max_chapters = 2", "WriteConfig.max_scenes = 2",
         "WriteConfig.retries = 1"]
PROMPT = "Write a novel about a miser who is visited by three ghosts on Christmas Eve."


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, scaffold_file, vocab_path):
  run = tmp_path_factory.mktemp("run")
  train_tiny(run, scaffold_file, vocab_path, steps=4, seq_len=SEQ_LEN)
  return run


def _config(**changes) -> writer_lib.WriteConfig:
  """WriteConfig as `xbook write --gin.<SMALL>` builds it, with `changes` over it."""
  gin.clear_config()
  gin.parse_config(SMALL)
  try:
    return configured(writer_lib.WriteConfig, **changes)
  finally:
    gin.clear_config()


def write_book(run_dir, prompt, out, *, seed, config, **options):
  """One book on the engine, as `xbook write --run_dir --prompt` writes it."""
  backend = write_books.open_backend(RunInfo.read(run_dir), config=config)
  try:
    return write_books.write_book(backend, prompt, out, seed=seed, config=config, **options)
  finally:
    backend.close()


def test_a_run_writes_a_complete_book(run_dir, tmp_path):
  book = write_book(run_dir, PROMPT, tmp_path / "book", seed=7, config=_config())
  assert 1 <= len(book["chapters"]) <= 2
  for chapter in book["chapters"]:
    assert 1 <= len(chapter["scene_plans"]) <= 2 and len(chapter["texts"]) == len(chapter["scene_plans"])
  names = [s["stage"] for s in book["stages"]]
  assert names[:3] == ["premise", "synopsis", "outline"]
  assert len(names) == 3 + sum(1 + len(c["texts"]) for c in book["chapters"])
  for stage in book["stages"]:
    assert stage["tokens"] <= stage["sampling"]["max_tokens"]
    assert stage["context_tokens"] + stage["sampling"]["max_tokens"] <= SEQ_LEN  # the trained length
    assert stage["finish_reason"] in ("stop", "length") and stage["seconds"] >= 0
  saved = json.loads((tmp_path / "book" / "book.json").read_text())
  assert saved["stages"] == book["stages"] and saved["seed"] == 7
  markdown = (tmp_path / "book" / "book.md").read_text()
  assert markdown.startswith(f"# {PROMPT}") and markdown.count("\n## Chapter ") == len(book["chapters"])


# `python -m xbook.cli` (the program: stderr filter, error lines and all), made to stop mid-book: once the
# outline's journal line is fsynced it writes its pid to $XBOOK_TEST_PAUSED and sleeps until it is killed.
# Killing it as soon as the journal shows the outline raced the end of the book: the stages after the outline
# take ~15 ms each on the CPU (the decoder is compiled during the premise), so the book was done ~35 ms
# after the outline line, and a poller held up for longer killed too late. The process then spends ~1.3 s
# in interpreter teardown after book.json, so that late SIGKILL still ended it with -9.
_PAUSE_AFTER_OUTLINE = """
import os, sys, time
from xbook import cli
from xbook.infer import writer
append = writer.Journal.append
def append_then_pause(journal, entry):
  append(journal, entry)
  if entry["stage"] == "outline":
    with open(os.environ["XBOOK_TEST_PAUSED"] + ".tmp", "w") as f:
      f.write(str(os.getpid()))
    os.replace(f.name, os.environ["XBOOK_TEST_PAUSED"])
    time.sleep(600)
writer.Journal.append = append_then_pause
sys.exit(cli.main())
"""


def _xbook_write(run_dir, out, *extra, paused: Path | None = None) -> subprocess.Popen:
  """`xbook write` of PROMPT into `out`; with `paused`, it stops after the outline (_PAUSE_AFTER_OUTLINE)."""
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
  program = ["-m", "xbook.cli"]
  if paused is not None:
    env["XBOOK_TEST_PAUSED"] = str(paused)
    program = ["-c", _PAUSE_AFTER_OUTLINE]
  args = [sys.executable, *program, "write", "--run_dir", str(run_dir), "--prompt", PROMPT,
          "--out", str(out), "--seed", "3", *[f"--gin.{b.replace(' ', '')}" for b in SMALL], *extra]
  return subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True)


def test_a_killed_write_continues_to_the_same_book(run_dir, tmp_path):
  straight = _xbook_write(run_dir, tmp_path / "straight")
  _, err = straight.communicate(timeout=600)
  assert straight.returncode == 0, err[-3000:]
  paused = tmp_path / "paused"
  killed = _xbook_write(run_dir, tmp_path / "killed", paused=paused)
  deadline = time.monotonic() + 600
  while not paused.is_file() and killed.poll() is None and time.monotonic() < deadline:
    time.sleep(0.02)
  killed.send_signal(signal.SIGKILL)  # mid-book: the outline is journaled, no later stage is begun
  _, err = killed.communicate(timeout=60)
  assert killed.returncode == -signal.SIGKILL, f"the write ended before it could be killed: {err[-3000:]}"
  assert int(paused.read_text()) == killed.pid  # the process killed is the one writing the book
  journal = (tmp_path / "killed" / writer_lib.JOURNAL).read_text().splitlines()
  assert [json.loads(line)["stage"] for line in journal] == ["header", "premise", "synopsis", "outline"]
  assert not (tmp_path / "killed" / "book.json").exists()
  resumed = _xbook_write(run_dir, tmp_path / "killed", "--json")
  out, err = resumed.communicate(timeout=600)
  assert resumed.returncode == 0, err[-3000:]
  summary = json.loads(out.strip().splitlines()[-1])
  assert summary["chapters"] >= 1
  want = json.loads((tmp_path / "straight" / "book.json").read_text())
  got = json.loads((tmp_path / "killed" / "book.json").read_text())
  assert [(s["stage"], s["text"]) for s in got["stages"]] == [(s["stage"], s["text"]) for s in want["stages"]]
  assert got["chapters"] == want["chapters"]
  # Another book in the same folder is refused, naming what differs.
  other = _xbook_write(run_dir, tmp_path / "killed", "--gin.WriteConfig.text_temperature=0.1")
  _, err = other.communicate(timeout=600)
  assert other.returncode != 0 and "belongs to another write (config differ)" in err


class Scripted:
  """A completer that answers each stage from a script by the kind whose marker ends its context,
  recording every call."""

  def __init__(self, vocabulary, answers):
    self.markers = {tuple(vocabulary.encode(marker)): k for k, marker in trajectory.MARKERS.items()}
    self.answers = answers
    self.calls = []

  def __call__(self, ids, sampling, stop_ids, stop_strings):
    kind = next(k for tail, k in self.markers.items() if tuple(ids[-len(tail):]) == tail)
    self.calls.append((kind, ids, sampling))
    text = self.answers[kind].pop(0) if isinstance(self.answers[kind], list) else self.answers[kind]
    return writer_lib.StageResult(text=text, token_ids=list(range(min(len(text), sampling.max_tokens))),
                                  finish_reason="stop", seconds=0.0)


def _scripted_writer(vocab_path, tmp_path, answers, context_len=512, **config):
  vocabulary = vocab.load_vocabulary(vocab_path)
  completer = Scripted(vocabulary, answers)
  return writer_lib.BookWriter(vocabulary, completer, _config(**config), context_len, tmp_path), completer


def test_malformed_plans_are_sampled_again_then_reported(vocab_path, tmp_path):
  outline_bad, outline_good = "no numbered chapters here", "1. Fog: a town.\n2. Bells: a night."
  writer, completer = _scripted_writer(vocab_path, tmp_path, {
      "premise": "A miser.", "synopsis": "He changes.", "outline": [outline_bad, outline_good],
      "scene_plan": "At home.<|scene_plan|>In the street.<|scene_plan|>At the grave.",
      "text": "It was cold."})
  book = writer.write(PROMPT, seed=1, header={})
  outline = next(s for s in book["stages"] if s["stage"] == "outline")
  assert outline["attempts"] == 2 and outline["problems"] == []
  seeds = [s.seed for k, _, s in completer.calls if k == "outline"]
  assert len(seeds) == 2 and seeds[0] != seeds[1]
  # Three scene plans, more than max_scenes=2 twice over: kept, reported, cut to two.
  plans = next(s for s in book["stages"] if s["stage"] == "chapter/1/scene_plans")
  assert plans["attempts"] == 2 and "more than WriteConfig.max_scenes=2" in plans["problems"][0]
  assert book["chapters"][0]["scene_plans"] == ["At home.", "In the street."]
  assert [c["title"] for c in book["chapters"]] == ["Fog", "Bells"]


@pytest.mark.parametrize("synopsis", ["He changes.", "He changes his ways. " * 30])
def test_stage_contexts_are_built_like_training_windows(vocab_path, tmp_path, synopsis):
  """A stage sees the global plan (cut to 3/8 of the context), "Previously" only when that cut the
  outline, then its chapter's plans and the texts that fit, oldest dropped whole first."""
  long_text = "The fog came down. " * 60
  writer, completer = _scripted_writer(vocab_path, tmp_path, {
      "premise": "A miser.", "synopsis": synopsis, "outline": "1. Fog: a town.\n2. Bells: a night.",
      "scene_plan": "One.<|scene_plan|>Two.", "text": long_text}, context_len=384)
  writer.write(PROMPT, seed=1, header={})
  vocabulary = writer.vocabulary
  for kind, ids, sampling in completer.calls:
    assert ids[0] == vocabulary.bos_id and len(ids) + sampling.max_tokens <= 384
    assert ids[-1] == vocabulary.encode(trajectory.MARKERS[kind])[0]
  decoded = [vocabulary.decode(ids) for kind, ids, _ in completer.calls if kind == "text"]
  outline_cut = len(synopsis) > 100
  assert "Previously:" not in decoded[0]  # chapter 1 has no earlier chapters
  assert ("Previously:\n1. Fog: a town." in decoded[2]) == outline_cut  # chapter 2
  # Scene 2 sees the chapter's plans, and scene 1's text whole or (when it does not fit) not at all.
  assert decoded[1].count("Two.") == 1 and decoded[1].endswith("<|text|>")
  assert decoded[1].count("The fog came down.") in (0, 60)
  assert decoded[0].count("The fog came down.") == 0


@pytest.fixture(scope="module")
def paper_run(tmp_path_factory, corpus_dir, vocab_path):
  """A tiny run trained 2 steps on the paper's 14b stage stream of two novels."""
  from xbook.books import load_book
  from xbook.scaffold import ExtractiveSummarizer, build_scaffold, write_scaffolds
  records = [build_scaffold(load_book(corpus_dir / name), ExtractiveSummarizer(), plan_format="paper",
                            split="train") for name in ("pg46.txt", "pg43.txt")]
  scaffolds = tmp_path_factory.mktemp("paper") / "paper.jsonl"
  write_scaffolds(scaffolds, records)
  run = tmp_path_factory.mktemp("paper_run")
  train_tiny(run, scaffolds, vocab_path, steps=2, seq_len=SEQ_LEN, learning_rate=3e-4,
             gin_bindings=["paper_stages.profile = '14b_full_book'"], plan_order="paper_stages",
             task_name="paper_write")
  return run


def test_a_paper_run_writes_the_profile_stages_and_resumes_to_the_same_book(paper_run, tmp_path):
  from xbook.scaffold import stage_protocol as sp
  config = _config(paper_max_tokens=12, retries=0, max_chapters=3)
  book = write_book(paper_run, PROMPT, tmp_path / "book", seed=5, config=config)
  assert book["format"] == "paper" and book["profile"] == "14b_full_book"
  roles = [s["role"] for s in book["stages"]]
  once = [r for r in sp.PROFILES["14b_full_book"].roles[1:] if r not in ("scene_breakdown", "chapter_text")]
  assert roles[:len(once)] == once and len(roles) <= len(once) + 2 * 2
  assert [role for role, _ in sp.parse(book["stream"], "14b_full_book")] == ["prompt"] + roles
  for stage in book["stages"]:
    assert stage["context_tokens"] + stage["sampling"]["max_tokens"] <= SEQ_LEN
    assert stage["sampling"]["max_tokens"] == 12 and isinstance(stage["problems"], list)
  assert (tmp_path / "book" / "book.md").read_text().startswith(f"# {PROMPT}")
  # A write stopped after three stages continues to the same book.
  journal = (tmp_path / "book" / writer_lib.JOURNAL).read_text().splitlines()
  (tmp_path / "again").mkdir()
  (tmp_path / "again" / writer_lib.JOURNAL).write_text("\n".join(journal[:4]) + "\n")
  again = write_book(paper_run, PROMPT, tmp_path / "again", seed=5, config=config)
  assert again["stream"] == book["stream"]


def test_the_decode_benchmark_prints_latencies_beside_their_memory_floor(run_dir, capsys):
  """`xbook bench decode` on a trained run: every figure present, the cache bytes those of the run's
  shape at each context's bucket, and the floor growing with the context as the bytes do."""
  import argparse

  from xbook.infer import decode, decode_bench
  from xbook.infer.generate import load_run
  parser = argparse.ArgumentParser()
  decode_bench.add_arguments(parser)
  args = parser.parse_args(["--run_dir", str(run_dir), "--tokens", "4", "--prefill", "64", "--contexts",
                            "128,512", "--repeats", "1", "--no_transformers", "--json"])
  assert decode_bench.run(args) == 0
  figures = json.loads(capsys.readouterr().out)
  config = load_run(str(run_dir)).model.config
  for context in (128, 512):
    assert figures[f"ms_per_token_at_{context}"] > 0
    assert figures[f"cache_bytes_per_token_at_{context}"] == (
        2 * config.n_layers * config.n_kv_heads * config.head_dim * decode.bucket(context) * 4)
  floor = figures["floor_ms_per_token_at_512"] / figures["floor_ms_per_token_at_128"]
  assert figures["floor_ratio"] == pytest.approx(floor) and floor > 1
  assert figures["weight_bytes_per_token"] < 4 * config.num_params()
  assert figures["compiles_decode"] >= 1 and figures["host_read_gb_per_s"] > 0


# ------------------------------------------------------------------------------------- the writer on the engine
def test_a_paper_book_prefills_its_stream_once(paper_run, tmp_path):
  """Each stage reuses the cache of the stage before (the engine's prefix reuse; contexts spell earlier stages
  with the ids the model sampled): book.json records every stage's prefilled and cached tokens, and over the
  book at most 1.1 tokens are prefilled per token of the stream (prompt, headers and generated text; a
  context that fits: nothing dropped)."""
  config = _config(paper_max_tokens=12, retries=0, max_chapters=3, grammars=False, context_len=2048)
  book = write_book(paper_run, PROMPT, tmp_path / "book", seed=5, config=config)
  stages = book["stages"]
  for stage in stages:
    assert stage["prefill_tokens"] + stage["cached_tokens"] == stage["context_tokens"], stage["stage"]
  assert stages[0]["cached_tokens"] == 0
  assert all(s["cached_tokens"] > 0 for s in stages[1:])
  prefill = book["prefill"]
  assert not prefill["relaid"] and prefill["prefill_per_stream_token"] <= 1.1, prefill
  assert prefill["prefill_tokens"] <= 1.1 * (stages[-1]["context_tokens"] + stages[-1]["tokens"])
  assert json.loads((tmp_path / "book" / "book.json").read_text())["prefill"] == prefill


def _prompts_file(path: Path) -> Path:
  lines = [{"prompt": PROMPT, "name": "carol", "seed": 3},
           {"prompt": "Write a novel about a whale hunt.", "name": "whale", "seed": 4},
           {"prompt": "Write a novel about a doctor and his double.", "seed": 5}]
  path.write_text("".join(json.dumps(line) + "\n" for line in lines))
  return path


def test_books_written_together_equal_their_solo_writes_and_resume_each_on_its_own(run_dir, tmp_path):
  """`xbook write --prompts`: 3 books at once, killed after one book's outline and run again: every book
  equals the one written alone with its seed (on an engine of as many slots, so the same programs)."""
  prompts = _prompts_file(tmp_path / "prompts.jsonl")
  killed = _xbook_write_many(run_dir, prompts, tmp_path / "books", paused=tmp_path / "paused")
  deadline = time.monotonic() + 600
  while not (tmp_path / "paused").is_file() and killed.poll() is None and time.monotonic() < deadline:
    time.sleep(0.02)
  killed.send_signal(signal.SIGKILL)
  _, err = killed.communicate(timeout=60)
  assert killed.returncode == -signal.SIGKILL, err[-3000:]
  resumed = _xbook_write_many(run_dir, prompts, tmp_path / "books")
  out, err = resumed.communicate(timeout=600)
  assert resumed.returncode == 0, err[-3000:]
  assert "book-003" in out and "carol" in out and "whale" in out
  config = _config()
  backend = write_books.open_backend(RunInfo.read(run_dir), config=config, slots=3)
  try:
    for book in write_books.read_prompts(prompts):
      alone = write_books.write_book(backend, book.prompt, tmp_path / "alone" / book.name, seed=book.seed,
                                     config=config)
      together = json.loads((tmp_path / "books" / book.name / "book.json").read_text())
      assert [(s["stage"], s["text"]) for s in together["stages"]] == [
          (s["stage"], s["text"]) for s in alone["stages"]], book.name
  finally:
    backend.close()


def _xbook_write_many(run_dir, prompts, out, paused: Path | None = None) -> subprocess.Popen:
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
  program = ["-m", "xbook.cli"]
  if paused is not None:
    env["XBOOK_TEST_PAUSED"] = str(paused)
    program = ["-c", _PAUSE_AFTER_OUTLINE]
  args = [sys.executable, *program, "write", "--run_dir", str(run_dir), "--prompts", str(prompts),
          "--out", str(out), "--concurrency", "3", *[f"--gin.{b.replace(' ', '')}" for b in SMALL]]
  return subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_a_bad_prompts_file_names_its_line(tmp_path):
  path = tmp_path / "prompts.txt"
  path.write_text("# books\nA ghost story.\nwhale\t7\tA whale hunt.\nwhale\tAgain a whale.\n")
  with pytest.raises(ValueError, match=r"prompts.txt:4: name 'whale' is used twice"):
    write_books.read_prompts(path)
  path.write_text("A ghost story.\nwhale\t7\tA whale hunt.\n")
  books = write_books.read_prompts(path, default_seed=2)
  assert [(b.name, b.seed, b.prompt) for b in books] == [("book-001", 2, "A ghost story."),
                                                          ("whale", 7, "A whale hunt.")]
  path.write_text('{"prompt": "x", "seat": 3}\n')
  with pytest.raises(ValueError, match=r"prompts.txt:1: .*unknown fields \['seat'\]"):
    write_books.read_prompts(path)


def test_writing_through_xbook_serve_gives_the_book_written_here(run_dir, tmp_path):
  """`xbook write --base_url` against a running `xbook serve` of the run (one slot, as here): the same
  stages, seeds and journal, so the same book."""
  from xbook.infer.serve import start_server_process
  config = _config()
  here = write_book(run_dir, PROMPT, tmp_path / "here", seed=9, config=config)
  args = ("--max_batch", "1", "--max_tokens", str(SEQ_LEN), "--model_name", "tiny")
  with start_server_process(run_dir, args=args) as (_, url):
    backend = write_books.open_backend(RunInfo.read(run_dir), config=config, base_url=url, model="tiny")
    there = write_books.write_book(backend, PROMPT, tmp_path / "there", seed=9, config=config)
  assert [(s["stage"], s["text"]) for s in there["stages"]] == [(s["stage"], s["text"]) for s in here["stages"]]
  assert there["step"] is None and any(s["cached_tokens"] > 0 for s in there["stages"])


def test_every_stage_written_under_its_grammar_is_valid_at_its_first_draw(paper_run, tmp_path):
  """WriteConfig.grammars (the default): every stage is decoded under its grammar and closed within its
  token budget (xbook.infer.structured: the tiny model never ends a field by itself), so with no retry
  every stage of the 14b profile ends with its end marker, matches its grammar and passes check_stage;
  the same run sampling freely leaves the protocol at its first token."""
  from xbook.infer.guidance import match_text
  from xbook.scaffold import stage_grammar, stage_protocol as sp
  budgets = dict(paper_max_tokens=400, retries=0, max_chapters=2, context_len=1024)
  constrained = write_book(paper_run, PROMPT, tmp_path / "grammar", seed=5, config=_config(**budgets))
  free = write_book(paper_run, PROMPT, tmp_path / "free", seed=5, config=_config(grammars=False, **budgets))
  stages: list[tuple[str, str]] = [("prompt", PROMPT)]
  for stage in constrained["stages"]:
    grammar = stage_grammar.stage_grammar("14b_full_book", stage["role"], stages).text
    why = match_text(grammar, stage["text"] + sp.EOT)
    assert (stage["finish_reason"], stage["attempts"], why, stage["problems"]) == ("stop", 1, None, []), stage
    stages.append((stage["role"], stage["text"]))
  once = {"book_preview", "book_plan", "first_chapter_plan", "first_chapter_text", "full_book_chapters_plan",
          "book_characters_list"}
  assert once <= {s["role"] for s in constrained["stages"]}  # later chapters follow as many as the plan names
  assert any(s["closed_by_budget"] > 0 for s in constrained["stages"])  # the closing did the work somewhere
  assert all(s["problems"] for s in free["stages"])
