#!/usr/bin/env bash
# Set up the test environment (idempotent), lint with ruff (pyproject.toml [tool.ruff]; seconds), and run the
# test suite on 8 simulated CPU devices.
#
# Usage: bash tests/run.sh [PYTEST_ARGS...]
# Example: bash tests/run.sh -k books -x
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/launch/setup.sh" --test

CORPUS="${XBOOK_CORPUS:-$ROOT/../shared/corpus/gutenberg}"
if [[ ! -d "$CORPUS" ]]; then
  if [[ "${CI:-}" == "true" ]]; then
    echo "error: the test corpus $CORPUS is missing; CI needs ../shared/corpus/gutenberg beside the clone" \
         "(or XBOOK_CORPUS pointing at a folder of Gutenberg .txt files)" >&2
    exit 1
  fi
  echo "warning: corpus $CORPUS not found; tests that read real novels will be skipped" >&2
fi

export XBOOK_CORPUS="$CORPUS"
export XLA_FLAGS="--xla_force_host_platform_device_count=8 ${XLA_FLAGS:-}"
export TF_CPP_MIN_LOG_LEVEL=2
cd "$ROOT"
"$ROOT/.venv/bin/ruff" check .
# --durations: the slowest tests, printed at the end, to keep the suite within its ~25 minutes.
exec "$ROOT/.venv/bin/python" -m pytest --durations=15 "$@"
