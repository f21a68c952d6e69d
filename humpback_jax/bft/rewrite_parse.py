"""Reading the rewritten response out of the rewrite model's text ([BF] §2; ``method.md`` §2).

[BF]'s rewrite prompt (``bft.templates.REWRITE_PROMPT``) ends "Return the rewritten response
between [RES] and [/RES]." and the paper keeps "the text between [RES] and [/RES]". Models do
not always comply: they add a preamble and a trailing explanation (harmless), run out of tokens
before ``[/RES]``, forget the tags, leave them empty, open a block twice, write two blocks, echo
the prompt, or write ``[res]``. :func:`parse_rewrite` classifies one output; a
:class:`RewritePolicy` says which outputs are accepted, how often a failed row is resampled and
what happens when every attempt failed; :func:`should_retry`, :func:`resolve` and
:func:`summarize` are what the rewrite stage calls:

  parse = parse_rewrite(text, draft, prompt=prompt, instruction=x, finished=finished)
  while should_retry(parse, policy, attempt): resample with key (seed, id, attempt + 1) ...
  final_text, outcome = resolve(attempts, draft, policy)
  manifest["rewrite"] = summarize([(attempts, outcome), ...])

Parsing rules (our choices; the paper gives only the tag names):

1. Tags. ``[RES]`` / ``[/RES]`` in any letter case and with spaces inside the brackets
   (``[res]``, ``[ RES ]``, ``[/ RES]``), also wrapped in markdown bold or a code span
   (``**[RES]**``, ```[RES]```; the wrapper goes with the tag). The prompt asks for the tags in
   prose and small models sampled at T = 1.0 vary their spelling; a bracketed "res" is not
   something a response contains by accident, so tolerating the variants costs nothing and
   keeps rewrites that a strict match would throw away (or send to an expensive retry). The
   parse records ``tag_variant`` when a non-canonical spelling was read. ``[RESPONSE]`` is
   not a variant (another word).
2. Mentions of the tags are not tags: "between [RES] and [/RES]" (the prompt's own sentence,
   echoed), "[RES] or [/RES]", "[RES]/[/RES]", "[RES]...[/RES]", "in [RES] tags" are removed
   before the blocks are read, so an echoed prompt sentence followed by a real block still
   parses.
3. Blocks. A block is an opening tag, text, the next closing tag. Text outside blocks (a
   preamble "Sure! Here is the rewritten response:", a trailing "I made these changes: ...") is
   ignored. Statuses, in this order:
   - ``missing``: no opening tag (a lone ``[/RES]`` included; the text before it may carry a
     preamble, so it is not taken).
   - ``nested``: a second opening tag before the first block closes (``[RES] a [RES] b
     [/RES]``): which opening was meant is a guess, so it is a failure.
   - ``unterminated``: an opening tag and no closing one, usually because the generation hit
     ``max_new_tokens``. ``text`` holds what follows the tag, stripped (a trailing partial tag
     such as ``[/RE`` removed), or None when nothing follows; ``cut`` says whether the sampler
     reported the budget was hit (``finished=False``). A policy may accept it.
   - ``empty``: every complete block holds only whitespace.
   - ``ok``: the first complete block with non-blank text, stripped. Several complete blocks
     (a model that offers a second version, or restarts) are not a failure: the first
     non-blank one is taken, as a plain ``re.search`` for the tags would, and ``multiple`` is
     set (counted in :func:`summarize`). A malformed block after a complete one is ignored
     (noted in ``detail``).
4. ``copied_prompt``: the extracted text (of an ``ok`` or ``unterminated`` parse) reproduces the
   prompt's instructions instead of a response: it contains one of ``PROMPT_MARKERS`` (e.g.
   "rewrite the draft", "Return the rewritten response", "[/INST]", "<|im_start|>") that the
   draft and the instruction do not contain, or shares a span of ``PROMPT_SPAN_WORDS``
   consecutive words with the prompt's fixed text (the rendered ``prompt`` minus the draft and
   the instruction when given, else ``REWRITE_PROMPT``'s text around its slots), a span the
   draft and the instruction do not contain. Copying the draft or restating the question is
   not a copy of the prompt.
5. ``identical_to_draft`` is a flag, never a failure: [BF] asks the model to stay "as similar
   as possible, copying text where possible", so a verbatim copy (after whitespace is
   normalized) is a legitimate, if useless, rewrite; :func:`summarize` counts them.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Iterable, Sequence

from humpback_jax.bft.templates import REWRITE_PROMPT

# Parse statuses.
OK = "ok"
MISSING = "missing"
EMPTY = "empty"
UNTERMINATED = "unterminated"
NESTED = "nested"
COPIED_PROMPT = "copied_prompt"
STATUSES = (OK, MISSING, EMPTY, UNTERMINATED, NESTED, COPIED_PROMPT)

# Row outcomes (resolve).
REWRITTEN = "rewritten"  # an ok parse: its text replaces the web response
REWRITTEN_UNTERMINATED = "rewritten_unterminated"  # an unterminated parse the policy accepted
KEPT_DRAFT = "kept_draft"  # every attempt failed; the original (web) response is kept
DROPPED = "dropped"  # every attempt failed; the pair is dropped
OUTCOMES = (REWRITTEN, REWRITTEN_UNTERMINATED, KEPT_DRAFT, DROPPED)

# RewritePolicy.on_failure values.
ON_FAILURE = ("keep_draft", "drop")

# Phrases of REWRITE_PROMPT (and chat-template markup) that a response has no reason to contain;
# matched case-insensitively with whitespace collapsed. Our choice.
PROMPT_MARKERS = (
    "rewrite the draft",
    "return the rewritten response",
    "given the above question",
    "draft response:",
    "impeccably tailored to the user",
    "try not to add new facts",
    "[inst]",
    "[/inst]",
    "<<sys>>",
    "<|im_start|>",
    "<|im_end|>",
)
# A run of this many consecutive words shared with the prompt's fixed text is a copy of the
# prompt. Our choice: long enough that ordinary phrases ("a high quality response to the") do
# not trigger it, short enough to catch one echoed sentence of the prompt.
PROMPT_SPAN_WORDS = 8

_OPEN_SRC = r"\*\*\[\s*res\s*\]\*\*|`\[\s*res\s*\]`|\[\s*res\s*\]"
_CLOSE_SRC = r"\*\*\[\s*/\s*res\s*\]\*\*|`\[\s*/\s*res\s*\]`|\[\s*/\s*res\s*\]"
_TAG = re.compile(f"(?P<close>{_CLOSE_SRC})|(?P<open>{_OPEN_SRC})", re.IGNORECASE)
# Mentions of the tags in prose (rule 2): "[RES] and [/RES]", "[RES]/[/RES]", "[RES] tags".
_MENTION = re.compile(
    f"(?:{_OPEN_SRC})\\s*(?:and|or|&|/|,|\\.\\.\\.|…)\\s*(?:{_CLOSE_SRC})(?:\\s+tags?\\b)?"
    f"|\\b(?:in|within|inside|using|with|between|the)\\s+(?:{_OPEN_SRC}|{_CLOSE_SRC})"
    f"\\s+tags?\\b",
    re.IGNORECASE)
# A closing tag cut by the token budget at the very end of the text: "[", "[/", "[/R", "[/RES".
_PARTIAL_CLOSE = re.compile(r"\[\s*(?:/\s*(?:r(?:e(?:s\s*)?)?)?)?$", re.IGNORECASE)
_WORD = re.compile(r"\w+")


@dataclasses.dataclass(frozen=True)
class RewriteParse:
  """One rewrite output, classified.

  Attributes:
    text: the rewritten response (stripped) for ``ok``; what follows ``[RES]`` for
      ``unterminated`` (None if nothing); the extracted text for ``copied_prompt`` (for
      inspection; never accepted); None otherwise.
    status: one of ``STATUSES``.
    detail: a short human-readable reason (which tags, what was ignored, the copied span).
    identical_to_draft: ``text`` equals the draft after whitespace normalization (a flag).
    multiple: more than one complete ``[RES]...[/RES]`` block (the first non-blank was taken).
    tag_variant: a non-canonical tag spelling was read (``[res]``, ``[ RES ]``, ``**[RES]**``).
    cut: the generation hit its token budget (``finished=False`` given to ``parse_rewrite``);
      None when unknown.
  """

  text: str | None
  status: str
  detail: str = ""
  identical_to_draft: bool = False
  multiple: bool = False
  tag_variant: bool = False
  cut: bool | None = None

  @property
  def ok(self) -> bool:
    return self.status == OK

  def as_record(self) -> dict:
    """The fields as a JSON-serializable dict (for per-row records)."""
    return dataclasses.asdict(self)


def _norm(text: str) -> str:
  return " ".join(text.split())


def _shingles(text: str, n: int) -> set[tuple[str, ...]]:
  words = _WORD.findall(text.lower())
  return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


def _template_pieces(prompt: str | None, draft: str, instruction: str | None) -> list[str]:
  """The prompt's fixed text: ``prompt`` with the draft and instruction cut out, in pieces."""
  if prompt is None:
    return re.split(r"\{response\}|\{instruction\}", REWRITE_PROMPT)
  pieces = [prompt]
  for slot in (draft, instruction):
    if slot and slot.strip():
      pieces = [part for piece in pieces for part in piece.split(slot)]
  return pieces


def _copied_prompt(text: str, draft: str, prompt: str | None,
                   instruction: str | None) -> str | None:
  """Why ``text`` is a copy of the prompt (rule 4), or None."""
  norm = _norm(text).lower()
  own = _norm(draft + "\n" + (instruction or "")).lower()
  for marker in PROMPT_MARKERS:
    if marker in norm and marker not in own:
      return f"contains the prompt's {marker!r}"
  n = PROMPT_SPAN_WORDS
  fixed = set().union(*(_shingles(p, n) for p in _template_pieces(prompt, draft, instruction)))
  shared = (_shingles(text, n) & fixed) - _shingles(draft, n) - _shingles(instruction or "", n)
  if not shared:
    return None
  # Report the first shared run of words in the text, as long as it goes.
  words = _WORD.findall(text.lower())
  start = next(i for i in range(len(words)) if tuple(words[i:i + n]) in shared)
  end = start
  while tuple(words[end + 1:end + 1 + n]) in shared:
    end += 1
  return f"repeats the prompt's text {' '.join(words[start:end + n])!r}"


def parse_rewrite(text: str, draft: str, *, prompt: str | None = None,
                  instruction: str | None = None, finished: bool | None = None) -> RewriteParse:
  """Classifies one rewrite output and extracts the rewritten response (rules: module docstring).

  Args:
    text: the rewrite model's generated text (decoded, special tokens skipped).
    draft: the web response the model was asked to rewrite.
    prompt: the rendered prompt (``bft.templates.rewrite_prompt``); with it the copied-prompt
      check also knows the chat template's text (e.g. a system prompt). Default: the
      ``REWRITE_PROMPT`` words.
    instruction: the instruction in the prompt (so a response restating it is not a copy of the
      prompt, and it is cut out of ``prompt``).
    finished: the sampler's flag: True when the generation ended with EOS, False when the token
      budget cut it (recorded as ``cut``); None when unknown.
  Returns:
    A :class:`RewriteParse`.
  Raises:
    TypeError: ``text`` or ``draft`` is not a string.
  """
  if not isinstance(text, str) or not isinstance(draft, str):
    raise TypeError(f"parse_rewrite: text and draft must be str, got {type(text).__name__}, "
                    f"{type(draft).__name__}")
  cut = None if finished is None else not finished
  notes = []
  cleaned, mentions = _MENTION.subn("the tags", text)
  if mentions:
    notes.append(f"{mentions} mention(s) of the tags ignored")
  tags = [(("close" if m.group("close") else "open"), m) for m in _TAG.finditer(cleaned)]
  variant = any(m.group(0) not in ("[RES]", "[/RES]") for _, m in tags)

  def result(status, body=None, detail="", **kw):
    detail = "; ".join([detail] + notes) if detail else "; ".join(notes)
    return RewriteParse(text=body, status=status, detail=detail, tag_variant=variant, cut=cut,
                        **kw)

  if not any(kind == "open" for kind, _ in tags):
    return result(MISSING, detail="no [RES]" + (" (a [/RES] without [RES])" if tags else ""))

  blocks: list[str] = []
  malformed = None  # (status, body) of the first malformed block
  stray = 0
  i = 0
  while i < len(tags):
    kind, m = tags[i]
    if kind == "close":
      stray += 1
      i += 1
      continue
    if i + 1 == len(tags):
      body = _PARTIAL_CLOSE.sub("", cleaned[m.end():]).strip()
      if body != cleaned[m.end():].strip():
        notes.append("ends in a partial [/RES]")
      malformed = (UNTERMINATED, body or None)
      break
    next_kind, next_m = tags[i + 1]
    if next_kind == "open":
      malformed = (NESTED, None)
      break
    blocks.append(cleaned[m.end():next_m.start()])
    i += 2
  if stray:
    notes.append(f"{stray} stray [/RES] ignored")

  if not blocks:
    status, body = malformed
    if status == NESTED:
      return result(NESTED, detail="[RES] opened again before [/RES]")
    detail = "[RES] without [/RES]" + (" (cut by the token budget)" if cut else "")
    if body is not None:
      why = _copied_prompt(body, draft, prompt, instruction)
      if why:
        return result(COPIED_PROMPT, body, detail=f"{detail}; {why}")
    return result(UNTERMINATED, body, detail=detail,
                  identical_to_draft=body is not None and _norm(body) == _norm(draft))

  multiple = len(blocks) > 1
  if malformed is not None:
    notes.append(f"a later {malformed[0]} block ignored")
  body = next((b.strip() for b in blocks if b.strip()), None)
  if body is None:
    return result(EMPTY, detail=f"{len(blocks)} block(s), all blank", multiple=multiple)
  detail = f"{len(blocks)} blocks; the first non-blank taken" if multiple else ""
  why = _copied_prompt(body, draft, prompt, instruction)
  if why:
    return result(COPIED_PROMPT, body, detail="; ".join(filter(None, [detail, why])),
                  multiple=multiple)
  return result(OK, body, detail=detail, multiple=multiple,
                identical_to_draft=_norm(body) == _norm(draft))


@dataclasses.dataclass(frozen=True)
class RewritePolicy:
  """What the rewrite stage accepts, how often it resamples, and what a failed row becomes.

  Attributes:
    max_retries: resamples of a row whose output is not accepted (each with a new sampling
      key, e.g. (seed, id, attempt)); 0 = one attempt only. Not reported in [BF]; our default 2.
    on_failure: after the last attempt failed: "keep_draft" keeps the original web response
      (the pair stays, unrewritten: [BF]'s "filter only" data) or "drop" drops the pair. Both
      are counted (``KEPT_DRAFT`` / ``DROPPED``).
    accept_unterminated: accept an ``unterminated`` parse with non-blank text (the response
      without its closing tag) instead of retrying it.
    accept_cut: with ``accept_unterminated``, also accept one whose generation the sampler
      reported cut by the token budget (its text usually ends mid-sentence); False accepts only
      those that ended with EOS or whose ending is unknown. (Retrying a cut row with the same
      budget tends to be cut again: raise ``max_new_tokens`` instead.)
  Raises:
    ValueError: a negative ``max_retries`` or an unknown ``on_failure``.
  """

  max_retries: int = 2
  on_failure: str = "keep_draft"
  accept_unterminated: bool = False
  accept_cut: bool = True

  def __post_init__(self):
    if not isinstance(self.max_retries, int) or self.max_retries < 0:
      raise ValueError(f"RewritePolicy.max_retries={self.max_retries!r}: expected an int >= 0")
    if self.on_failure not in ON_FAILURE:
      raise ValueError(f"RewritePolicy.on_failure={self.on_failure!r}: expected one of "
                       f"{', '.join(ON_FAILURE)}")

  def accepts(self, parse: RewriteParse) -> bool:
    """Whether ``parse`` gives the row its rewritten response."""
    if parse.status == OK:
      return True
    return (parse.status == UNTERMINATED and self.accept_unterminated and bool(parse.text)
            and (self.accept_cut or parse.cut is not True))


def should_retry(parse: RewriteParse, policy: RewritePolicy, attempt: int) -> bool:
  """Whether to resample a row after its attempt number ``attempt`` gave ``parse``.

  Args:
    parse: the parse of that attempt.
    policy: the policy.
    attempt: 0-based index of that attempt (0 = the first generation).
  Returns:
    True when the policy does not accept ``parse`` and ``attempt < policy.max_retries``.
  Raises:
    ValueError: a negative ``attempt``.
  """
  if attempt < 0:
    raise ValueError(f"attempt={attempt}: expected >= 0")
  return not policy.accepts(parse) and attempt < policy.max_retries


def resolve(attempts: Sequence[RewriteParse], draft: str,
            policy: RewritePolicy) -> tuple[str | None, str]:
  """A row's final response after its attempts.

  Args:
    attempts: the parses of the row's attempts, in order.
    draft: the original (web) response.
    policy: the policy.
  Returns:
    ``(text, outcome)``: the first accepted attempt's text with ``REWRITTEN`` (or
    ``REWRITTEN_UNTERMINATED``); else ``(draft, KEPT_DRAFT)`` or ``(None, DROPPED)`` per
    ``policy.on_failure``.
  Raises:
    ValueError: no attempts.
  """
  if not attempts:
    raise ValueError("resolve: no attempts")
  for parse in attempts:
    if policy.accepts(parse):
      return parse.text, (REWRITTEN if parse.status == OK else REWRITTEN_UNTERMINATED)
  if policy.on_failure == "keep_draft":
    return draft, KEPT_DRAFT
  return None, DROPPED


def summarize(outcomes: Iterable[tuple[Sequence[RewriteParse], str]]) -> dict:
  """Counts for the manifest over rows, each ``(attempts, outcome)`` (``resolve``'s outcome).

  Returns:
    A JSON-serializable dict: ``rows``; ``outcomes`` (count per ``OUTCOMES``); ``attempts``
    (generations in all); ``retried_rows`` (rows with more than one attempt); ``statuses``
    (count per ``STATUSES`` over all attempts); ``first_attempt_statuses`` and
    ``final_statuses`` (per row, its first / last attempt); ``first_attempt_ok_rate`` (share of
    rows whose first attempt parsed ``ok``, cf. [BF]'s 88% valid rating parses; None without
    rows); ``failed_attempts`` (attempts the policy did not accept: all but one per rewritten
    row) and ``failure_rate`` (their share of ``attempts``; None without attempts);
    ``cut_attempts`` (attempts the token budget cut); ``identical_to_draft``,
    ``multiple_blocks``, ``tag_variants`` (rows whose accepted parse had that flag).
  Raises:
    ValueError: an unknown outcome or status, or a row without attempts.
  """
  statuses = dict.fromkeys(STATUSES, 0)
  first = dict.fromkeys(STATUSES, 0)
  final = dict.fromkeys(STATUSES, 0)
  counts = dict.fromkeys(OUTCOMES, 0)
  rows = n_attempts = retried = cut = identical = multiple = variant = 0
  for attempts, outcome in outcomes:
    if outcome not in counts:
      raise ValueError(f"summarize: unknown outcome {outcome!r}")
    if not attempts:
      raise ValueError("summarize: a row without attempts")
    rows += 1
    counts[outcome] += 1
    n_attempts += len(attempts)
    retried += len(attempts) > 1
    for parse in attempts:
      if parse.status not in statuses:
        raise ValueError(f"summarize: unknown status {parse.status!r}")
      statuses[parse.status] += 1
      cut += parse.cut is True
    first[attempts[0].status] += 1
    final[attempts[-1].status] += 1
    if outcome in (REWRITTEN, REWRITTEN_UNTERMINATED):
      # The accepted attempt: the first ok one, else the last (retries stop at acceptance).
      taken = next((p for p in attempts if p.status == OK), attempts[-1])
      identical += taken.identical_to_draft
      multiple += taken.multiple
      variant += taken.tag_variant
  failed = n_attempts - counts[REWRITTEN] - counts[REWRITTEN_UNTERMINATED]
  return {
      "rows": rows,
      "outcomes": counts,
      "attempts": n_attempts,
      "retried_rows": retried,
      "statuses": statuses,
      "first_attempt_statuses": first,
      "final_statuses": final,
      "first_attempt_ok_rate": first[OK] / rows if rows else None,
      "failed_attempts": failed,
      "failure_rate": failed / n_attempts if n_attempts else None,
      "cut_attempts": cut,
      "identical_to_draft": identical,
      "multiple_blocks": multiple,
      "tag_variants": variant,
  }
