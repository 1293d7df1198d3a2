"""Teacher labelling (job "label", Ego2ExoVLM paper): ego keystep segments -> LLaVA JSON.

The authors' teacher, VideoLLaMA3-7B (a transformers `save_pretrained` folder or DAMO-NLP-SG's release
directory, with its tokenizer), at 1 fps with at most 180 frames per segment:

    python -m exo2ego_jax.main --config configs/ego2exo/label.py:hardware=tpu_v5p_128 --workdir gs://bucket/labels \
        --config.label.root=/data/egoexo4d --config.model.checkpoint=/ckpt/VideoLLaMA3-7B

A trained teacher (a trainer workdir of method ego2exo, e.g. the demo's teacher):

    python -m exo2ego_jax.main --config configs/ego2exo/label.py --workdir /tmp/labels \
        --config.label.root=/data/egoexo4d --config.label.teacher_workdir=/ckpt/teacher

The SigLIP so400m + mlp2x_gelu + Qwen2.5-7B stack (e.g. a LLaVA-Video-7B conversion): --config.model.arch=llava_video
with --config.model.llm_hf / vision_hf / connector_hf and --config.data.tokenizer.
Args: hardware=<preset>, tiny (CPU-sized random llava_video teacher for tests).
"""
from exo2ego_jax import config_lib
from exo2ego_jax.methods.ego2exo import model as ego2exo_model
from exo2ego_jax.methods.ego2exo import config as ego2exo_config


def get_config(arg: str | None = None):
    a = config_lib.parse_arg(arg, hardware="cpu", tiny=False)
    c = ego2exo_config.student_config(hardware=a.hardware, job="label")
    c.model.arch = "videollama3"  # Ego2ExoVLM [C]: VideoLLaMA3-7B teacher ("llava_video": the SigLIP stack)
    c.model.checkpoint = ""  # VideoLLaMA3 checkpoint directory (arch "videollama3")
    c.model.num_probes = 0  # the teacher is a plain video LLM
    c.ego2exo.lora_rank = 0  # no adapters on the teacher
    c.train.epochs = 0.0  # labelling trains nothing
    c.train.steps = 1  # (unused)
    c.train.groups = [(".*", None)]  # every teacher parameter is frozen
    if a.tiny:
        c.model.arch = "llava_video"  # random init of the tiny SigLIP stack (no checkpoint needed)
        arch, ckpt = c.model.arch, c.model.checkpoint
        c.model = ego2exo_config.tiny_model(vocab_size=256, num_probes=0)
        c.model.arch, c.model.checkpoint = arch, ckpt
        c.data = ego2exo_config.data_block(image_size=32, num_frames=4)
        c.label.max_frames = 4  # tiny teacher input: 1 fps, at most 4 frames ...
        c.label.frame_buckets = (2, 4)  # ... rounded up to 2 or 4
        c.label.max_new_tokens = 16  # short answers
    ego2exo_model.sync_data_fields(c)
    return config_lib.finalize(c)
