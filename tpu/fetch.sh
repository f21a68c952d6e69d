#!/usr/bin/env bash
# Copy the run directory back here: from worker 0 (gcloud ... scp --recurse) or, when RUN_DIR is on
# GCS, with gsutil -m rsync -r.
set -euo pipefail
# shellcheck source=tpu/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<EOF
Usage: bash tpu/fetch.sh [--dry_run] [--dest=DIR]

Copies \$RUN_DIR to DIR/<its last component> here (default DIR: runs, so runs/\$RUN_NAME):
  RUN_DIR gs://...  gsutil -m rsync -r RUN_DIR DIR/NAME   (safe to repeat; copies what changed)
  otherwise         gcloud compute tpus tpu-vm scp --recurse from worker 0, which writes the
                    manifest and report (relative RUN_DIR: under \$REPO_DIR there)

  --dest=DIR   local folder the run directory goes into (default runs)
  --dry_run    print the commands (one per line, shell-quoted) and run nothing
  -h, --help   this help

$ENV_HELP
EOF
}

dest=runs
while (($#)); do
  common_flag "$1" || case $1 in
    --dest=*) dest=${1#--dest=} ;;
    --dest)
      (($# >= 2)) || usage_error "--dest needs a value"
      dest=$2
      shift
      ;;
    *) usage_error "unknown argument: $1" ;;
  esac
  shift
done
[[ -n $dest ]] || usage_error "--dest is empty"
tpu_init
dest=${dest%/}
name=${RUN_DIR##*/}

run_cmd mkdir -p "$dest/$name"
if [[ $RUN_DIR == gs://* ]]; then
  run_cmd gsutil -m rsync -r "$RUN_DIR" "$dest/$name"
else
  # scp --recurse SRC DIR puts SRC's folder inside DIR (it exists), as DIR/NAME.
  run_cmd gcloud compute tpus tpu-vm scp --recurse "$TPU_NAME:$(remote_run_dir)" "$dest" "${TPU_FLAGS[@]}" --worker=0
fi
[[ $DRY_RUN == 1 ]] || log "fetched $RUN_DIR to $dest/$name"
