"""CLIP and SigLIP vision transformers in flax.nnx (frames folded into the batch).

Both towers share one encoder: patch embedding -> (+ class token, pre-LayerNorm for CLIP) ->
N pre-LN transformer layers (stacked on a leading ``layers`` axis and run with a scan) ->
(post-LayerNorm). Differences are config fields read from the Hugging Face ``config.json``:

* CLIP: class token, ``pre_layrnorm``, patch conv without bias, ``quick_gelu``, eps 1e-5.
* SigLIP: no class token, no pre-LN, patch conv with bias, ``gelu_pytorch_tanh``, eps 1e-6,
  post-LN applied to ``last_hidden_state``. The MAP pooling head is not built: no VLM here uses it.

Video MLLMs take an intermediate layer as features (LLaVA / VideoLLaMA2: ``select_layer=-2``,
i.e. the second-to-last entry of HF ``hidden_states``), so ``features()`` runs only the layers it
needs. A ``layer_hook`` lets another module update its own state after every layer without
copying the tower (Ego2ExoVLM EAVT probes, models/probes.py).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import jax
import jax.numpy as jnp
from flax import nnx

from exo2ego_jax.hf_json import read_json_config
from exo2ego_jax.data.preprocess_config import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, PreprocessConfig
from exo2ego_jax.parallel.rules import constrain, constrain_batch

Array = jax.Array

# HF defaults per model type, used for fields a config.json leaves out.
_HF_DEFAULTS = {
    "clip": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                 image_size=224, patch_size=32, num_channels=3, layer_norm_eps=1e-5,
                 hidden_act="quick_gelu"),
    "siglip": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                   image_size=224, patch_size=16, num_channels=3, layer_norm_eps=1e-6,
                   hidden_act="gelu_pytorch_tanh"),
}

# (mean, std) of each family's HF image processor (CLIPImageProcessor / SiglipImageProcessor).
_FAMILY_MEAN_STD = {
    "clip": (OPENAI_CLIP_MEAN, OPENAI_CLIP_STD),
    "siglip": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),  # google/siglip-* preprocessor_config.json
}

ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
}


@dataclasses.dataclass(frozen=True)
class VisionConfig:
    """Sizes of a CLIP / SigLIP vision tower (field names follow HF where they exist)."""

    model_type: str = "clip"  # "clip" (class token, pre-LN) or "siglip"
    hidden_size: int = 1024  # CLIP ViT-L/14-336: width
    intermediate_size: int = 4096  # MLP width
    num_layers: int = 24  # HF num_hidden_layers
    num_heads: int = 16  # HF num_attention_heads
    image_size: int = 336  # input resolution (square)
    patch_size: int = 14
    num_channels: int = 3
    layer_norm_eps: float = 1e-5
    hidden_act: str = "quick_gelu"
    # Index into HF ``hidden_states`` (entry 0 = embeddings, entry k = output of layer k); -2 is the
    # second-to-last layer, as LLaVA / VideoLLaMA2 (mm_vision_select_layer=-2) use.
    feature_layer: int = -2
    # "patch": drop the class token from features (LLaVA's mm_vision_select_feature="patch");
    # "cls_patch": keep it.
    feature_select: str = "patch"
    feature_post_norm: bool = False  # apply post-LayerNorm to the features (off in LLaVA-style VLMs)
    remat: bool = False  # rematerialise each layer in the backward pass (saves activation memory)
    # Normalisation applied on the device to uint8 pixels (float pixels arrive normalised already).
    # None = the family's standard: CLIP -> OpenAI CLIP mean/std, SigLIP -> 0.5 / 0.5 (their HF
    # preprocessor_config.json); from_hf reads a preprocessor_config.json found beside config.json.
    image_mean: tuple[float, float, float] | None = None
    image_std: tuple[float, float, float] | None = None

    def __post_init__(self):
        for name in ("image_mean", "image_std"):  # lists (from a ConfigDict) would make the config unhashable
            value = getattr(self, name)
            if value is not None:
                value = tuple(float(v) for v in value)
                if len(value) != self.num_channels:
                    raise ValueError(f"VisionConfig.{name}={value}: expected {self.num_channels} values "
                                     "(one per channel).")
                object.__setattr__(self, name, value)
        if self.model_type not in _HF_DEFAULTS:
            raise ValueError(f"VisionConfig.model_type={self.model_type!r}; expected one of {sorted(_HF_DEFAULTS)}.")
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(f"VisionConfig.hidden_act={self.hidden_act!r}; supported: {sorted(ACTIVATIONS)}.")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"VisionConfig: hidden_size {self.hidden_size} is not divisible by "
                             f"num_heads {self.num_heads}.")
        if self.feature_select not in ("patch", "cls_patch"):
            raise ValueError(f"VisionConfig.feature_select={self.feature_select!r}; expected 'patch' or 'cls_patch'.")
        self.feature_num_layers  # validates feature_layer

    @property
    def pixel_mean(self) -> tuple[float, ...]:
        """Mean used to normalise uint8 input (``image_mean`` or the family's standard)."""
        return self.image_mean if self.image_mean is not None else _FAMILY_MEAN_STD[self.model_type][0]

    @property
    def pixel_std(self) -> tuple[float, ...]:
        return self.image_std if self.image_std is not None else _FAMILY_MEAN_STD[self.model_type][1]

    def with_preprocess(self, preprocess: PreprocessConfig) -> "VisionConfig":
        """This config with a ``data.preprocess_config.PreprocessConfig``'s mean/std (checks the size)."""
        h, w = preprocess.output_size
        if (h, w) != (self.image_size, self.image_size):
            raise ValueError(f"VisionConfig.with_preprocess: preprocessing gives {h}x{w} frames, the tower "
                             f"takes {self.image_size}x{self.image_size}.")
        return dataclasses.replace(self, image_mean=tuple(preprocess.image_mean),
                                   image_std=tuple(preprocess.image_std))

    @property
    def has_cls(self) -> bool:
        return self.model_type == "clip"

    @property
    def grid(self) -> int:
        """Patches per side (floor: SigLIP so400m has 384 px / 14 = 27 patches, like its VALID conv)."""
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid ** 2

    @property
    def num_positions(self) -> int:
        return self.num_patches + int(self.has_cls)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def feature_num_layers(self) -> int:
        """How many layers ``features()`` runs (``feature_layer`` resolved against num_layers + 1)."""
        n = self.num_layers + 1
        if not -n <= self.feature_layer < n:
            raise ValueError(f"VisionConfig.feature_layer={self.feature_layer} is out of range for "
                             f"{self.num_layers} layers (valid: {-n}..{n - 1}).")
        return self.feature_layer % n

    @property
    def num_feature_tokens(self) -> int:
        return self.num_patches + int(self.has_cls and self.feature_select == "cls_patch")

    @classmethod
    def from_hf(cls, dir_or_dict: str | os.PathLike | Mapping[str, Any], **overrides) -> "VisionConfig":
        """Reads a HF ``config.json`` (CLIPVisionConfig / SiglipVisionConfig, or a full CLIP/SigLIP
        config with a ``vision_config`` entry) from a directory, a file or a dict."""
        hf, where = read_json_config(dir_or_dict)
        if "vision_config" in hf:
            hf = dict(hf["vision_config"] or {}, model_type=hf.get("model_type", ""))
        mt = str(hf.get("model_type", ""))
        kind = "siglip" if "siglip" in mt else "clip" if "clip" in mt else None
        if kind is None:
            raise ValueError(f"{where}: model_type={mt!r} is not a CLIP or SigLIP vision config "
                             "(expected clip_vision_model, siglip_vision_model, clip or siglip).")
        get = lambda k: hf.get(k, _HF_DEFAULTS[kind][k])  # noqa: E731
        kw = dict(model_type=kind, hidden_size=get("hidden_size"), intermediate_size=get("intermediate_size"),
                  num_layers=get("num_hidden_layers"), num_heads=get("num_attention_heads"),
                  image_size=get("image_size"), patch_size=get("patch_size"),
                  num_channels=get("num_channels"), layer_norm_eps=get("layer_norm_eps"),
                  hidden_act=get("hidden_act"))
        pre = os.path.join(os.path.dirname(where), "preprocessor_config.json") if where != "<dict>" else ""
        if pre and os.path.exists(pre) and "image_mean" not in overrides:
            pp = PreprocessConfig.from_hf(pre)
            kw.update(image_mean=pp.image_mean, image_std=pp.image_std)
        kw.update(overrides)
        return cls(**kw)


def _dense(din: int, dout: int, axes: tuple, *, dtype, param_dtype, rngs, bias=True) -> nnx.Linear:
    return nnx.Linear(
        din, dout, use_bias=bias, dtype=dtype, param_dtype=param_dtype, rngs=rngs,
        kernel_init=nnx.with_partitioning(nnx.initializers.normal(0.02), axes),
        bias_init=nnx.with_partitioning(nnx.initializers.zeros_init(), axes[-1:]))


def _layer_norm(d: int, eps: float, *, dtype, param_dtype, rngs) -> nnx.LayerNorm:
    return nnx.LayerNorm(
        d, epsilon=eps, dtype=dtype, param_dtype=param_dtype, rngs=rngs,
        scale_init=nnx.with_partitioning(nnx.initializers.ones_init(), ("norm",)),
        bias_init=nnx.with_partitioning(nnx.initializers.zeros_init(), ("norm",)))


def attention(q: Array, k: Array, v: Array, mask: Array | None = None) -> Array:
    """Multi-head attention; q [..., Tq, H, Dh], k/v [..., Tk, H, Dh]; softmax in float32.

    ``mask`` (broadcastable to [..., H, Tq, Tk], True = attend) is optional.
    """
    scale = q.shape[-1] ** -0.5
    logits = jnp.einsum("...qhd,...khd->...hqk", q, k, preferred_element_type=jnp.float32) * scale
    if mask is not None:
        logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    return jnp.einsum("...hqk,...khd->...qhd", probs, v)


class Attention(nnx.Module):
    """HF-style attention with separate q/k/v/out projections (kernels [in, out])."""

    def __init__(self, d: int, num_heads: int, *, dtype=jnp.float32, param_dtype=jnp.float32,
                 rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.num_heads = num_heads
        self.q_proj = _dense(d, d, ("vit_embed", "vit_heads"), **kw)
        self.k_proj = _dense(d, d, ("vit_embed", "vit_heads"), **kw)
        self.v_proj = _dense(d, d, ("vit_embed", "vit_heads"), **kw)
        self.out_proj = _dense(d, d, ("vit_heads", "vit_embed"), **kw)

    def __call__(self, x: Array, kv: Array | None = None, mask: Array | None = None) -> Array:
        """Self-attention over ``x`` [..., T, D], or cross-attention from ``x`` to ``kv``."""
        kv = x if kv is None else kv
        # [..., T, H, Dh]: leading dim = batch, heads over the tensor axis (no-op without a mesh).
        heads = lambda t: constrain(t.reshape(*t.shape[:-1], self.num_heads, -1),  # noqa: E731
                                    ("act_batch",) + (None,) * (t.ndim - 2) + ("act_heads", None))
        out = attention(heads(self.q_proj(x)), heads(self.k_proj(kv)), heads(self.v_proj(kv)), mask)
        return self.out_proj(out.reshape(*out.shape[:-2], -1))


class MLP(nnx.Module):
    def __init__(self, cfg: VisionConfig, *, dtype, param_dtype, rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.act = ACTIVATIONS[cfg.hidden_act]
        self.fc1 = _dense(cfg.hidden_size, cfg.intermediate_size, ("vit_embed", "vit_mlp"), **kw)
        self.fc2 = _dense(cfg.intermediate_size, cfg.hidden_size, ("vit_mlp", "vit_embed"), **kw)

    def __call__(self, x: Array) -> Array:
        return self.fc2(self.act(self.fc1(x)))


class EncoderLayer(nnx.Module):
    """Pre-LN transformer layer: x + attn(ln1(x)); x + mlp(ln2(x))."""

    def __init__(self, cfg: VisionConfig, *, dtype, param_dtype, rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.norm1 = _layer_norm(cfg.hidden_size, cfg.layer_norm_eps, **kw)
        self.attn = Attention(cfg.hidden_size, cfg.num_heads, **kw)
        self.norm2 = _layer_norm(cfg.hidden_size, cfg.layer_norm_eps, **kw)
        self.mlp = MLP(cfg, **kw)

    def __call__(self, x: Array) -> Array:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class LayerHook(Protocol):
    """An nnx module whose params are stacked on a leading axis of length ``num_layers``.

    ``tower(..., layer_hook=h, hook_carry=c)`` calls, after layer i, the i-th slice of ``h`` as
    ``c = h_i(c, x)`` with ``x`` the layer output shaped [*lead, T, D] (lead = the pixel batch dims).
    """

    def __call__(self, carry: Any, x: Array) -> Any: ...


def stack_layers(make: Callable[[nnx.Rngs], nnx.Module], n: int, rngs: nnx.Rngs) -> nnx.Module:
    """Builds ``n`` copies of ``make(rngs)`` with params stacked on a leading ``layers`` axis."""

    @nnx.split_rngs(splits=n)
    @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
    def build(r: nnx.Rngs) -> nnx.Module:
        return make(r)

    return build(rngs)


def scan_layers(layers: nnx.Module, x: Array, n: int, *, lead: tuple[int, ...] = (),
                hook: nnx.Module | None = None, carry: Any = None, remat: bool = False,
                unroll: bool | None = None):
    """Runs the first ``n`` layers of a stacked module over ``x``; optionally a per-layer hook.

    Plain ``jax.lax.scan`` over the split NNX state: the tower is a pure function of its params,
    and slicing the stack to ``n`` layers means unused top layers are never computed. ``unroll``
    (None: on CPU) inlines the layers, as DecoderLM does: XLA:CPU then drops the scan's
    zero-filled [L, ...] activation buffers and per-layer weight copies.
    """
    if n == 0:
        return x, carry
    gdef, state = nnx.split(layers)
    state = jax.tree.map(lambda a: a[:n], state)
    if hook is not None:
        hdef, hstate = nnx.split(hook)
        hstate = jax.tree.map(lambda a: a[:n], hstate)
    else:
        hdef, hstate = None, None

    def body(c, per_layer):
        h, hc = c
        p, hp = per_layer
        h = constrain_batch(nnx.merge(gdef, p)(constrain_batch(h)))
        if hdef is not None:
            hc = nnx.merge(hdef, hp)(hc, h.reshape(*lead, *h.shape[1:]))
        return (h, hc), None

    if remat:
        body = jax.checkpoint(body, prevent_cse=False)
    unroll = jax.default_backend() == "cpu" if unroll is None else unroll
    (x, carry), _ = jax.lax.scan(body, (x, carry), (state, hstate), unroll=bool(unroll))
    return x, carry


def normalise_pixels(pixels: Array, mean, std, dtype=jnp.float32) -> Array:
    """uint8 pixels -> ``(x / 255 - mean) / std`` in ``dtype``; float pixels (already normalised) pass through.

    Keeping pixels uint8 on the host and normalising here moves a quarter of the bytes through the
    input pipeline and the host->device copy; XLA fuses this elementwise op into the patch conv's
    input, so it costs no extra pass over memory. Computed in float32, then cast.
    """
    if not jnp.issubdtype(pixels.dtype, jnp.integer):
        return pixels.astype(dtype)
    if pixels.dtype != jnp.uint8:
        raise ValueError(f"VisionTower: integer pixels must be uint8 (0..255), got {pixels.dtype}; pass uint8 "
                         "frames or float32 frames already normalised with the tower's mean/std.")
    std = jnp.asarray(std, jnp.float32)
    scale = 1.0 / (255.0 * std)
    bias = -jnp.asarray(mean, jnp.float32) / std
    return (pixels.astype(jnp.float32) * scale + bias).astype(dtype)


def patch_embed(conv: nnx.Conv, pixels: Array, patch: int) -> Array:
    """The stride-`patch` VALID patch conv as one matmul: pixels [n, H, W, C] -> tokens [n, T, D].

    Same parameters (conv kernel [p, p, C, D]) and function as ``conv(pixels)``. XLA:CPU runs the
    conv on a channel-major [C, n, H, W] copy of the frames, a strided transpose that cost as much
    as the tower's largest matmul in a demo step; cutting frames into [n, T, p * p * C] patches
    (rows of p * C contiguous values) and multiplying by the kernel reshaped to [p * p * C, D]
    needs only that cheap copy, forward and backward.
    """
    n, h, w, c = pixels.shape
    gh, gw = h // patch, w // patch
    x = pixels[:, :gh * patch, :gw * patch]  # VALID: rows / columns past the last whole patch are dropped
    x = x.reshape(n, gh, patch, gw, patch, c).transpose(0, 1, 3, 2, 4, 5).reshape(n, gh * gw, patch * patch * c)
    kernel = conv.kernel.value.astype(x.dtype).reshape(patch * patch * c, -1)  # [(kh, kw, C), D]
    y = jnp.einsum("ntk,kd->ntd", x, kernel)
    if conv.bias is not None:
        y = y + conv.bias.value.astype(x.dtype)
    return y


class VisionTower(nnx.Module):
    """CLIP / SigLIP vision encoder. Pixels [..., H, W, C] (uint8, or float normalised) -> tokens [..., T, D]."""

    def __init__(self, cfg: VisionConfig, *, dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs,
                 unroll_layers: bool | None = None):
        if unroll_layers not in (None, True, False):
            raise ValueError(f"VisionTower: unroll_layers={unroll_layers!r}; expected None (the backend decides), "
                             "True or False (config_lib.unroll_layers of config.hardware.layer_loop).")
        self.cfg = cfg
        self.dtype = dtype
        self.unroll_layers = unroll_layers  # as DecoderLM's: None = unrolled on CPU, scanned elsewhere
        d = cfg.hidden_size
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.patch_embed = nnx.Conv(
            cfg.num_channels, d, kernel_size=(cfg.patch_size,) * 2, strides=(cfg.patch_size,) * 2,
            padding="VALID", use_bias=not cfg.has_cls, **kw,
            kernel_init=nnx.with_partitioning(nnx.initializers.normal(0.02), (None, None, None, "vit_embed")),
            bias_init=nnx.with_partitioning(nnx.initializers.zeros_init(), ("vit_embed",)))
        init = nnx.initializers.normal(0.02)
        if cfg.has_cls:
            self.class_embedding = nnx.Param(init(rngs.params(), (d,), param_dtype), sharding=("vit_embed",))
        self.position_embedding = nnx.Param(
            init(rngs.params(), (cfg.num_positions, d), param_dtype), sharding=(None, "vit_embed"))
        if cfg.has_cls:
            self.pre_norm = _layer_norm(d, cfg.layer_norm_eps, **kw)
        self.layers = stack_layers(lambda r: EncoderLayer(cfg, dtype=dtype, param_dtype=param_dtype, rngs=r),
                                   cfg.num_layers, rngs)
        self.post_norm = _layer_norm(d, cfg.layer_norm_eps, **kw)

    def embed(self, pixels: Array) -> Array:
        """Pixels [n, H, W, C] -> tokens [n, T, D] (hidden_states[0] in HF)."""
        cfg = self.cfg
        want = (cfg.image_size, cfg.image_size, cfg.num_channels)
        if tuple(pixels.shape[-3:]) != want:
            raise ValueError(f"VisionTower: pixels have trailing shape {tuple(pixels.shape[-3:])}, expected "
                             f"{want} (H, W, C) for image_size={cfg.image_size}; resize/crop frames to the "
                             "tower's size (data.preprocess_config).")
        x = patch_embed(self.patch_embed, normalise_pixels(pixels, cfg.pixel_mean, cfg.pixel_std, self.dtype),
                        cfg.patch_size)
        pos = self.position_embedding.value.astype(self.dtype)
        if cfg.has_cls:
            cls = jnp.broadcast_to(self.class_embedding.value.astype(self.dtype), (x.shape[0], 1, x.shape[-1]))
            x = jnp.concatenate([cls, x], axis=1)
        x = x + pos[None]
        if cfg.has_cls:
            x = self.pre_norm(x)
        return constrain_batch(x)

    def __call__(self, pixels: Array, *, num_layers: int | None = None, post_norm: bool = False,
                 layer_hook: nnx.Module | None = None, hook_carry: Any = None):
        """Hidden state after ``num_layers`` layers (default all), frames folded into the batch.

        Args:
          pixels: [..., H, W, C]: uint8 (normalised here with ``cfg.pixel_mean/pixel_std``) or float
            already normalised with the tower's mean/std.
          num_layers: 0 gives the embeddings (HF ``hidden_states[0]``), k the output of layer k.
          post_norm: apply the final LayerNorm (HF SigLIP ``last_hidden_state``; CLIP's pooler LN).
          layer_hook / hook_carry: see ``LayerHook``; if given, returns ``(tokens, hook_carry)``.

        Returns:
          tokens [..., T, D] (T includes the class token for CLIP).
        """
        lead = tuple(pixels.shape[:-3])
        n = self.cfg.num_layers if num_layers is None else num_layers
        if not 0 <= n <= self.cfg.num_layers:
            raise ValueError(f"VisionTower: num_layers={n}, expected 0..{self.cfg.num_layers}.")
        x = self.embed(constrain_batch(pixels.reshape(-1, *pixels.shape[-3:])))
        x, carry = scan_layers(self.layers, x, n, lead=lead, hook=layer_hook, carry=hook_carry,
                               remat=self.cfg.remat, unroll=self.unroll_layers)
        if post_norm:
            x = self.post_norm(x)
        x = x.reshape(*lead, *x.shape[1:])
        return (x, carry) if layer_hook is not None else x

    def features(self, pixels: Array, *, layer_hook: nnx.Module | None = None, hook_carry: Any = None):
        """The connector's input: tokens of ``cfg.feature_layer`` [..., num_feature_tokens, D]."""
        cfg = self.cfg
        out = self(pixels, num_layers=cfg.feature_num_layers, post_norm=cfg.feature_post_norm,
                   layer_hook=layer_hook, hook_carry=hook_carry)
        x, carry = out if layer_hook is not None else (out, None)
        if cfg.has_cls and cfg.feature_select == "patch":
            x = x[..., 1:, :]
        return (x, carry) if layer_hook is not None else x
