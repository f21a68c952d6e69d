#!/usr/bin/env bash
# Run on every host of a TPU pod slice: bash tpu/run_pod.sh GIN_FILE RUN_DIR [--gin_param=...]
set -euo pipefail
cd "$(dirname "$0")/.."
gin_file=$1; run_dir=$2; shift 2
exec .venv/bin/python -c 'import jax, sys; jax.distributed.initialize(); from humpback_jax.cli import main; sys.exit(main(sys.argv[1:]))' \
  run --gin_file="$gin_file" --run_dir="$run_dir" --no_progress "$@"
