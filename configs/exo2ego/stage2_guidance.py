"""Exo2Ego stage 2 demonstrator-learner guidance: ego encoder, F and G learn VTG + KL + cycle.

Paper size (2 x CLIP ViT-L/14-336 + STC + Mistral-7B-Instruct, 16 frames) with the paper's
batch / LR / warmup / epochs (Exo2Ego, arXiv 2503.09143, training-stage table; docs/papers.md).
Args (`stage2_guidance.py:key=value`): hardware=cpu|gpu_h100x8|tpu_v5e_64|tpu_v5p_128,
init_from=<previous stage workdir>, size=full|tiny (tiny: a CPU-sized model, 2 steps of 8 clips).

    python -m exo2ego_jax.main --config configs/exo2ego/stage2_guidance.py:hardware=tpu_v5p_128 \
      --config.data.records_dir=gs://BUCKET/ego_exoclip --config.data.tokenizer=/ckpt/mistral-7b-instruct \
      --config.model.llm_hf=/ckpt/mistral-7b-instruct --workdir gs://BUCKET/exo2ego/stage2_guidance
"""
from exo2ego_jax.methods.exo2ego import config as ec

STAGE = 2


def get_config(arg: str | None = None):
    c, args = ec.stage_base(STAGE, arg)
    t = c.train
    t.global_batch = 256  # Exo2Ego stage table, stage 2: global batch 256
    t.epochs = 2.0  # Exo2Ego stage table, stage 2: 2 epochs
    t.warmup_ratio = 0.03  # Exo2Ego stage table, stage 2: warmup ratio 0.03
    # Exo2Ego stage table, stage 2: ego encoder, F and G train at peak LR 1e-4; the exo encoder
    # (demonstrator) and the LLM are frozen.
    t.groups = [(r"^(ego|mapping_f|mapping_g)/", 1e-4), (r".*", None)]
    return ec.finish_stage(c, args)
