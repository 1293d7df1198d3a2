"""Video chat with a VideoLLaMA3 checkpoint directory (the ``chat`` job's path for these checkpoints).

    python -m exo2ego_jax.main --config configs/chat.py --config.checkpoint=/models/VideoLLaMA3-7B \
        --config.video=clip.mp4 --config.prompt="What is the person doing?" --workdir /tmp/chat

The directory is either transformers' ``VideoLlama3ForConditionalGeneration`` (``save_pretrained``)
or DAMO-NLP-SG's release layout (``model_type: videollama3_qwen2``), with its tokenizer. Frames are
sampled at ``--config.chat.fps`` (default 1, the Ego2ExoVLM teacher's rate) with at most
``--config.chat.max_frames`` (180), resized inside the processor's pixel budget
(``data.videollama3_processor``; the checkpoint's ``video_preprocessor_config.json`` when present), the
video token of the prompt (prepended when absent) becomes ``Time t s:`` + one token per kept merged
patch per frame, and decoding starts from the spliced embeddings (KV-cache ``generate``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import nnx

from exo2ego_jax import config_lib
from exo2ego_jax.data import video as video_lib
from exo2ego_jax.data import videollama3_processor as vp
from exo2ego_jax.models import videollama3 as vl3
from exo2ego_jax.tokenizer import load_tokenizer
from exo2ego_jax.models.llm import unstack_layers
from exo2ego_jax.weights import videollama3_weights

VIDEOLLAMA3_MODEL_TYPES = ("video_llama_3", "videollama3_qwen2")


def is_videollama3_dir(path: str) -> bool:
    f = os.path.join(path, "config.json")
    if not os.path.isfile(f):
        return False
    with open(f) as fh:
        return json.load(fh).get("model_type") in VIDEOLLAMA3_MODEL_TYPES


def video_inputs(path: str, pcfg: vp.VideoLlama3ProcessorConfig) -> vp.VisualFeatures:
    """Decodes the frames ``pcfg.fps`` / ``pcfg.max_frames`` select and processes them."""
    info = video_lib.probe(path)
    idx = vp.sample_frame_indices(info.num_frames, info.fps, fps=pcfg.fps, min_frames=pcfg.min_frames,
                                  max_frames=pcfg.max_frames)
    frames = video_lib.decode_frames(path, idx)
    return vp.process_video(frames, idx / info.fps, pcfg)


def prompt_ids(tok, prompt: str, system: str, video: vp.VisualFeatures, video_token: str,
               pcfg: vp.VideoLlama3ProcessorConfig, max_len: int, *, render, encode) -> np.ndarray:
    """[T] ids of the chat-templated prompt with the video token expanded (timestamps + kept tokens).

    ``render(tok, prompt, system) -> str`` applies the chat template, ``encode(tok, text) -> ids``
    tokenises it (the chat job's helpers)."""
    count = prompt.count(video_token)
    if count > 1:
        raise ValueError(f"--config.prompt has {count} {video_token}; the chat job takes one video.")
    if count == 0:
        prompt = f"{video_token}\n{prompt}"
    text = vp.expand_prompt(render(tok, prompt, system), videos=[video],
                            cfg=dataclasses.replace(pcfg, video_token=video_token))
    ids = encode(tok, text)
    if len(ids) > max_len:
        raise ValueError(f"the prompt is {len(ids)} tokens with {int(video.keep.sum())} visual tokens, more than "
                         f"the {max_len} the context leaves after max_new_tokens; lower --config.chat.max_frames "
                         "or --config.chat.fps.")
    return np.asarray(ids, np.int32)


@nnx.jit
def _embeds(model, input_ids, videos):
    return model.embed_inputs(input_ids, videos=videos)


def batch_embeddings(model: vl3.VideoLlama3, batch: vp.VideoBatch) -> tuple[jax.Array, np.ndarray]:
    """(inputs_embeds [B, T, D], attention_mask [B, T]) of a ``videollama3_processor.collate`` batch,
    ready for ``generate.generate(model.llm, inputs_embeds=..., attention_mask=...)``.

    The placeholder counts are checked on the host first (the error names the sample); one compile
    per bucket shape.
    """
    vl3.check_visual_placeholders(batch.input_ids, model.cfg.video_token_id, batch.grid_hw,
                                  model.cfg.video_merge_size, batch.keep)
    videos = vl3.VisualInput(jnp.asarray(batch.patches), jnp.asarray(batch.grid_hw), jnp.asarray(batch.keep))
    return _embeds(model, jnp.asarray(batch.input_ids), videos), batch.attention_mask


def run_video(config, workdir: str, *, dtypes, render, encode, decode, finish) -> dict:
    """Loads the checkpoint, answers ``config.prompt`` about ``config.video``. The chat job passes its
    dtype table and its prompt / decoding / result helpers (shared with its other paths)."""
    c = config.chat
    ckpt = config.checkpoint
    t0 = time.perf_counter()
    model = videollama3_weights.load_videollama3_dir(ckpt, dtype=dtypes[c.dtype], param_dtype=dtypes[c.param_dtype],
                                                     attention_impl=config.hardware.attention,
                                                     unroll_layers=config_lib.unroll_layers(config.hardware))
    tok = load_tokenizer(c.tokenizer or ckpt, extra_special_tokens=())
    video_token = tok.convert_ids_to_tokens(model.cfg.video_token_id)
    if not video_token or tok.convert_tokens_to_ids(video_token) != model.cfg.video_token_id:
        raise ValueError(f"{ckpt}: the tokenizer has no token with the video token id {model.cfg.video_token_id} "
                         "of config.json; pass the checkpoint's own tokenizer (--config.chat.tokenizer).")
    logging.info("loaded VideoLLaMA3 %s in %.1fs", ckpt, time.perf_counter() - t0)
    pcfg = vp.VideoLlama3ProcessorConfig.from_dir(ckpt, fps=c.fps, max_frames=c.max_frames,
                                                  patch_size=model.cfg.vision.patch_size,
                                                  video_merge_size=model.cfg.video_merge_size)
    video = video_inputs(config.video, pcfg)
    ids = prompt_ids(tok, config.prompt, c.system, video, video_token, pcfg,
                     model.cfg.llm.max_position_embeddings - c.max_new_tokens, render=render, encode=encode)
    t, h, w = video.grid_thw
    batch = vp.collate([ids], [video], length_buckets=(len(ids),), frame_buckets=(t,), patch_buckets=(h * w,))
    embeds, mask = batch_embeddings(model, batch)
    if not c.scan_layers:
        unstack_layers(model.llm)
    t0 = time.perf_counter()
    out = decode(model.llm, config, tok, inputs_embeds=embeds, attention_mask=mask)
    return finish(config, workdir, out, time.perf_counter() - t0, video=config.video, frames=int(t),
                  visual_tokens=int(video.keep.sum()), prompt_tokens=int(len(ids)),
                  timestamps=[round(s, 3) for s in video.timestamps])
