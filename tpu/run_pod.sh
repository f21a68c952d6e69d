#!/usr/bin/env bash
# Run on every host of a TPU pod slice: bash tpu/run_pod.sh GIN_FILE RUN_DIR [--gin_param=...]
# (tpu/run.sh starts it on all workers at once). Further arguments go to `humpback-jax run`.
set -euo pipefail
usage() { echo "Usage: bash tpu/run_pod.sh GIN_FILE RUN_DIR [--gin_param=BINDING ...] [humpback-jax run flags]"; }
case ${1:-} in -h | --help) usage; exit 0 ;; esac
if (($# < 2)) || [[ $1 == -* || $2 == -* ]]; then
  usage >&2
  exit 2
fi
cd "$(dirname "$0")/.."
gin_file=$1; run_dir=$2; shift 2
exec .venv/bin/python -c 'import jax, sys; jax.distributed.initialize(); from humpback_jax.cli import main; sys.exit(main(sys.argv[1:]))' \
  run --gin_file="$gin_file" --run_dir="$run_dir" --no_progress "$@"
