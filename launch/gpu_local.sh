#!/usr/bin/env bash
# All GPUs of one node in one process (JAX drives every local GPU from a single process).
#
#   launch/gpu_local.sh --config configs/demo.py:hardware=gpu_h100x8 --workdir /data/runs/demo
#
# Pick GPUs with CUDA_VISIBLE_DEVICES. Needs `pip install "jax[cuda12]>=0.10.2"`.
set -euo pipefail
cd "$(dirname "$0")/.."
export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.92}"
exec python -m exo2ego_jax.main "$@"
