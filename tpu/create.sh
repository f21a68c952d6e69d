#!/usr/bin/env bash
# Create the Cloud TPU VM (or, with TPU_QUEUED=1, a queued resource) and wait until it is usable.
set -euo pipefail
# shellcheck source=tpu/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<EOF
Usage: bash tpu/create.sh [--dry_run] [--no_wait | --wait_only]

Creates TPU VM \$TPU_NAME (gcloud compute tpus tpu-vm create) or, with TPU_QUEUED=1, a queued
resource of that name with node \$TPU_NAME (gcloud compute tpus queued-resources create), then
polls 'describe' every \$TPU_POLL_SECONDS s until the VM is READY (queued resource: ACTIVE).

  --dry_run    print the gcloud commands (one per line, shell-quoted) and run nothing
  --no_wait    create and return without waiting
  --wait_only  do not create; only wait (e.g. after interrupting a wait for a queued resource)
  -h, --help   this help

$ENV_HELP
EOF
}

create=1 wait=1
while (($#)); do
  common_flag "$1" || case $1 in
    --no_wait) wait=0 ;;
    --wait_only) create=0 ;;
    *) usage_error "unknown argument: $1" ;;
  esac
  shift
done
((create || wait)) || usage_error "--no_wait and --wait_only together do nothing"
tpu_init

spot=()
[[ $TPU_SPOT == 0 ]] || spot=(--spot)
if [[ $TPU_QUEUED == 1 ]]; then
  create_cmd=(gcloud compute tpus queued-resources create "$TPU_NAME" "--node-id=$TPU_NAME" "${TPU_FLAGS[@]}"
    "--accelerator-type=$TPU_ACCELERATOR" "--runtime-version=$TPU_RUNTIME_VERSION" "${spot[@]}")
  describe_base=(gcloud compute tpus queued-resources describe "$TPU_NAME" "${TPU_FLAGS[@]}")
  describe_cmd=("${describe_base[@]}" '--format=value(state.state)')
  ready=ACTIVE
  failed=' FAILED SUSPENDING SUSPENDED '
else
  create_cmd=(gcloud compute tpus tpu-vm create "$TPU_NAME" "${TPU_FLAGS[@]}"
    "--accelerator-type=$TPU_ACCELERATOR" "--version=$TPU_RUNTIME_VERSION" "${spot[@]}")
  describe_base=(gcloud compute tpus tpu-vm describe "$TPU_NAME" "${TPU_FLAGS[@]}")
  describe_cmd=("${describe_base[@]}" '--format=value(state)')
  ready=READY
  failed=' PREEMPTED TERMINATED STOPPED STOPPING DELETING '
fi

log "$TPU_NAME in $TPU_ZONE: $(tpu_describe_shape), runtime $TPU_RUNTIME_VERSION$([[ $TPU_QUEUED == 1 ]] && echo ', queued resource')$([[ $TPU_SPOT == 1 ]] && echo ', spot')"
((create)) && run_cmd "${create_cmd[@]}"
((wait)) || exit 0

if [[ $DRY_RUN == 1 ]]; then
  # The real run repeats this until the state is $ready.
  run_cmd "${describe_cmd[@]}"
  exit 0
fi

errors=0
while true; do
  if state=$("${describe_cmd[@]}" 2>/dev/null); then
    errors=0
  else
    state=UNKNOWN
    errors=$((errors + 1))
    ((errors < 10)) || die "'$(quote_cmd "${describe_cmd[@]}")' failed 10 times in a row"
  fi
  log "state: ${state:-UNKNOWN}"
  [[ $state == "$ready" ]] && break
  [[ $failed == *" $state "* ]] && die "$TPU_NAME is $state (see: $(quote_cmd "${describe_base[@]}"))"
  sleep "$TPU_POLL_SECONDS"
done
log "$TPU_NAME is $ready; next: bash tpu/install.sh"
