"""The ``serve`` subcommand: a model behind an OpenAI-compatible HTTP API.

  humpback-jax serve --model=SPEC [--port=8000 --host=127.0.0.1 --api_key=KEY \\
      --tokenizer=... --dtype=... --batch_size=8 --max_prompt_len=... --max_tokens_cap=1024 \\
      --seed=0 --served_model_name=NAME]

``humpback_jax/cli.py`` calls ``add_parser(subparsers)`` to add it and ``run(args)`` to run it.
"""

from __future__ import annotations

import argparse
import logging
import os

API_KEY_ENV = "HUMPBACK_SERVE_API_KEY"
_LOOPBACK = ("127.0.0.1", "localhost", "::1")


def add_parser(subparsers) -> argparse.ArgumentParser:
  """Adds the ``serve`` subcommand and its flags to ``subparsers`` (``add_subparsers()``).

  Returns:
    The subcommand's parser.
  """
  sp = subparsers.add_parser(
      "serve", help="serve a model behind an OpenAI-compatible HTTP API (/v1/models, "
      "/v1/chat/completions, /v1/completions)")
  sp.add_argument("--model", required=True,
                  help="smollm2, a GGUF file, an HF directory, a llama2.c .bin (with "
                  "--tokenizer), hf://org/name, or a run's RUN_DIR/models/<name>")
  sp.add_argument("--tokenizer", default=None, help="tokenizer spec (default: the model's)")
  sp.add_argument("--dtype", default=None, help="compute dtype (float32, bfloat16)")
  sp.add_argument("--served_model_name", default=None,
                  help="the model id of /v1/models and requests (default: --model)")
  sp.add_argument("--host", default="127.0.0.1",
                  help="address to bind (default loopback only; 0.0.0.0 exposes the server)")
  sp.add_argument("--port", type=int, default=8000, help="TCP port (default 8000)")
  sp.add_argument("--api_key", default=os.environ.get(API_KEY_ENV),
                  help="Bearer token every /v1 route requires (default: $" + API_KEY_ENV +
                  "; none = no authentication)")
  sp.add_argument("--batch_size", type=int, default=8, help="rows per device call")
  sp.add_argument("--batch_window_ms", type=float, default=5.0,
                  help="how long to wait for more requests to batch after the first (ms)")
  sp.add_argument("--bucket", type=int, default=64,
                  help="smallest padded prompt width (tokens)")
  sp.add_argument("--max_prompt_len", type=int, default=None,
                  help="longest prompt accepted (tokens; default: the context length - 1)")
  sp.add_argument("--max_tokens_cap", type=int, default=1024,
                  help="largest max_tokens accepted (tokens; larger requests get 400)")
  sp.add_argument("--max_request_bytes", type=int, default=1 << 20,
                  help="largest request body (bytes; larger get 413)")
  sp.add_argument("--budgets", choices=("pow2", "exact"), default="pow2",
                  help="generation budgets compiled: powers of two up to the cap (default), "
                  "or each request's own max_tokens")
  sp.add_argument("--seed", type=int, default=0,
                  help="seed of requests that bring none (with a request counter)")
  sp.add_argument("--log_level", default="info", help="uvicorn log level")
  return sp


def run(args) -> int:
  """Loads the model (``pipeline.context.load_model``) and serves it with uvicorn until
  interrupted.

  Returns:
    0 after a clean shutdown.
  Raises:
    FileNotFoundError, ValueError: from ``load_model`` (an unknown spec, a llama2.c
      checkpoint without a tokenizer) or from the engine's limits (e.g. a
      ``--max_prompt_len`` beyond the model's context).
  """
  import uvicorn

  from humpback_jax.pipeline.context import load_model
  from humpback_jax.serve.app import create_app
  from humpback_jax.serve.engine import Engine

  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
  log = logging.getLogger("humpback_jax.serve")
  config, params, tokenizer = load_model(args.model, tokenizer=args.tokenizer, dtype=args.dtype)
  engine = Engine(config, params, tokenizer, batch_size=args.batch_size,
                  max_prompt_len=args.max_prompt_len, max_tokens_cap=args.max_tokens_cap,
                  bucket=args.bucket, batch_window_s=args.batch_window_ms / 1000.0,
                  seed=args.seed, budgets=args.budgets)
  name = args.served_model_name or args.model
  if args.host not in _LOOPBACK and not args.api_key:
    log.warning("serving on %s without --api_key: anyone who can reach this port can use "
                "the model", args.host)
  log.info("serving %s (max_seq_len=%d, batch_size=%d, max_prompt_len=%d, max_tokens_cap=%d) "
           "on http://%s:%d/v1%s", name, config.max_seq_len, args.batch_size,
           engine.max_prompt_len, args.max_tokens_cap, args.host, args.port,
           " (API key required)" if args.api_key else "")
  app = create_app(engine, name, api_key=args.api_key,
                   max_request_bytes=args.max_request_bytes)
  try:
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
  finally:
    engine.close()
  return 0
