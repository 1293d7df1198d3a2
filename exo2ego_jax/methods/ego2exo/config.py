"""Config builders for Ego2ExoVLM (configs/ego2exo/*.py call these).

Every number from the paper is a field whose default is the paper's value, with a comment citing
Ego2ExoVLM paper ([C] = the authors' public code). [I] marks choices the paper leaves open.
"""
from __future__ import annotations

import dataclasses

from exo2ego_jax import config_lib
from exo2ego_jax.methods import tiny_config
from exo2ego_jax.data.pipeline_fields import pipeline_config
from exo2ego_jax.eval.config import eval_config
from exo2ego_jax.models import videollama3 as vl3

ConfigDict = config_lib.ConfigDict

ALL_LINEAR = r"(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)$"
SIGLIP_MEAN_STD = (0.5, 0.5, 0.5)  # google/siglip-so400m-patch14-384 preprocessor_config.json


def student_groups(lr_lora: float, lr_probe: float, *, train_tower: bool = False,
                   train_llm: bool = False, projector: str = "connector") -> list[tuple[str, float | None]]:
    """Ego2ExoVLM [C] parameter groups: LoRA at `lr_lora`; projectors, EAVT and probes at `lr_probe`.

    The probe vectors (`eavt/probes`) are in the probe group on purpose: the authors' code leaves
    them out of every optimizer group by accident (Ego2ExoVLM paper). `train_tower` / `train_llm`
    (demo only) also train the tower / LLM base, which the paper keeps frozen. `projector`: the main
    projector's path ("connector" in the SigLIP stack, "projector" in VideoLLaMA3).
    """
    groups = [(r"/lora_[ab]$", lr_lora),
              (rf"^({projector}|eavt)/", lr_probe)]
    if train_tower:
        groups.append((r"^vision/", lr_probe))
    if train_llm:
        groups.append((r"^llm/", lr_lora))
    return groups + [(r".*", None)]


def full_size_model() -> ConfigDict:
    """SigLIP-so400m/14-384 + 2x merge + mlp2x_gelu + Qwen2.5-7B (Ego2ExoVLM student [C])."""
    m = ConfigDict()
    m.llm_hf = ""  # HF dir / .safetensors / .gguf of the LLM ('' = random init from model.llm)
    m.vision_hf = ""  # HF SigLIP(Vision)Model dir ('' = random init)
    m.connector_hf = ""  # checkpoint with LLaVA 'model.mm_projector.*' keys ('' = random init)
    m.video_token_id = 151665  # id of '<video>' added after Qwen2.5's 151665 tokens
    m.probe_token_id = 151666  # id of '<probe>' (added right after '<video>')
    m.num_probes = 16  # Ego2ExoVLM [C]: 16 EAVT probe vectors (0 = no EAVT)
    m.eavt_layers = ()  # ViT layers whose cross-attention updates the probes (() = all run layers [C])
    llm = m.llm = ConfigDict()  # Qwen2.5-7B-Instruct config.json
    llm.vocab_size = 152064  # Qwen2.5-7B embedding rows (151665 tokens + padding)
    llm.hidden_size = 3584  # Qwen2.5-7B width
    llm.intermediate_size = 18944  # Qwen2.5-7B MLP width
    llm.num_layers = 28  # Qwen2.5-7B layers
    llm.num_heads = 28  # query heads
    llm.num_kv_heads = 4  # grouped-query KV heads
    llm.head_dim = 128  # per-head width
    llm.rope_theta = 1e6  # Qwen2.5 RoPE base
    llm.rms_norm_eps = 1e-6  # Qwen2.5 RMSNorm eps
    llm.tie_word_embeddings = False  # Qwen2.5-7B has a separate lm_head
    llm.attention_bias = True  # Qwen2 q/k/v biases
    llm.max_position_embeddings = 32768  # Qwen2.5-7B context
    v = m.vision = ConfigDict()  # SigLIP so400m/14-384 (Ego2ExoVLM [C]: SigLIP tower)
    v.model_type = "siglip"  # no class token, no pre-LN
    v.hidden_size = 1152  # so400m width
    v.intermediate_size = 4304  # so400m MLP width
    v.num_layers = 27  # so400m depth
    v.num_heads = 16  # so400m heads
    v.image_size = 384  # so400m-patch14-384 input
    v.patch_size = 14  # 27 x 27 patches
    v.layer_norm_eps = 1e-6  # SigLIP LayerNorm eps
    v.hidden_act = "gelu_pytorch_tanh"  # SigLIP MLP activation
    v.feature_layer = -2  # LLaVA-Video mm_vision_select_layer=-2
    v.remat = False  # rematerialise ViT layers (presets with remat turn it on)
    c = m.connector = ConfigDict()  # Ego2ExoVLM [C]: 2x spatial token merge + mlp2x_gelu projector
    c.kind = "merge_mlp2x_gelu"  # 2x2 bilinear pooling of each frame's grid, then Linear-GELU-Linear
    c.in_dim = 1152  # = vision.hidden_size
    c.out_dim = 3584  # = llm.hidden_size
    c.merge_stride = 2  # Ego2ExoVLM [C]: 2x spatial token merge (27x27 -> 14x14 per frame)
    c.merge_mode = "bilinear"  # LLaVA-Video get_2dPool default
    return m


def videollama3_model() -> ConfigDict:
    """VideoLLaMA3-7B(-Image) sizes (Ego2ExoVLM [C]: the student starts from VideoLLaMA3-7B-Image, the
    model before VideoLLaMA3's video stage; same architecture as the VideoLLaMA3-7B teacher)."""
    base = vl3.VideoLlama3Config()
    m = ConfigDict()
    m.arch = "videollama3"  # "videollama3" (the paper's base model) or "llava_video" (the SigLIP stack)
    m.checkpoint = ""  # VideoLLaMA3 checkpoint dir (HF or DAMO-NLP-SG layout); '' = random init from the sizes below
    m.num_probes = 16  # Ego2ExoVLM [C]: 16 EAVT probe vectors (0 = no EAVT)
    m.eavt_layers = ()  # encoder layers followed by a probe update (() = all, Ego2ExoVLM [C])
    m.probe_token_id = 151665  # <probe>: first id after Qwen2.5's 151665 tokenizer ids (inside the 152064 rows)
    m.image_token_id = base.image_token_id  # <|image_pad|>
    m.video_token_id = base.video_token_id  # <|video_pad|>
    m.vision = ConfigDict({f.name: getattr(base.vision, f.name) for f in dataclasses.fields(base.vision)})
    m.llm = ConfigDict({f.name: getattr(base.llm, f.name) for f in dataclasses.fields(base.llm)
                        if f.name in _LLM_FIELDS})
    return m


# LLMConfig fields a config carries for the VideoLLaMA3 decoder (the rest keep LLMConfig's defaults).
_LLM_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads", "num_kv_heads",
               "head_dim", "rope_theta", "rms_norm_eps", "tie_word_embeddings", "attention_bias",
               "max_position_embeddings", "model_type")


def tiny_videollama3_model(*, vocab_size: int = 64, width: int = 64, vit_width: int = 32, patch_size: int = 8,
                           llm_layers: int = 2, vit_layers: int = 2, num_probes: int = 4) -> ConfigDict:
    """A CPU-sized VideoLLaMA3 (tests and the demo), random init."""
    m = videollama3_model()
    m.vision.update(hidden_size=vit_width, intermediate_size=2 * vit_width, num_layers=vit_layers, num_heads=2,
                    patch_size=patch_size)
    m.llm.update(vocab_size=vocab_size, hidden_size=width, intermediate_size=2 * width, num_layers=llm_layers,
                 num_heads=4, num_kv_heads=2, head_dim=width // 4, max_position_embeddings=4096)
    m.image_token_id, m.video_token_id, m.probe_token_id = 6, 4, 5  # synthetic_tokenizer: <video> 4, <probe> 5
    m.num_probes = num_probes
    return m


def videollama3_data_block(*, num_frames: int = 16, patch_size: int = 14) -> ConfigDict:
    """`config.data` of the VideoLLaMA3 student: the teacher labels, processed by VideoLLaMA3's rules."""
    d = pipeline_config()
    d.sampling = "fps"  # Ego2ExoVLM [C]: frames sampled at a fixed rate ...
    d.sample_fps = 1.0  # Ego2ExoVLM [C]: ... of 1 fps
    d.num_frames = num_frames  # [I] frame cap (= frame slots per batch) for the student; memory-bound at 7B
    d.patch_size = patch_size  # VideoLLaMA3 encoder patch
    d.merge_size = 2  # VideoLLaMA3 processor: video frames merged 2x2
    # [I] Per-frame pixel budget: the processor's 28*28*768 clip budget split over 16 frames, fixed per frame
    # so every frame fits one static patch bucket whatever the clip length.
    d.frame_max_pixels = 28 * 28 * 768 // 16
    d.frame_min_pixels = 28 * 28 * 8  # smallest frame area after resizing (processor min 128*28*28 over 16 frames)
    d.token_compression = True  # VideoLLaMA3 processor default: drop merged tokens unchanged since the last frame
    d.max_len = 2048  # tokens per example: 16 frames x <= 48 tokens + 16 probes + timestamps + text
    d.system_prompt = "You are a helpful assistant."  # Ego2ExoVLM [C] system prompt
    d.drop_remainder = True  # static global batch for the trainer
    return d


def tiny_model(*, vocab_size: int = 64, width: int = 64, vit_width: int = 32, image_size: int = 32,
               patch_size: int = 8, llm_layers: int = 2, vit_layers: int = 2, num_probes: int = 4) -> ConfigDict:
    """A CPU-sized model with the full-size layout (tests and the demo)."""
    m = tiny_config.shrink(full_size_model(), vocab_size=vocab_size, width=width, vit_width=vit_width,
                           image_size=image_size, patch_size=patch_size, llm_layers=llm_layers,
                           vit_layers=vit_layers)
    m.probe_token_id = 5  # synthetic_tokenizer: <probe> is special token 5
    m.num_probes = num_probes  # fewer probes than the paper's 16 for tiny models
    return m


def method_block() -> ConfigDict:
    """`config.ego2exo`: LoRA and learning rates of the student (Ego2ExoVLM paper)."""
    e = ConfigDict()
    e.lora_rank = 64  # Ego2ExoVLM [C]: LoRA r 64 (0 = no LoRA)
    e.lora_alpha = 16.0  # Ego2ExoVLM [C]: LoRA alpha 16
    e.lora_dropout = 0.05  # Ego2ExoVLM [C]: LoRA dropout 0.05
    e.lora_targets = ALL_LINEAR  # Ego2ExoVLM [C]: LoRA on all linear layers of the LLM
    e.lr_lora = 1e-5  # Ego2ExoVLM [C]: LR of the LoRA adapters
    e.lr_probe = 2e-6  # Ego2ExoVLM [C]: LR of projectors, EAVT modules and probe vectors
    return e


def data_block(*, image_size: int = 384, num_frames: int = 16) -> ConfigDict:
    """`config.data`: the student's LLaVA JSON (teacher labels) through the instruction pipeline."""
    d = pipeline_config()
    d.image_size = image_size  # SigLIP so400m/14-384 input
    d.image_mean = SIGLIP_MEAN_STD  # SigLIP normalisation
    d.image_std = SIGLIP_MEAN_STD  # SigLIP normalisation
    d.resize_mode = "resize"  # SigLIP squashes to a square (no crop)
    d.sampling = "fps"  # Ego2ExoVLM [C]: frames sampled at a fixed rate ...
    d.sample_fps = 1.0  # Ego2ExoVLM [C]: ... of 1 fps
    d.num_frames = num_frames  # [I] cap for the student (teacher/eval: 180); memory-bound at full size
    d.max_len = 4096  # tokens per example after expanding <video> (16 x 196) and 16 <probe>
    d.system_prompt = "You are a helpful assistant."  # Ego2ExoVLM [C] system prompt
    d.drop_remainder = True  # static global batch for the trainer
    return d


def label_block() -> ConfigDict:
    """`config.label`: the teacher labelling job (Ego2ExoVLM paper)."""
    lb = ConfigDict()
    lb.root = ""  # Ego-Exo4D (or synthetic) root with takes.json and annotations/
    lb.split = "train"  # keystep split to label
    lb.video_variant = "448"  # frame-aligned videos to read: "full" or "448" (downscaled/448)
    lb.teacher_workdir = ""  # trainer workdir/checkpoint of the teacher ('' = HF weights only)
    lb.questions_per_segment = 3  # Ego2ExoVLM [C]: 3 questions per segment, one per category
    lb.sampling = "fps"  # Ego2ExoVLM [C]: frames at a fixed rate ("uniform": max_frames evenly spaced)
    lb.sample_fps = 1.0  # Ego2ExoVLM [C]: teacher sees 1 fps ...
    lb.max_frames = 180  # Ego2ExoVLM [C]: ... at most 180 frames
    lb.frame_buckets = (8, 16, 32, 64, 128, 180)  # [I] 1-fps frame counts round up to these (static shapes)
    lb.max_new_tokens = 1024  # Ego2ExoVLM [C]: up to 1024 new tokens
    lb.system_prompt = "You are a helpful assistant."  # Ego2ExoVLM [C] system prompt
    lb.batch_size = 8  # prompts per generate call over all devices (3 per segment -> rounded to segments)
    lb.prompt_len = 0  # static prompt length in tokens (0: visual tokens + 128)
    lb.seed = 0  # question and exo-view draw per segment (stable under restarts)
    lb.exo_view = "random"  # exo camera paired with each answer: "random" (Ego2ExoVLM [C]) or "best" (best_exo)
    lb.max_segments = 0  # label only the first N segments (0: all)
    lb.output = "labels.json"  # LLaVA JSON written into the workdir
    lb.stop_strings = ()  # extra strings that end an answer (cut after decoding)
    return lb


def student_config(*, hardware: str = "cpu", job: str = "train") -> ConfigDict:
    """The full-size Ego2ExoVLM student config (unlocked); the config files adjust and lock it."""
    c = config_lib.base_config(method="ego2exo", job=job, hardware=hardware)
    c.model = full_size_model()
    c.ego2exo = method_block()
    c.data = data_block()
    c.data.num_probes = c.model.num_probes  # <probe> placeholders after each video
    c.label = label_block()
    t = c.train
    t.global_batch = 128  # Ego2ExoVLM [C]: global batch 128
    t.epochs = 3.0  # Ego2ExoVLM [C]: 3 epochs
    t.warmup_ratio = 0.03  # Ego2ExoVLM [C]: warmup 3%
    t.schedule = "cosine"  # Ego2ExoVLM [C]: cosine decay
    t.weight_decay = 0.0  # Ego2ExoVLM [C]: weight decay 0
    t.groups = student_groups(c.ego2exo.lr_lora, c.ego2exo.lr_probe)  # Ego2ExoVLM [C] LR groups
    c.model.arch = "llava_video"  # the SigLIP stack; videollama3_student_config() is the paper's base
    c.eval = eval_config("ego_in_exo")
    return c


def videollama3_student_config(*, hardware: str = "cpu", job: str = "train") -> ConfigDict:
    """The Ego2ExoVLM student on VideoLLaMA3-7B-Image (the paper's base), unlocked."""
    c = student_config(hardware=hardware, job=job)
    c.model = videollama3_model()
    c.data = videollama3_data_block()
    c.data.num_probes = c.model.num_probes
    c.train.groups = student_groups(c.ego2exo.lr_lora, c.ego2exo.lr_probe, projector="projector")
    return c
