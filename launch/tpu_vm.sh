#!/usr/bin/env bash
# Cloud TPU VM lifecycle with gcloud: create, set up, run on every worker, fetch logs, delete.
#
#   export TPU_NAME=exo2ego-v5e ZONE=us-west4-a ACCELERATOR=v5litepod-64 PROJECT=my-project
#   launch/tpu_vm.sh create
#   launch/tpu_vm.sh setup                      # copy this repo to every worker, pip install
#   launch/tpu_vm.sh run --config configs/demo.py:hardware=tpu_v5e_64 --workdir gs://bucket/run1
#   launch/tpu_vm.sh logs                       # fetch each worker's log into ./tpu_logs/
#   launch/tpu_vm.sh delete
#
# Every worker runs the same command; main.py sees TPU_WORKER_HOSTNAMES and calls
# jax.distributed.initialize(), which finds the coordinator from the TPU metadata.
# Use SPOT=1 for preemptible capacity: training saves on SIGTERM and resumes on re-run.
set -euo pipefail

: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}"
ACCELERATOR="${ACCELERATOR:-v5litepod-64}"
RUNTIME="${RUNTIME:-v2-alpha-tpuv5-lite}"   # v5p: v2-alpha-tpuv5; v4: tpu-ubuntu2204-base
PROJECT_FLAG=${PROJECT:+--project=$PROJECT}
REPO_DIR="${REPO_DIR:-exo2ego_jax}"
LOG="${LOG:-train.log}"
HERE="$(cd "$(dirname "$0")/.." && pwd)"

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
    tar -C "$HERE" --exclude=.git -czf /tmp/exo2ego_jax.tgz .
    gcloud compute tpus tpu-vm scp /tmp/exo2ego_jax.tgz "$TPU_NAME":~/ --zone="$ZONE" \
      $PROJECT_FLAG --worker=all
    ssh_all "mkdir -p $REPO_DIR && tar -C $REPO_DIR -xzf exo2ego_jax.tgz && cd $REPO_DIR && \
      pip install -q 'jax[tpu]>=0.10.2' -r requirements.txt"
    ;;
  run)
    shift
    args=$(printf '%q ' "$@")
    ssh_all "cd $REPO_DIR && nohup python -m exo2ego_jax.main $args > ~/$LOG 2>&1 &"
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
