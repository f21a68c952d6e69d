#!/usr/bin/env bash
# Cloud TPU VM setup: a venv with jax[tpu] and humpback-jax (idempotent).
set -euo pipefail
cd "$(dirname "$0")/.."
test -x .venv/bin/python || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "jax[tpu]" -f https://storage.googleapis.com/jax-releases/libtpu_releases.html
.venv/bin/python -m pip install -q -e .
