"""Exo2Ego stage 0 init: the exo encoder and the ego encoder learn VTG on their own clips; LLM frozen.

Paper size (2 x CLIP ViT-L/14-336 + STC + Mistral-7B-Instruct, 16 frames) with the paper's
batch / LR / warmup / epochs (Exo2Ego, arXiv 2503.09143, training-stage table; docs/papers.md).
Args (`stage0_init.py:key=value`): hardware=cpu|gpu_h100x8|tpu_v5e_64|tpu_v5p_128,
init_from=<previous stage workdir>, size=full|tiny (tiny: a CPU-sized model, 2 steps of 8 clips).

    python -m exo2ego_jax.main --config configs/exo2ego/stage0_init.py:hardware=tpu_v5p_128 \
      --config.data.records_dir=gs://BUCKET/ego_exoclip --config.data.tokenizer=/ckpt/mistral-7b-instruct \
      --config.model.llm_hf=/ckpt/mistral-7b-instruct --workdir gs://BUCKET/exo2ego/stage0_init
"""
from exo2ego_jax.methods.exo2ego import config as ec

STAGE = 0


def get_config(arg: str | None = None):
    c, args = ec.stage_base(STAGE, arg)
    t = c.train
    t.global_batch = 512  # Exo2Ego stage table, stage 0: global batch 512
    t.epochs = 5.0  # Exo2Ego stage table, stage 0: 5 epochs
    t.warmup_ratio = 0.1  # Exo2Ego stage table, stage 0: warmup ratio 0.1
    # Exo2Ego stage table, stage 0: both encoders train at peak LR 1e-3; the LLM is frozen.
    t.groups = [(r"^(ego|exo)/", 1e-3), (r".*", None)]
    return ec.finish_stage(c, args)
