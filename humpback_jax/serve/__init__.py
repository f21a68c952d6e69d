"""``humpback-jax serve``: our sampler behind an OpenAI-compatible HTTP API.

Modules: ``engine`` (the request batching engine over ``sample/decode.py``), ``app`` (the
FastAPI app: OpenAI's ``/v1/models``, ``/v1/chat/completions``, ``/v1/completions``), ``cli``
(the ``serve`` subcommand: loads a model, runs uvicorn). The client side, an OpenAI-compatible
endpoint as a pairwise judge, is ``eval/openai_backend.py``.
"""
