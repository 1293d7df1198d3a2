"""The Ego2ExoVLM teacher as the authors ran it: a VideoLLaMA3 checkpoint answering about EGO segments.

``VideoLlama3Teacher`` builds the labelling job's runner (``videollama3_infer.VideoLlama3Runner``:
``with_frames`` / ``generate``) from a VideoLLaMA3 checkpoint (``load``) or a VideoLLaMA3 run trained
here (``from_model``). A checkpoint's segments are decoded at ``fps`` with at most ``max_frames``
frames (Ego2ExoVLM [C]: 1 fps, 180 frames for VideoLLaMA3-7B) and processed by VideoLLaMA3's processor
rules (``data/videollama3_processor.py``: resize within the pixel budget, token compression,
``Time t s:`` before each frame's tokens); a run's segments by the rules it was trained with.
"""
from __future__ import annotations

import jax.numpy as jnp
import ml_collections

from exo2ego_jax.data import videollama3_processor as vp
from exo2ego_jax.methods.ego2exo.videollama3_infer import (CheckpointClips, RunClips, VideoLlama3Runner,
                                                           clip_frames, length_buckets, patch_buckets)
from exo2ego_jax.models import videollama3 as vl3
from exo2ego_jax.parallel import rules as rules_lib
from exo2ego_jax.tokenizer import load_tokenizer
from exo2ego_jax.weights import videollama3_weights

__all__ = ["VideoLlama3Teacher", "clip_frames", "length_buckets", "patch_buckets"]


class VideoLlama3Teacher(VideoLlama3Runner):
    """A VideoLLaMA3 teacher: a runner whose model has no probes (constructors below)."""

    @classmethod
    def load(cls, checkpoint: str, *, tokenizer: str = "", fps: float, max_frames: int, system_prompt: str,
             max_new_tokens: int, dtype: str = "float32", param_dtype: str = "float32", mesh=None,
             attention_impl: str = "auto", unroll_layers: bool | None = None) -> "VideoLlama3Teacher":
        """Reads ``checkpoint`` (transformers' or DAMO-NLP-SG's layout) into its target sharding on ``mesh``."""
        dt = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
        for name, value in (("compute_dtype", dtype), ("param_dtype", param_dtype)):
            if value not in dt:
                raise ValueError(f"config.hardware.{name}={value!r}: the VideoLLaMA3 teacher runs in {sorted(dt)}")
        model = videollama3_weights.load_videollama3_dir(
            checkpoint, dtype=dt[dtype], param_dtype=dt[param_dtype], mesh=mesh,
            rules=rules_lib.RULES if mesh is not None else None, attention_impl=attention_impl,
            unroll_layers=unroll_layers)
        tok = load_tokenizer(tokenizer or checkpoint, extra_special_tokens=())
        token = tok.convert_ids_to_tokens(model.cfg.video_token_id)
        if not token or tok.convert_tokens_to_ids(token) != model.cfg.video_token_id:
            raise ValueError(f"{checkpoint}: the tokenizer has no token with the video token id "
                             f"{model.cfg.video_token_id} of config.json; set config.data.tokenizer to the "
                             "checkpoint's own tokenizer.")
        pcfg = vp.VideoLlama3ProcessorConfig.from_dir(checkpoint, fps=fps, max_frames=max_frames,
                                                      patch_size=model.cfg.vision.patch_size,
                                                      video_merge_size=model.cfg.video_merge_size,
                                                      video_token=token)
        max_len = model.cfg.llm.max_position_embeddings - max_new_tokens
        if max_len <= 0:
            raise ValueError(f"config.label.max_new_tokens={max_new_tokens} leaves no room for a prompt in the "
                             f"teacher's {model.cfg.llm.max_position_embeddings}-token context.")
        return cls(model, tok, CheckpointClips(pcfg), system_prompt, max_len, mesh)

    @classmethod
    def from_model(cls, model: vl3.VideoLlama3, run_cfg: ml_collections.ConfigDict, *, fps: float, max_frames: int,
                   system_prompt: str, max_new_tokens: int, mesh=None) -> "VideoLlama3Teacher":
        """A VideoLLaMA3 run trained with this repository (``run_cfg``: its saved config): clips read by the
        run's data rules (per-frame pixel budget) at ``fps`` with at most ``max_frames`` frames."""
        tok = load_tokenizer(run_cfg.data.tokenizer or run_cfg.model.checkpoint, extra_special_tokens=())
        data = ml_collections.ConfigDict(run_cfg.data.to_dict())
        data.sample_fps, data.num_frames = float(fps), int(max_frames)
        return cls(model, tok, RunClips(data), system_prompt, model.cfg.llm.max_position_embeddings - max_new_tokens,
                   mesh)
