"""Gin sweeps: expand a sweep file into runs, train them here or on a TPU pod, and tabulate their metrics.

A sweep file is a Python file whose `get_config()` returns an ml_collections ConfigDict (build it with
`allow_dotted_keys=True`, since gin names contain dots) with these fields:
  name       the sweep's name; run names are NAME-INDEX-PARAMS, each run in OUT/RUN_NAME
  gin_files  gin files of every run (more may be given with --gin_file)
  bindings   {gin name: value} of every run, e.g. {"train.steps": 30}
  grid       {gin name: [values]}: one run per combination (the product)
  random     {"num_samples": K, "seed": S, "params": {gin name: DISTRIBUTION}}: K distinct draws per grid point,
             DISTRIBUTION one of {"choice": [values]}, {"uniform": [low, high]}, {"log_uniform": [low, high]};
             the same seed gives the same runs
See configs/sweeps/demo_lr.py.

Usage (from the repository root):
  python -m launch.sweep run configs/sweeps/demo_lr.py --out sweeps/demo_lr --parallel 2
  python -m launch.sweep summary --out sweeps/demo_lr
  python -m launch.sweep run configs/sweeps/demo_lr.py --out gs://BUCKET/sweeps/lr --name xb --zone ZONE \
      --accelerator_type v5p-256 --queued_resource        # one run after the other on the pod
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
import os
import random
import re
import runpy
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

from tqdm import tqdm

from launch import pod
from xbook import paths
from xbook.gin_flags import split_gin_bindings
from xbook.train.metrics import read_metrics

SWEEP_FIELDS = ("name", "gin_files", "bindings", "grid", "random")
RANDOM_FIELDS = ("num_samples", "seed", "params")
DISTRIBUTIONS = ("choice", "uniform", "log_uniform")
MANIFEST = "sweep.json"
_GIN_NAME = re.compile(r"^[A-Za-z_][\w./]*$")


class SweepError(ValueError):
  """A sweep file that cannot be expanded; the message names the file and the field."""


@dataclasses.dataclass(frozen=True)
class Run:
  name: str
  run_dir: str
  params: dict[str, Any]  # the swept bindings of this run (grid and random)


@dataclasses.dataclass(frozen=True)
class Sweep:
  name: str
  gin_files: list[str]
  bindings: dict[str, Any]  # every run's fixed bindings
  runs: list[Run]

  def binding_args(self, run: Run) -> list[str]:
    """`--gin.NAME=VALUE` arguments of `run`: the fixed bindings, then its params (which win)."""
    return [f"--gin.{name}={gin_literal(value)}" for name, value in {**self.bindings, **run.params}.items()]


def gin_literal(value: Any) -> str:
  """`value` written as gin parses it (Python literal syntax: 0.003, 'text', True, [1, 2])."""
  return repr(value)


def _plain(value: Any) -> Any:
  """ConfigDicts and tuples as plain dicts and lists."""
  if hasattr(value, "to_dict"):
    value = value.to_dict()
  if isinstance(value, Mapping):
    return {k: _plain(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_plain(v) for v in value]
  return value


def load_sweep_config(path: str | os.PathLike[str]) -> dict[str, Any]:
  """Run the sweep file and return its `get_config()` as plain dicts, its fields checked."""
  path = Path(path)
  if not path.is_file():
    raise SweepError(f"sweep file {path} not found")
  try:
    namespace = runpy.run_path(str(path))
  except Exception as error:  # the file is user code: report any failure with its name
    raise SweepError(f"{path}: could not be executed: {type(error).__name__}: {error}") from error
  if not callable(namespace.get("get_config")):
    raise SweepError(f"{path}: defines no get_config() function returning the sweep's ConfigDict")
  config = _plain(namespace["get_config"]())
  if not isinstance(config, dict):
    raise SweepError(f"{path}: get_config() returned {type(config).__name__}, expected a ConfigDict")
  _check_config(path, config)
  return config


def _check_gin_names(path: Path, field: str, names) -> None:
  for name in names:
    if not isinstance(name, str) or not _GIN_NAME.match(name):
      raise SweepError(f"{path}: {field}: {name!r} is not a gin name such as train.steps or "
                       "OptimizerConfig.learning_rate")


def _check_config(path: Path, config: dict[str, Any]) -> None:
  unknown = sorted(set(config) - set(SWEEP_FIELDS))
  if unknown:
    raise SweepError(f"{path}: unknown field(s) {', '.join(unknown)}; a sweep has {', '.join(SWEEP_FIELDS)}")
  if not isinstance(config.get("name"), str) or not re.match(r"^[\w.-]+$", config["name"]):
    raise SweepError(f"{path}: name must be a non-empty string of letters, digits, '_', '-', '.'; "
                     f"got {config.get('name')!r}")
  if not isinstance(config.get("gin_files", []), list):
    raise SweepError(f"{path}: gin_files must be a list of gin file paths")
  for field in ("bindings", "grid"):
    if not isinstance(config.get(field, {}), dict):
      raise SweepError(f"{path}: {field} must map gin names to values")
    _check_gin_names(path, field, config.get(field, {}))
  for name, values in config.get("grid", {}).items():
    if not isinstance(values, list) or not values:
      raise SweepError(f"{path}: grid.{name} must be a non-empty list of values, got {values!r}")
  search = config.get("random", {})
  if not isinstance(search, dict):
    raise SweepError(f"{path}: random must be a dict with {', '.join(RANDOM_FIELDS)}")
  unknown = sorted(set(search) - set(RANDOM_FIELDS))
  if unknown:
    raise SweepError(f"{path}: random: unknown field(s) {', '.join(unknown)}; expected {', '.join(RANDOM_FIELDS)}")
  num_samples = search.get("num_samples", 0)
  if not isinstance(num_samples, int) or num_samples < 0:
    raise SweepError(f"{path}: random.num_samples must be an integer >= 0, got {num_samples!r}")
  if not isinstance(search.get("seed", 0), int):
    raise SweepError(f"{path}: random.seed must be an integer, got {search['seed']!r}")
  params = search.get("params", {})
  if num_samples and not params:
    raise SweepError(f"{path}: random.num_samples is {num_samples} but random.params is empty")
  _check_gin_names(path, "random.params", params)
  for name, spec in params.items():
    if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in DISTRIBUTIONS:
      raise SweepError(f"{path}: random.params.{name} must be one of " +
                       ", ".join(f"{{'{d}': ...}}" for d in DISTRIBUTIONS) + f"; got {spec!r}")
    kind, arg = next(iter(spec.items()))
    if kind == "choice" and not (isinstance(arg, list) and arg):
      raise SweepError(f"{path}: random.params.{name}.choice must be a non-empty list, got {arg!r}")
    if kind != "choice":
      if not (isinstance(arg, list) and len(arg) == 2 and all(isinstance(x, (int, float)) for x in arg)
              and arg[0] < arg[1]):
        raise SweepError(f"{path}: random.params.{name}.{kind} must be [low, high] with low < high, got {arg!r}")
      if kind == "log_uniform" and arg[0] <= 0:
        raise SweepError(f"{path}: random.params.{name}.log_uniform needs low > 0, got {arg!r}")
  clash = sorted(set(config.get("grid", {})) & set(params))
  if clash:
    raise SweepError(f"{path}: {', '.join(clash)} both in grid and random.params; sweep each name once")
  kinds = [next(iter(spec)) for spec in params.values()]
  if params and all(kind == "choice" for kind in kinds):
    distinct = math.prod(len(next(iter(spec.values()))) for spec in params.values())
    if num_samples > distinct:
      raise SweepError(f"{path}: random.num_samples is {num_samples} but the choice lists of "
                       f"random.params allow only {distinct} distinct draws per grid point; lower "
                       "num_samples or offer more choices")


def _draw(rng: random.Random, spec: dict[str, Any]) -> Any:
  kind, arg = next(iter(spec.items()))
  if kind == "choice":
    return rng.choice(arg)
  if kind == "uniform":
    return float(f"{rng.uniform(*arg):.4g}")
  return float(f"{math.exp(rng.uniform(math.log(arg[0]), math.log(arg[1]))):.4g}")


def _distinct_draws(rng: random.Random, params: Mapping[str, dict[str, Any]], samples: int
                    ) -> list[dict[str, Any]]:
  """`samples` draws of every random param, no two alike (a repeated draw would train the same run
  twice): a draw equal to an earlier one is drawn again."""
  draws: list[dict[str, Any]] = []
  for _ in range(100 * samples):
    draw = {name: _draw(rng, spec) for name, spec in params.items()}
    if draw not in draws:
      draws.append(draw)
    if len(draws) == samples:
      return draws
  raise SweepError(f"only {len(draws)} distinct draws of random.params in {100 * samples} tries; "
                   f"lower random.num_samples ({samples}) or widen the distributions")


def _value_label(value: Any) -> str:
  return f"{value:.3g}" if isinstance(value, float) else str(value)


def run_name(sweep_name: str, index: int, params: Mapping[str, Any]) -> str:
  """NAME-INDEX-k=v-k=v, with the last part of each gin name (e.g. learning_rate=0.003)."""
  parts = [f"{name.rsplit('.', 1)[-1]}={_value_label(value)}" for name, value in params.items()]
  return re.sub(r"[^\w.=-]", "", "-".join([sweep_name, f"{index:02d}", *parts]))


def expand(config: Mapping[str, Any], out: str, extra_gin_files: Sequence[str] = ()) -> Sweep:
  """The runs of a checked sweep config: grid product x random draws, each in OUT/RUN_NAME."""
  grid = config.get("grid", {})
  grid_points = [dict(zip(grid, values)) for values in itertools.product(*grid.values())]
  search = config.get("random", {})
  rng = random.Random(search.get("seed", 0))
  samples = search.get("num_samples", 0)
  points = []
  for point in grid_points:
    points += [{**point, **draw} for draw in _distinct_draws(rng, search.get("params", {}), samples)] \
        if samples else [point]
  runs = []
  for index, params in enumerate(points):
    name = run_name(config["name"], index, params)
    runs.append(Run(name=name, run_dir=f"{out.rstrip('/')}/{name}", params=params))
  return Sweep(name=config["name"], gin_files=[*config.get("gin_files", []), *extra_gin_files],
               bindings=dict(config.get("bindings", {})), runs=runs)


# ------------------------------------------------------------------------------------------- running
def local_command(sweep: Sweep, run: Run, cli_bindings: Sequence[str]) -> list[str]:
  """`xbook train` of one run in this Python (the command line's --gin.X=Y bindings win)."""
  return [sys.executable, "-m", "xbook.cli", "train", *(f"--gin_file={f}" for f in sweep.gin_files),
          "--run_dir", run.run_dir, *sweep.binding_args(run), *cli_bindings]


def write_manifest(out: Path, sweep: Sweep, returncodes: Mapping[str, int | None]) -> None:
  out.mkdir(parents=True, exist_ok=True)
  record = {"name": sweep.name, "gin_files": sweep.gin_files, "bindings": sweep.bindings,
            "runs": [{**dataclasses.asdict(r), "returncode": returncodes.get(r.name)} for r in sweep.runs]}
  (out / MANIFEST).write_text(json.dumps(record, indent=2) + "\n")


def run_local(sweep: Sweep, out: Path, cli_bindings: Sequence[str], parallel: int, host_devices: int | None
              ) -> dict[str, int]:
  """Train every run, at most `parallel` at once, each logging to RUN_DIR/train.log; returns exit codes."""
  env = dict(os.environ)
  if host_devices:
    other_flags = [f for f in env.get("XLA_FLAGS", "").split()
                   if not f.startswith("--xla_force_host_platform_device_count=")]
    env["XLA_FLAGS"] = " ".join([f"--xla_force_host_platform_device_count={host_devices}", *other_flags])
  env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  pending, running, returncodes = list(sweep.runs), {}, {}
  write_manifest(out, sweep, returncodes)
  with tqdm(total=len(pending), desc=f"sweep {sweep.name}", unit="run", file=sys.stderr) as progress:
    while pending or running:
      while pending and len(running) < parallel:
        run = pending.pop(0)
        Path(run.run_dir).mkdir(parents=True, exist_ok=True)
        log = open(Path(run.run_dir) / "train.log", "w")
        running[run.name] = (subprocess.Popen(local_command(sweep, run, cli_bindings), stdout=log,
                                              stderr=subprocess.STDOUT, env=env), log)
      time.sleep(0.5)
      for name, (process, log) in list(running.items()):
        if process.poll() is None:
          continue
        log.close()
        returncodes[name] = process.returncode
        del running[name]
        progress.update(1)
        tqdm.write(f"{name}: {'done' if process.returncode == 0 else f'FAILED (exit status {process.returncode})'}",
                   file=sys.stderr)
        write_manifest(out, sweep, returncodes)
  return returncodes


def pod_plans(sweep: Sweep, target: pod.Target, cli_bindings: Sequence[str], libtpu: dict[str, str],
              env: dict[str, str]) -> list[tuple[Run, list[list[str]]]]:
  """For each run, the commands training it on the pod in the foreground (so runs follow each other)."""
  worker_env = pod.worker_env(target, libtpu, env)
  return [(run, pod.run_plan(target, pod.train_argv(target, run.run_dir, sweep.gin_files,
                                                    [*sweep.binding_args(run), *cli_bindings]),
                             worker_env, wait=True))
          for run in sweep.runs]


# ------------------------------------------------------------------------------------------- summary
def summarize(runs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
  """One row per run from its metrics.jsonl: last step and loss, last eval loss, median tokens/s."""
  rows = []
  for run in runs:
    row = {"run": run["name"], "status": "not run", "step": None, "loss": None, "eval/loss": None,
           "tokens/s": None, **run["params"]}
    returncode = run.get("returncode")
    if returncode is not None:
      row["status"] = "ok" if returncode == 0 else f"failed ({returncode})"
    try:
      records = read_metrics(run["run_dir"])
    except FileNotFoundError:
      records = []
    if records:
      row.update(step=records[-1]["step"], loss=records[-1]["loss"],
                 **{"tokens/s": statistics.median(r["tokens_per_s"] for r in records if "tokens_per_s" in r)})
      evals = [r["eval/loss"] for r in records if "eval/loss" in r]
      row["eval/loss"] = evals[-1] if evals else None
      if returncode is None:
        row["status"] = "metrics"
    rows.append(row)
  return rows


def format_table(rows: Sequence[Mapping[str, Any]]) -> str:
  """The rows as an aligned text table (floats to 4 significant digits, missing values as '-')."""
  columns = list(dict.fromkeys(key for row in rows for key in row))

  def cell(value: Any) -> str:
    return "-" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)

  table = [columns] + [[cell(row.get(c)) for c in columns] for row in rows]
  widths = [max(len(line[i]) for line in table) for i in range(len(columns))]
  return "\n".join("  ".join(text.ljust(width) for text, width in zip(line, widths)).rstrip() for line in table)


def read_manifest(out: str | os.PathLike[str]) -> dict[str, Any]:
  path = Path(out) / MANIFEST
  if not path.is_file():
    raise SystemExit(f"error: {path} not found: --out must be the folder of a sweep started with "
                     "`python -m launch.sweep run`")
  return json.loads(path.read_text())


def print_summary(out: str | os.PathLike[str]) -> list[dict[str, Any]]:
  manifest = read_manifest(out)
  rows = summarize(manifest["runs"])
  print(f"sweep {manifest['name']}: {len(rows)} runs in {out}\n{format_table(rows)}")
  return rows


# ----------------------------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="python -m launch.sweep", description="Expand a sweep file into runs, train them, tabulate them.",
      epilog="example:\n  python -m launch.sweep run configs/sweeps/demo_lr.py --out sweeps/demo_lr --parallel 2",
      formatter_class=argparse.RawDescriptionHelpFormatter)
  commands = parser.add_subparsers(title="subcommands", dest="subcommand", required=True)
  p = commands.add_parser(
      "run", help="train every run of a sweep file, then print the summary table",
      description="Train every run of a sweep file (here, or on a TPU pod with --name/--zone), then print "
                  "the summary table. --gin.NAME=VALUE bindings apply to every run (and win over the sweep's).",
      epilog="example:\n  python -m launch.sweep run configs/sweeps/demo_lr.py --out sweeps/demo_lr --parallel 2\n"
             "  python -m launch.sweep run configs/sweeps/demo_lr.py --out gs://BUCKET/sweeps/lr --name xb "
             "--zone us-east5-a --accelerator_type v5p-256 --queued_resource --dry_run",
      formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("sweep_file", help="Python file whose get_config() returns the sweep (see configs/sweeps/)")
  p.add_argument("--out", required=True, help="sweep folder: run directories and sweep.json (gs:// on a pod)")
  p.add_argument("--parallel", type=int, default=1, help="local runs at once")
  p.add_argument("--host_devices", type=int, default=8,
                 help="local runs: simulated CPU devices per run (XLA_FLAGS); 0 leaves XLA_FLAGS alone")
  p.add_argument("--dry_run", action="store_true", help="print each run's command instead of running it")
  pod.add_target_arguments(p, required=False)
  pod.add_run_arguments(p)
  p = commands.add_parser("summary", help="print the summary table of a sweep folder",
                          description="Print the summary table of a sweep folder, read from each run's "
                                      "metrics.jsonl.",
                          epilog="example:\n  python -m launch.sweep summary --out sweeps/demo_lr",
                          formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--out", required=True, help="sweep folder written by `run`")
  return parser


def _run(args: argparse.Namespace, cli_bindings: list[str]) -> int:
  if not args.tpu_name:  # local runs: their run directories absolute, whatever folder `summary` runs in
    args.out = paths.absolute(args.out)
  try:
    sweep = expand(load_sweep_config(args.sweep_file), args.out, args.gin_file)
  except SweepError as error:
    raise SystemExit(f"error: {error}") from None
  if args.tpu_name:
    if not args.zone:
      raise SystemExit("error: a sweep on a pod needs --zone as well as --name")
    target = pod.target_from_args(args)
    try:
      plans = pod_plans(sweep, target, cli_bindings, dict(args.libtpu_arg), dict(args.env))
    except ValueError as error:
      raise SystemExit(f"error: {error}") from None
    for run, commands in plans:
      print(f"# {run.name}", file=sys.stdout if args.dry_run else sys.stderr)
      pod.execute(commands, args.dry_run)
    return 0
  if args.out.startswith("gs://"):
    raise SystemExit(f"error: --out {args.out}: local runs write to a local folder; a gs:// sweep needs a pod "
                     "(--name, --zone, --accelerator_type)")
  if args.dry_run:
    for run in sweep.runs:
      print(shlex.join(local_command(sweep, run, cli_bindings)))
    return 0
  if args.parallel < 1:
    raise SystemExit(f"error: --parallel must be at least 1, got {args.parallel}")
  began = time.monotonic()
  returncodes = run_local(sweep, Path(args.out), cli_bindings, args.parallel, args.host_devices)
  print_summary(args.out)
  print(f"wall time {time.monotonic() - began:.0f} s")
  failed = [name for name, code in returncodes.items() if code]
  if failed:
    print(f"error: {len(failed)} run(s) failed; see RUN_DIR/train.log of: {', '.join(failed)}", file=sys.stderr)
    return 1
  return 0


def main(argv: Sequence[str] | None = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  cli_bindings = [a for a in argv if a.startswith("--gin.")]
  split_gin_bindings(cli_bindings)  # rejects a binding without "=" with a clear message
  args = build_parser().parse_args([a for a in argv if not a.startswith("--gin.")])
  if args.subcommand == "summary":
    print_summary(args.out)
    return 0
  return _run(args, cli_bindings)


if __name__ == "__main__":
  sys.exit(main())
