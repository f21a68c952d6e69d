# shellcheck shell=bash disable=SC2034  # (variables set here are used by the scripts)
# Sourced by the tpu/*.sh lifecycle scripts: settings, shell quoting and `run_cmd`.
#
# Settings (environment variables; see tpu/README.md for the table):
#   TPU_NAME             TPU VM (and queued resource) name       default humpback-$USER (sanitized)
#   TPU_ZONE             zone                                    default us-central2-b
#   TPU_ACCELERATOR      accelerator type                        default v5litepod-16
#                        (v5e-16 = v5litepod-16, v4-8 = v4-8, v5p-64 = v5p-64; v5e-N is accepted
#                        and written as v5litepod-N)
#   TPU_RUNTIME_VERSION  TPU software version                    default by family: v5e
#                        v2-alpha-tpuv5-lite, v4 tpu-ubuntu2204-base, v5p v2-alpha-tpuv5,
#                        v6e v2-alpha-tpuv6e
#   TPU_PROJECT          GCP project (adds --project=...)        default: gcloud's configured one
#   TPU_QUEUED           1 = create through a queued resource    default 0
#   TPU_SPOT             1 = Spot VM (--spot)                    default 0
#   TPU_POLL_SECONDS     create.sh's wait: seconds between polls default 30
#   REPO_URL             git URL the workers clone; empty = copy a `git archive` of local HEAD
#   REPO_REF             ref fetched from REPO_URL               default HEAD (the default branch)
#   REPO_DIR             code directory on the workers           default humpback-jax (in $HOME)
#   BUCKET               GCS bucket (name or gs://name) for runs default none
#   RUN_NAME             run name                                default $TPU_NAME
#   RUN_DIR              run directory                           default gs://$BUCKET/runs/$RUN_NAME
#                        if BUCKET is set, else runs/$RUN_NAME (relative to REPO_DIR on each worker)
#   GIN_FILE             run.sh's gin file when none is given    default configs/humpback_llama2_7b.gin
#
# Every script takes --dry_run: it prints the commands it would run, one per line, shell-quoted
# (copy-pasteable), and runs none of them. Messages go to stderr, commands to stdout.

TPU_SCRIPT=$(basename "$0")
TPU_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(dirname "$TPU_DIR")
DRY_RUN=0
# Remote paths are relative to the login directory of each worker ($HOME); $HOME is expanded there.
# shellcheck disable=SC2016
REMOTE_LOG_DIR='"$HOME"/humpback_logs'
REMOTE_TARBALL=humpback-jax-code.tar.gz

log() { printf '%s: %s\n' "$TPU_SCRIPT" "$*" >&2; }
die() { log "error: $*"; exit 1; }
usage_error() {
  log "error: $*"
  printf 'Try: %s --help\n' "$0" >&2
  exit 2
}

# Shell-quote one word exactly like Python's shlex.quote.
q() {
  local s=$1 rep="'\"'\"'"
  if [[ -z $s ]]; then
    printf "''"
  elif [[ $s =~ ^[A-Za-z0-9_@%+=:,./-]+$ ]]; then
    printf '%s' "$s"
  else
    printf "'%s'" "${s//\'/"$rep"}"
  fi
}

# Shell-quote a command line (words joined by single spaces).
quote_cmd() {
  local out="" a
  for a in "$@"; do out+="${out:+ }$(q "$a")"; done
  printf '%s\n' "$out"
}

# Dry run: print the command, shell-quoted, on one line. Otherwise: run it.
run_cmd() {
  if [[ $DRY_RUN == 1 ]]; then
    quote_cmd "$@"
  else
    log "+ $(quote_cmd "$@")"
    "$@"
  fi
}

_default_tpu_name() {
  local u=${USER:-}
  [[ -n $u ]] || u=$(id -un 2>/dev/null) || u=user
  u=$(printf '%s' "$u" | tr '[:upper:]' '[:lower:]' | tr -cs 'a-z0-9' '-')
  u=${u#-}
  u=${u%-}
  [[ -n $u ]] || u=user
  u="humpback-$u"
  u=${u:0:63}
  printf '%s' "${u%-}"
}

# Family of an accelerator type: v4, v5e, v5p, v6e (empty if unknown).
tpu_family() {
  case $1 in
    v5litepod-*) echo v5e ;;
    v4-*) echo v4 ;;
    v5p-*) echo v5p ;;
    v6e-*) echo v6e ;;
    *) echo "" ;;
  esac
}

# "HOSTS CHIPS_PER_HOST HBM_GIB" of an accelerator type (empty if unknown). v4/v5p sizes count
# TensorCores (2 per chip); v5e/v6e sizes count chips (up to 8 on one host, else 4 per host).
tpu_shape() {
  local n=${1##*-} chips hosts per hbm
  [[ $n =~ ^[0-9]+$ ]] || return 0
  case $(tpu_family "$1") in
    v4 | v5p) chips=$((n / 2)) ;;
    v5e | v6e) chips=$n ;;
    *) return 0 ;;
  esac
  ((chips > 0)) || return 0
  case $(tpu_family "$1") in
    v4) hbm=32 ;;
    v5e) hbm=16 ;;
    v5p) hbm=95 ;;
    v6e) hbm=32 ;;
  esac
  if [[ $(tpu_family "$1") == v4 || $(tpu_family "$1") == v5p ]]; then
    per=$((chips < 4 ? chips : 4))
  else
    per=$((chips <= 8 ? chips : 4))
  fi
  hosts=$((chips / per))
  echo "$hosts $per $hbm"
}

_bool() {  # _bool NAME VALUE: 0/1 (empty = 0)
  case ${2:-0} in
    0 | 1) printf '%s' "${2:-0}" ;;
    *) die "$1 must be 0 or 1, got '$2'" ;;
  esac
}

# Resolve the settings (after the script's flags are parsed, so --help never fails on them).
tpu_init() {
  TPU_NAME=${TPU_NAME:-$(_default_tpu_name)}
  [[ $TPU_NAME =~ ^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$ ]] ||
    die "TPU_NAME '$TPU_NAME': use lowercase letters, digits and hyphens, a letter first, at most 63 characters"
  TPU_ZONE=${TPU_ZONE:-us-central2-b}
  TPU_ACCELERATOR=${TPU_ACCELERATOR:-v5litepod-16}
  case $TPU_ACCELERATOR in
    v5e-*) TPU_ACCELERATOR=v5litepod-${TPU_ACCELERATOR#v5e-} ;;
  esac
  local family
  family=$(tpu_family "$TPU_ACCELERATOR")
  if [[ -z ${TPU_RUNTIME_VERSION:-} ]]; then
    case $family in
      v5e) TPU_RUNTIME_VERSION=v2-alpha-tpuv5-lite ;;
      v4) TPU_RUNTIME_VERSION=tpu-ubuntu2204-base ;;
      v5p) TPU_RUNTIME_VERSION=v2-alpha-tpuv5 ;;
      v6e) TPU_RUNTIME_VERSION=v2-alpha-tpuv6e ;;
      *) die "no default TPU_RUNTIME_VERSION for TPU_ACCELERATOR '$TPU_ACCELERATOR': set TPU_RUNTIME_VERSION" ;;
    esac
  fi
  TPU_PROJECT=${TPU_PROJECT:-}
  TPU_QUEUED=$(_bool TPU_QUEUED "${TPU_QUEUED:-0}")
  TPU_SPOT=$(_bool TPU_SPOT "${TPU_SPOT:-0}")
  TPU_POLL_SECONDS=${TPU_POLL_SECONDS:-30}
  [[ $TPU_POLL_SECONDS =~ ^[0-9]+$ ]] || die "TPU_POLL_SECONDS must be a number of seconds"
  REPO_URL=${REPO_URL:-}
  REPO_REF=${REPO_REF:-HEAD}
  REPO_DIR=${REPO_DIR:-humpback-jax}
  BUCKET=${BUCKET:-}
  BUCKET=${BUCKET#gs://}
  BUCKET=${BUCKET%/}
  RUN_NAME=${RUN_NAME:-$TPU_NAME}
  if [[ -z ${RUN_DIR:-} ]]; then
    if [[ -n $BUCKET ]]; then RUN_DIR="gs://$BUCKET/runs/$RUN_NAME"; else RUN_DIR="runs/$RUN_NAME"; fi
  fi
  RUN_DIR=${RUN_DIR%/}
  GIN_FILE=${GIN_FILE:-configs/humpback_llama2_7b.gin}
  # Flags every gcloud compute tpus command takes after the resource name.
  TPU_FLAGS=("--zone=$TPU_ZONE")
  [[ -z $TPU_PROJECT ]] || TPU_FLAGS+=("--project=$TPU_PROJECT")
  TPU_SHAPE=$(tpu_shape "$TPU_ACCELERATOR")
  if [[ $DRY_RUN != 1 ]]; then
    command -v gcloud >/dev/null || die "gcloud not found: install the Google Cloud CLI (or use --dry_run)"
  fi
}

# Number of hosts (workers) of the slice; 0 if unknown.
tpu_hosts() {
  if [[ -n $TPU_SHAPE ]]; then echo "${TPU_SHAPE%% *}"; else echo 0; fi
}

# One line describing the slice, e.g. "v5litepod-16: 4 hosts x 4 chips, 16 GiB HBM per chip".
tpu_describe_shape() {
  if [[ -n $TPU_SHAPE ]]; then
    local hosts per hbm
    read -r hosts per hbm <<<"$TPU_SHAPE"
    echo "$TPU_ACCELERATOR: $hosts host(s) x $per chips, $hbm GiB HBM per chip"
  else
    echo "$TPU_ACCELERATOR: unknown shape"
  fi
}

# The run directory as a path on worker 0 (relative paths are relative to REPO_DIR).
remote_run_dir() {
  if [[ $RUN_DIR == /* || $RUN_DIR == gs://* ]]; then
    printf '%s' "$RUN_DIR"
  else
    printf '%s/%s' "${REPO_DIR%/}" "$RUN_DIR"
  fi
}

# Common flag: every script calls this in its argument loop for --dry_run / --help / errors.
# Usage: common_flag "$1" || <script-specific handling>
common_flag() {
  case $1 in
    --dry_run) DRY_RUN=1 ;;
    -h | --help) usage; exit 0 ;;
    *) return 1 ;;
  esac
}

ENV_HELP='Settings come from environment variables (defaults in tpu/README.md and tpu/common.sh):
  TPU_NAME TPU_ZONE TPU_ACCELERATOR TPU_RUNTIME_VERSION TPU_PROJECT TPU_QUEUED TPU_SPOT
  TPU_POLL_SECONDS REPO_URL REPO_REF REPO_DIR BUCKET RUN_NAME RUN_DIR GIN_FILE'
