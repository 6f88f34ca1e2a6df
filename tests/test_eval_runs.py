"""`xbook eval` on runs: held-out perplexity of a tiny run trained here equals its training loss on the
same windows and scores every trajectory token once; pairwise judges against a local judge server."""

from __future__ import annotations

import json
import math

import gin
import jax
import numpy as np
import pytest

from xbook import cli_errors
from xbook.data import pieces, trajectory
from xbook.data.records import read_split
from xbook.data.spec import TrajectoryFormat
from xbook.evals import perplexity
from xbook.infer.generate import load_run
from xbook.model import DecoderConfig
from xbook.train import trainer as trainer_lib
from xbook.train.mesh import MeshConfig

MODEL = DecoderConfig(vocab_size=1024, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=16,
                      mlp_dim=128)
MESH = (2, 2, 1, 2)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, scaffold_file, vocab_path):
  run_dir = tmp_path_factory.mktemp("run")
  bindings = [f"MeshConfig.{axis} = {size}" for axis, size in zip(("data", "fsdp", "sequence", "tensor"), MESH)]
  bindings += ["OptimizerConfig.learning_rate = 3e-3", "OptimizerConfig.warmup_steps = 2"]
  gin.clear_config()
  gin.parse_config(bindings)
  try:
    trainer_lib.train(str(run_dir), scaffold_files=str(scaffold_file), vocab_path=str(vocab_path),
                      model_config=MODEL, steps=4, batch_size=8, seq_len=128, checkpoint_every=4,
                      log_every=5, seed=0)
  finally:
    gin.clear_config()
  return run_dir


def _short(record, words=30):
  """Two chapters of two scenes of a scaffold record, every plan cut to `words` words: a global plan
  within 3/8 of 1,024 tokens and plans within 3/8 of a window, so that the windows view cuts nothing."""
  cut = lambda text: " ".join(text.split()[:words])  # noqa: E731
  chapters = [{**c, "summary": cut(c["summary"]),
               "scenes": [{**s, "summary": cut(s["summary"])} for s in c["scenes"][:2]]}
              for c in record["chapters"][:2]]
  return {**record, "split": "test", "synopsis": cut(record["synopsis"]), "premise": cut(record["premise"]),
          "chapters": chapters,
          "book": {**record["book"], "n_chapters": len(chapters),
                   "n_words": sum(s["n_words"] for c in chapters for s in c["scenes"])}}


@pytest.fixture(scope="module")
def test_split_file(scaffold_records, tmp_path_factory):
  """Short copies of the conftest scaffolds marked as the test split."""
  path = tmp_path_factory.mktemp("heldout") / "test_split.jsonl"
  path.write_text("".join(json.dumps(_short(r)) + "\n" for r in scaffold_records), "utf-8")
  return path


@pytest.fixture(scope="module")
def short_novel(corpus_dir, tmp_path_factory):
  """The first two chapters of Jekyll and Hyde as a plain .txt."""
  from xbook.books import load_book
  book = load_book(corpus_dir / "pg43.txt")
  path = tmp_path_factory.mktemp("novel") / "jekyll.txt"
  path.write_text("\n\n".join(s.text for c in book.chapters[:2] for s in c.scenes), "utf-8")
  return path


def _reference_sums(run, batches):
  """{kind: (NLL sum, tokens)} of the tokens of weight > 0 in `batches`, from the logits of the run's model
  on one device without the trainer, the log-softmax in float64 numpy."""
  sums = {}
  for batch in batches:
    logits = np.asarray(run.model.apply({"params": run.params}, batch["decoder_input_tokens"],
                                        batch["decoder_segment_ids"], batch["decoder_positions"]), np.float64)
    top = logits.max(axis=-1, keepdims=True)
    log_z = top[..., 0] + np.log(np.exp(logits - top).sum(axis=-1))
    targets = batch["decoder_target_tokens"]
    nll = log_z - np.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    scored = (batch["decoder_loss_weights"] > 0) & (batch["decoder_segment_ids"] > 0)
    for k, kind in enumerate(trajectory.SEGMENT_KINDS):
      mask = scored & (batch["decoder_segment_kinds"] == k)
      if mask.any():
        total, count = sums.get(kind, (0.0, 0))
        sums[kind] = (total + float(nll[mask].sum()), count + int(mask.sum()))
  return sums


def test_perplexity_on_the_runs_mesh_equals_the_trainers_eval_loss(tiny_run, test_split_file):
  """The trainer's eval step on the run's training mesh reports eval/loss over the held-out windows;
  perplexity (which runs that step) on another mesh of the 8 devices and on one device gives the same
  per-token loss to 1e-5, overall and per kind, and both equal the float64 NLL of the model's logits."""
  run = load_run(tiny_run)
  batches = list(perplexity.eval_batches(
      perplexity.scored_data([test_split_file], run.vocabulary, seq_len=128, trajectory_format=TrajectoryFormat()),
      split="test", batch_size=8))
  trainer = trainer_lib.Trainer(model_config=MODEL, optimizer_config=trainer_lib.OptimizerConfig(),
                                mesh_config=MeshConfig(*MESH), batch_size=8, seq_len=128)
  with trainer.context():
    params = jax.device_put(run.params, trainer.state_shardings.params)
  eval_loss = trainer.evaluate(params, batches)["eval/loss"]
  reference = _reference_sums(run, batches)
  nll, tokens = (sum(v[i] for v in reference.values()) for i in (0, 1))
  assert eval_loss == pytest.approx(nll / tokens, rel=1e-5)
  meshes = {"data=2,sequence=2,tensor=2": MeshConfig(data=2, fsdp=1, sequence=2, tensor=2), "one device": None}
  for name, mesh_config in meshes.items():
    result = perplexity.run_perplexity(tiny_run, scaffold_files=[test_split_file], batch_size=8,
                                       mesh_config=mesh_config)
    assert result["seq_len"] == 128
    assert result["mesh"] == ({"data": 2, "fsdp": 1, "sequence": 2, "tensor": 2} if mesh_config else
                              {"data": 1, "fsdp": 1, "sequence": 1, "tensor": 1})
    results = result["results"]
    loss = results["scaffolds/all"]["nll_per_token"]
    print(f"{name}: perplexity loss {loss:.9f}, trainer eval/loss on mesh {MESH} {eval_loss:.9f}, "
          f"difference {loss - eval_loss:.2e} (relative {abs(loss - eval_loss) / eval_loss:.2e}); "
          f"float64 reference {nll / tokens:.9f}")
    assert results["scaffolds/all"]["tokens"] == tokens
    assert loss == pytest.approx(eval_loss, rel=1e-5)
    for kind, (kind_nll, count) in reference.items():
      figures = results[f"scaffolds/{kind}"]
      assert figures["tokens"] == count, kind
      assert figures["nll_per_token"] == pytest.approx(kind_nll / count, rel=1e-5), kind


def test_every_token_of_the_held_out_books_is_scored_once(tiny_run, test_split_file, short_novel):
  result = perplexity.run_perplexity(tiny_run, scaffold_files=[test_split_file], novels=[short_novel],
                                     seq_len=1024, batch_size=4)
  results = result["results"]
  run = load_run(tiny_run)
  records = read_split([str(test_split_file)], "test")
  expected = perplexity.trajectory_tokens(records, run.vocabulary, "interleaved")
  assert results["scaffolds/all"]["tokens"] == sum(expected.values())
  assert results["scaffolds/all"]["coverage"] == 1.0 and results["scaffolds/all"]["books"] == 2
  for kind in trajectory.SEGMENT_KINDS:
    assert results.get(f"scaffolds/{kind}", {"tokens": 0})["tokens"] == expected[kind], kind
  # Every token scored: the words and bytes of the scored tokens' text are those of the segment bodies.
  sizes = perplexity.segment_text_sizes(records, "interleaved", run.vocabulary.marker_style)
  for kind, (words, n_bytes) in sizes.items():
    figures = results.get(f"scaffolds/{kind}", {"words": 0, "bytes": 0})
    assert (figures["words"], figures["bytes"]) == (words, n_bytes), kind
  ids, words, n_bytes = perplexity.novel_stream(short_novel, run.vocabulary)
  novel = results["novel/jekyll"]
  assert novel["tokens"] == len(ids) and (novel["words"], novel["bytes"]) == (words, n_bytes)
  for name, figures in results.items():
    assert figures["ppl_per_token"] == pytest.approx(math.exp(figures["nll_per_token"])), name
    assert figures["nll_sum"] == pytest.approx(figures["nll_per_token"] * figures["tokens"], rel=1e-6)
    assert figures["bits_per_byte"] == pytest.approx(figures["nll_sum"] / figures["bytes"] / math.log(2))
    assert figures["nll_per_word"] == pytest.approx(figures["nll_sum"] / figures["words"], rel=1e-6)
    # Four training steps: better than uniform over the vocabulary, far from fluent.
    assert 1.0 < figures["nll_per_token"] < math.log(MODEL.vocab_size) + 0.5, name
  print(json.dumps({k: {f: v[f] for f in ("tokens", "nll_per_token", "ppl_per_token", "ppl_per_word",
                                          "bits_per_byte")} for k, v in results.items()}, indent=1))


SHORT_WINDOW = 64  # tokens: a global plan of 3/8 of it, 24 tokens, cuts the 30-word plans of test_split_file


def _first_windows(batches):
  """The rows (each {feature: [length]}) that open a book: those whose prompt is scored (later windows
  repeat the global plan with weight 0), in book order."""
  rows = [{k: v[r] for k, v in b.items()} for b in batches for r in range(len(b["decoder_target_tokens"]))]
  prompt = trajectory.KIND_ID["prompt"]
  return [row for row in rows if ((row["decoder_segment_kinds"] == prompt) & (row["decoder_loss_weights"] > 0)).any()]


def _scored_prefix(row, kind, vocabulary, record, plan_order="interleaved"):
  """(mask of the scored tokens of `kind` in a book's first window, words and UTF-8 bytes of their text
  with the marker left out, words of the whole segment body); the scored ids are checked to be a prefix
  of the kind's segment in `record` (the global plan is cut at its end)."""
  k = trajectory.KIND_ID[kind]
  scored = (row["decoder_segment_kinds"] == k) & (row["decoder_loss_weights"] > 0)
  ids = row["decoder_target_tokens"][scored].tolist()
  [segment] = [s for s in trajectory.scaffold_to_segments(record, plan_order, vocabulary.marker_style)
               if s.kind == kind]
  marker, body = trajectory.split_marker(segment)
  marker_ids = vocabulary.encode(marker)
  assert ids == list(pieces.encode_segment(vocabulary.encode, segment))[:len(ids)], "a prefix of the segment"
  text = vocabulary.decode(ids[len(marker_ids):]).strip()
  assert body.strip().startswith(text), (text, body)
  return scored, len(text.split()), len(text.encode("utf-8")), len(body.split())


def test_per_word_and_per_byte_figures_are_of_the_scored_tokens(tiny_run, test_split_file):
  """Windows too short for the plans (coverage < 1): a plan cut in the global plan counts the words and
  bytes of its scored prefix, computed here by hand from the first window of each book; a kind with no
  token scored is "not scored", every figure None."""
  run = load_run(tiny_run)
  result = perplexity.run_perplexity(tiny_run, scaffold_files=[test_split_file], seq_len=SHORT_WINDOW,
                                     batch_size=4)["results"]
  assert result["scaffolds/all"]["coverage"] < 1
  records = read_split([str(test_split_file)], "test")
  batches = list(perplexity.eval_batches(
      perplexity.scored_data([test_split_file], run.vocabulary, seq_len=SHORT_WINDOW, trajectory_format=TrajectoryFormat()),
      split="test", batch_size=4))
  first = _first_windows(batches)
  assert len(first) == len(records) == 2
  cut = [kind for kind in ("prompt", "premise", "synopsis", "outline") if 0 < result[f"scaffolds/{kind}"]["coverage"] < 1]
  assert cut, {k: v["coverage"] for k, v in result.items()}
  for kind in cut:
    nll = words = n_bytes = whole_words = 0
    for row, record in zip(first, records):
      scored, w, b, whole = _scored_prefix(row, kind, run.vocabulary, record)
      words, n_bytes, whole_words = words + w, n_bytes + b, whole_words + whole
      # The NLL of those tokens, from the model's logits on this window.
      batch = {k: v[None] for k, v in row.items()}
      logits = run.model.apply({"params": run.params}, batch["decoder_input_tokens"],
                               batch["decoder_segment_ids"], batch["decoder_positions"])
      logp = jax.nn.log_softmax(np.asarray(logits[0], np.float64), axis=-1)
      nll -= float(logp[np.arange(SHORT_WINDOW), row["decoder_target_tokens"]][scored].sum())
    figures = result[f"scaffolds/{kind}"]
    assert 0 < words < whole_words  # the scored part of the plan, not the whole plan
    assert (figures["words"], figures["bytes"]) == (words, n_bytes), kind
    assert figures["nll_sum"] == pytest.approx(nll, rel=1e-4)
    assert figures["nll_per_word"] == pytest.approx(nll / words, rel=1e-4)
    assert figures["ppl_per_word"] == pytest.approx(math.exp(nll / words), rel=1e-3)
    assert figures["bits_per_byte"] == pytest.approx(nll / n_bytes / math.log(2), rel=1e-4)
  missing = [name for name, f in result.items() if f["tokens"] == 0]
  assert missing, "a kind with no token in windows of 64"
  for name in missing:
    figures = result[name]
    assert figures["scored"] is False and figures["expected_tokens"] > 0 and figures["coverage"] == 0
    assert all(figures[f] is None for f in ("nll_per_token", "ppl_per_token", "nll_per_word", "ppl_per_word",
                                            "bits_per_byte")), figures
  from xbook.evals.report import perplexity_table
  page = perplexity_table({"results": result})
  assert page.count("not scored") == len(missing)
  print(json.dumps({k: {f: v[f] for f in ("tokens", "coverage", "words", "ppl_per_word", "bits_per_byte")}
                    for k, v in result.items()}, indent=1))


def test_xbook_eval_run_dir_and_books_keep_their_own_files(tiny_run, test_split_file, corpus_dir, tmp_path):
  """The README sends both evaluations to eval/: the perplexity one writes perplexity.json and
  perplexity.html beside the books' eval.json and report.html, replacing nothing; a second one is refused
  (one error line, files unchanged) unless --overwrite."""
  from xbook.cli import main
  out = tmp_path / "eval"
  books = ["eval", "--books", str(corpus_dir / "pg46.txt"), "--baseline", str(corpus_dir), "--baseline_limit", "1",
           "--out", str(out)]
  assert main(books) == 0
  report = {name: (out / name).read_bytes() for name in ("eval.json", "report.html")}
  perplexity_args = ["eval", "--run_dir", str(tiny_run), "--scaffolds", str(test_split_file), "--out", str(out)]
  assert main(perplexity_args + ["--mesh", "data=4,tensor=-1"]) == 0
  assert {name: (out / name).read_bytes() for name in report} == report
  record = json.loads((out / "perplexity.json").read_text())
  assert record["perplexity"]["mesh"] == {"data": 4, "fsdp": 1, "sequence": 1, "tensor": 2}
  assert record["perplexity"]["seq_len"] == 128 and record["perplexity"]["split"] == "test"
  assert record["perplexity"]["results"]["scaffolds/text"]["tokens"] > 0
  page = (out / "perplexity.html").read_text()
  assert "Held-out perplexity" in page and "scaffolds/text" in page and "Human baseline" not in page
  before = {p.name: p.read_bytes() for p in out.iterdir()}
  with pytest.raises(ValueError) as refused:  # as a program: this one `error:` line, exit 1
    main(perplexity_args)
  line = cli_errors.user_message(refused.value)
  assert "\n" not in line and "perplexity.json" in line and "--overwrite" in line, line
  assert {p.name: p.read_bytes() for p in out.iterdir()} == before
  # A batch, or parameters (4 heads, 2 kv heads), that the mesh does not split: one line, before any loading.
  for flags, words in ((["--mesh", "data=8", "--batch_size", "4"], ("--batch_size 4", "multiple of 8")),
                       (["--mesh", "tensor=-1"], ("--mesh", "splits 8 ways", "kv heads"))):
    with pytest.raises(ValueError) as refused:
      main(perplexity_args + ["--overwrite", *flags])
    line = cli_errors.user_message(refused.value)
    assert "\n" not in line and all(word in line for word in words), line
  assert {p.name: p.read_bytes() for p in out.iterdir()} == before
  try:  # MeshConfig bound in gin: the mesh of the bindings (fsdp takes the devices left over)
    assert main(perplexity_args + ["--overwrite", "--gin.MeshConfig.tensor=2"]) == 0
  finally:
    gin.clear_config()
  again = json.loads((out / "perplexity.json").read_text())["perplexity"]
  assert again["mesh"] == {"data": 1, "fsdp": 4, "sequence": 1, "tensor": 2}
  for name, figures in record["perplexity"]["results"].items():
    assert again["results"][name]["tokens"] == figures["tokens"], name
    if figures["scored"]:
      assert again["results"][name]["nll_per_token"] == pytest.approx(figures["nll_per_token"], rel=1e-5), name
  assert {name: (out / name).read_bytes() for name in report} == report


# Judges: a local judge server with deterministic answers.

QUALITY = {"GOOD": 3, "MID": 2, "BAD": 1}


class _Judge:
  """A chat-completions server on 127.0.0.1 that prefers the passage with the better quality word
  (GOOD > MID > BAD), answers without a verdict when a passage says MALFORMED, and fails (HTTP 500)
  when one says FAIL. `calls` counts the requests; `first` counts which system was shown
  first in distinct prompts."""

  def __init__(self) -> None:
    import http.server
    import threading
    judge = self
    self.calls = 0
    self.first: dict[str, int] = {}
    self.seen: set[str] = set()

    class Handler(http.server.BaseHTTPRequestHandler):
      def log_message(self, *args):
        pass

      def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        status, answer = judge.answer(body["messages"][0]["content"])
        data = json.dumps({"choices": [{"message": {"content": answer}}]}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=self.server.serve_forever, daemon=True).start()
    self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

  def answer(self, prompt: str) -> tuple[int, str]:
    self.calls += 1
    a = prompt.split("PASSAGE A:")[1].split("PASSAGE B:")[0]
    b = prompt.split("PASSAGE B:")[1].split("Explain your judgement")[0]
    first = next(word for word in QUALITY if word in a)
    if prompt not in self.seen:  # retries not counted
      self.seen.add(prompt)
      self.first[first] = self.first.get(first, 0) + 1
    if "FAIL" in a + b:
      return 500, "overloaded"
    if "MALFORMED" in a + b:
      return 200, "Both passages have merit, I really cannot say."
    winner = "A" if QUALITY[first] > QUALITY[next(w for w in QUALITY if w in b)] else "B"
    return 200, f"Passage {winner} is more vivid.\nWINNER: {winner}"


@pytest.fixture
def judge_server():
  server = _Judge()
  yield server
  server.server.shutdown()


def _systems(tmp_path):
  """Three systems' books of 6 chapters each; chapter 5 of MID is malformed bait, chapter 6 of BAD fails."""
  paths = {}
  for name in QUALITY:
    chapters = []
    for i in range(6):
      extra = " MALFORMED" if (name, i) == ("MID", 4) else " FAIL" if (name, i) == ("BAD", 5) else ""
      chapters.append({"title": f"Chapter {i + 1}", "texts": [f"{name} prose of chapter {i + 1}.{extra}"]})
    folder = tmp_path / name.lower() / "book"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "book.json").write_text(json.dumps({"chapters": chapters}))
    paths[name] = folder / "book.json"
  return paths


def test_judges_swap_positions_cache_answers_and_rank_with_intervals(judge_server, tmp_path):
  from xbook.evals.judges import JudgeConfig, judge_systems
  config = JudgeConfig(base_url=judge_server.url, models=("local-judge",), max_retries=1, base_delay_s=0.01,
                       bootstrap=200)
  cache = tmp_path / "out" / "judge_cache.sqlite"
  result = judge_systems(_systems(tmp_path), config, cache_path=cache)
  # 3 system pairs x 6 chapters x 2 orders; the 4 about chapter 6 of BAD fail after 2 attempts each.
  assert result["judgements"] == 36 and judge_server.calls == 32 + 4 * 2
  assert judge_server.first == {"GOOD": 12, "MID": 12, "BAD": 12}  # each system shown first as often
  errors = [f["error"] for f in result["failures"]]
  # Chapter 5 of MID is malformed against GOOD and BAD, chapter 6 of BAD fails against GOOD and MID.
  assert len(errors) == 4 + 4 and result["valid"] == 28
  assert sum("malformed answer" in e for e in errors) == 4 and sum("HTTP 500" in e for e in errors) == 4
  assert result["first_position_share"] == 0.5 and all(c["consistent"] in (True, None)
                                                     for c in result["comparisons"])
  ranks = {r["system"]: r for r in result["ranking"]}
  assert [r["system"] for r in result["ranking"]] == ["GOOD", "MID", "BAD"]
  assert ranks["GOOD"]["wins"] == 10 + 10 and ranks["BAD"]["wins"] == 0
  for row in result["ranking"]:
    assert row["low"] <= row["score"] <= row["high"]
  assert ranks["GOOD"]["low"] > ranks["BAD"]["high"]
  # A rerun asks only what failed (the HTTP 500s): every answer, malformed ones too, is cached.
  judge_server.calls = 0
  again = judge_systems(_systems(tmp_path), config, cache_path=cache)
  assert judge_server.calls == 4 * 2 and again["calls"] == 4 and again["cached"] == 32
  assert again["ranking"] == result["ranking"]


def test_xbook_eval_judge_writes_the_ranking(judge_server, tmp_path):
  from xbook.cli import main
  systems = _systems(tmp_path)
  out = tmp_path / "eval"
  args = ["eval", "--out", str(out), "--judge_url", judge_server.url, "--judge_model", "local-judge",
          "--judge_max_pairs", "4"]
  for name, path in systems.items():
    args += ["--judge", f"{name}={path}"]
  assert main(args) == 0
  judges = json.loads((out / "judges.json").read_text())["judges"]
  assert [r["system"] for r in judges["ranking"]][0] == "GOOD"
  assert {c["chapter"] for c in judges["comparisons"]} == {1, 3, 4, 6}
  assert not (out / "eval.json").exists()  # the books' file is theirs alone
  page = (out / "judges.html").read_text()
  assert "judge ranking" in page and "<h2>Judges</h2>" in page
  assert (out / "judge_cache.sqlite").is_file()
