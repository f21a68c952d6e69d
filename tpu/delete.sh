#!/usr/bin/env bash
# Delete the TPU VM (or, with TPU_QUEUED=1, the queued resource and its VM). No prompt.
set -euo pipefail
# shellcheck source=tpu/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<EOF
Usage: bash tpu/delete.sh [--dry_run]

Deletes TPU VM \$TPU_NAME (gcloud compute tpus tpu-vm delete --quiet) or, with TPU_QUEUED=1, the
queued resource \$TPU_NAME with its VM (gcloud compute tpus queued-resources delete --force
--quiet). Everything on the workers' disks is lost: fetch the run first (tpu/fetch.sh) unless
RUN_DIR is on GCS.

  --dry_run    print the gcloud command (shell-quoted) and run nothing
  -h, --help   this help

$ENV_HELP
EOF
}

while (($#)); do
  common_flag "$1" || usage_error "unknown argument: $1"
  shift
done
tpu_init

if [[ $TPU_QUEUED == 1 ]]; then
  run_cmd gcloud compute tpus queued-resources delete "$TPU_NAME" "${TPU_FLAGS[@]}" --force --quiet
else
  run_cmd gcloud compute tpus tpu-vm delete "$TPU_NAME" "${TPU_FLAGS[@]}" --quiet
fi
