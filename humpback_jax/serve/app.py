"""OpenAI-compatible HTTP API over the batching ``Engine``: ``create_app(engine, ...)``.

Routes (OpenAI's schema): ``GET /v1/models``, ``GET /v1/models/{id}``,
``POST /v1/chat/completions`` (the prompt is ``tokenizer.apply_chat_template(messages)``; a
tokenizer without a chat template takes ``[system,] user`` in ``PLAIN_TEMPLATE``),
``POST /v1/completions`` (the prompt string as is), ``GET /v1/stats`` (the engine's batching
counters) and ``GET /health`` (no key needed).

Decoding: ``temperature`` 0 is greedy (default 1), ``top_p`` (default 1), ``max_tokens`` (chat
also ``max_completion_tokens``; default: chat min(cap, context - prompt), completions 16 as
OpenAI's), ``seed`` (see ``engine``), ``stop`` (up to 4 strings: the text is cut before the
first occurrence of any, finish_reason "stop"; the tokens up to the one that completed it are
counted), ``logprobs`` (chat: ``logprobs: true`` + ``top_logprobs`` 0..20; completions:
``logprobs`` 0..20). Log-probabilities cover every generated token, the terminating EOS
included (its token text is the tokenizer's spelling, e.g. ``<|im_end|>``; it adds nothing
to the message), so ``max_tokens=1`` always yields the top alternatives of the first token.
Refused with 400: ``n`` > 1 (send n requests), ``best_of`` > 1, ``echo``, ``suffix``,
non-zero penalties, ``tools``. Each distinct (temperature, top_p) compiles its own decode
program once (the strategy is a static argument of ``decode.generate``).

Streaming (``stream: true``): NOT incremental. The engine generates the whole answer, then it
is sent as server-sent events, one ``chat.completion.chunk`` / ``text_completion`` chunk per
generated token (``data: {...}\\n\\n``, then ``data: [DONE]``), so the time to the first token
equals the time of the whole generation. The deltas concatenate to exactly the non-streamed
text: a token whose bytes do not finish a character yet carries an empty delta.

Safety: every ``/v1`` route answers 401 without ``Authorization: Bearer <api_key>`` when an
``api_key`` is set (``hmac.compare_digest``), 413 for a body over ``max_request_bytes``, and
OpenAI-style 4xx ``{"error": {"message", "type", "param", "code"}}`` for malformed JSON, wrong
types, an unknown model (404), an empty ``messages``, or limits (``Engine.check``); unexpected
errors answer 500 with no traceback (it goes to the server log). The request schemas, their
parsing and the error bodies are in ``serve/schemas.py`` (re-exported here).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
import uuid

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from humpback_jax.data import templates
from humpback_jax.sample.sampling import Greedy, Sampling
from humpback_jax.serve.engine import Engine, GenerationRequest, GenerationResult
from humpback_jax.serve.schemas import (  # also re-exported: the public API of this module
    APIError, ChatCompletionRequest, ChatMessage, CompletionRequest, RequestBase, error_body,
    parse_request)

_log = logging.getLogger(__name__)
LOGPROB_FLOOR = -9999.0  # OpenAI's floor for log-probabilities too small to print


# ------------------------------------------------------------------------ request -> engine

def _chat_prompt(tokenizer, messages: list[ChatMessage]) -> str:
  msgs = [{"role": "system" if m.role == "developer" else m.role,
           "content": m.content if isinstance(m.content, str) else
           "".join(p.text for p in m.content)} for m in messages]
  if getattr(tokenizer, "chat_template", None):
    try:
      return tokenizer.apply_chat_template(msgs, add_generation_prompt=True)
    except Exception as e:  # pylint: disable=broad-except  (ValueError, jinja2 errors)
      raise APIError(400, f"the model's chat template refused the messages: {e}",
                     param="messages") from None
  roles = [m["role"] for m in msgs]
  if roles not in (["user"], ["system", "user"]):
    raise APIError(400, "this model has no chat template: only [system,] user messages are "
                   f"supported, got roles {roles}", param="messages")
  return templates.PLAIN_TEMPLATE.format(user="\n\n".join(m["content"] for m in msgs))


def _generation(engine: Engine, req: RequestBase, prompt_ids: list[int], max_tokens: int | None,
                default_max: int, top_logprobs: int | None, prompt_param: str) -> GenerationRequest:
  if req.n is not None and req.n != 1:
    raise APIError(400, f"n={req.n}: this server returns one choice per request (n > 1 is "
                   "not supported; send n requests with different seeds)", param="n")
  for name in ("presence_penalty", "frequency_penalty"):
    if getattr(req, name):
      raise APIError(400, f"{name} is not supported (only 0)", param=name)
  stops = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
  if len(stops) > 4 or any(not s for s in stops):
    raise APIError(400, "stop: at most 4 non-empty strings", param="stop")
  if max_tokens is None:
    max_tokens = max(1, min(default_max, engine.config.max_seq_len - len(prompt_ids)))
  if max_tokens > engine.max_tokens_cap:
    raise APIError(400, f"max_tokens={max_tokens} is more than this server's max_tokens_cap of "
                   f"{engine.max_tokens_cap} tokens", param="max_tokens")
  temperature = 1.0 if req.temperature is None else req.temperature
  strategy = Greedy() if temperature == 0 else Sampling(
      temperature=temperature, top_p=1.0 if req.top_p is None else req.top_p)
  gen = GenerationRequest(tuple(prompt_ids), max_tokens, strategy, req.seed, top_logprobs)
  try:
    engine.check(gen)
  except ValueError as e:
    param = "max_tokens" if "max_tokens" in str(e) else prompt_param
    raise APIError(400, str(e), param=param) from None
  return gen


# ---------------------------------------------------------------------------- engine -> text

def _stop_cut(tokenizer, result: GenerationResult, stops: list[str]):
  """(text, kept tokens, finish_reason) after the stop strings."""
  finish = "stop" if result.finished else "length"
  hits = [(result.text.find(s), s) for s in stops if s in result.text]
  if not hits:
    return result.text, len(result.tokens), finish
  pos, hit = min(hits)
  content = result.tokens[:len(result.tokens) - result.finished]
  lo, hi = 1, len(content)  # the first prefix that contains the stop string (monotone)
  while lo < hi:
    mid = (lo + hi) // 2
    if hit in tokenizer.decode(content[:mid], skip_special_tokens=True):
      hi = mid
    else:
      lo = mid + 1
  return result.text[:pos], lo, "stop"


def stream_deltas(tokenizer, tokens: list[int], text: str) -> list[str]:
  """Per-token text deltas that concatenate to ``text`` (the decoded, possibly stop-cut text
  of ``tokens``): token i carries what the decode of ``tokens[:i+1]`` adds to the text
  (empty while it is an unfinished character or beyond ``text``); the last carries the rest.

  Returns:
    len(tokens) strings (none when ``tokens`` is empty).
  """
  out, emitted = [], 0
  for i in range(1, len(tokens) + 1):
    p = tokenizer.decode(tokens[:i], skip_special_tokens=True)
    end = len(p) if text.startswith(p) else (len(text) if p.startswith(text) else emitted)
    out.append(text[emitted:max(end, emitted)])
    emitted = max(end, emitted)
  if out:
    out[-1] += text[emitted:]
  return out


def _token_text(tokenizer, token_id: int) -> str:
  return tokenizer.decode([int(token_id)], skip_special_tokens=False)


def _lp(x) -> float:
  return max(float(x), LOGPROB_FLOOR)


def _chat_logprobs(tokenizer, result: GenerationResult, i: int, k: int) -> dict:
  def entry(tid, lp):
    s = _token_text(tokenizer, tid)
    return {"token": s, "logprob": _lp(lp), "bytes": list(s.encode("utf-8"))}
  e = entry(result.tokens[i], result.logprobs[i])
  e["top_logprobs"] = [entry(t, l) for t, l in zip(result.top_ids[i, :k],
                                                    result.top_logprobs[i, :k])]
  return e


def _completion_logprobs(tokenizer, result: GenerationResult, idx: range, k: int,
                         offset: int) -> dict:
  toks = [_token_text(tokenizer, result.tokens[i]) for i in idx]
  tops = []
  for i in idx:
    top: dict[str, float] = {}
    for t, l in zip(result.top_ids[i, :k], result.top_logprobs[i, :k]):
      s = _token_text(tokenizer, t)
      top[s] = max(top.get(s, LOGPROB_FLOOR), _lp(l))
    tops.append(top)
  offsets = [offset + sum(len(t) for t in toks[:j]) for j in range(len(toks))]
  return {"tokens": toks, "token_logprobs": [_lp(result.logprobs[i]) for i in idx],
          "top_logprobs": tops, "text_offset": offsets}


# ------------------------------------------------------------------------------------- app

class _Guard:
  """ASGI middleware of the ``/v1`` routes: the API key (401) and the body size cap (413),
  checked before anything reads or parses the request."""

  def __init__(self, app, api_key: str | None, max_request_bytes: int):
    self.app, self.max_bytes = app, max_request_bytes
    self.key = None if api_key is None else f"Bearer {api_key}".encode()

  async def __call__(self, scope, receive, send):
    if scope["type"] != "http" or not scope["path"].startswith("/v1"):
      return await self.app(scope, receive, send)
    headers = dict(scope["headers"])
    if self.key is not None and not hmac.compare_digest(headers.get(b"authorization", b""),
                                                        self.key):
      return await _send(APIError(401, "missing or incorrect API key (send Authorization: "
                                  "Bearer <key>)", code="invalid_api_key"), scope, receive, send)
    too_big = APIError(413, f"the request body is larger than this server's limit of "
                       f"{self.max_bytes} bytes", code="request_too_large")
    try:
      declared = int(headers.get(b"content-length", b"0"))
    except ValueError:
      return await _send(APIError(400, "invalid Content-Length header"), scope, receive, send)
    if declared > self.max_bytes:
      return await _send(too_big, scope, receive, send)
    body, more = b"", True
    while more:
      message = await receive()
      if message["type"] != "http.request":
        return  # the client went away
      body += message.get("body", b"")
      more = message.get("more_body", False)
      if len(body) > self.max_bytes:
        return await _send(too_big, scope, receive, send)
    replayed = False

    async def replay():
      nonlocal replayed
      if not replayed:
        replayed = True
        return {"type": "http.request", "body": body, "more_body": False}
      return await receive()
    return await self.app(scope, replay, send)


async def _send(error: APIError, scope, receive, send) -> None:
  await error.response()(scope, receive, send)


def create_app(engine: Engine, model_name: str, *, api_key: str | None = None,
               max_request_bytes: int = 1 << 20) -> FastAPI:
  """The FastAPI application serving ``engine`` as ``model_name``.

  Args:
    engine: a started ``Engine`` (the caller owns it and closes it).
    model_name: the id ``/v1/models`` reports and requests must name.
    api_key: the Bearer token every ``/v1`` route requires; None = no authentication.
    max_request_bytes: the largest request body accepted (bytes); larger answer 413.
  Returns:
    The ASGI app (``uvicorn.run(app, ...)``).
  """
  app = FastAPI(title="humpback-jax serve", docs_url=None, redoc_url=None, openapi_url=None)
  app.add_middleware(_Guard, api_key=api_key, max_request_bytes=max_request_bytes)
  created = int(time.time())
  tok = engine.tokenizer
  model_card = {"id": model_name, "object": "model", "created": created,
                "owned_by": "humpback-jax"}

  @app.exception_handler(APIError)
  async def _api_error(request, e: APIError):
    return e.response()

  @app.exception_handler(StarletteHTTPException)
  async def _http_error(request, e):
    return JSONResponse(error_body(str(e.detail), code=str(e.status_code)),
                        status_code=e.status_code)

  @app.exception_handler(Exception)
  async def _internal(request, e):
    _log.exception("serve: unexpected error on %s", request.url.path)
    return JSONResponse(error_body(f"internal server error ({type(e).__name__}; see the "
                                   "server log)", "server_error"), status_code=500)

  @app.get("/health")
  async def health():
    return {"status": "ok"}

  @app.get("/v1/models")
  async def models():
    return {"object": "list", "data": [model_card]}

  @app.get("/v1/models/{model_id:path}")
  async def model(model_id: str):
    check_model(model_id)
    return model_card

  @app.get("/v1/stats")
  async def stats():
    return engine.snapshot()

  def check_model(name: str) -> None:
    if name != model_name:
      raise APIError(404, f"the model {name!r} does not exist; this server serves "
                     f"{model_name!r}", param="model", code="model_not_found")

  async def run(gen: GenerationRequest, stops: list[str], stream: bool):
    try:
      future = engine.submit(gen)
    except RuntimeError as e:  # closed: the server is shutting down
      raise APIError(503, str(e), kind="server_error") from None
    try:
      result = await asyncio.wrap_future(future)
    except Exception as e:  # pylint: disable=broad-except
      _log.exception("serve: generation failed")
      raise APIError(500, f"generation failed ({type(e).__name__}; see the server log)",
                     kind="server_error") from None

    def shape():
      text, keep, finish = _stop_cut(tok, result, stops)
      deltas = stream_deltas(tok, result.tokens[:keep], text) if stream else None
      return text, keep, finish, deltas
    return result, *(await asyncio.to_thread(shape))

  def usage(result: GenerationResult, keep: int) -> dict:
    return {"prompt_tokens": result.prompt_tokens, "completion_tokens": keep,
            "total_tokens": result.prompt_tokens + keep}

  def sse(chunks, final_usage: dict | None):
    async def events():
      for c in chunks:
        yield f"data: {json.dumps(c)}\n\n"
      if final_usage is not None:
        yield f"data: {json.dumps(final_usage)}\n\n"
      yield "data: [DONE]\n\n"
    return StreamingResponse(events(), media_type="text/event-stream")

  @app.post("/v1/chat/completions")
  async def chat(request: Request):
    req = parse_request(await request.body(), ChatCompletionRequest)
    check_model(req.model)
    if req.tools:
      raise APIError(400, "tools are not supported", param="tools")
    if req.top_logprobs and not req.logprobs:
      raise APIError(400, "top_logprobs needs logprobs: true", param="top_logprobs")
    k = (req.top_logprobs or 0) if req.logprobs else None
    prompt_ids = await asyncio.to_thread(lambda: tok.encode(_chat_prompt(tok, req.messages)))
    gen = _generation(engine, req, prompt_ids, req.max_completion_tokens or req.max_tokens,
                      engine.max_tokens_cap, k, "messages")
    stops = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
    result, text, keep, finish, deltas = await run(gen, stops, bool(req.stream))
    head = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()),
            "model": model_name}
    lps = [_chat_logprobs(tok, result, i, k) for i in range(keep)] if k is not None else None
    if not req.stream:
      return {**head, "object": "chat.completion", "usage": usage(result, keep),
              "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                           "logprobs": None if lps is None else {"content": lps},
                           "finish_reason": finish}]}
    with_usage = bool((req.stream_options or {}).get("include_usage"))
    extra = {"usage": None} if with_usage else {}
    chunk = lambda delta, lp, fin: {**head, "object": "chat.completion.chunk", **extra,
                                    "choices": [{"index": 0, "delta": delta, "logprobs": lp,
                                                 "finish_reason": fin}]}
    chunks = [chunk({"role": "assistant", "content": ""}, None, None)]
    chunks += [chunk({"content": d}, None if lps is None else {"content": [lps[i]]}, None)
               for i, d in enumerate(deltas)]
    chunks.append(chunk({}, None, finish))
    tail = {**head, "object": "chat.completion.chunk", "choices": [],
            "usage": usage(result, keep)} if with_usage else None
    return sse(chunks, tail)

  @app.post("/v1/completions")
  async def completions(request: Request):
    req = parse_request(await request.body(), CompletionRequest)
    check_model(req.model)
    if isinstance(req.prompt, list):
      if len(req.prompt) != 1:
        raise APIError(400, "prompt: one string per request (a list of several prompts is "
                       "not supported)", param="prompt")
      req.prompt = req.prompt[0]
    for name, bad in (("echo", req.echo), ("suffix", req.suffix is not None),
                      ("best_of", req.best_of not in (None, 1))):
      if bad:
        raise APIError(400, f"{name} is not supported", param=name)
    prompt_ids = await asyncio.to_thread(tok.encode, req.prompt)
    gen = _generation(engine, req, prompt_ids, req.max_tokens, 16, req.logprobs, "prompt")
    stops = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
    result, text, keep, finish, deltas = await run(gen, stops, bool(req.stream))
    head = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion",
            "created": int(time.time()), "model": model_name}
    k = req.logprobs
    lp = None if k is None else _completion_logprobs(tok, result, range(keep), k,
                                                     len(req.prompt))
    if not req.stream:
      return {**head, "usage": usage(result, keep),
              "choices": [{"index": 0, "text": text, "logprobs": lp, "finish_reason": finish}]}
    chunk = lambda text, lp, fin: {**head, "choices": [{"index": 0, "text": text,
                                                        "logprobs": lp, "finish_reason": fin}]}
    chunks = [chunk(d, None if lp is None else {name: v[i:i + 1] for name, v in lp.items()},
                    None) for i, d in enumerate(deltas)]
    chunks.append(chunk("", None, finish))
    with_usage = bool((req.stream_options or {}).get("include_usage"))
    return sse(chunks, {**head, "choices": [], "usage": usage(result, keep)}
               if with_usage else None)

  return app
