#!/usr/bin/env bash
# Cloud TPU VM setup: a venv with jax[tpu] and humpback-jax (idempotent). tpu/install.sh runs it
# on every worker. jax needs Python >= 3.11; the TPU VM images (Ubuntu 22.04) ship 3.10, so when
# no python3.11+ with venv support is installed, uv (from PyPI) provides one.
set -euo pipefail
case ${1:-} in
  "") ;;
  -h | --help) echo "Usage: bash tpu/setup.sh   (on a TPU VM worker; tpu/install.sh runs it on all)"; exit 0 ;;
  *) echo "setup.sh: error: unknown argument: $1 (it takes none)" >&2; exit 2 ;;
esac
cd "$(dirname "$0")/.."
ok_python='import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 11))'
if test -x .venv/bin/python && ! .venv/bin/python -c "$ok_python" 2>/dev/null; then
  echo "setup.sh: .venv has Python < 3.11; recreating it" >&2
  rm -rf .venv
fi
if ! test -x .venv/bin/python; then
  py=""
  for candidate in python3.13 python3.12 python3.11 python3; do
    if command -v "$candidate" >/dev/null && "$candidate" -c "$ok_python" 2>/dev/null; then
      py=$candidate
      break
    fi
  done
  if [[ -n $py ]]; then
    "$py" -m venv .venv
  else
    python3 -m pip install -q --user uv
    python3 -m uv venv -q --seed --python 3.11 .venv
  fi
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "jax[tpu]" -f https://storage.googleapis.com/jax-releases/libtpu_releases.html
.venv/bin/python -m pip install -q -e ".[gcs]"
