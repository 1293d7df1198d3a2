"""Teacher labelling (job "label", Ego2ExoVLM Ego2ExoVLM paper): ego keystep segments -> LLaVA JSON.

A trained teacher (a trainer workdir of method ego2exo, e.g. the demo's teacher):

    python -m exo2ego_jax.main --config configs/ego2exo/label.py --workdir /tmp/labels \
        --config.label.root=/data/egoexo4d --config.label.teacher_workdir=/ckpt/teacher

A video LLM from HF weights (SigLIP so400m + mlp2x_gelu + Qwen2.5-7B layout, e.g. a LLaVA-Video-7B
conversion): leave teacher_workdir empty and set --config.model.llm_hf / vision_hf / connector_hf
and --config.data.tokenizer. Args: hardware=<preset>, tiny (CPU-sized random teacher for tests).
"""
from exo2ego_jax import config_lib
from exo2ego_jax.methods.ego2exo import model as ego2exo_model
from exo2ego_jax.methods.ego2exo import config as ego2exo_config


def get_config(arg: str | None = None):
    a = config_lib.parse_arg(arg, hardware="cpu", tiny=False)
    c = ego2exo_config.student_config(hardware=a.hardware, job="label")
    c.model.num_probes = 0  # the teacher is a plain video LLM
    c.ego2exo.lora_rank = 0  # no adapters on the teacher
    c.train.epochs = 0.0  # labelling trains nothing
    c.train.steps = 1  # (unused)
    c.train.groups = [(".*", None)]  # every teacher parameter is frozen
    if a.tiny:
        c.model = ego2exo_config.tiny_model(vocab_size=256, num_probes=0)
        c.data = ego2exo_config.data_block(image_size=32, num_frames=4)
        c.label.max_frames = 4  # tiny teacher input: 1 fps, at most 4 frames ...
        c.label.frame_buckets = (2, 4)  # ... rounded up to 2 or 4
        c.label.max_new_tokens = 16  # short answers
    ego2exo_model.sync_data_fields(c)
    return config_lib.finalize(c)
