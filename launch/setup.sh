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

REQS=("$ROOT/requirements.txt")
if [[ "${1:-}" == "--test" ]]; then REQS=("$ROOT/requirements-test.txt"); fi

STAMP="$VENV/.xbook-setup-$(basename "${REQS[0]}" .txt)"
WANT="$(cat "$ROOT/requirements.txt" "${REQS[@]}" "$ROOT/pyproject.toml" | sha256sum | cut -d' ' -f1)"
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$WANT" ]]; then
  echo "[setup] $VENV is up to date (nothing to do)"
  exit 0
fi

if [[ ! -x "$VENV/bin/python" ]]; then
  echo "[setup] creating virtualenv $VENV with $("$PYTHON" --version)"
  "$PYTHON" -m venv "$VENV"
fi
echo "[setup] installing $(basename "${REQS[0]}") into $VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet -r "${REQS[0]}"
"$VENV/bin/python" -m pip install --quiet --no-deps --no-build-isolation -e "$ROOT"
echo "$WANT" > "$STAMP"
echo "[setup] done: $("$VENV/bin/xbook" --version 2>/dev/null || echo xbook installed)"
