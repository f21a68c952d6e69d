#!/usr/bin/env bash
# Follow the pipeline log of one worker of the TPU VM (tail -F ~/humpback_logs/run.log).
set -euo pipefail
# shellcheck source=tpu/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<EOF
Usage: bash tpu/logs.sh [--dry_run] [--worker=N]

Follows (tail -F) ~/humpback_logs/run.log, written by tpu/run.sh, on worker N (default 0, the
host that writes the manifest and report). Stop with Ctrl-C; the run goes on.

  --worker=N   worker index (0 .. hosts-1)
  --dry_run    print the gcloud command (shell-quoted) and run nothing
  -h, --help   this help

$ENV_HELP
EOF
}

worker=0
while (($#)); do
  common_flag "$1" || case $1 in
    --worker=*) worker=${1#--worker=} ;;
    --worker)
      (($# >= 2)) || usage_error "--worker needs a value"
      worker=$2
      shift
      ;;
    *) usage_error "unknown argument: $1" ;;
  esac
  shift
done
[[ $worker =~ ^[0-9]+$ ]] || usage_error "--worker must be a worker index (0, 1, ...), got '$worker'"
tpu_init
hosts=$(tpu_hosts)
((hosts == 0 || worker < hosts)) || usage_error "--worker=$worker: $TPU_ACCELERATOR has $hosts worker(s)"

run_cmd gcloud compute tpus tpu-vm ssh "$TPU_NAME" "${TPU_FLAGS[@]}" "--worker=$worker" \
  "--command=tail -n 200 -F $REMOTE_LOG_DIR/run.log"
