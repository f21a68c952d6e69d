#!/usr/bin/env bash
# Put the code on every worker of the TPU VM and run tpu/setup.sh on all of them at once.
set -euo pipefail
# shellcheck source=tpu/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<EOF
Usage: bash tpu/install.sh [--dry_run]

Copies the code to every worker (--worker=all) into \$REPO_DIR (default humpback-jax, in the
worker's home) and runs tpu/setup.sh there (a venv with jax[tpu] and humpback-jax) on all
workers at once.

Without REPO_URL: a 'git archive' tarball of the local HEAD (committed files only) is copied with
'gcloud compute tpus tpu-vm scp' and unpacked over \$REPO_DIR. With REPO_URL: every worker clones
it (or fetches into its clone) and checks out \$REPO_REF (default HEAD, the default branch).

  --dry_run    print the commands (one per line, shell-quoted) and run nothing
  -h, --help   this help

$ENV_HELP
EOF
}

while (($#)); do
  common_flag "$1" || usage_error "unknown argument: $1"
  shift
done
tpu_init

dir=$(q "$REPO_DIR")
setup="bash $dir/tpu/setup.sh"
if [[ -z $REPO_URL ]]; then
  tarball="${TMPDIR:-/tmp}/humpback-jax-$TPU_NAME.tar.gz"
  if [[ $DRY_RUN != 1 ]]; then
    trap 'rm -f "$tarball"' EXIT
    [[ -z $(git -C "$REPO_ROOT" status --porcelain --untracked-files=no) ]] ||
      log "warning: uncommitted changes are not copied (the workers get HEAD, $(git -C "$REPO_ROOT" rev-parse --short HEAD))"
  fi
  run_cmd git -C "$REPO_ROOT" archive --format=tar.gz -o "$tarball" HEAD
  run_cmd gcloud compute tpus tpu-vm scp "$tarball" "$TPU_NAME:$REMOTE_TARBALL" "${TPU_FLAGS[@]}" --worker=all
  remote="set -e; mkdir -p $dir; tar -xzf $REMOTE_TARBALL -C $dir; rm -f $REMOTE_TARBALL; $setup"
else
  remote="set -e; test -d $dir/.git || git clone --quiet $(q "$REPO_URL") $dir"
  remote+="; git -C $dir fetch --quiet origin $(q "$REPO_REF"); git -C $dir checkout --quiet --detach FETCH_HEAD; $setup"
fi
run_cmd gcloud compute tpus tpu-vm ssh "$TPU_NAME" "${TPU_FLAGS[@]}" --worker=all "--command=$remote"
[[ $DRY_RUN == 1 ]] || log "installed on every worker of $TPU_NAME; next: bash tpu/run.sh GIN_FILE"
