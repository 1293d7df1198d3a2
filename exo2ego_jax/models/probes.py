"""Ego2ExoVLM Ego Adaptive Visual Tokens (EAVT): learnable probes updated after every ViT layer.

docs/papers.md, Ego2ExoVLM, EAVT [C]: 16 probe vectors (ViT width, init N(0, 0.02)). After ViT layer i a
cross-attention module i sets ``probes = CrossAttn_i(query=probes, key=value=all patch tokens of all
frames of that video at layer i)``: no residual, no norm, no MLP. Module i starts as a copy of ViT
layer i's self-attention (q/k/v/out). A probe projector, a copy of the main projector, maps the final
probes to ``<probe>`` token embeddings placed right after the visual tokens. The probe vectors are
trainable parameters (the authors' code leaves them out of every optimizer group by accident).

The probes ride along the tower's layer scan as its ``layer_hook`` (``vit.LayerHook``): the
cross-attention modules are stacked on the same ``layers`` axis as the tower, so the tower code
runs once, unchanged. Attention is batched per video ([B, V] leading dims), so a probe can only
see the tokens of its own video.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from exo2ego_jax.models.connectors import MLPReadout
from exo2ego_jax.models.mllm import VideoLLM, scatter_tokens
from exo2ego_jax.models.vit import Attention, VisionConfig, stack_layers

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class EAVTConfig:
    """Probe settings (Ego2ExoVLM defaults)."""

    num_probes: int = 16  # Ego2ExoVLM EAVT: 16 probe vectors
    init_std: float = 0.02  # Ego2ExoVLM EAVT: probes ~ N(0, 0.02)
    # ViT layers (0-based, among the layers the tower runs) followed by a probe update; None = all
    # (Ego2ExoVLM). Unselected layers leave the probes unchanged.
    layers: tuple[int, ...] | None = None
    probe_token_id: int = 32001  # placeholder id of <probe> (expanded num_probes times per video)

    def __post_init__(self):
        if self.layers is not None:  # a list from a ConfigDict would make the config unhashable
            object.__setattr__(self, "layers", tuple(int(i) for i in self.layers))


class ProbeLayerFlag(nnx.Variable):
    """Per-layer on/off switch of a probe update (a constant, not a parameter)."""


class ProbeCrossAttention(nnx.Module):
    """One layer's update: probes [*video, P, D] <- attn(probes, patch tokens of the video)."""

    def __init__(self, vision: VisionConfig, *, dtype, param_dtype, rngs):
        self.attn = Attention(vision.hidden_size, vision.num_heads, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.enabled = ProbeLayerFlag(jnp.ones((), jnp.bool_))
        self.skip = int(vision.has_cls)  # the class token is not a patch token

    def __call__(self, carry: Array | tuple[Array, Array], x: Array) -> Array | tuple[Array, Array]:
        """carry: probes [..., P, D], or (probes, frame_mask [..., F]) to keep padded frames out of the keys."""
        probes, frame_mask = carry if isinstance(carry, tuple) else (carry, None)
        # x [..., F, T, D]: fold the frames of each video into one key/value sequence.
        kv = x[..., self.skip:, :]
        mask = None
        if frame_mask is not None:  # key mask [..., 1 (heads), 1 (queries), F * T]
            keep = jnp.broadcast_to(frame_mask[..., None] > 0, kv.shape[:-1])
            mask = keep.reshape(*keep.shape[:-2], 1, 1, -1)
        kv = kv.reshape(*kv.shape[:-3], kv.shape[-3] * kv.shape[-2], kv.shape[-1])
        out = jnp.where(self.enabled.value, self.attn(probes, kv, mask).astype(probes.dtype), probes)
        return out if frame_mask is None else (out, frame_mask)


class EAVT(nnx.Module):
    """Probes, their per-layer cross-attention stack and the probe projector of one ``VideoLLM``."""

    def __init__(self, cfg: EAVTConfig, model: VideoLLM, *, dtype=jnp.float32, param_dtype=jnp.float32,
                 rngs: nnx.Rngs, init_from_model: bool = True):
        vision, conn = model.cfg.vision, model.cfg.connector
        n = vision.feature_num_layers
        chosen = set(range(n)) if cfg.layers is None else set(cfg.layers)
        if not chosen <= set(range(n)):
            raise ValueError(f"EAVTConfig.layers={cfg.layers}: the tower runs {n} layers (0..{n - 1}) for its "
                             f"features (feature_layer={vision.feature_layer}).")
        if conn.kind == "stc":
            raise ValueError("EAVT needs a per-token projector (mlp2x_gelu or merge_mlp2x_gelu) to copy for the "
                             "probes; the STC connector's readout takes LLM-width inputs.")
        self.cfg, self.num_layers = cfg, n
        self.probes = nnx.Param(cfg.init_std * jax.random.normal(rngs.params(), (cfg.num_probes, vision.hidden_size),
                                                                 param_dtype), sharding=("probes", "vit_embed"))
        self.cross_attn = stack_layers(
            lambda r: ProbeCrossAttention(vision, dtype=dtype, param_dtype=param_dtype, rngs=r), n, rngs)
        self.cross_attn.enabled.value = jnp.asarray([i in chosen for i in range(n)])
        self.projector = MLPReadout(conn.in_dim, conn.out_dim, conn.mlp_depth, from_vit=True, dtype=dtype,
                                    param_dtype=param_dtype, rngs=rngs)
        if init_from_model:
            self.init_from(model)

    def init_from(self, model: VideoLLM) -> None:
        """Copies ViT layer i's self-attention into module i and the main projector into ours."""
        n = self.num_layers
        attn = jax.tree.map(lambda a: jnp.array(a[:n]), nnx.state(model.vision.layers.attn, nnx.Param))
        nnx.update(self.cross_attn.attn, attn)
        nnx.update(self.projector, jax.tree.map(jnp.array, nnx.state(model.connector.readout, nnx.Param)))

    def encode(self, model: VideoLLM, pixels: Array, frame_mask: Array | None = None) -> tuple[Array, Array]:
        """pixels [B, V, F, H, W, 3] -> (visual tokens [B, V, N, D_llm], probe tokens [B, V, P, D_llm]).

        uint8 pixels are normalised by the tower (``model.encode_features``); float32 ones must be
        normalised already. ``frame_mask`` [B, V, F] (1 = real frame): the probes never attend to
        the patch tokens of padded frames (short clips zero-padded to F frames)."""
        b, v = pixels.shape[:2]
        p0 = jnp.broadcast_to(self.probes.value, (b, v, *self.probes.value.shape))
        carry = p0 if frame_mask is None else (p0, jnp.asarray(frame_mask).astype(jnp.int32))
        feats, carry = model.encode_features(pixels, layer_hook=self.cross_attn, hook_carry=carry)
        probes = carry[0] if frame_mask is not None else carry
        return model.connect(feats), self.projector(probes)

    def embed_inputs(self, model: VideoLLM, input_ids: Array, pixels: Array,
                     video_mask: Array | None = None, frame_mask: Array | None = None) -> Array:
        """Text embeddings with visual tokens at ``<video>`` and probe tokens at ``<probe>`` placeholders."""
        vis, probe_tokens = self.encode(model, pixels, frame_mask)
        embeds = model.embed_inputs(jnp.where(input_ids == self.cfg.probe_token_id, 0, input_ids), vis, video_mask)
        return scatter_tokens(embeds, input_ids, self.cfg.probe_token_id, probe_tokens, video_mask)
