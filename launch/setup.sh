#!/usr/bin/env bash
# Create the project virtualenv (.venv) and install xbook into it. Idempotent: a second run with the
# same requirement files does nothing.
#
# Usage: bash launch/setup.sh [--test]        # --test also installs requirements-test.txt
# Example: bash launch/setup.sh --test && .venv/bin/xbook --help
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${XBOOK_VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3

runtime_hash="$(cat "$ROOT/requirements.txt" "$ROOT/pyproject.toml" | sha256sum | cut -d' ' -f1)"
test_hash="$(cat "$ROOT/requirements.txt" "$ROOT/requirements-test.txt" "$ROOT/pyproject.toml" | sha256sum | cut -d' ' -f1)"
up_to_date() { [[ -f "$VENV/.xbook-setup-$1" && "$(cat "$VENV/.xbook-setup-$1")" == "$2" ]]; }

# The report screenshot test (tests/test_eval.py) drives the system Chromium; install it with apt when
# it is missing and apt is there (as root, or with passwordless sudo). Without it that test is skipped.
install_chromium() {
  command -v chromedriver >/dev/null 2>&1 && return 0
  command -v apt-get >/dev/null 2>&1 || return 0
  [[ -f "$VENV/.xbook-chromium-tried" ]] && return 0  # tried once already (see its log); not every run
  local sudo=""; [[ "$(id -u)" == 0 ]] || { sudo -n true 2>/dev/null && sudo="sudo -n" || return 0; }
  echo "[setup] installing chromium and chromium-driver with apt-get (for the report screenshot test)"
  { $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium chromium-driver; } \
    >/tmp/xbook-setup-apt.log 2>&1 || echo "[setup] warning: apt-get install chromium failed (see /tmp/xbook-setup-apt.log)" >&2
  mkdir -p "$VENV" && touch "$VENV/.xbook-chromium-tried"
}

if [[ "${1:-}" == "--test" ]]; then
  install_chromium
  requirements="$ROOT/requirements-test.txt"
  up_to_date test "$test_hash" && { echo "[setup] $VENV is up to date (nothing to do)"; exit 0; }
else
  requirements="$ROOT/requirements.txt"
  if up_to_date runtime "$runtime_hash" || up_to_date test "$test_hash"; then
    echo "[setup] $VENV is up to date (nothing to do)"; exit 0
  fi
fi

if [[ ! -x "$VENV/bin/python" ]]; then
  echo "[setup] creating virtualenv $VENV with $("$PYTHON" --version)"
  "$PYTHON" -m venv "$VENV"
fi
log="$VENV/setup.log"
echo "[setup] installing $(basename "$requirements") into $VENV (a few minutes on a new machine; log: $log)"
install() { "$VENV/bin/python" -m pip install "$@" >>"$log" 2>&1 || { tail -30 "$log" >&2; exit 1; }; }
install --upgrade pip
install -r "$requirements"
install --no-deps --no-build-isolation -e "$ROOT"
echo "$runtime_hash" > "$VENV/.xbook-setup-runtime"
[[ "$requirements" == "$ROOT/requirements-test.txt" ]] && echo "$test_hash" > "$VENV/.xbook-setup-test"
echo "[setup] done: $("$VENV/bin/xbook" --version)"
