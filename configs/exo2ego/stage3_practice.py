"""Exo2Ego stage 3 learner self-practice: ego encoder, F and LoRA on the LLM learn VTG on instructions; G dropped.

Paper size (2 x CLIP ViT-L/14-336 + STC + Mistral-7B-Instruct, 16 frames) with the paper's
batch / LR / warmup / epochs (Exo2Ego, arXiv 2503.09143, training-stage table; docs/papers.md).
Args (`stage3_practice.py:key=value`): hardware=cpu|gpu_h100x8|tpu_v5e_64|tpu_v5p_128,
init_from=<previous stage workdir>, size=full|tiny (tiny: a CPU-sized model, 2 steps of 8 clips).

    python -m exo2ego_jax.main --config configs/exo2ego/stage3_practice.py:hardware=tpu_v5p_128 \
      --config.data.records_dir=gs://BUCKET/ego_exoclip --config.data.tokenizer=/ckpt/mistral-7b-instruct \
      --config.model.llm_hf=/ckpt/mistral-7b-instruct \
      --config.data.instructions="('/data/egoit.json',)" --workdir gs://BUCKET/exo2ego/stage3_practice
"""
from exo2ego_jax.methods.exo2ego import config as ec

STAGE = 3


def get_config(arg: str | None = None):
    c, args = ec.stage_base(STAGE, arg)
    t = c.train
    t.global_batch = 64  # Exo2Ego stage table, stage 3: global batch 64
    t.epochs = 1.0  # Exo2Ego stage table, stage 3: 1 epoch
    t.warmup_ratio = 0.03  # Exo2Ego stage table, stage 3: warmup ratio 0.03
    # Exo2Ego stage table, stage 3: ego encoder, F and the LoRA adapters train at peak LR 2e-5; the
    # exo encoder and the LLM's base weights are frozen, G is dropped.
    t.groups = [(r"^(ego|mapping_f)/", 2e-5), (r"/lora_[ab]$", 2e-5), (r".*", None)]
    e = c.exo2ego
    e.lora_rank = 128  # Exo2Ego stage 3: LoRA r 128
    e.lora_alpha = 256.0  # Exo2Ego stage 3: LoRA alpha 256
    e.lora_dropout = 0.1  # Exo2Ego stage 3: LoRA dropout 0.1
    return ec.finish_stage(c, args)
