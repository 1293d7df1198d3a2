"""Exo2Ego stage 1 demonstrator self-preparation: exo encoder on exo clip-text pairs (METHODS.md part A).

Paper size (2 x CLIP ViT-L/14-336 + STC + Mistral-7B, 16 frames) and the paper's batch / LR /
warmup / epochs. Args (`stage1_demonstrator.py:key=value`): hardware=cpu|gpu_h100x8|tpu_v5e_64|tpu_v5p_128,
init_from=<previous stage workdir>, size=full|tiny.

python -m exo2ego_jax.main --config configs/exo2ego/stage1_demonstrator.py:hardware=tpu_v5p_128 \
  --config.data.records=gs://.../ego_exoclip --config.model.llm_hf=... --workdir DIR
"""
from exo2ego_jax.methods.exo2ego import config as exo2ego_config


def get_config(arg: str | None = None):
    return exo2ego_config.stage_file_config(1, arg)
