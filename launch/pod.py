"""Train xbook on a Cloud TPU pod: create the TPUs, ship the code, install, run `xbook train` on every
worker, stream the logs, stop, delete. Every subcommand takes --dry_run, which prints each command it
would run (gcloud, and the local `tar` that packs the code) instead of running it.

Run from the repository root, e.g.
  python -m launch.pod create --name xb --zone us-east5-a --accelerator_type v5p-256 --queued_resource --spot
  python -m launch.pod setup --name xb --zone us-east5-a --queued_resource
  python -m launch.pod run --name xb --zone us-east5-a --accelerator_type v5p-256 --queued_resource \
      --run_dir gs://BUCKET/runs/m24b --gin_file=configs/paper/mistral24b_131k.gin --gin.train.steps=1000
  python -m launch.pod logs|stop|status|delete --name xb --zone us-east5-a --queued_resource

gcloud commands used, as documented in the Cloud SDK reference:
  gcloud compute tpus tpu-vm {create,ssh,scp,describe,delete}
    https://cloud.google.com/sdk/gcloud/reference/compute/tpus/tpu-vm/create (and .../ssh, .../scp, ...)
  gcloud compute tpus queued-resources {create,ssh,scp,describe,delete}
    https://cloud.google.com/sdk/gcloud/reference/compute/tpus/queued-resources/create (--node-id, or
    --node-count with --node-prefix for several slices; ssh/scp take --node=all --worker=all)
  Multislice needs queued resources: https://cloud.google.com/tpu/docs/multislice-introduction

How the processes find each other: every worker (host) of every slice runs the same
`xbook train ... --distributed_auto`, and `jax.distributed.initialize()` reads the worker's index and its
peers from the TPU VM metadata server (jax/_src/clusters/cloud_tpu_cluster.py). On several slices, the
queued resource created with --node-count puts MEGASCALE_COORDINATOR_ADDRESS, MEGASCALE_NUM_SLICES and
MEGASCALE_SLICE_ID in each VM's `tpu-env` metadata; libtpu and jax read them there (process id = worker
index + slice id x workers per slice), so the launcher sets none of them. It binds
`MeshConfig.dcn_data` to the number of slices (unless a `--gin.MeshConfig.dcn_*` binding is given), so
that the `data` axis, and only it, crosses the data-center network.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Sequence

from launch import xla_flags
from xbook.gin_flags import split_gin_bindings
from xbook.train.tpu_topology import parse_slice

REPO_ROOT = Path(__file__).resolve().parents[1]
REMOTE_DIR = "~/xbook"            # the code on every worker
REMOTE_ARCHIVE = "xbook-code.tar.gz"  # in the worker's home directory
TRAIN_LOG = "~/xbook-train.log"   # each worker's output of its `xbook train`
TRAIN_PID = "~/xbook-train.pid"

# gcloud accelerator types; how many chips and hosts each has is xbook.train.tpu_topology's business.
_ACCELERATOR = re.compile(r"^(v2|v3|v4|v5p|v5litepod|v6e)-(\d+)$")
# Default TPU software versions (https://cloud.google.com/tpu/docs/runtimes).
RUNTIME_VERSIONS = {"v2": "tpu-ubuntu2204-base", "v3": "tpu-ubuntu2204-base", "v4": "tpu-ubuntu2204-base",
                    "v5p": "v2-alpha-tpuv5", "v5litepod": "v2-alpha-tpuv5-lite", "v6e": "v2-alpha-tpuv6e"}


def _accelerator_parts(accelerator_type: str) -> tuple[str, int]:
  match = _ACCELERATOR.match(accelerator_type)
  if not match:
    raise ValueError(f"unknown accelerator type {accelerator_type!r}: expected FAMILY-SIZE with FAMILY one "
                     f"of {', '.join(RUNTIME_VERSIONS)}, e.g. v5p-256 or v6e-64")
  return match.group(1), int(match.group(2))


def hosts_per_slice(accelerator_type: str) -> int:
  """Number of TPU VM workers (hosts) in one slice of `accelerator_type`, e.g. 32 for v5p-256."""
  _accelerator_parts(accelerator_type)  # a gcloud accelerator type, not a libtpu topology
  return parse_slice(accelerator_type).hosts


def default_runtime_version(accelerator_type: str) -> str:
  return RUNTIME_VERSIONS[_accelerator_parts(accelerator_type)[0]]


@dataclasses.dataclass(frozen=True)
class Target:
  """The TPUs a job runs on: one TPU VM slice, or a queued resource of `num_slices` slices."""

  name: str
  zone: str
  project: str | None = None
  accelerator_type: str | None = None
  num_slices: int = 1
  queued_resource: bool = False

  def __post_init__(self) -> None:
    if self.num_slices < 1:
      raise ValueError(f"--num_slices must be at least 1, got {self.num_slices}")
    if self.num_slices > 1 and not self.queued_resource:
      raise ValueError(f"{self.num_slices} slices need a queued resource (Multislice is only created "
                       "through queued resources): add --queued_resource")
    if self.accelerator_type is not None:
      _accelerator_parts(self.accelerator_type)

  @property
  def workers(self) -> int:
    """Processes of the job: workers per slice times slices."""
    if self.accelerator_type is None:
      raise ValueError("--accelerator_type is needed to count the workers")
    return hosts_per_slice(self.accelerator_type) * self.num_slices

  def _gcloud(self, verb: str, *positional: str) -> list[str]:
    """`gcloud compute tpus tpu-vm|queued-resources VERB POSITIONAL... --zone --project`."""
    group = "queued-resources" if self.queued_resource else "tpu-vm"
    where = [f"--zone={self.zone}"] + ([f"--project={self.project}"] if self.project else [])
    return ["gcloud", "compute", "tpus", group, verb, *(positional or (self.name,)), *where]

  def _hosts(self, worker: str, node: str) -> list[str]:
    return ([f"--node={node}"] if self.queued_resource else []) + [f"--worker={worker}"]

  def create(self, runtime_version: str | None = None, spot: bool = False) -> list[str]:
    if self.accelerator_type is None:
      raise ValueError("create needs --accelerator_type, e.g. v5p-256")
    version = runtime_version or default_runtime_version(self.accelerator_type)
    command = self._gcloud("create") + [f"--accelerator-type={self.accelerator_type}"]
    if self.queued_resource:
      nodes = ([f"--node-id={self.name}"] if self.num_slices == 1
               else [f"--node-count={self.num_slices}", f"--node-prefix={self.name}"])
      command += [f"--runtime-version={version}", *nodes]
    else:
      command += [f"--version={version}"]
    return command + (["--spot"] if spot else [])

  def ssh(self, remote_command: str, worker: str = "all", node: str = "all") -> list[str]:
    return self._gcloud("ssh") + self._hosts(worker, node) + [f"--command={remote_command}"]

  def scp_to_all(self, local_path: str, remote_path: str) -> list[str]:
    return self._gcloud("scp", local_path, f"{self.name}:{remote_path}") + self._hosts("all", "all")

  def describe(self) -> list[str]:
    return self._gcloud("describe")

  def delete(self) -> list[str]:
    # --force on a queued resource also deletes its TPU VMs; --quiet answers gcloud's confirmation.
    return self._gcloud("delete") + (["--force"] if self.queued_resource else []) + ["--quiet"]


# --------------------------------------------------------------------------------------------- plans
def pack_command(archive: str) -> list[str]:
  """Local command packing the working tree: tracked files and untracked ones git does not ignore."""
  return ["bash", "-c", f"cd {shlex.quote(str(REPO_ROOT))} && git ls-files -z --cached --others "
          f"--exclude-standard | tar czf {shlex.quote(archive)} --null --ignore-failed-read -T -"]


def _pinned_jax() -> str:
  """The `jax==X` pin of requirements.txt (libtpu comes with `jax[tpu]` of the same version)."""
  requirements = REPO_ROOT / "requirements.txt"
  for line in requirements.read_text().splitlines():
    if line.startswith("jax=="):
      return line.split("==", 1)[1].strip()
  raise ValueError(f"{requirements} has no jax==VERSION line")


def setup_plan(target: Target, archive: str) -> list[list[str]]:
  """Pack the code, copy it to every worker, unpack it and install: Python 3.11, launch/setup.sh, libtpu."""
  install = "; ".join([
      "set -e",
      "command -v python3.11 >/dev/null || { sudo apt-get update -qq && "
      "sudo apt-get install -y -qq python3.11 python3.11-venv; }",
      f"mkdir -p {REMOTE_DIR}", f"tar xzf ~/{REMOTE_ARCHIVE} -C {REMOTE_DIR}", f"cd {REMOTE_DIR}",
      "bash launch/setup.sh",
      f".venv/bin/python -m pip install -q 'jax[tpu]=={_pinned_jax()}'",
  ])
  return [pack_command(archive), target.scp_to_all(archive, REMOTE_ARCHIVE), target.ssh(install)]


def train_argv(target: Target, run_dir: str, gin_files: Sequence[str], gin_bindings: Sequence[str]) -> list[str]:
  """The `xbook train` command line every worker runs (from REMOTE_DIR)."""
  if not run_dir.startswith("gs://"):
    raise ValueError(f"--run_dir {run_dir!r}: a pod's workers share no disk; give a gs://BUCKET/PATH run "
                     "directory")
  argv = [".venv/bin/xbook", "train", *(f"--gin_file={f}" for f in gin_files), f"--run_dir={run_dir}",
          "--distributed_auto", *gin_bindings]
  if target.num_slices > 1 and not any(b.startswith("--gin.MeshConfig.dcn_") for b in gin_bindings):
    argv.append(f"--gin.MeshConfig.dcn_data={target.num_slices}")
  return argv


def worker_env(target: Target, libtpu_overrides: dict[str, str] | None = None,
               extra: dict[str, str] | None = None) -> dict[str, str]:
  """Environment of the training process on every worker."""
  return {"LIBTPU_INIT_ARGS": xla_flags.libtpu_init_args(target.num_slices, libtpu_overrides),
          "TF_CPP_MIN_LOG_LEVEL": "2", **(extra or {})}


def run_plan(target: Target, argv: Sequence[str], env: dict[str, str], wait: bool = False) -> list[list[str]]:
  """Start `argv` with `env` on every worker: detached (output in TRAIN_LOG, pid in TRAIN_PID), or with
  `wait`, in the foreground until it ends (its output streamed here and kept in TRAIN_LOG)."""
  command = shlex.join(["env", *(f"{k}={v}" for k, v in env.items()), *argv])
  if wait:
    remote = f"cd {REMOTE_DIR} || exit 1; {command} 2>&1 | tee {TRAIN_LOG}; exit ${{PIPESTATUS[0]}}"
  else:
    remote = (f"cd {REMOTE_DIR} || exit 1; "
              f"if [ -f {TRAIN_PID} ] && kill -0 $(cat {TRAIN_PID}) 2>/dev/null; then "
              f"echo \"a training process is already running ($(cat {TRAIN_PID})); stop it first\" >&2; exit 1; fi; "
              f"nohup {command} > {TRAIN_LOG} 2>&1 < /dev/null & echo $! > {TRAIN_PID}")
  return [target.ssh(remote)]


def logs_plan(target: Target, worker: str, lines: int) -> list[list[str]]:
  """Follow one worker's training output (worker 0 of the first slice by default)."""
  return [target.ssh(f"tail -n {lines} -F {TRAIN_LOG}", worker=worker, node="0")]


def stop_plan(target: Target) -> list[list[str]]:
  """SIGTERM to the training process on every worker: it saves a checkpoint and exits."""
  return [target.ssh(f"if [ -f {TRAIN_PID} ]; then kill -TERM $(cat {TRAIN_PID}) 2>/dev/null; "
                     f"rm -f {TRAIN_PID}; fi; true")]


# ------------------------------------------------------------------------------------------------ CLI
def execute(commands: Sequence[Sequence[str]], dry_run: bool) -> None:
  """Print (dry run) or run each command in turn, stopping at the first that fails."""
  for command in commands:
    if dry_run:
      print(shlex.join(command))
      continue
    print(f"+ {shlex.join(command)}", file=sys.stderr, flush=True)
    try:
      returncode = subprocess.run(list(command)).returncode
    except FileNotFoundError:
      raise SystemExit(f"error: {command[0]} not found; install the Google Cloud CLI "
                       "(https://cloud.google.com/sdk/docs/install) and run `gcloud auth login`") from None
    if returncode:
      raise SystemExit(f"error: exit status {returncode} from: {shlex.join(command)}")


def _key_value(text: str) -> tuple[str, str]:
  name, sep, value = text.partition("=")
  if not sep or not name:
    raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
  return name, value


def add_target_arguments(parser: argparse.ArgumentParser, required: bool = True) -> None:
  """The flags naming the TPUs (shared with launch.sweep, where they are optional)."""
  parser.add_argument("--name", dest="tpu_name", required=required,
                      help="TPU VM or queued resource name (slices of a queued resource are NAME-0, NAME-1, ...)")
  parser.add_argument("--zone", required=required, help="e.g. us-east5-a")
  parser.add_argument("--project", default=None, help="GCP project (default: gcloud's configured project)")
  parser.add_argument("--accelerator_type", default=None, help="e.g. v5p-256, v6e-64 (create and run)")
  parser.add_argument("--num_slices", type=int, default=1, help="slices of a Multislice queued resource")
  parser.add_argument("--queued_resource", action="store_true",
                      help="use a queued resource (waits for capacity; needed for --num_slices > 1)")


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
  """The flags of the training process on the workers (shared with launch.sweep)."""
  parser.add_argument("--gin_file", action="append", default=[], help="gin config file (repeatable)")
  parser.add_argument("--env", type=_key_value, action="append", default=[], metavar="NAME=VALUE",
                      help="extra environment variable of the training process (repeatable)")
  parser.add_argument("--libtpu_arg", type=xla_flags.parse_override, action="append", default=[],
                      metavar="NAME=VALUE", help="add or override a LIBTPU_INIT_ARGS flag (repeatable)")


def target_from_args(args: argparse.Namespace) -> Target:
  try:
    return Target(name=args.tpu_name, zone=args.zone, project=args.project,
                  accelerator_type=args.accelerator_type, num_slices=args.num_slices,
                  queued_resource=args.queued_resource)
  except ValueError as error:
    raise SystemExit(f"error: {error}") from None


def _subcommand(subparsers, name: str, help_text: str, example: str) -> argparse.ArgumentParser:
  parser = subparsers.add_parser(name, help=help_text, description=help_text,
                                 epilog="example:\n  " + example,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
  add_target_arguments(parser)
  parser.add_argument("--dry_run", action="store_true", help="print each command instead of running it")
  return parser


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="python -m launch.pod", description=__doc__.split("\n\n")[0],
      epilog="example:\n  python -m launch.pod create --name xb --zone us-east5-a --accelerator_type v5p-256 "
             "--queued_resource --dry_run", formatter_class=argparse.RawDescriptionHelpFormatter)
  commands = parser.add_subparsers(title="subcommands", dest="subcommand", required=True)
  where = "--name xb --zone us-east5-a"
  p = _subcommand(commands, "create", "Create the TPU VM, or request the queued resource (one or more slices).",
                  f"python -m launch.pod create {where} --accelerator_type v5p-256 --queued_resource "
                  "--num_slices 2 --spot")
  p.add_argument("--runtime_version", default=None,
                 help="TPU software version (default by family: " +
                      ", ".join(f"{k} {v}" for k, v in RUNTIME_VERSIONS.items()) + ")")
  p.add_argument("--spot", action="store_true", help="Spot VMs: cheaper, preemptible at any time")
  _subcommand(commands, "status", "Describe the TPU VM or queued resource (a queued one is ready when ACTIVE).",
              f"python -m launch.pod status {where} --queued_resource")
  p = _subcommand(commands, "setup", "Copy the working tree to every worker and install it (Python 3.11, "
                  ".venv, jax[tpu]); rerun after changing the code.",
                  f"python -m launch.pod setup {where} --queued_resource")
  p.add_argument("--archive", default="/tmp/xbook-code.tar.gz", help="local path of the packed code")
  p = _subcommand(commands, "run", "Start `xbook train` on every worker (detached; see `logs`), with the "
                  "libtpu overlap flags of launch/xla_flags.py and --gin.NAME=VALUE bindings passed through.",
                  f"python -m launch.pod run {where} --accelerator_type v5p-256 --queued_resource "
                  "--run_dir gs://BUCKET/runs/m24b --gin_file=configs/paper/mistral24b_131k.gin "
                  "--gin.train.steps=1000")
  p.add_argument("--run_dir", required=True, help="gs://BUCKET/PATH run directory (resumed if it has checkpoints)")
  add_run_arguments(p)
  p.add_argument("--wait", action="store_true", help="stay attached until training ends, streaming its output")
  p = _subcommand(commands, "logs", "Follow the training output of one worker.",
                  f"python -m launch.pod logs {where} --queued_resource --worker 0")
  p.add_argument("--worker", default="0", help="worker index (of the first slice)")
  p.add_argument("--lines", type=int, default=100, help="lines of history to show first")
  _subcommand(commands, "stop", "SIGTERM the training on every worker (it checkpoints, then exits); "
              "`run` again to resume.", f"python -m launch.pod stop {where} --queued_resource")
  _subcommand(commands, "delete", "Delete the TPU VM or the queued resource and its VMs.",
              f"python -m launch.pod delete {where} --queued_resource")
  return parser


def plan_from_args(args: argparse.Namespace, gin_bindings: Sequence[str]) -> list[list[str]]:
  """The commands of one `python -m launch.pod ...` invocation."""
  target = target_from_args(args)
  try:
    if args.subcommand == "create":
      return [target.create(args.runtime_version, args.spot)]
    if args.subcommand == "status":
      return [target.describe()]
    if args.subcommand == "setup":
      return setup_plan(target, args.archive)
    if args.subcommand == "run":
      argv = train_argv(target, args.run_dir, args.gin_file, gin_bindings)
      return run_plan(target, argv, worker_env(target, dict(args.libtpu_arg), dict(args.env)), args.wait)
    if args.subcommand == "logs":
      return logs_plan(target, args.worker, args.lines)
    if args.subcommand == "stop":
      return stop_plan(target)
    return [target.delete()]
  except ValueError as error:
    raise SystemExit(f"error: {error}") from None


def main(argv: Sequence[str] | None = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  rest = [a for a in argv if not a.startswith("--gin.")]
  gin_bindings = [a for a in argv if a.startswith("--gin.")]
  split_gin_bindings(gin_bindings)  # rejects a binding without "=" with a clear message
  parser = build_parser()
  args = parser.parse_args(rest)
  if gin_bindings and args.subcommand != "run":
    parser.error("--gin.NAME=VALUE bindings are only accepted by `run`")
  commands = plan_from_args(args, gin_bindings)
  if args.subcommand == "run" and args.accelerator_type:
    target = target_from_args(args)
    print(f"# {target.name}: {target.num_slices} slice(s) of {target.accelerator_type}, "
          f"{target.workers} worker processes", file=sys.stdout if args.dry_run else sys.stderr)
  execute(commands, args.dry_run)
  if args.subcommand == "run" and not args.wait and not args.dry_run:
    print(f"started; follow it with: python -m launch.pod logs --name {args.tpu_name} --zone {args.zone}"
          + (" --queued_resource" if args.queued_resource else ""), file=sys.stderr)
  return 0


if __name__ == "__main__":
  sys.exit(main())
