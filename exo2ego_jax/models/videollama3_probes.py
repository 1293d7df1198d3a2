"""Ego2ExoVLM EAVT probes on the VideoLLaMA3 vision encoder (the authors' student base model).

Same mechanism as ``models/probes.py`` for the SigLIP tower: ``num_probes`` learnable vectors
(encoder width, N(0, 0.02)); after encoder layer i a cross-attention module i sets
``probes = CrossAttn_i(query=probes, key=value=the patch tokens of all frames of the probes' own
video at layer i)`` with no residual / norm / MLP; module i starts as a copy of encoder layer i's
self-attention (q/k/v/out); a probe projector, a copy of the main projector, maps the final probes
to ``<probe>`` token embeddings.

What differs on this encoder: frames are padded per-frame buckets, so the keys are masked to each
frame's real patch slots (``grid_hw``) and real frames; the encoder rotates its own q/k with an
axial 2-D RoPE, but probes have no grid position, so the cross-attention uses the copied
projections without RoPE. The probes ride the encoder's layer scan as its ``layer_hook``.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from exo2ego_jax.models.mllm import scatter_tokens
from exo2ego_jax.models.probes import ProbeLayerFlag
from exo2ego_jax.models.videollama3 import (Projector, VideoLlama3, VisualInput, block_major_positions,
                                            merge_frames)
from exo2ego_jax.models.vit import Attention, stack_layers

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class VideoLlama3EAVTConfig:
    """Probe settings (Ego2ExoVLM defaults)."""

    num_probes: int = 16  # Ego2ExoVLM EAVT: 16 probe vectors
    init_std: float = 0.02  # Ego2ExoVLM EAVT: probes ~ N(0, 0.02)
    layers: tuple[int, ...] | None = None  # encoder layers followed by a probe update; None = all (Ego2ExoVLM)
    probe_token_id: int = 151665  # placeholder id of <probe> (first id after Qwen2.5's added tokens)

    def __post_init__(self):
        if self.layers is not None:
            object.__setattr__(self, "layers", tuple(int(i) for i in self.layers))


class ProbeCrossAttention(nnx.Module):
    """One layer's update: probes [B, Q, D] <- attn(probes, real patch tokens of the video's frames)."""

    def __init__(self, hidden_size: int, num_heads: int, *, dtype, param_dtype, rngs):
        self.attn = Attention(hidden_size, num_heads, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.enabled = ProbeLayerFlag(jnp.ones((), jnp.bool_))

    def __call__(self, carry: tuple[Array, Array], x: Array) -> tuple[Array, Array]:
        """carry = (probes [B, Q, D], key_ok [B, F, P]); x [B, F, P, D] the layer's output."""
        probes, key_ok = carry
        kv = x.reshape(x.shape[0], -1, x.shape[-1])
        mask = key_ok.reshape(key_ok.shape[0], 1, 1, -1)
        out = jnp.where(self.enabled.value, self.attn(probes, kv, mask).astype(probes.dtype), probes)
        return out, key_ok


class VideoLlama3EAVT(nnx.Module):
    """Probes, their per-layer cross-attention stack and the probe projector of one ``VideoLlama3``."""

    def __init__(self, cfg: VideoLlama3EAVTConfig, model: VideoLlama3, *, dtype=jnp.float32,
                 param_dtype=jnp.float32, rngs: nnx.Rngs, init_from_model: bool = True):
        vision = model.cfg.vision
        n = vision.num_layers
        chosen = set(range(n)) if cfg.layers is None else set(cfg.layers)
        if not chosen <= set(range(n)):
            raise ValueError(f"VideoLlama3EAVTConfig.layers={cfg.layers}: the encoder has {n} layers (0..{n - 1}).")
        self.cfg, self.num_layers = cfg, n
        self.probes = nnx.Param(cfg.init_std * jax.random.normal(rngs.params(), (cfg.num_probes, vision.hidden_size),
                                                                 param_dtype), sharding=("probes", "vit_embed"))
        self.cross_attn = stack_layers(lambda r: ProbeCrossAttention(vision.hidden_size, vision.num_heads, dtype=dtype,
                                                                     param_dtype=param_dtype, rngs=r), n, rngs)
        self.cross_attn.enabled.value = jnp.asarray([i in chosen for i in range(n)])
        self.projector = Projector(vision.hidden_size, model.cfg.llm.hidden_size, dtype=dtype, param_dtype=param_dtype,
                                   rngs=rngs)
        if init_from_model:
            self.init_from(model)

    def init_from(self, model: VideoLlama3) -> None:
        """Module i <- encoder layer i's self-attention (q/k/v/out); probe projector <- the projector."""
        attn = nnx.state(model.vision.layers.attn, nnx.Param)
        nnx.update(self.cross_attn.attn, jax.tree.map(jnp.array, attn))
        nnx.update(self.projector, jax.tree.map(jnp.array, nnx.state(model.projector, nnx.Param)))

    def encode(self, model: VideoLlama3, videos: VisualInput) -> tuple[Array, Array, Array]:
        """Video tokens [B, F, N, D_llm], their mask [B, F, N] and probe tokens [B, Q, D_llm]."""
        m = model.cfg.video_merge_size
        _, _, key_ok = block_major_positions(videos.grid_hw, videos.patches.shape[-2], m)
        p0 = jnp.broadcast_to(self.probes.value, (videos.patches.shape[0], *self.probes.value.shape))
        hidden, (probes, _) = model.vision(videos.patches, videos.grid_hw, merge_size=m, layer_hook=self.cross_attn,
                                           hook_carry=(p0, key_ok))
        merged, valid = merge_frames(hidden, videos.grid_hw, m)
        if videos.keep is not None:
            valid = valid & videos.keep.astype(bool)
        return model.projector(merged), valid, self.projector(probes)

    def embed_inputs(self, model: VideoLlama3, input_ids: Array, videos: VisualInput,
                     images: VisualInput | None = None) -> Array:
        """Text embeddings with video tokens at the video placeholders, probe tokens at ``<probe>``."""
        tokens, valid, probe_tokens = self.encode(model, videos)
        encoded = {model.cfg.video_token_id: (tokens, valid)}
        if images is not None:
            encoded[model.cfg.image_token_id] = model.encode(images, model.cfg.image_merge_size)
        embeds = model.splice(input_ids, encoded, extra_ids=(self.cfg.probe_token_id,))
        return scatter_tokens(embeds, input_ids, self.cfg.probe_token_id, probe_tokens)
