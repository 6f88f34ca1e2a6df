"""`xbook write`: one book, or many at once, from a run, on the inference engine or a remote server.

A `WriteBackend` is opened once at the entry point: the run's vocabulary, trained context length and book
format (model.json), and where stages are decoded:
  - the inference engine (xbook.infer.engine) over the run's parameters, on one device or sharded over a
    mesh (`--mesh`): its slots are the books written at once; a book's stages share one slot's cache
    through prefix reuse, so each stage prefills only its new header (and whatever re-encoding the
    previous stage's text changed), unless the context had to drop the earliest chapter texts;
  - or any OpenAI-compatible server that honours vLLM's extra fields (`--base_url`, `--model`; vLLM, or
    `xbook serve`), with the same stages, grammars, seeds and journal (xbook.infer.completers).

`write_book` writes one book into a folder; `write_books` writes every prompt of a prompts file
concurrently, one folder per book under the output folder, each with its own journal (so each resumes
on its own after a kill), one progress bar for all (books done, stages, tokens/s), and a failed book
reported with its reason while the others go on.

Prompts files (`read_prompts`): JSONL, one object per line with `prompt` and optionally `name` (the
book's folder) and `seed`; or plain text, one prompt per line, optionally `name<TAB>prompt` or
`name<TAB>seed<TAB>prompt`. Blank lines and lines starting with `#` are skipped.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import logging
import os
import re
import threading
import time
from pathlib import Path
from typing import Any, Mapping

from tqdm import tqdm

from xbook.data.vocab import Vocabulary
from xbook.infer import decode
from xbook.infer.completers import engine_completer, remote_completer
from xbook.infer.engine import Engine
from xbook.infer.generate import load_run
from xbook.infer.paper_writer import PaperBookWriter
from xbook.infer.placement import inference_mesh
from xbook.infer.writer import BookWriter, Completer, WriteConfig, check_out_folder, save_book
from xbook.data.spec import TrajectoryFormat
from xbook.data.trajectory import PAPER_STAGES
from xbook.train.run_info import RunInfo

log = logging.getLogger(__name__)


@dataclasses.dataclass
class WriteBackend:
  """A run opened for writing: its vocabulary, context, format, and the completer stages go to.

  Attributes:
    run_dir, step: the run (step None: a remote server's model, whatever step it serves).
    vocabulary: the run's vocabulary (contexts are encoded here, whatever decodes them).
    context_len: the most tokens of a stage's context plus its output.
    trajectory_format: the run's (xbook's plan orders, or the paper's stages in the run's profile).
    complete: the completer.
    engine: the in-process engine (None for a remote server); `close()` stops it.
  """

  run_dir: str
  step: int | None
  vocabulary: Vocabulary
  context_len: int
  trajectory_format: TrajectoryFormat
  complete: Completer
  engine: Any = None
  where: str = ""

  def close(self) -> None:
    if self.engine is not None:
      self.engine.stop()


def open_backend(info: RunInfo, *, config: WriteConfig, step: int | None = None, slots: int = 1,
                 mesh_config: Any = None, shard_cache_length: bool = False, base_url: str | None = None,
                 model: str | None = None, api_key: str | None = None) -> WriteBackend:
  """Open the run `info` records (its RunInfo, read once at the entry point) for writing: on the engine with
  `slots` books at once (sharded over `mesh_config`'s mesh when given), or, with `base_url`, on that server's
  `model` (only the run's vocabulary is loaded). What follows takes the record, never the path."""
  run_dir = info.run_dir
  context_len = config.context_len or info.seq_len
  if not context_len:
    raise ValueError(f"{info.model_json} does not say which sequence length the run trained at; set "
                     "WriteConfig.context_len (e.g. --gin.WriteConfig.context_len=4096)")
  common = dict(run_dir=str(run_dir), context_len=int(context_len), trajectory_format=info.trajectory_format)
  if base_url:
    if not model:
      raise ValueError("--base_url needs --model: the name the server serves the run under")
    vocabulary = info.load_vocabulary()
    return WriteBackend(step=None, vocabulary=vocabulary, where=f"{model} at {base_url}",
                        complete=remote_completer(base_url, model, vocabulary, api_key=api_key), **common)
  mesh = rules = None
  if mesh_config is not None:
    mesh, rules = inference_mesh(mesh_config, shard_cache_length)
  run = load_run(info, step, mesh=mesh, rules=rules or decode.inference_rules())
  engine = Engine(run.params, run.model.config, slots=slots, max_len=int(context_len), mesh=mesh, rules=rules,
                  vocab_size_limit=run.vocabulary.size, decode=run.vocabulary.decode).start()
  where = f"the engine ({slots} slot(s){', mesh ' + str(dict(mesh.shape)) if mesh is not None else ''})"
  return WriteBackend(step=run.step, vocabulary=run.vocabulary, complete=engine_completer(engine, run.vocabulary),
                      engine=engine, where=where, **common)


def write_book(backend: WriteBackend, prompt: str, out_dir: str | os.PathLike[str], *, seed: int = 0,
               config: WriteConfig, profile: str | None = None, overwrite: bool = False,
               progress: Mapping[str, Any] | None = None) -> dict[str, Any]:
  """Write a whole book from `prompt` into `out_dir` (book.md, book.json, journal.jsonl); continues a
  killed write of the same book in the same folder; a folder holding other files and no journal is
  refused unless `overwrite` (writer.check_out_folder). The format is the run's (xbook's, or the paper's
  stage protocol in the run's profile, or `profile`).

  Returns:
    The book (what book.json holds), with "markdown" and "json" naming the files written.
  """
  if not prompt.strip():
    raise ValueError("the prompt is empty: say what book to write, e.g. --prompt 'Write a ghost story'")
  out = Path(out_dir)
  check_out_folder(out, overwrite)
  trajectory_format = TrajectoryFormat(PAPER_STAGES, profile) if profile else backend.trajectory_format
  log.info("writing a book with %s (step %s) on %s at a context of %d tokens, seed %d", backend.run_dir,
           backend.step, backend.where, backend.context_len, seed)
  if trajectory_format.is_paper:
    writer: Any = PaperBookWriter(backend.vocabulary, backend.complete, config, backend.context_len, out,
                                  trajectory_format.profile, progress=progress)
  else:
    writer = BookWriter(backend.vocabulary, backend.complete, config, backend.context_len, out, progress=progress)
  # The step is left out of a remote write's header: the server's model is whatever it serves.
  header = {"run_dir": str(backend.run_dir), "format": trajectory_format.book_format,
            "profile": trajectory_format.profile,
            "config": dataclasses.asdict(config)}
  if backend.step is not None:
    header["step"] = backend.step
  book = writer.write(prompt, seed, header)
  book.update(run_dir=str(backend.run_dir), step=backend.step, seed=seed, format=trajectory_format.book_format,
              prefill=prefill_summary(book["stages"]))
  markdown, data = save_book(book, out)
  return {**book, "markdown": str(markdown), "json": str(data)}


def prefill_summary(stages: list[Mapping[str, Any]]) -> dict[str, Any]:
  """Prefilled, cached and generated tokens of a book's stages, and the prefilled tokens per token of the
  stream (the last stage's context and output: the prompt, every header and every generated token once).
  With prefix reuse and a context that never dropped a chapter text this is at most about 1; `relaid`
  says whether some stage's context was laid out anew (earliest texts dropped), when more is prefilled."""
  known = [s for s in stages if s.get("prefill_tokens", -1) >= 0]
  if not known:
    return {"prefill_tokens": None}
  prefilled = sum(s["prefill_tokens"] for s in known)
  stream = known[-1]["context_tokens"] + known[-1]["tokens"]
  relaid = any(b["context_tokens"] < a["context_tokens"] + a["tokens"] for a, b in zip(known, known[1:]))
  return {"prefill_tokens": prefilled, "cached_tokens": sum(s.get("cached_tokens", 0) for s in known),
          "generated_tokens": sum(s["tokens"] for s in known), "stream_tokens": stream,
          "prefill_per_stream_token": prefilled / max(1, stream), "relaid": relaid}


# ---------------------------------------------------------------------------------------------- many books
@dataclasses.dataclass(frozen=True)
class BookPrompt:
  """One line of a prompts file."""

  prompt: str
  name: str
  seed: int


_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


def read_prompts(path: str | os.PathLike[str], default_seed: int = 0) -> list[BookPrompt]:
  """The prompts of a JSONL or text file (module docstring), each with a folder name (default book-001,
  ...) and a seed (default `default_seed`). Raises ValueError naming the file, line and what is wrong."""
  path = Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"--prompts {path}: no such file (a JSONL file of {{\"prompt\", \"name\", \"seed\"}} "
                            "objects, or a text file of one prompt per line)")
  books: list[BookPrompt] = []
  for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
    if not line.strip() or line.lstrip().startswith("#"):
      continue
    where = f"{path}:{number}"
    name, seed, prompt = _parse_line(line, where, default_seed)
    name = name or f"book-{len(books) + 1:03d}"
    if not _NAME.match(name):
      raise ValueError(f"{where}: name {name!r} is not a folder name (letters, digits, '.', '_', '-')")
    if any(b.name == name for b in books):
      raise ValueError(f"{where}: name {name!r} is used twice; give each book its own name")
    if not prompt.strip():
      raise ValueError(f"{where}: the prompt is empty")
    books.append(BookPrompt(prompt=prompt.strip(), name=name, seed=seed))
  if not books:
    raise ValueError(f"--prompts {path}: no prompt in it")
  return books


def _parse_line(line: str, where: str, default_seed: int) -> tuple[str | None, int, str]:
  if line.lstrip().startswith("{"):
    try:
      record = json.loads(line)
    except json.JSONDecodeError as error:
      raise ValueError(f"{where}: not a JSON object ({error})") from None
    unknown = sorted(set(record) - {"prompt", "name", "seed"})
    if unknown or not isinstance(record.get("prompt"), str):
      raise ValueError(f"{where}: expected {{\"prompt\": str, \"name\": str (optional), \"seed\": int "
                       f"(optional)}}" + (f"; unknown fields {unknown}" if unknown else ""))
    seed = record.get("seed", default_seed)
    if not isinstance(seed, int) or isinstance(seed, bool):
      raise ValueError(f"{where}: seed must be an integer, got {seed!r}")
    return record.get("name"), seed, record["prompt"]
  parts = line.split("\t")
  if len(parts) == 1:
    return None, default_seed, line
  if len(parts) == 2:
    return parts[0].strip(), default_seed, parts[1]
  if len(parts) == 3 and parts[1].strip().lstrip("-").isdigit():
    return parts[0].strip(), int(parts[1]), parts[2]
  raise ValueError(f"{where}: expected PROMPT, NAME<TAB>PROMPT or NAME<TAB>SEED<TAB>PROMPT")


class _BooksProgress:
  """One bar for many books: books done, stages, new tokens per second."""

  def __init__(self, books: int) -> None:
    self.bar = tqdm(total=books, desc="books", unit="book")
    self.stages = self.tokens = 0
    self.began = time.perf_counter()
    self.lock = threading.Lock()

  def stage(self, entry: Mapping[str, Any], replayed: bool) -> None:
    with self.lock:
      self.stages += 1
      if not replayed:
        self.tokens += entry["tokens"]
      rate = self.tokens / max(time.perf_counter() - self.began, 1e-9)
      self.bar.set_postfix_str(f"{self.stages} stages, {self.tokens:,} new tokens, {rate:.1f} tokens/s")

  def book(self) -> None:
    with self.lock:
      self.bar.update(1)


def write_books(backend: WriteBackend, books: list[BookPrompt], out_dir: str | os.PathLike[str], *,
                config: WriteConfig, profile: str | None = None, overwrite: bool = False,
                concurrency: int = 8) -> list[dict[str, Any]]:
  """Write every book concurrently into out_dir/<name>/ (module docstring). Returns per book
  {"name", "status" ("done" or "failed"), "reason", "chapters", "words", "tokens", "folder"}."""
  out = Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  progress = _BooksProgress(len(books))

  def one(book: BookPrompt) -> dict[str, Any]:
    folder = out / book.name
    try:
      written = write_book(backend, book.prompt, folder, seed=book.seed, config=config, profile=profile,
                           overwrite=overwrite, progress={"disable": True, "on_stage": progress.stage})
    except Exception as error:  # noqa: BLE001 - reported with its reason; the other books go on
      log.error("book %s failed: %s: %s", book.name, type(error).__name__, error)
      return {"name": book.name, "status": "failed", "reason": f"{type(error).__name__}: {error}",
              "folder": str(folder)}
    finally:
      progress.book()
    return {"name": book.name, "status": "done", "reason": "", "folder": str(folder),
            "chapters": len(written["chapters"]), "tokens": sum(s["tokens"] for s in written["stages"]),
            "words": sum(len(t.split()) for c in written["chapters"] for t in c["texts"]),
            "prefill_per_stream_token": written["prefill"].get("prefill_per_stream_token")}

  with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, concurrency), thread_name_prefix="book") as pool:
    results = list(pool.map(one, books))
  progress.bar.close()
  return results
