#!/usr/bin/env bash
# Cloud TPU VM lifecycle with gcloud: create, set up, run on every worker, fetch logs, delete.
#
#   export TPU_NAME=exo2ego-v5e ZONE=us-west4-a ACCELERATOR=v5litepod-64 PROJECT=my-project
#   launch/tpu_vm.sh create
#   launch/tpu_vm.sh setup                      # copy this repo to every worker, Python 3.11 venv, pip install
#   launch/tpu_vm.sh run --config configs/demo.py:hardware=tpu_v5e_64 --workdir gs://bucket/run1
#   launch/tpu_vm.sh logs                       # fetch each worker's log into ./tpu_logs/
#   launch/tpu_vm.sh stop                       # SIGTERM: every worker saves, then exits
#   launch/tpu_vm.sh delete
#
# Every worker runs the same command with EXO2EGO_DISTRIBUTED=1: main.py then calls
# jax.distributed.initialize() without arguments, and jax reads the coordinator, the process count
# and this worker's id from the TPU VM metadata.
# Use SPOT=1 for preemptible capacity: training saves on SIGTERM and resumes on re-run.
set -euo pipefail

: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}"        # the TPU VM's name and zone
ACCELERATOR="${ACCELERATOR:-v5litepod-64}"             # slice type (create); match the config's hardware preset
RUNTIME="${RUNTIME:-v2-alpha-tpuv5-lite}"              # TPU VM image; v5p: v2-alpha-tpuv5; v4: tpu-ubuntu2204-base
PROJECT_FLAG=${PROJECT:+--project=$PROJECT}            # gcloud project (default: gcloud's configured one)
REPO_DIR="${REPO_DIR:-exo2ego_jax}"                    # where the repo lands in each worker's home
# The pins need Python >= 3.11; the TPU VM images ship an older system python3 (Ubuntu 22.04: 3.10).
PYTHON="${PYTHON:-python3.11}"
VENV="${VENV:-exo2ego_venv}"                           # virtualenv (from $PYTHON) in each worker's home
LOG="${LOG:-train.log}"                                # each worker's console log, in its home
HERE="$(cd "$(dirname "$0")/.." && pwd)"               # this repo (copied by setup)

ssh_all() {
  gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" $PROJECT_FLAG --worker=all \
    --command="$1"
}

case "${1:-}" in
  create)
    gcloud compute tpus tpu-vm create "$TPU_NAME" --zone="$ZONE" $PROJECT_FLAG \
      --accelerator-type="$ACCELERATOR" --version="$RUNTIME" ${SPOT:+--spot}
    ;;
  setup)
    tgz=$(mktemp "${TMPDIR:-/tmp}/exo2ego_jax.XXXXXX")
    tar -C "$HERE" --exclude=.git -czf "$tgz" .
    gcloud compute tpus tpu-vm scp "$tgz" "$TPU_NAME":~/exo2ego_jax.tgz --zone="$ZONE" \
      $PROJECT_FLAG --worker=all
    rm -f "$tgz"
    # $PYTHON from the image's apt sources (Ubuntu 22.04 universe has python3.11), else from the
    # deadsnakes PPA; then a venv from it, so that `python` on the workers is never the system one.
    ssh_all "set -e; if ! command -v $PYTHON >/dev/null; then \
        sudo apt-get update -qq && { sudo apt-get install -y -qq $PYTHON $PYTHON-venv || \
        { sudo add-apt-repository -y ppa:deadsnakes/ppa && sudo apt-get update -qq && \
          sudo apt-get install -y -qq $PYTHON $PYTHON-venv; }; }; fi; \
      $PYTHON -c 'import sys; assert sys.version_info >= (3, 11), sys.version'; \
      $PYTHON -m venv ~/$VENV && mkdir -p $REPO_DIR && tar -C $REPO_DIR -xzf exo2ego_jax.tgz && cd $REPO_DIR && \
      ~/$VENV/bin/pip install -q -U pip && ~/$VENV/bin/pip install -q 'jax[tpu]>=0.10.2' -r requirements.txt"
    ;;
  run)
    shift
    args=$(printf '%q ' "$@")
    ssh_all "cd $REPO_DIR && EXO2EGO_DISTRIBUTED=1 nohup ~/$VENV/bin/python -m exo2ego_jax.main $args \
      > ~/$LOG 2>&1 &"
    echo "started on all workers; follow with: $0 logs"
    ;;
  logs)
    mkdir -p tpu_logs
    n=$(gcloud compute tpus tpu-vm describe "$TPU_NAME" --zone="$ZONE" $PROJECT_FLAG \
          --format='value(networkEndpoints.len())')
    for ((w = 0; w < ${n:-1}; w++)); do
      gcloud compute tpus tpu-vm scp "$TPU_NAME":~/"$LOG" "tpu_logs/worker$w.log" \
        --zone="$ZONE" $PROJECT_FLAG --worker="$w" || true
    done
    tail -n 5 tpu_logs/worker0.log
    ;;
  stop)
    ssh_all "pkill -TERM -f 'exo2ego_jax.main' || true"   # SIGTERM: save, then exit
    ;;
  delete)
    gcloud compute tpus tpu-vm delete "$TPU_NAME" --zone="$ZONE" $PROJECT_FLAG --quiet
    ;;
  *)
    echo "usage: $0 create|setup|run ARGS...|logs|stop|delete" >&2
    exit 2
    ;;
esac
