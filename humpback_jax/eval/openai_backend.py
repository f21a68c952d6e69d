"""An OpenAI-compatible chat endpoint as a judge or a reference model: ``OpenAIChoiceBackend``.

Works with OpenAI's API, with ``humpback-jax serve`` (``serve/app.py``) and with other servers
that implement ``/v1/chat/completions`` with ``logprobs`` / ``top_logprobs``.

``choice_logprobs`` reads a judge's choice off the first generated token: one chat completion
per user message with ``temperature=0, max_tokens=1, logprobs=true, top_logprobs=20``; the
log-probability of choice c is the largest log-probability among the top-20 tokens whose text,
stripped of surrounding whitespace, equals c stripped (so " A" and "A" both count for "A"),
and -inf when no top-20 token matches (its probability is below the 20th's, unknown here).
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Sequence

import numpy as np

TOP_LOGPROBS = 20  # OpenAI's maximum


class OpenAIBackendError(RuntimeError):
  """The endpoint failed or answered something unusable; the message names the URL and the
  HTTP status (when there is one)."""


class OpenAIChoiceBackend:
  """A chat endpoint, called with the ``openai`` client from a pool of threads.

  Attributes:
    base_url: the endpoint's ``.../v1`` URL; model: the model id sent with every request.
  """

  def __init__(self, base_url: str, model: str, api_key: str | None = None, *,
               timeout_s: float = 60, max_retries: int = 2, concurrency: int = 4):
    """Constructor.

    Args:
      base_url: e.g. ``http://127.0.0.1:8000/v1`` or ``https://api.openai.com/v1``.
      model: the model id.
      api_key: the Bearer token; None sends a placeholder (a server without a key ignores it).
      timeout_s: per-request timeout (seconds).
      max_retries: the client's retries of failed requests (connection errors, 408/429/5xx).
      concurrency: requests in flight at once (threads).
    Raises:
      ValueError: ``concurrency`` < 1.
    """
    import openai
    if concurrency < 1:
      raise ValueError(f"concurrency must be >= 1, got {concurrency}")
    self.base_url, self.model, self.concurrency = base_url.rstrip("/"), model, concurrency
    self._openai = openai
    self._client = openai.OpenAI(base_url=self.base_url, api_key=api_key or "none",
                                 timeout=timeout_s, max_retries=max_retries)

  def _chat(self, messages: list[dict], **kw):
    url = f"{self.base_url}/chat/completions"
    try:
      return self._client.chat.completions.create(model=self.model, messages=messages, **kw)
    except self._openai.APIStatusError as e:
      raise OpenAIBackendError(f"{url} answered HTTP {e.status_code}: {e.message}") from e
    except self._openai.APIConnectionError as e:  # includes timeouts
      raise OpenAIBackendError(f"{url}: no answer ({type(e).__name__}: {e})") from e

  def _map(self, fn, items: Sequence) -> list:
    if len(items) <= 1 or self.concurrency == 1:
      return [fn(x) for x in items]
    with concurrent.futures.ThreadPoolExecutor(min(self.concurrency, len(items))) as pool:
      return list(pool.map(fn, items))

  @staticmethod
  def _messages(user: str, system: str | None) -> list[dict]:
    return ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": user}]

  def choice_logprobs(self, user_messages: Sequence[str], choices: Sequence[str],
                      system: str | None = None) -> tuple[np.ndarray, list[str]]:
    """Log-probabilities of each choice as the first generated token, per message.

    Args:
      user_messages: N user turns (one request each).
      choices: K choice strings (e.g. ``["A", "B"]``), matched against the top-20 first
        tokens with surrounding whitespace stripped.
      system: an optional system message sent before each user turn.
    Returns:
      (float64 [N, K] log-probabilities (-inf: not among the top 20), the N first tokens
      generated (their text as the endpoint reports it)).
    Raises:
      ValueError: no choices, or a choice that is empty after stripping.
      OpenAIBackendError: a failed request, or an answer without log-probabilities.
    """
    wanted = [c.strip() for c in choices]
    if not wanted or any(not c for c in wanted):
      raise ValueError(f"choices must be non-empty strings, got {list(choices)}")

    def one(user: str):
      out = self._chat(self._messages(user, system), temperature=0, max_tokens=1,
                       logprobs=True, top_logprobs=TOP_LOGPROBS)
      choice = out.choices[0] if out.choices else None
      content = getattr(getattr(choice, "logprobs", None), "content", None)
      if not content:
        raise OpenAIBackendError(f"{self.base_url}/chat/completions answered without "
                                 "log-probabilities (does the endpoint support logprobs?)")
      first = content[0]
      row = np.full((len(wanted),), -np.inf, np.float64)
      for alt in list(first.top_logprobs or []) + [first]:
        text = alt.token.strip()
        for k, c in enumerate(wanted):
          if text == c:
            row[k] = max(row[k], float(alt.logprob))
      return row, first.token

    rows = self._map(one, list(user_messages))
    if not rows:
      return np.zeros((0, len(wanted)), np.float64), []
    return np.stack([r for r, _ in rows]), [t for _, t in rows]

  def generate(self, user_messages: Sequence[str], *, max_tokens: int,
               temperature: float = 0.0, top_p: float = 1.0, seed: int | None = None,
               system: str | None = None) -> list[str]:
    """One answer per user message (e.g. a reference model answering the eval prompts).

    Args:
      user_messages: N user turns.
      max_tokens: budget per answer (tokens).
      temperature: 0 = greedy; top_p: nucleus; seed: sent as the request's ``seed``.
      system: an optional system message.
    Returns:
      N answers, in order ("" where the endpoint returned no content).
    Raises:
      OpenAIBackendError: a failed request.
    """
    def one(user: str) -> str:
      kw = {"seed": seed} if seed is not None else {}
      out = self._chat(self._messages(user, system), max_tokens=max_tokens,
                       temperature=temperature, top_p=top_p, **kw)
      if not out.choices:
        raise OpenAIBackendError(f"{self.base_url}/chat/completions answered no choices")
      return out.choices[0].message.content or ""

    return self._map(one, list(user_messages))
