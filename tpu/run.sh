#!/usr/bin/env bash
# Start the pipeline on every worker of the TPU VM at once (in the background) and return.
set -euo pipefail
# shellcheck source=tpu/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<EOF
Usage: bash tpu/run.sh [--dry_run] [GIN_FILE] [--gin_param=BINDING ...] [-- CLI_FLAG ...]

Starts 'bash tpu/run_pod.sh GIN_FILE \$RUN_DIR ...' under nohup on every worker at once
(gcloud compute tpus tpu-vm ssh --worker=all) and returns immediately. Each worker logs to its
own ~/humpback_logs/run.log (pid in ~/humpback_logs/run.pid); follow it with tpu/logs.sh.
A worker whose previous run is still going refuses to start another.

  GIN_FILE             gin file, relative to the repository (default \$GIN_FILE, else
                       configs/humpback_llama2_7b.gin)
  --gin_param=BINDING  a gin binding, passed on (repeatable)
  -- CLI_FLAG ...      further flags for 'humpback-jax run' (e.g. -- --on_change=error)
  --dry_run            print the gcloud command (shell-quoted) and run nothing
  -h, --help           this help

The run directory is \$RUN_DIR: gs://\$BUCKET/runs/\$RUN_NAME if BUCKET is set, else
runs/\$RUN_NAME under \$REPO_DIR on each worker (one host only: a multi-host slice needs a
directory every host sees).

$ENV_HELP
EOF
}

gin_file="" extra=()
while (($#)); do
  common_flag "$1" || case $1 in
    --gin_param=*) extra+=("$1") ;;
    --gin_param)
      (($# >= 2)) || usage_error "--gin_param needs a value"
      extra+=("--gin_param=$2")
      shift
      ;;
    --)
      shift
      extra+=("$@")
      break
      ;;
    -*) usage_error "unknown argument: $1" ;;
    *)
      [[ -z $gin_file ]] || usage_error "one GIN_FILE only (got '$gin_file' and '$1')"
      gin_file=$1
      ;;
  esac
  shift
done
tpu_init
gin_file=${gin_file:-$GIN_FILE}
[[ -f $REPO_ROOT/$gin_file ]] || log "warning: $gin_file is not a file of this checkout"
if [[ $RUN_DIR != gs://* ]] && (($(tpu_hosts) > 1)); then
  log "warning: RUN_DIR=$RUN_DIR is local to each of the $(tpu_hosts) workers; set BUCKET (or RUN_DIR to shared storage) for a multi-host slice"
fi

pod_cmd=$(quote_cmd bash tpu/run_pod.sh "$gin_file" "$RUN_DIR" "${extra[@]}")
logs=$REMOTE_LOG_DIR
remote="cd $(q "$REPO_DIR") && mkdir -p $logs"
remote+=" && if kill -0 \"\$(cat $logs/run.pid 2>/dev/null)\" 2>/dev/null; then echo \"a run is going already: ~/humpback_logs/run.pid\" >&2; exit 1; fi"
remote+=" && { nohup $pod_cmd > $logs/run.log 2>&1 < /dev/null & echo \$! > $logs/run.pid; }"
run_cmd gcloud compute tpus tpu-vm ssh "$TPU_NAME" "${TPU_FLAGS[@]}" --worker=all "--command=$remote"
[[ $DRY_RUN == 1 ]] || log "started on every worker of $TPU_NAME (run dir $RUN_DIR); follow with: bash tpu/logs.sh"
