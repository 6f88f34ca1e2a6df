"""Run the README's CPU walk-through literally, in a fresh clone, and print the figures the README quotes.

The README's code blocks are run as they are printed (each block one bash script, `set -e`: the first
command that fails ends the walk-through with its status), from the root of a fresh `git clone` of this
repository (the committed HEAD), with relative paths as printed:
  demo      the quick start's `bash launch/demo.sh` (its scaffolds and vocabulary feed what follows)
  paper     the paper demo block (books, paper scaffolds, vocabulary, data inspect, a 20-step tiny run)
  finetune  the fine-tune block (tiny Hugging Face model, import, train, export, transformers load)
  inline    the commands the README's prose gives for the demo run (after demo and paper: their files):
            train, generate, write, eval of the book, scaffolds, eval of the run, and a serve smoke test
            (GET /health, one POST /v1/completions, SIGTERM)
Blocks that need the network, a TPU, an API key or many minutes of Beam (gcloud, launch.pod, the LLM
judges, `xbook scaffold tfds`) and the test suite itself are not run.

The clone shares this checkout's virtualenv (`.venv`, a symlink; PYTHONPATH puts the clone's own code
first) and reads the corpus as the README does, from `../shared/corpus/gutenberg` (a symlink to
$XBOOK_CORPUS, default ../shared/corpus/gutenberg beside this checkout).

Usage: python .ci/readme_walkthrough.py [--parts demo,paper,finetune,inline] [--workdir DIR]
Example: python .ci/readme_walkthrough.py --parts paper --workdir /tmp/walk   # then --parts demo,... in DIR
Exit status: 0 when every command ran, else the failing command's.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PARTS = ("demo", "paper", "finetune", "inline")
# The README's prose commands run by the `inline` part, each found by the start of its backticked span.
INLINE = ("xbook train --gin_file=configs/runs/demo.gin --run_dir=runs/demo`",
          "xbook generate --run_dir=runs/demo --prompt", "xbook write --run_dir runs/demo --prompt",
          "xbook eval --books book/", "xbook scaffold build --books out/books.jsonl --out out/scaffolds.jsonl`",
          "xbook eval --run_dir runs/demo")
SERVE = "xbook serve --run_dir runs/demo --port 8000"


def code_blocks(readme: str) -> list[str]:
  """The ```bash blocks of the README, in order."""
  return re.findall(r"^```bash\n(.*?)^```", readme, flags=re.MULTILINE | re.DOTALL)


def block_with(readme: str, marker: str) -> str:
  """The one code block holding `marker`."""
  found = [block for block in code_blocks(readme) if marker in block]
  if len(found) != 1:
    raise SystemExit(f"error: README.md has {len(found)} code blocks with {marker!r}, expected 1")
  return found[0]


def inline_command(readme: str, start: str) -> str:
  """The backticked command of the README's prose that starts with `start` (line breaks joined)."""
  for span in re.findall(r"`(xbook [^`]+)`", readme):
    text = " ".join(span.split())
    if (text + "`").startswith(start) if start.endswith("`") else text.startswith(start):
      return text
  raise SystemExit(f"error: README.md has no command starting {start!r}")


def clone(workdir: Path) -> Path:
  """A fresh clone at workdir/xbook, beside workdir/shared/corpus/gutenberg, sharing .venv."""
  root = workdir / "xbook"
  if not root.exists():
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(root)], check=True)
    (root / ".venv").symlink_to(REPO / ".venv")
    corpus = Path(os.environ.get("XBOOK_CORPUS") or REPO.parent / "shared/corpus/gutenberg").resolve()
    (workdir / "shared/corpus").mkdir(parents=True, exist_ok=True)
    (workdir / "shared/corpus/gutenberg").symlink_to(corpus)
  return root


def run_script(root: Path, name: str, script: str, timeout: int = 1800) -> float:
  """Run `script` with bash -e in the clone's root, echoing each command; seconds taken (exit on failure)."""
  print(f"\n== {name}\n{script.rstrip()}", flush=True)
  env = {**os.environ, "PYTHONPATH": str(root), "PATH": f"{root / '.venv/bin'}:{os.environ['PATH']}",
         "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}  # the README's blocks export it
  began = time.monotonic()
  result = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", script], cwd=root, env=env, timeout=timeout)
  seconds = time.monotonic() - began
  if result.returncode:
    print(f"error: {name} failed (exit status {result.returncode}) after {seconds:.0f} s", file=sys.stderr)
    raise SystemExit(result.returncode)
  print(f"== {name}: {seconds:.0f} s", flush=True)
  return seconds


def metrics(run: Path) -> str:
  """The figures the README quotes of a run: first and last loss, evaluations."""
  records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
  evals = [f"{r['eval/loss']:.2f} at step {r['step']}" for r in records if "eval/loss" in r]
  return (f"loss {records[0]['loss']:.2f} at step {records[0]['step']} -> {records[-1]['loss']:.2f} at step "
          f"{records[-1]['step']}; validation loss {', '.join(evals) or 'not evaluated'}")


def serve_smoke(root: Path) -> float:
  """The README's serve command in the background: /health, one completion, SIGTERM (exit 0)."""
  print(f"\n== serve\n.venv/bin/{SERVE}", flush=True)
  env = {**os.environ, "PYTHONPATH": str(root), "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
  began = time.monotonic()
  server = subprocess.Popen([".venv/bin/xbook", *SERVE.split()[1:]], cwd=root, env=env)
  try:
    deadline = time.monotonic() + 300
    while True:
      try:
        urllib.request.urlopen("http://127.0.0.1:8000/health", timeout=5)
        break
      except OSError:
        if server.poll() is not None or time.monotonic() > deadline:
          raise SystemExit(f"error: xbook serve did not come up (exit status {server.poll()})")
        time.sleep(1)
    request = urllib.request.Request("http://127.0.0.1:8000/v1/completions", method="POST",
                                     data=json.dumps({"prompt": "It was a cold night.", "max_tokens": 8}).encode(),
                                     headers={"Content-Type": "application/json"})
    answer = json.load(urllib.request.urlopen(request, timeout=120))
    print(f"completion: {answer['choices'][0]['text']!r}")
  finally:
    server.send_signal(signal.SIGTERM)
    status = server.wait(timeout=60)
  if status:
    raise SystemExit(f"error: xbook serve exited {status} on SIGTERM")
  return time.monotonic() - began


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, of {', '.join(PARTS)}")
  parser.add_argument("--workdir", default=None, help="where the clone goes (kept; default: a new temp folder)")
  args = parser.parse_args(argv)
  parts = [p for p in args.parts.split(",") if p]
  unknown = sorted(set(parts) - set(PARTS))
  if unknown:
    parser.error(f"unknown part(s) {', '.join(unknown)}; parts are {', '.join(PARTS)}")
  workdir = Path(args.workdir or tempfile.mkdtemp(prefix="xbook-readme-")).resolve()
  workdir.mkdir(parents=True, exist_ok=True)
  root = clone(workdir)
  readme = (root / "README.md").read_text(encoding="utf-8")
  figures = {}
  began = time.monotonic()
  if "demo" in parts:
    figures["demo.sh"] = f"{run_script(root, 'quick start: demo', 'bash launch/demo.sh'):.0f} s; " \
                         + metrics(root / "demo_out/run")
  if "paper" in parts:
    seconds = run_script(root, "paper demo", block_with(readme, "--run_dir runs/paper_demo"))
    figures["paper demo"] = f"{seconds:.0f} s; {metrics(root / 'runs/paper_demo')}"
  if "finetune" in parts:
    seconds = run_script(root, "fine-tune", block_with(readme, "--run_dir=runs/finetune_demo"))
    figures["fine-tune"] = f"{seconds:.0f} s; {metrics(root / 'runs/finetune_demo')}"
  if "inline" in parts:
    for start in INLINE:
      command = inline_command(readme, start)
      figures[command[:40]] = f"{run_script(root, command, '.venv/bin/' + command):.0f} s"
    figures["serve smoke test"] = f"{serve_smoke(root):.0f} s"
  print(f"\n== README figures ({time.monotonic() - began:.0f} s in all, clone in {root})")
  for name, figure in figures.items():
    print(f"  {name}: {figure}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
