"""Reading a record kept as one JSON object in a file (a run's or an imported-weights folder's model.json).

Every reader of such a record needs the same three checks, each with one clear message that names the file
and the fix: the file is there, it is JSON, and the JSON is an object. `read_json_record` makes them; the
caller checks the fields it needs.
"""

from __future__ import annotations

import json
import os
from typing import Any

from etils import epath


def read_json_record(path: str | os.PathLike[str], *, missing_hint: str, fix: str, what: str) -> dict[str, Any]:
  """The JSON object in the file `path` (local or gs://).

  Args:
    path: the record's file.
    missing_hint: what to say after "<path> not found: " (what the folder should have been, e.g. "is run/ a
      run directory made by `xbook train`?").
    fix: what to do about a file that is there but unreadable (e.g. "import the weights again").
    what: what the object is, for the message of a file holding other JSON (e.g. "the run's record").

  Raises:
    FileNotFoundError: "<path> not found: <missing_hint>".
    ValueError: "<path>: not valid JSON (<the parser's error>); <fix>", or for JSON that is not an object
      "<path>: expected a JSON object (<what>), got <its type>; <fix>".
  """
  path = epath.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"{path} not found: {missing_hint}")
  try:
    recorded = json.loads(path.read_text(encoding="utf-8"))
  except json.JSONDecodeError as error:
    raise ValueError(f"{path}: not valid JSON ({error}); {fix}") from None
  if not isinstance(recorded, dict):
    raise ValueError(f"{path}: expected a JSON object ({what}), got {type(recorded).__name__}; {fix}")
  return recorded
