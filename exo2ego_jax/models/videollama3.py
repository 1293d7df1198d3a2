"""VideoLLaMA3 (DAMO-NLP-SG) in flax.nnx: its vision encoder, projector and the Qwen2 MLLM around them.

The vision encoder is a SigLIP-shaped pre-LN ViT that differs from ``models/vit.py``'s towers in kind:

* frames of any size: each frame is its own ``(h, w)`` patch grid (multiples of the merge size);
* no absolute position embedding: an axial 2-D RoPE rotates q/k by each patch's (row, column),
  the first half of every head's frequencies for the row, the second for the column;
* attention only within a frame (HF packs frames and passes ``cu_seqlens``);
* post-LayerNorm, then each frame's grid is downsampled ``merge_size`` x ``merge_size`` with a
  bilinear resize (``merge_size`` 1 for images, 2 for video frames in the reference processor);
* a two-layer GELU projector (``readout``) into the LLM width.

Layout choice (static shapes for jit): *padded per-frame batches*. A bucket is ``[B, F, P, C*p*p]``
patches with the real grid of each frame in ``grid_hw [B, F, 2]`` (0 x 0 = padding frame): frames
of any size up to ``P`` patches share one compile, attention is a batched [F, P, P] product masked
by each frame's length, and no block-diagonal [sum P, sum P] mask is ever built. Patches inside a
frame are stored block-major (each ``merge_size**2`` block contiguous), as the HF processor writes
them, so the bilinear merge is a fixed weighted sum over each contiguous block (exactly the 2x2
mean for merge size 2). The packed layout was not measured on a TPU here.

Parameter names follow HF (``layers/attn/q_proj``, ``post_norm``, ``projector/fc1``) so the weight
tables in ``weights/videollama3_weights.py`` stay one row per tensor.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from exo2ego_jax.hf_json import read_json_config
from exo2ego_jax.models import attention as attn_lib
from exo2ego_jax.models.llm import DecoderLM, LLMConfig
from exo2ego_jax.models.mllm import scatter_tokens
from exo2ego_jax.models.vit import ACTIVATIONS, MLP, _dense, _layer_norm, attention, stack_layers
from exo2ego_jax.parallel.rules import constrain, constrain_batch

Array = jax.Array

# VideoLLaMA3's processor normalises with the ImageNet "standard" mean / std (0.5 each), as SigLIP.
IMAGE_MEAN = (0.5, 0.5, 0.5)
IMAGE_STD = (0.5, 0.5, 0.5)


@dataclasses.dataclass(frozen=True)
class VideoLlama3VisionConfig:
    """Vision encoder sizes. Defaults: VideoLLaMA3-7B's encoder (SigLIP-so400m-shaped, 27 layers)."""

    hidden_size: int = 1152
    intermediate_size: int = 4304
    num_layers: int = 27  # HF num_hidden_layers
    num_heads: int = 16  # HF num_attention_heads
    patch_size: int = 14
    num_channels: int = 3
    layer_norm_eps: float = 1e-6
    hidden_act: str = "gelu_pytorch_tanh"
    rope_theta: float = 10000.0  # HF rope_parameters["rope_theta"]; the original encoder hard-codes 10000
    remat: bool = False  # rematerialise each layer in the backward pass
    attention_impl: str = "auto"  # models.attention.IMPLEMENTATIONS; fused paths take per-frame lengths

    def __post_init__(self):
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(f"VideoLlama3VisionConfig.hidden_act={self.hidden_act!r}; supported: "
                             f"{sorted(ACTIVATIONS)}.")
        if self.hidden_size % self.num_heads or self.head_dim % 4:
            raise ValueError(f"VideoLlama3VisionConfig: hidden_size {self.hidden_size} / num_heads "
                             f"{self.num_heads} must give a head_dim divisible by 4 (axial 2-D RoPE).")
        if self.attention_impl not in attn_lib.IMPLEMENTATIONS:
            raise ValueError(f"VideoLlama3VisionConfig.attention_impl={self.attention_impl!r}; expected one "
                             f"of {attn_lib.IMPLEMENTATIONS}.")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def patch_dim(self) -> int:
        """Length of one flattened patch (C, ph, pw), as the processor writes ``pixel_values``."""
        return self.num_channels * self.patch_size ** 2

    @classmethod
    def from_hf(cls, d: Mapping[str, Any], **overrides) -> "VideoLlama3VisionConfig":
        """From a HF ``vision_config`` (video_llama_3_vision) or the original release's
        ``vision_encoder_config`` (videollama3_vision_encoder) dict."""
        d = dict(d)
        rope = d.get("rope_parameters") or {}
        kw = dict(hidden_size=d.get("hidden_size", 768), intermediate_size=d.get("intermediate_size", 3072),
                  num_layers=d.get("num_hidden_layers", 12), num_heads=d.get("num_attention_heads", 12),
                  patch_size=d.get("patch_size", 16), num_channels=d.get("num_channels", 3),
                  layer_norm_eps=d.get("layer_norm_eps", 1e-6),
                  hidden_act=d.get("hidden_act", "gelu_pytorch_tanh"),
                  rope_theta=float(rope.get("rope_theta", 10000.0)))
        kw.update(overrides)
        return cls(**kw)


@dataclasses.dataclass(frozen=True)
class VideoLlama3Config:
    """The MLLM. Defaults: VideoLLaMA3-7B (Qwen2.5-7B decoder, 27-layer encoder)."""

    vision: VideoLlama3VisionConfig = VideoLlama3VisionConfig()
    llm: LLMConfig = LLMConfig(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_layers=28,
                               num_heads=28, num_kv_heads=4, head_dim=128, rope_theta=1000000.0,
                               rms_norm_eps=1e-6, attention_bias=True, max_position_embeddings=32768,
                               model_type="qwen2")
    image_token_id: int = 151655  # <|image_pad|> (HF conversion)
    video_token_id: int = 151656  # <|video_pad|>; the original release uses one id for both
    image_merge_size: int = 1  # processor: images keep every patch
    video_merge_size: int = 2  # processor: video frames are merged 2x2

    @classmethod
    def from_hf(cls, src: str | os.PathLike | Mapping[str, Any], **overrides) -> "VideoLlama3Config":
        """From a checkpoint directory / config.json / dict in either layout:

        * transformers' ``video_llama_3`` (``text_config``, ``vision_config``, ``image_token_id``,
          ``video_token_id``);
        * DAMO-NLP-SG's release ``videollama3_qwen2`` (Qwen2 fields at the top level,
          ``vision_encoder_config``, ``mm_projector_type: mlp2x_gelu``, one ``image_token_index`` for
          images and video frames).
        """
        d, where = read_json_config(src)
        mt = d.get("model_type")
        if mt == "video_llama_3":
            text = dict(d["text_config"])
            text.setdefault("model_type", "qwen2")
            if d.get("tie_word_embeddings"):
                text["tie_word_embeddings"] = True
            kw = dict(vision=VideoLlama3VisionConfig.from_hf(d["vision_config"]), llm=LLMConfig.from_hf(text),
                      image_token_id=d.get("image_token_id", 151655), video_token_id=d.get("video_token_id", 151656))
        elif mt == "videollama3_qwen2":
            proj = d.get("mm_projector_type", "mlp2x_gelu")
            if proj != "mlp2x_gelu":
                raise ValueError(f"{where}: mm_projector_type={proj!r}; only mlp2x_gelu (every VideoLLaMA3 "
                                 "release) is supported.")
            if not d.get("vision_encoder_config"):
                raise ValueError(f"{where}: no vision_encoder_config (a config that names a separate "
                                 f"vision_encoder={d.get('vision_encoder')!r} is a training-time config).")
            token = d.get("image_token_index")
            if token is None or token < 0:
                raise ValueError(f"{where}: image_token_index={token!r}; the release config sets the id of "
                                 "<image>.")
            llm = LLMConfig.from_hf(dict(d, model_type="qwen2"))
            kw = dict(vision=VideoLlama3VisionConfig.from_hf(d["vision_encoder_config"]), llm=llm,
                      image_token_id=token, video_token_id=token)
        else:
            raise ValueError(f"{where}: model_type={mt!r} is not a VideoLLaMA3 config (expected video_llama_3 "
                             "or videollama3_qwen2).")
        kw.update(overrides)
        return cls(**kw)


# ----------------------------------------------------------------------------- vision encoder


def block_major_positions(grid_hw: Array, num_patches: int, merge_size: int) -> tuple[Array, Array, Array]:
    """(row, column, valid) [..., P] of each patch slot, patches stored block-major per frame.

    Slot i of a frame with grid (h, w) is patch ``i % m**2`` of merge block ``i // m**2``; blocks
    run row-major over the (h/m, w/m) grid (HF ``get_vision_position_ids``). Slots past h*w pad.
    """
    m = merge_size
    i = jnp.arange(num_patches, dtype=jnp.int32)
    h, w = grid_hw[..., 0:1].astype(jnp.int32), grid_hw[..., 1:2].astype(jnp.int32)
    blocks_per_row = jnp.maximum(w // m, 1)
    block, within = i // (m * m), i % (m * m)
    row = (block // blocks_per_row) * m + within // m
    col = (block % blocks_per_row) * m + within % m
    return row, col, i < h * w


def axial_rope(row: Array, col: Array, head_dim: int, theta: float) -> tuple[Array, Array]:
    """cos / sin [..., P, head_dim] (float32): frequencies over head_dim/2 shared by both axes;
    the row angles fill the first quarter (and third), the column angles the second (and fourth)."""
    half = head_dim // 2
    inv_freq = 1.0 / (theta ** (jnp.arange(0, half, 2, dtype=jnp.float32) / half))
    ang = jnp.concatenate([row[..., None].astype(jnp.float32) * inv_freq,
                           col[..., None].astype(jnp.float32) * inv_freq], axis=-1)
    ang = jnp.concatenate([ang, ang], axis=-1)
    return jnp.cos(ang), jnp.sin(ang)


def _rotate(x: Array, cos: Array, sin: Array) -> Array:
    """RoPE (rotate-half convention) in float32; x [F, P, H, Dh], cos/sin [F, P, Dh]."""
    xf = x.astype(jnp.float32)
    x1, x2 = jnp.split(xf, 2, axis=-1)
    rot = jnp.concatenate([-x2, x1], axis=-1)
    return (xf * cos[..., None, :] + rot * sin[..., None, :]).astype(x.dtype)


def merge_weights(merge_size: int) -> np.ndarray:
    """Weights [m*m] of a ``m``-fold bilinear downsampling (align_corners=False) over one block.

    Output pixel j samples source coordinate m*j + (m-1)/2, which always falls inside block j:
    the 2 middle pixels of each axis for even m (the 2x2 mean for m=2), the centre one for odd m.
    """
    src = (merge_size - 1) / 2.0
    lo = int(np.floor(src))
    a = np.zeros(merge_size, np.float64)
    a[lo] += 1.0 - (src - lo)
    a[min(lo + 1, merge_size - 1)] += src - lo
    return np.outer(a, a).reshape(-1).astype(np.float32)


class VisionAttention(nnx.Module):
    """Per-frame self-attention with axial RoPE on q/k (HF VideoLlama3VisionAttention)."""

    def __init__(self, cfg: VideoLlama3VisionConfig, *, dtype, param_dtype, rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        d = cfg.hidden_size
        self.num_heads = cfg.num_heads
        self.impl = cfg.attention_impl
        self.q_proj = _dense(d, d, ("vit_embed", "vit_heads"), **kw)
        self.k_proj = _dense(d, d, ("vit_embed", "vit_heads"), **kw)
        self.v_proj = _dense(d, d, ("vit_embed", "vit_heads"), **kw)
        self.out_proj = _dense(d, d, ("vit_heads", "vit_embed"), **kw)

    def __call__(self, x: Array, cos: Array, sin: Array, lengths: Array) -> Array:
        """x [F, P, D]; cos/sin [F, P, Dh]; lengths [F] real patches per frame (a prefix)."""
        heads = lambda t: constrain(t.reshape(*t.shape[:-1], self.num_heads, -1),  # noqa: E731
                                    ("act_batch", None, "act_heads", None))
        q = _rotate(heads(self.q_proj(x)), cos, sin)
        k = _rotate(heads(self.k_proj(x)), cos, sin)
        v = heads(self.v_proj(x))
        impl = attn_lib.resolve_impl(self.impl)
        if impl in ("cudnn", "dot_product"):
            out = jax.nn.dot_product_attention(q, k, v, key_value_seq_lengths=lengths.astype(jnp.int32),
                                               implementation="cudnn" if impl == "cudnn" else None)
        else:  # xla, and splash (causal-only kernel) falls back here
            key_ok = jnp.arange(x.shape[1])[None, :] < lengths[:, None]
            out = attention(q, k, v, key_ok[:, None, None, :])
        return self.out_proj(out.reshape(*out.shape[:-2], -1))


class VisionLayer(nnx.Module):
    """Pre-LN layer: x + attn(ln1(x)); x + mlp(ln2(x))."""

    def __init__(self, cfg: VideoLlama3VisionConfig, *, dtype, param_dtype, rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.norm1 = _layer_norm(cfg.hidden_size, cfg.layer_norm_eps, **kw)
        self.attn = VisionAttention(cfg, **kw)
        self.norm2 = _layer_norm(cfg.hidden_size, cfg.layer_norm_eps, **kw)
        self.mlp = MLP(cfg, **kw)  # fc1 / act / fc2 with the vit logical axes (duck-typed config)

    def __call__(self, x, cos, sin, lengths):
        x = x + self.attn(self.norm1(x), cos, sin, lengths)
        return x + self.mlp(self.norm2(x))


class VideoLlama3VisionEncoder(nnx.Module):
    """Patches [..., P, C*p*p] (normalised, block-major) + grids [..., 2] -> hidden states [..., P, D]."""

    def __init__(self, cfg: VideoLlama3VisionConfig, *, dtype=jnp.float32, param_dtype=jnp.float32,
                 rngs: nnx.Rngs, unroll_layers: bool | None = None):
        self.cfg = cfg
        self.dtype = dtype
        # As DecoderLM's and VisionTower's: None = unrolled on CPU (config.hardware.layer_loop).
        self.unroll_layers = unroll_layers
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        # HF's Conv2d(kernel = stride = patch) on one flattened (C, ph, pw) patch is this Linear.
        self.patch_embed = _dense(cfg.patch_dim, cfg.hidden_size, ("conv_in", "vit_embed"), **kw)
        self.layers = stack_layers(lambda r: VisionLayer(cfg, dtype=dtype, param_dtype=param_dtype, rngs=r),
                                   cfg.num_layers, rngs)
        self.post_norm = _layer_norm(cfg.hidden_size, cfg.layer_norm_eps, **kw)

    def __call__(self, patches: Array, grid_hw: Array, *, merge_size: int, num_layers: int | None = None,
                 post_norm: bool = True, layer_hook: nnx.Module | None = None, hook_carry: Any = None):
        """Encoder hidden states, padded slots included (callers read them through the valid mask).

        Args:
          patches: [..., P, C*p*p] float, normalised with ``IMAGE_MEAN`` / ``IMAGE_STD`` (processor output).
          grid_hw: [..., 2] int, each frame's patch grid (h, w); h*w <= P; (0, 0) marks a padding frame.
          merge_size: the merge size the processor laid the patches out for (static).
          num_layers: run only the first k layers (0 = patch embeddings).
          layer_hook / hook_carry: like ``vit.LayerHook``; called as ``c = h_i(c, x)`` after layer i with
            x [..., P, D]; if given, returns ``(hidden, hook_carry)``.
        """
        cfg = self.cfg
        lead, p = patches.shape[:-2], patches.shape[-2]
        if patches.shape[-1] != cfg.patch_dim:
            raise ValueError(f"VideoLlama3VisionEncoder: patches have length {patches.shape[-1]}, expected "
                             f"{cfg.patch_dim} (= {cfg.num_channels} x {cfg.patch_size} x {cfg.patch_size}).")
        if tuple(grid_hw.shape) != (*lead, 2):
            raise ValueError(f"VideoLlama3VisionEncoder: grid_hw shape {tuple(grid_hw.shape)}, expected "
                             f"{(*lead, 2)} (one (h, w) per frame of patches {tuple(patches.shape)}).")
        if p % (merge_size * merge_size):
            raise ValueError(f"VideoLlama3VisionEncoder: {p} patch slots per frame is not a multiple of "
                             f"merge_size**2 = {merge_size ** 2}.")
        n = cfg.num_layers if num_layers is None else num_layers
        x = patches.reshape(-1, p, patches.shape[-1]).astype(self.dtype)
        grid = grid_hw.reshape(-1, 2)
        row, col, valid = block_major_positions(grid, p, merge_size)
        cos, sin = axial_rope(row, col, cfg.head_dim, cfg.rope_theta)
        lengths = valid.sum(-1).astype(jnp.int32)
        x = constrain_batch(self.patch_embed(x))

        gdef, state = nnx.split(self.layers)
        state = jax.tree.map(lambda a: a[:n], state)
        hdef, hstate = nnx.split(layer_hook) if layer_hook is not None else (None, None)
        if hdef is not None:
            hstate = jax.tree.map(lambda a: a[:n], hstate)

        def body(c, per_layer):
            h, hc = c
            lp, hp = per_layer
            h = constrain_batch(nnx.merge(gdef, lp)(constrain_batch(h), cos, sin, lengths))
            if hdef is not None:
                hc = nnx.merge(hdef, hp)(hc, h.reshape(*lead, *h.shape[1:]))
            return (h, hc), None

        if cfg.remat:
            body = jax.checkpoint(body, prevent_cse=False)
        carry = hook_carry
        if n:
            unroll = jax.default_backend() == "cpu" if self.unroll_layers is None else self.unroll_layers
            (x, carry), _ = jax.lax.scan(body, (x, carry), (state, hstate), unroll=bool(unroll))
        if post_norm:
            x = self.post_norm(x)
        x = x.reshape(*lead, p, x.shape[-1])
        return (x, carry) if layer_hook is not None else x


def merge_frames(hidden: Array, grid_hw: Array, merge_size: int) -> tuple[Array, Array]:
    """Bilinear m x m downsampling of every frame: [..., P, D] -> ([..., P/m**2, D], valid [..., P/m**2])."""
    m2 = merge_size * merge_size
    w = jnp.asarray(merge_weights(merge_size), jnp.float32)
    blocks = hidden.reshape(*hidden.shape[:-2], -1, m2, hidden.shape[-1])
    out = jnp.einsum("...kd,k->...d", blocks.astype(jnp.float32), w).astype(hidden.dtype)
    n = jnp.arange(out.shape[-2], dtype=jnp.int32)
    valid = n < (grid_hw[..., 0:1] * grid_hw[..., 1:2]).astype(jnp.int32) // m2
    return out, valid


class Projector(nnx.Module):
    """``readout``: Linear -> GELU (exact) -> Linear, encoder width -> LLM width."""

    def __init__(self, d_in: int, d_out: int, *, dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.fc1 = _dense(d_in, d_out, ("vit_embed", "mlp"), **kw)
        self.fc2 = _dense(d_out, d_out, ("mlp", "embed"), **kw)

    def __call__(self, x: Array) -> Array:
        return self.fc2(jax.nn.gelu(self.fc1(x), approximate=False))


# ----------------------------------------------------------------------------- the MLLM


class VisualInput(NamedTuple):
    """One modality of a batch, padded to a bucket (static shapes: F frames of P patch slots).

    patches [B, F, P, C*p*p] float (normalised), grid_hw [B, F, 2] int ((0, 0) = padding frame),
    keep [B, F, P/m**2] bool or None: the processor's token-compression mask (None keeps all).
    Images are frames too (one per image, merge size 1).
    """

    patches: Array
    grid_hw: Array
    keep: Array | None = None


class VideoLlama3(nnx.Module):
    """``vision`` -> per-frame merge -> ``projector`` -> spliced into ``llm`` (a Qwen2 DecoderLM)."""

    def __init__(self, cfg: VideoLlama3Config, *, dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs,
                 remat_policy: str = "none", attention_impl: str = "auto", unroll_layers: bool | None = None):
        self.cfg = cfg
        self.vision = VideoLlama3VisionEncoder(cfg.vision, dtype=dtype, param_dtype=param_dtype, rngs=rngs,
                                               unroll_layers=unroll_layers)
        self.projector = Projector(cfg.vision.hidden_size, cfg.llm.hidden_size, dtype=dtype,
                                   param_dtype=param_dtype, rngs=rngs)
        self.llm = DecoderLM(cfg.llm, dtype=dtype, param_dtype=param_dtype, rngs=rngs,
                             remat_policy=remat_policy, attention_impl=attention_impl, unroll_layers=unroll_layers)

    def encode(self, visual: VisualInput, merge_size: int) -> tuple[Array, Array]:
        """Visual tokens [B, F, N, D_llm] and their mask [B, F, N] (real, kept tokens), N = P/m**2."""
        hidden = self.vision(visual.patches, visual.grid_hw, merge_size=merge_size)
        merged, valid = merge_frames(hidden, visual.grid_hw, merge_size)
        if visual.keep is not None:
            valid = valid & visual.keep.astype(bool)
        return self.projector(merged), valid

    def embed_inputs(self, input_ids: Array, *, images: VisualInput | None = None,
                     videos: VisualInput | None = None) -> Array:
        """Text embeddings [B, T, D] with each row's visual tokens, in frame order, at its placeholders.

        Row b's k-th ``video_token_id`` gets the k-th real kept token of row b's frames (HF fills
        the placeholders of the whole batch in order, which is the same when every sample's frames
        are in its own row). Counts are checked on the host (``check_visual_placeholders``).
        """
        cfg = self.cfg
        encoded = {}
        if images is not None:
            encoded[cfg.image_token_id] = self.encode(images, cfg.image_merge_size)
        if videos is not None:
            encoded[cfg.video_token_id] = self.encode(videos, cfg.video_merge_size)
        return self.splice(input_ids, encoded)

    def splice(self, input_ids: Array, encoded: Mapping[int, tuple[Array, Array]],
               extra_ids: Sequence[int] = ()) -> Array:
        """Text embeddings [B, T, D] with ``encoded[token_id] = (tokens [B, F, N, D], valid [B, F, N])``
        written at that id's placeholders. Placeholder ids (and ``extra_ids``, spliced by the caller
        afterwards) are embedded as id 0, so they may lie outside the vocabulary."""
        ids = [*encoded, *extra_ids]
        safe = jnp.where(jnp.isin(input_ids, jnp.asarray(ids or [-1])), 0, input_ids)
        embeds = self.llm.embed(safe)
        for token_id, (tokens, valid) in encoded.items():
            b = tokens.shape[0]
            tokens, valid = tokens.reshape(b, -1, tokens.shape[-1]), valid.reshape(b, -1)
            order = jnp.argsort(~valid, axis=1, stable=True)  # real tokens first, in frame order
            tokens = jnp.take_along_axis(tokens, order[:, :, None], axis=1)
            embeds = scatter_tokens(embeds, input_ids, token_id, tokens)
        return embeds

    def __call__(self, input_ids: Array, attention_mask: Array | None = None, *,
                 images: VisualInput | None = None, videos: VisualInput | None = None,
                 positions: Array | None = None) -> Array:
        """Logits [B, T, V] (float32)."""
        embeds = self.embed_inputs(input_ids, images=images, videos=videos)
        logits, _ = self.llm(inputs_embeds=embeds, attention_mask=attention_mask, positions=positions)
        return logits


def check_visual_placeholders(input_ids: np.ndarray, token_id: int, grid_hw: np.ndarray, merge_size: int,
                              keep: np.ndarray | None = None, what: str = "video") -> None:
    """Host check: each row has as many ``token_id`` as real kept visual tokens; raises naming the row."""
    ids = np.asarray(input_ids)
    grid = np.asarray(grid_hw).reshape(ids.shape[0], -1, 2)
    per_frame = grid[..., 0] * grid[..., 1] // (merge_size * merge_size)
    if keep is not None:
        keep = np.asarray(keep).reshape(ids.shape[0], grid.shape[1], -1)
        want = np.array([sum(int(keep[b, f, :per_frame[b, f]].sum()) for f in range(grid.shape[1]))
                         for b in range(ids.shape[0])])
    else:
        want = per_frame.sum(-1)
    have = (ids == token_id).sum(-1)
    bad = np.nonzero(have != want)[0]
    if bad.size:
        b = int(bad[0])
        raise ValueError(f"sample {b}: {int(have[b])} {what} placeholder tokens (id {token_id}) but its frames "
                         f"give {int(want[b])} visual tokens; build input ids with "
                         "data.videollama3_processor (one placeholder per merged, kept token).")


def pad_frames(frames: Sequence[tuple[np.ndarray, tuple[int, int]]], num_frames: int,
               num_patches: int) -> tuple[np.ndarray, np.ndarray]:
    """Host helper: [(patches [h*w, C*p*p], (h, w)), ...] of one sample -> a bucket's
    ``patches [num_frames, num_patches, C*p*p]`` and ``grid_hw [num_frames, 2]`` (zero padding)."""
    if len(frames) > num_frames:
        raise ValueError(f"pad_frames: {len(frames)} frames do not fit a bucket of {num_frames}; raise the "
                         "bucket's frame count or sample fewer frames (fps / max_frames).")
    dim = frames[0][0].shape[-1] if frames else 0
    patches = np.zeros((num_frames, num_patches, dim), np.float32)
    grid = np.zeros((num_frames, 2), np.int32)
    for i, (p, (h, w)) in enumerate(frames):
        if p.shape[0] != h * w or h * w > num_patches:
            raise ValueError(f"pad_frames: frame {i} has {p.shape[0]} patches for a {h}x{w} grid and the "
                             f"bucket holds {num_patches} per frame.")
        patches[i, : h * w] = p
        grid[i] = (h, w)
    return patches, grid
