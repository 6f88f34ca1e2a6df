"""Structured outputs: a request's grammar (regex, JSON schema, choice, Lark) as an llguidance matcher that
masks the engine's next-token draw (xbook.infer.engine.Constraint).

llguidance (https://github.com/guidance-ai/llguidance) is the library behind vLLM's `guidance`
structured-outputs backend, which the paper authors' tool uses for every stage. Its matcher computes,
from the tokens drawn so far, the bitmask of tokens that keep the output inside the grammar (one bit per
token id, 32 per int32 word), in tens of microseconds for regular grammars. When the grammar is complete
the matcher admits only end of sequence, and the engine ends the row.

`GrammarSpec` is what a request asks for, as vLLM's OpenAI server takes it (`structured_outputs` with one
of `regex`, `json`, `choice`, `grammar`; the older `guided_regex`, `guided_json`, `guided_choice`,
`guided_grammar`; OpenAI's `response_format` of type `json_schema` or `json_object`).
"""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Any, Sequence

import numpy as np

GRAMMAR_KINDS = ("regex", "json", "choice", "grammar")


class GrammarError(ValueError):
  """A grammar llguidance cannot compile; the message says which and why."""


@dataclasses.dataclass(frozen=True)
class GrammarSpec:
  """What the output must match.

  Attributes:
    kind: "regex" (the whole output matches it), "json" (a JSON schema, as a dict or its text; `{}` or
      True: any JSON object), "choice" (exactly one of a list of strings) or "grammar" (a Lark grammar in
      llguidance's dialect: `start` is the top rule; lexemes in upper case; `%json {...}` embeds a schema).
    value: the regex or Lark text, the schema, or the list of choices.
  """

  kind: str
  value: Any

  def __post_init__(self) -> None:
    if self.kind not in GRAMMAR_KINDS:
      raise GrammarError(f"grammar kind {self.kind!r} is not one of {GRAMMAR_KINDS}")

  def llguidance_grammar(self) -> str:
    """The grammar in llguidance's serialized form (what LLMatcher takes)."""
    import llguidance  # noqa: PLC0415 - loaded only by requests that ask for structured outputs
    if self.kind == "regex":
      return llguidance.LLMatcher.grammar_from_regex(_text(self.value, "regex"))
    if self.kind == "choice":
      return llguidance.LLMatcher.grammar_from_regex(choice_regex(self.value))
    if self.kind == "grammar":
      return llguidance.LLMatcher.grammar_from_lark(_text(self.value, "grammar"))
    schema = self.value
    if schema is True or schema == {}:
      schema = {"type": "object"}
    if isinstance(schema, str):
      try:
        schema = json.loads(schema)
      except json.JSONDecodeError as error:
        raise GrammarError(f"json: the schema is not valid JSON ({error})") from error
    if not isinstance(schema, dict):
      raise GrammarError(f"json: expected a JSON schema object, got {json.dumps(schema)[:80]}")
    return llguidance.LLMatcher.grammar_from_json_schema(schema, defaults={"whitespace_flexible": False})


def _text(value: Any, kind: str) -> str:
  if not isinstance(value, str) or not value:
    raise GrammarError(f"{kind}: expected a non-empty string, got {json.dumps(value)[:80]}")
  return value


def choice_regex(choices: Sequence[str]) -> str:
  """A regex matching exactly one of the strings."""
  if (not isinstance(choices, (list, tuple)) or not choices
      or not all(isinstance(c, str) and c for c in choices)):
    raise GrammarError(f"choice: expected a non-empty list of non-empty strings, got {json.dumps(choices)[:80]}")
  return "(" + "|".join(re.escape(c) for c in choices) + ")"


def compile_grammar(spec: GrammarSpec, tokenizer: Any) -> str:
  """spec's llguidance grammar, checked against `tokenizer` (an llguidance.LLTokenizer). Raises
  GrammarError naming the problem (a bad regex, schema or Lark rule)."""
  import llguidance  # noqa: PLC0415
  try:
    grammar = spec.llguidance_grammar()
  except (ValueError, TypeError, RuntimeError) as error:
    if isinstance(error, GrammarError):
      raise
    raise GrammarError(f"{spec.kind}: {error}") from error
  ok, message = _validate(llguidance, grammar, tokenizer)
  if not ok:
    raise GrammarError(f"{spec.kind}: {message}")
  return grammar


def _validate(llguidance: Any, grammar: str, tokenizer: Any) -> tuple[bool, str]:
  matcher = llguidance.LLMatcher(tokenizer, grammar, log_level=0)
  if matcher.is_error():
    return False, matcher.get_error()
  return True, ""


class GrammarConstraint:
  """One request's grammar as the engine drives it (xbook.infer.engine.Constraint).

  Args:
    tokenizer: an llguidance.LLTokenizer of the served vocabulary (xbook.infer.guidance.llg_tokenizer).
    grammar: compile_grammar's result.
  """

  def __init__(self, tokenizer: Any, grammar: str) -> None:
    import llguidance  # noqa: PLC0415
    self.matcher = llguidance.LLMatcher(tokenizer, grammar, log_level=0)
    if self.matcher.is_error():
      raise GrammarError(self.matcher.get_error())
    self.words = (tokenizer.vocab_size + 31) // 32
    self._buffer = np.zeros(self.words, np.int32)
    self.tokens: list[int] = []

  def fill_bitmask(self, row: np.ndarray) -> None:
    """Write the allowed next tokens into row ([words] int32, at least the tokenizer's words; the words
    beyond are cleared: embedding rows no tokenizer id has are never allowed)."""
    self.matcher.unsafe_compute_mask_ptr(self._buffer.ctypes.data, self._buffer.nbytes)
    row[:] = 0
    row[:self.words] = self._buffer

  def consume(self, token: int) -> None:
    self.tokens.append(int(token))
    self.matcher.consume_token(int(token))

  def is_stopped(self) -> bool:
    return self.matcher.is_stopped()

  def is_accepting(self) -> bool:
    return self.matcher.is_accepting()

  def error(self) -> str | None:
    return self.matcher.get_error() if self.matcher.is_error() else None


def spec_from_request(body: dict[str, Any]) -> GrammarSpec | None:
  """The GrammarSpec of an OpenAI/vLLM request body, or None. Raises GrammarError for a malformed or
  ambiguous one (two kinds at once)."""
  found: list[tuple[str, GrammarSpec]] = []
  structured = body.get("structured_outputs")
  if structured is not None:
    if not isinstance(structured, dict):
      raise GrammarError("structured_outputs: expected an object with one of regex, json, choice, grammar")
    kinds = [k for k in GRAMMAR_KINDS if structured.get(k) is not None]
    if len(kinds) != 1:
      raise GrammarError(f"structured_outputs: give exactly one of {', '.join(GRAMMAR_KINDS)} (got "
                         f"{', '.join(kinds) or 'none'})")
    found.append(("structured_outputs", GrammarSpec(kinds[0], structured[kinds[0]])))
  for kind in GRAMMAR_KINDS:
    if body.get(f"guided_{kind}") is not None:
      found.append((f"guided_{kind}", GrammarSpec(kind, body[f"guided_{kind}"])))
  response_format = body.get("response_format")
  if response_format is not None:
    spec = _response_format(response_format)
    if spec is not None:
      found.append(("response_format", spec))
  if len(found) > 1:
    raise GrammarError(f"{' and '.join(name for name, _ in found)} both constrain the output: give one")
  return found[0][1] if found else None


def _response_format(value: Any) -> GrammarSpec | None:
  if not isinstance(value, dict) or value.get("type") not in ("text", "json_object", "json_schema"):
    raise GrammarError("response_format: expected {\"type\": \"text\" | \"json_object\" | \"json_schema\", ...}")
  if value["type"] == "text":
    return None
  if value["type"] == "json_object":
    return GrammarSpec("json", {"type": "object"})
  schema = (value.get("json_schema") or {}).get("schema")
  if not isinstance(schema, dict):
    raise GrammarError("response_format.json_schema.schema: expected a JSON schema object")
  return GrammarSpec("json", schema)
