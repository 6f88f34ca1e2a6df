"""Framing of the stage stream: the tokens around each stage, the stream's order, trimming a stage.

The authors of arXiv 2605.17064 drive their released models with a tool of their own (the public
repository `Pageshift-ai/pagestorm`, which has no licence file: xbook reads it for the format and
copies nothing). A book is a stream of *stages*. Each stage is framed as

    <|start_header_id|>{role}<|stop_header_id|>\\n\\n{content}<|eot_id|>

and the stream is the frames of the stages one after another, nothing between them (per pagestorm,
`protocol.py` and `artifacts.py`). The context of a stage is the prompt plus every completed stage, then
the header of the stage to write (`render_context`); generation of a stage stops at `<|eot_id|>`.

Standard library only (see the package docstring).
"""

from __future__ import annotations

from typing import Iterable, Sequence

from xbook.scaffold.stage_protocol.profiles import Profile, get_profile

START_HEADER = "<|start_header_id|>"
STOP_HEADER = "<|stop_header_id|>"
EOT = "<|eot_id|>"
FRAMING_TOKENS = (START_HEADER, STOP_HEADER, EOT)


class StageFormatError(ValueError):
  """A stream or a stage that does not follow the protocol; the message names where and what."""


def stage_header(role: str) -> str:
  """The header that opens a stage, blank line included: a writer appends it and generates after it."""
  if not role or any(t in role for t in FRAMING_TOKENS) or "\n" in role:
    raise ValueError(f"a stage role must be one line without framing tokens, got {role!r}")
  return f"{START_HEADER}{role}{STOP_HEADER}\n\n"


def frame(role: str, content: str) -> str:
  """One stage as the stream holds it: header, blank line, content, `<|eot_id|>`.

  Raises:
    ValueError: if the content holds a framing token (it would end or open a stage early).
  """
  for token in FRAMING_TOKENS:
    if token in content:
      raise ValueError(f"the content of stage {role!r} contains the framing token {token}: remove it "
                       f"(at character {content.index(token)})")
  return stage_header(role) + content + EOT


def render_context(stages: Sequence[tuple[str, str]], next_role: str) -> str:
  """The prompt of the next stage: the framed stages so far (the prompt first), then its header."""
  if not stages or stages[0][0] != "prompt":
    raise ValueError("a stage context starts with the prompt stage")
  return "".join(frame(role, content) for role, content in stages) + stage_header(next_role)


def parse(stream: str, profile: str | Profile | None = None) -> list[tuple[str, str]]:
  """The (role, content) stages of a stream.

  Args:
    stream: framed stages, nothing before, between or after them.
    profile: if given, each role must be one of its roles, in its order.

  Raises:
    StageFormatError: naming the character offset and what was expected there.
  """
  stages, position = [], 0
  while position < len(stream):
    if not stream.startswith(START_HEADER, position):
      raise StageFormatError(f"stream offset {position}: expected {START_HEADER}, found "
                             f"{stream[position:position + 40]!r}")
    stop = stream.find(STOP_HEADER, position)
    if stop < 0:
      raise StageFormatError(f"stream offset {position}: a header without {STOP_HEADER}")
    role = stream[position + len(START_HEADER):stop]
    body = stop + len(STOP_HEADER)
    if not stream.startswith("\n\n", body):
      raise StageFormatError(f"stream offset {body}: the header of stage {role!r} must be followed by "
                             "a blank line")
    end = stream.find(EOT, body)
    if end < 0:
      raise StageFormatError(f"stream offset {body}: stage {role!r} is not closed by {EOT}")
    content = stream[body + 2:end]
    if START_HEADER in content or STOP_HEADER in content:
      raise StageFormatError(f"stream offset {body}: stage {role!r} holds a header token before its {EOT}")
    stages.append((role, content))
    position = end + len(EOT)
  if profile is not None:
    _check_order([role for role, _ in stages], get_profile(profile))
  return stages


def _check_order(roles: Sequence[str], profile: Profile) -> None:
  """StageFormatError unless `roles` follow the profile's order (a book of one chapter has no
  full_book_chapters_plan)."""
  expected = _expected_roles(profile, n_chapters=None)
  for i, role in enumerate(roles):
    want = next(expected)
    if role != want and want == "full_book_chapters_plan":
      want = next(expected)
    if role != want:
      raise StageFormatError(f"stage {i} is {role!r}; profile {profile.name} expects {want!r} there")


def _expected_roles(profile: Profile, n_chapters: int | None) -> Iterable[str]:
  """The roles of a stream in order; per-chapter stages repeat for n_chapters - 1 chapters (forever
  when n_chapters is None)."""
  fixed = [s.role for s in profile.stages if not s.per_chapter]
  repeated = [s.role for s in profile.stages if s.per_chapter]
  yield from fixed
  k = 1
  while repeated and (n_chapters is None or k < n_chapters):
    yield from repeated
    k += 1


def trim_stage_text(text: str) -> str:
  """A generated stage as the stream keeps it: cut at the first `<|eot_id|>`, trailing spaces of
  every line and blank lines at both ends removed (pagestorm tidies generated stages the same way)."""
  lines = [line.rstrip() for line in text.split(EOT, 1)[0].split("\n")]
  while lines and not lines[0]:
    lines.pop(0)
  while lines and not lines[-1]:
    lines.pop()
  return "\n".join(lines)
