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

Closing within the budget. A grammar says what a complete output is, not how long it may be; a model that
keeps writing inside it (a tiny model filling every field to its limit) reaches max_tokens mid-grammar,
and the output is cut where the grammar is not complete. Given its request's `budget` (max_tokens), a
GrammarConstraint watches the tokens left: now and then it plans, on a copy of its matcher, a short way to
complete the grammar (`closing_tokens`: the end of sequence where the grammar may end, else a token that
writes an end marker (a stop string) where that completes the grammar, else one that ends a line or
starts a new word, longer first; every one allowed by the grammar). Once the plan needs all but a margin
of the tokens left (CLOSING_MARGIN: an eighth of the budget, 4 to 64 tokens), it admits the plan's tokens
only. The output is then complete and inside the grammar, however the model wrote until then. The checks
come at halving distances from the end (the slack between the tokens left and the plan), so a stage costs
a few plans, each as many mask computations as its tokens. `closed_by_budget` counts the tokens so chosen.
What it cannot promise: a block the model opens between two checks that needs more than what is left
(the output is then cut at max_tokens, as without it). vLLM has no such feature: through `--base_url` on
vLLM such a stage is cut at max_tokens.
"""

from __future__ import annotations

import dataclasses
import json
import re
import threading
from typing import Any, Sequence

import numpy as np

from xbook.infer.guidance import llg_tokenizer

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


# A row whose closing plan needs all but this many of its tokens left is held to the plan (module docstring):
# an eighth of its budget, between 4 and 64 tokens, so that a block the model opens between two checks (a
# scene, a chapter) seldom outgrows what is left.
CLOSING_MARGIN = (4, 64)
# Tokens drawn before planning again when no closing plan fits the tokens left (the greedy plan may fit
# from where the model goes next).
RECHECK_AFTER_NO_PLAN = 16


class GrammarCompiler:
  """Grammars for one vocabulary: compiles requests' grammars and makes their constraints. The vocabulary's
  llguidance tokenizer is built on first use (about a second) and kept; thread-safe."""

  def __init__(self, vocabulary: Any) -> None:
    self.vocabulary = vocabulary
    self._tokenizer: Any = None
    self._lock = threading.Lock()

  def tokenizer(self) -> Any:
    """The vocabulary as llguidance sees it (xbook.infer.guidance.llg_tokenizer)."""
    with self._lock:
      if self._tokenizer is None:
        self._tokenizer = llg_tokenizer(self.vocabulary)
      return self._tokenizer

  def compile(self, spec: GrammarSpec) -> str:
    """compile_grammar for this vocabulary (raises GrammarError)."""
    return compile_grammar(spec, self.tokenizer())

  def constraint(self, grammar: str, budget: int | None = None, closers: Sequence[str] = ()) -> GrammarConstraint:
    """A fresh matcher of a compiled grammar, closed within `budget` tokens when given (GrammarConstraint)."""
    return GrammarConstraint(self.tokenizer(), grammar, budget, closers)


class GrammarConstraint:
  """One request's grammar as the engine drives it (xbook.infer.engine.Constraint).

  Args:
    tokenizer: an llguidance.LLTokenizer of the served vocabulary (xbook.infer.guidance.llg_tokenizer).
    grammar: compile_grammar's result.
    budget: the request's max_tokens: the grammar is closed within it (module docstring); None: never
      steered (the output is cut at max_tokens wherever it stands).
    closers: strings that end an output (its stop strings, e.g. a stage's end marker), which a closing
      plan writes where they complete the grammar.
  """

  def __init__(self, tokenizer: Any, grammar: str, budget: int | None = None, closers: Sequence[str] = ()) -> None:
    import llguidance  # noqa: PLC0415 - the matcher's library loads with the first grammar, not with serve
    self.matcher = llguidance.LLMatcher(tokenizer, grammar, log_level=0)
    if self.matcher.is_error():
      raise GrammarError(self.matcher.get_error())
    self.tokenizer = tokenizer
    self.words = (tokenizer.vocab_size + 31) // 32
    self._buffer = np.zeros(self.words, np.int32)
    self.tokens: list[int] = []
    self.budget, self.closers = budget, tuple(closers)
    self.closing: list[int] = []  # the planned tokens that complete the grammar, once held to them
    self.closed_by_budget = 0  # tokens drawn from a closing plan
    self._next_check: int | None = 0 if budget else None  # tokens drawn at the next closing check

  def fill_bitmask(self, row: np.ndarray) -> None:
    """Write the allowed next tokens into row ([words] int32, at least the tokenizer's words; the words
    beyond are cleared: embedding rows no tokenizer id has are never allowed)."""
    self._check_closing()
    row[:] = 0
    if self.closing:
      token = self.closing[0]
      row.view(np.uint32)[token >> 5] = np.uint32(1 << (token & 31))
      return
    self.matcher.unsafe_compute_mask_ptr(self._buffer.ctypes.data, self._buffer.nbytes)
    row[:self.words] = self._buffer

  def consume(self, token: int) -> None:
    if self.closing:
      planned = self.closing.pop(0)
      self.closed_by_budget += 1
      if planned != int(token):  # the mask held the draw to the plan: a mismatch is a bug upstream
        raise RuntimeError(f"token {token} drawn where the closing plan admits only {planned}")
    self.tokens.append(int(token))
    self.matcher.consume_token(int(token))

  def is_stopped(self) -> bool:
    return self.matcher.is_stopped()

  def _check_closing(self) -> None:
    """Plan the grammar's closing when due; hold the row to it when it needs nearly all tokens left."""
    used = len(self.tokens)
    if self.closing or self._next_check is None or used < self._next_check or self.matcher.is_accepting():
      return  # (an output the grammar may end here needs no closing: cut now, it is complete)
    left = self.budget - used
    plan = closing_tokens(self.matcher, self.tokenizer, limit=left, closers=self.closers)
    if plan is None:  # no short way to close from here within the tokens left: look again a little later
      self._next_check = used + RECHECK_AFTER_NO_PLAN
      return
    slack, margin = left - len(plan), min(max(CLOSING_MARGIN[0], self.budget // 8), CLOSING_MARGIN[1])
    if slack <= margin:
      self.closing = plan
    else:
      self._next_check = used + max(1, (slack - margin) // 2)


@dataclasses.dataclass(frozen=True)
class _Preference:
  """How closing_tokens ranks a tokenizer's tokens (`_preference`).

  Attributes:
    texts: each token's bytes (b"" for special tokens).
    score: one that ends a line first, then one that starts a new word, then longer ones (special: -1, never).
    after_blank: `score` without the bonus for line ends: after a blank line, where prose would take newlines
      forever.
  """

  texts: list[bytes]
  score: np.ndarray
  after_blank: np.ndarray


# id(tokenizer) -> (tokenizer, its _Preference): kept for the process (a server or writer has one or two
# tokenizers; the tokenizer is kept too, so that its id is not reused).
_PREFERENCES: dict[int, tuple[Any, _Preference]] = {}


def _preference(tokenizer: Any) -> _Preference:
  """The tokenizer's token ranking for closing_tokens, made once per tokenizer (a vocabulary of 131k tokens
  takes tens of milliseconds) and cached."""
  if id(tokenizer) in _PREFERENCES:
    return _PREFERENCES[id(tokenizer)][1]
  texts = [b"" if tokenizer.is_special_token(t) else tokenizer.decode_bytes([t]) for t in range(tokenizer.vocab_size)]
  line_end = np.asarray([4e6 if b"\n" in t else 0.0 for t in texts])
  score = np.asarray([(4e6 if b"\n" in t else 0) + (1e6 if t[:1] == b" " else 0) + len(t) if t else -1.0
                      for t in texts])
  preference = _Preference(texts, score, score - line_end)
  _PREFERENCES[id(tokenizer)] = (tokenizer, preference)
  return preference


def _closer_fits(matcher: Any, closers: Sequence[list[int]]) -> list[int] | None:
  """The tokens of the first closer that, written from where `matcher` stands, complete its grammar."""
  for ids in closers:
    trial = matcher.deep_copy()
    if trial.try_consume_tokens(ids) == len(ids) and (trial.is_stopped() or trial.is_accepting()):
      return ids
  return None


def closing_tokens(matcher: Any, tokenizer: Any, limit: int, closers: Sequence[str] = ()) -> list[int] | None:
  """A short sequence of at most `limit` tokens that completes `matcher`'s grammar from where it stands
  (on a copy: the matcher is unchanged), greedily: end of sequence where the grammar may end; a closer (one
  of `closers`, e.g. a stage's end marker, in the tokenizer's tokens) where writing it completes the
  grammar; else the allowed token that ends a line (never a third newline in a row), else one that starts a
  new word, longer first. None when none is found within `limit`."""
  copy, words = matcher.deep_copy(), (tokenizer.vocab_size + 31) // 32
  buffer, eos = np.zeros(words, np.int32), tokenizer.eos_token
  preference = _preference(tokenizer)
  texts = preference.texts
  ends = [list(tokenizer.greedy_tokenize(c)) for c in closers if c]  # as text, never as a special token
  plan: list[int] = []
  written = b""
  while len(plan) < limit:
    if copy.is_stopped():
      return plan
    copy.unsafe_compute_mask_ptr(buffer.ctypes.data, buffer.nbytes)
    allowed = np.flatnonzero(np.unpackbits(buffer.view(np.uint8), bitorder="little")[:tokenizer.vocab_size])
    if allowed.size == 0 or copy.is_error():
      return None
    if eos in allowed:
      return plan + [eos]
    closing = _closer_fits(copy, ends) if ends else None
    if closing is not None:
      return plan + closing if len(plan) + len(closing) <= limit else None
    ranks = preference.after_blank if written.endswith(b"\n\n") else preference.score
    token = int(allowed[np.argmax(ranks[allowed])])
    plan.append(token)
    written = (written + texts[token])[-2:]
    copy.consume_token(token)
  return plan if copy.is_stopped() else None


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
