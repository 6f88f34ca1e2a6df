"""Printing what benchmarks measure: figures as aligned text or JSON (random batches of the example
contract: xbook.data.features.synthetic_batch)."""

from __future__ import annotations

import json
from typing import Any, Mapping


def print_figures(figures: Mapping[str, Any], as_json: bool) -> None:
  """One JSON object, or one `name: value` line per figure (floats to 4 significant digits)."""
  if as_json:
    print(json.dumps(dict(figures)))
    return
  width = max(map(len, figures))
  for name, value in figures.items():
    print(f"{name:>{width}}: {value:,.4g}" if isinstance(value, float) else f"{name:>{width}}: {value}")
