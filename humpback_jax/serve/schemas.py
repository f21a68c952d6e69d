"""Request schemas and errors of the OpenAI-compatible API (``serve/app.py``).

* ``ChatCompletionRequest`` / ``CompletionRequest`` (and ``ChatMessage``): pydantic schemas of
  the request bodies (strict types, unknown fields ignored, OpenAI's ranges for
  ``temperature``, ``top_p``, ``top_logprobs`` / ``logprobs``).
* ``parse_request``: a raw body -> a validated schema, or a 400 ``APIError`` naming the field.
* ``APIError`` / ``error_body``: OpenAI-style ``{"error": {"message", "type", "param",
  "code"}}`` answers with an HTTP status.

Re-exported by ``serve/app.py``.
"""

from __future__ import annotations

import json
from typing import Any, Literal

import pydantic
from fastapi.responses import JSONResponse


class APIError(Exception):
  """An error answered as ``{"error": {...}}`` with an HTTP status."""

  def __init__(self, status: int, message: str, *, param: str | None = None,
               code: str | None = None, kind: str = "invalid_request_error"):
    super().__init__(message)
    self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind

  def response(self) -> JSONResponse:
    return JSONResponse(error_body(self.message, self.kind, self.param, self.code),
                        status_code=self.status)


def error_body(message: str, kind: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict:
  return {"error": {"message": message, "type": kind, "param": param, "code": code}}


# ----------------------------------------------------------------------------------- schemas

class _Schema(pydantic.BaseModel):
  model_config = pydantic.ConfigDict(extra="ignore", strict=True)


class _TextPart(_Schema):
  type: Literal["text"]
  text: str


class ChatMessage(_Schema):
  role: Literal["system", "developer", "user", "assistant"]
  content: str | list[_TextPart]
  name: str | None = None


class RequestBase(_Schema):
  """Fields shared by the chat and text completion requests."""

  model: str
  temperature: float | None = pydantic.Field(None, ge=0, le=2)
  top_p: float | None = pydantic.Field(None, gt=0, le=1)
  n: int | None = None
  max_tokens: int | None = None
  seed: int | None = None
  stop: str | list[str] | None = None
  stream: bool | None = False
  stream_options: dict[str, Any] | None = None
  presence_penalty: float | None = None
  frequency_penalty: float | None = None


class ChatCompletionRequest(RequestBase):
  messages: list[ChatMessage] = pydantic.Field(min_length=1)
  max_completion_tokens: int | None = None
  logprobs: bool | None = False
  top_logprobs: int | None = pydantic.Field(None, ge=0, le=20)
  tools: list[Any] | None = None


class CompletionRequest(RequestBase):
  prompt: str | list[str]
  logprobs: int | None = pydantic.Field(None, ge=0, le=20)
  echo: bool | None = False
  suffix: str | None = None
  best_of: int | None = None


def parse_request(body: bytes, schema: type[_Schema]) -> _Schema:
  """Parses and validates a JSON request body.

  Args:
    body: the raw request body.
    schema: ``ChatCompletionRequest`` or ``CompletionRequest``.
  Returns:
    The validated ``schema`` instance.
  Raises:
    APIError: 400 for a body that is not JSON, not a JSON object, or fails the schema (the
      first failing field is named in ``param``).
  """
  try:
    obj = json.loads(body)
  except (ValueError, UnicodeDecodeError) as e:
    raise APIError(400, f"could not parse the JSON body of the request ({e})") from None
  if not isinstance(obj, dict):
    raise APIError(400, "the request body must be a JSON object")
  try:
    return schema.model_validate(obj)
  except pydantic.ValidationError as e:
    errors = e.errors()
    # Union members add their type to the location ("content.str"): keep the field path.
    path = lambda err: ".".join(str(x) for x in err["loc"] if isinstance(x, int) or (
        x.isidentifier() and x not in _TYPE_TAGS)) or None
    param = path(errors[0])
    msgs = list(dict.fromkeys(err["msg"] for err in errors if path(err) == param))
    raise APIError(400, f"invalid value for {param!r}: {'; or '.join(msgs)}", param=param,
                   code="missing" if errors[0]["type"] == "missing" else "invalid_value") \
        from None


_TYPE_TAGS = ("str", "int", "float", "bool", "list", "dict", "_TextPart")
