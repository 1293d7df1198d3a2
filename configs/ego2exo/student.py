"""Ego2ExoVLM student (Ego2ExoVLM paper): exo video + teacher question -> teacher answer.

Default (arch=videollama3, the paper's base): initialised from VideoLLaMA3-7B-Image; its encoder (frozen)
-> 2x2 merge + projector -> Qwen2.5-7B with LoRA r64/alpha16/dropout 0.05 at 1e-5; projector, EAVT modules
(one per encoder layer, over the patch tokens of all frames), probe vectors and probe projector at 2e-6;
AdamW, cosine, 3% warmup, weight decay 0, global batch 128, 3 epochs (the paper's; see
methods/ego2exo/config.py). Frames at 1 fps (cap `frames`), VideoLLaMA3's processor with a fixed per-frame
pixel budget (static shapes), `Time t s:` before each frame's tokens.

    python -m exo2ego_jax.main --config configs/ego2exo/student.py:hardware=tpu_v5p_128 --workdir gs://bucket/student \
        --config.data.instructions="('/data/labels/labels.json',)" --config.data.data_folder=/data/egoexo4d \
        --config.model.checkpoint=/ckpt/VideoLLaMA3-7B-Image --config.data.tokenizer=/ckpt/VideoLLaMA3-7B-Image

The SigLIP-so400m + mlp2x_gelu + Qwen2.5-7B stack (arch=llava_video):

    python -m exo2ego_jax.main --config configs/ego2exo/student.py:hardware=tpu_v5p_128,arch=llava_video \
        --workdir gs://... --config.data.instructions="('/data/labels/labels.json',)" \
        --config.data.data_folder=/data/egoexo4d --config.data.tokenizer=/ckpt/qwen2.5-7b-instruct \
        --config.model.llm_hf=/ckpt/qwen2.5-7b-instruct --config.model.vision_hf=/ckpt/siglip-so400m-patch14-384 \
        --config.model.connector_hf=/ckpt/projector

Args: hardware=<preset>, arch=videollama3|llava_video, probes=<N> (0 = the no-EAVT ablation),
frames=<cap of 1 fps sampling>.
"""
from exo2ego_jax import config_lib
from exo2ego_jax.methods.ego2exo import model as ego2exo_model
from exo2ego_jax.methods.ego2exo import config as ego2exo_config

ARCHS = ("videollama3", "llava_video")


def get_config(arg: str | None = None):
    a = config_lib.parse_arg(arg, hardware="cpu", probes=16, frames=16, arch="videollama3")
    if a.arch not in ARCHS:
        raise ValueError(f"configs/ego2exo/student.py:arch={a.arch!r}: expected one of {ARCHS}")
    if a.arch == "videollama3":
        c = ego2exo_config.videollama3_student_config(hardware=a.hardware)
    else:
        c = ego2exo_config.student_config(hardware=a.hardware)
    c.model.num_probes = a.probes  # Ego2ExoVLM [C]: 16 probes; 0 = without EAVT
    c.data.num_frames = a.frames  # [I] cap of the 1 fps sampling for the student
    if a.hardware == "tpu_v5e_64":
        # Measured (docs/ego2exo.md, TPU compiler): the preset's pure FSDP with 2 rows per chip needs
        # 17.3 GiB of a v5e chip's 14.9; tensor 4 with one row per 4 chips needs 5.4 GiB.
        c.hardware.ici_tensor = 4
        c.hardware.per_device_batch = 1
    if a.arch == "videollama3":
        c.data.num_probes = int(c.model.num_probes)
    else:
        ego2exo_model.sync_data_fields(c)
    return config_lib.finalize(c)
