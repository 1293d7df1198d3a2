"""Vision -> LLM connectors: LLaVA's mlp2x_gelu, VideoLLaMA2's STC, and a 2x spatial token merge.

All connectors map per-video features [B, F, N, D_vit] (F frames of N = g*g patch tokens) to
visual tokens [B, num_visual_tokens, D_llm]; ``num_visual_tokens(cfg, vision_cfg, F)`` gives the
count without running anything (the data pipeline expands ``<video>`` placeholders to it).

* ``mlp2x_gelu`` (LLaVA-1.5): Linear -> GELU -> Linear on every patch token.
* ``stc`` (VideoLLaMA2 ``STCConnector`` / ``STCConnectorV35``): per-frame timm ``RegStage``
  (RegNet bottlenecks with squeeze-excite, LayerNorm2d, SiLU) -> Conv3d kernel=stride=(2,2,2)
  + SiLU -> ``RegStage`` -> MLP readout. 16 frames of 24x24 patches -> 8x12x12 = 1152 tokens.
* ``merge_mlp2x_gelu`` (Ego2ExoVLM student): 2x2 spatial pooling of each frame's patch grid
  (LLaVA-Video ``get_2dPool``: bilinear / average / max), then mlp2x_gelu.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx

from exo2ego_jax.models.vit import VisionConfig

Array = jax.Array

KINDS = ("mlp2x_gelu", "stc", "merge_mlp2x_gelu")


@dataclasses.dataclass(frozen=True)
class ConnectorConfig:
    """Connector type and sizes (``in_dim`` = ViT width, ``out_dim`` = LLM width)."""

    kind: str = "stc"  # one of KINDS
    in_dim: int = 1024  # CLIP ViT-L/14 width (VideoLLaMA2 mm_hidden_size)
    out_dim: int = 4096  # Mistral-7B hidden_size
    mlp_depth: int = 2  # VideoLLaMA2 STCConnector mlp_depth=2 / LLaVA mlp2x: two Linear layers
    # --- STC (VideoLLaMA2 videollama2/model/projector.py)
    stc_depth: int = 4  # RegStage blocks per stage (STCConnector depth=4)
    stc_downsample: tuple[int, int, int] = (2, 2, 2)  # Conv3d kernel = stride (t, h, w)
    stc_padding: int = 0  # Conv3d padding: 0 in stc_connector_v35 (VideoLLaMA2-7B-16F), 1 in stc_connector
    stc_se_ratio: float = 0.25  # timm RegNet Bottleneck se_ratio (SE width = round(block_in * ratio))
    stc_bottle_ratio: float = 1.0  # timm RegNet Bottleneck bottle_ratio
    stc_group_size: int = 1  # timm Bottleneck group_size (1 = depthwise 3x3)
    stc_norm_eps: float = 1e-5  # timm LayerNormAct2d eps (LayerNorm2d inside ConvNormAct)
    # --- spatial merge (Ego2ExoVLM student: 2x spatial token merge before mlp2x_gelu)
    merge_stride: int = 2  # pooling stride per side
    merge_mode: str = "bilinear"  # LLaVA-Video mm_spatial_pool_mode: bilinear | average | max

    def __post_init__(self):
        # Configs are static (hashed) module attributes: lists from ConfigDicts become tuples.
        object.__setattr__(self, "stc_downsample", tuple(int(k) for k in self.stc_downsample))
        if len(self.stc_downsample) != 3:
            raise ValueError(f"ConnectorConfig.stc_downsample={self.stc_downsample}; expected (t, h, w).")
        if self.kind not in KINDS:
            raise ValueError(f"ConnectorConfig.kind={self.kind!r}; expected one of {KINDS}.")
        if self.merge_mode not in ("bilinear", "average", "max"):
            raise ValueError(f"ConnectorConfig.merge_mode={self.merge_mode!r}; expected bilinear, average or max.")
        if self.mlp_depth < 1:
            raise ValueError(f"ConnectorConfig.mlp_depth={self.mlp_depth}; expected >= 1.")


def _conv_out(n: int, k: int, s: int, p: int) -> int:
    return (n + 2 * p - k) // s + 1


def _merge_side(g: int, cfg: ConnectorConfig) -> int:
    # avg/max pooling floors (torch ceil_mode=False); bilinear resizes to ceil(g / stride).
    return math.ceil(g / cfg.merge_stride) if cfg.merge_mode == "bilinear" else g // cfg.merge_stride


def visual_grid(cfg: ConnectorConfig, vision: VisionConfig, num_frames: int) -> tuple[int, int, int]:
    """(frames, height, width) of the connector's output token grid."""
    g = vision.grid
    if cfg.kind == "stc":
        if vision.num_feature_tokens != vision.num_patches:
            raise ValueError("STC connector needs patch-only features (VisionConfig.feature_select='patch').")
        (kt, kh, kw), p = cfg.stc_downsample, cfg.stc_padding
        return _conv_out(num_frames, kt, kt, p), _conv_out(g, kh, kh, p), _conv_out(g, kw, kw, p)
    if cfg.kind == "merge_mlp2x_gelu":
        m = _merge_side(g, cfg)
        return num_frames, m, m
    return num_frames, 1, vision.num_feature_tokens


def num_visual_tokens(cfg: ConnectorConfig, vision: VisionConfig, num_frames: int) -> int:
    """Visual tokens one video of ``num_frames`` frames becomes (e.g. 1152 for STC, 16x24x24)."""
    return math.prod(visual_grid(cfg, vision, num_frames))


# ----------------------------------------------------------------------------- building blocks


class MLPReadout(nnx.Module):
    """Linear -> (GELU -> Linear) * (depth - 1); HF keys ``<prefix>.{0,2,4..}``."""

    def __init__(self, din: int, dout: int, depth: int, *, from_vit: bool, dtype, param_dtype, rngs):
        first = "vit_embed" if from_vit else "conv_in"
        self.fc = nnx.List([
            nnx.Linear(din if i == 0 else dout, dout, dtype=dtype, param_dtype=param_dtype, rngs=rngs,
                       kernel_init=nnx.with_partitioning(nnx.initializers.lecun_normal(),
                                                         (first if i == 0 else "conv_in", "embed")),
                       bias_init=nnx.with_partitioning(nnx.initializers.zeros_init(), ("embed",)))
            for i in range(depth)])

    def __call__(self, x: Array) -> Array:
        for i, fc in enumerate(self.fc):
            if i:
                x = jax.nn.gelu(x, approximate=False)  # torch nn.GELU() default: exact erf
            x = fc(x)
        return x


class ConvNormAct(nnx.Module):
    """timm ConvNormAct with LayerNorm2d (NHWC here): conv (no bias) -> LayerNorm -> SiLU."""

    def __init__(self, cin: int, cout: int, k: int, *, groups: int = 1, act: bool = True, eps: float,
                 dtype, param_dtype, rngs):
        axes = (None, None, None if groups > 1 else "conv_in", "conv_out")
        self.conv = nnx.Conv(cin, cout, kernel_size=(k, k), padding=((k - 1) // 2,) * 2,
                             feature_group_count=groups, use_bias=False, dtype=dtype,
                             param_dtype=param_dtype, rngs=rngs,
                             kernel_init=nnx.with_partitioning(nnx.initializers.he_normal(), axes))
        self.norm = nnx.LayerNorm(cout, epsilon=eps, dtype=dtype, param_dtype=param_dtype, rngs=rngs,
                                  scale_init=nnx.with_partitioning(nnx.initializers.ones_init(), ("conv_out",)),
                                  bias_init=nnx.with_partitioning(nnx.initializers.zeros_init(), ("conv_out",)))
        self.act = act

    def __call__(self, x: Array) -> Array:
        x = self.norm(self.conv(x))
        return jax.nn.silu(x) if self.act else x


class SqueezeExcite(nnx.Module):
    """timm SEModule: x * sigmoid(fc2(silu(fc1(mean_hw(x)))))."""

    def __init__(self, c: int, rd: int, *, dtype, param_dtype, rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.fc1 = nnx.Linear(c, rd, **kw, kernel_init=nnx.with_partitioning(
            nnx.initializers.lecun_normal(), ("conv_in", "conv_out")),
            bias_init=nnx.with_partitioning(nnx.initializers.zeros_init(), ("conv_out",)))
        self.fc2 = nnx.Linear(rd, c, **kw, kernel_init=nnx.with_partitioning(
            nnx.initializers.lecun_normal(), ("conv_in", "conv_out")),
            bias_init=nnx.with_partitioning(nnx.initializers.zeros_init(), ("conv_out",)))

    def __call__(self, x: Array) -> Array:
        s = jnp.mean(x, axis=(-3, -2), keepdims=True)
        return x * jax.nn.sigmoid(self.fc2(jax.nn.silu(self.fc1(s))))


class Bottleneck(nnx.Module):
    """timm RegNet Bottleneck (SE after the grouped 3x3 conv), SiLU activations, stride 1."""

    def __init__(self, cin: int, cout: int, cfg: ConnectorConfig, *, dtype, param_dtype, rngs):
        kw = dict(eps=cfg.stc_norm_eps, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        mid = int(round(cout * cfg.stc_bottle_ratio))
        self.conv1 = ConvNormAct(cin, mid, 1, **kw)
        self.conv2 = ConvNormAct(mid, mid, 3, groups=mid // cfg.stc_group_size, **kw)
        self.se = (SqueezeExcite(mid, int(round(cin * cfg.stc_se_ratio)), dtype=dtype,
                                 param_dtype=param_dtype, rngs=rngs) if cfg.stc_se_ratio else None)
        self.conv3 = ConvNormAct(mid, cout, 1, act=False, **kw)
        # timm create_shortcut('conv1x1'): a projection only when the width changes.
        self.downsample = ConvNormAct(cin, cout, 1, act=False, **kw) if cin != cout else None

    def __call__(self, x: Array) -> Array:
        shortcut = x if self.downsample is None else self.downsample(x)
        y = self.conv2(self.conv1(x))
        if self.se is not None:
            y = self.se(y)
        return jax.nn.silu(self.conv3(y) + shortcut)


class RegStage(nnx.Module):
    """timm RegStage: ``depth`` bottlenecks, the first maps cin -> cout."""

    def __init__(self, cin: int, cout: int, cfg: ConnectorConfig, *, dtype, param_dtype, rngs):
        self.blocks = nnx.List([Bottleneck(cin if i == 0 else cout, cout, cfg, dtype=dtype,
                                           param_dtype=param_dtype, rngs=rngs)
                                for i in range(cfg.stc_depth)])

    def __call__(self, x: Array) -> Array:
        for b in self.blocks:
            x = b(x)
        return x


# ----------------------------------------------------------------------------- connectors


class Connector(nnx.Module):
    """Features [B, F, N, D_vit] -> visual tokens [B, num_visual_tokens, D_llm]."""

    def __init__(self, cfg: ConnectorConfig, vision: VisionConfig, *, dtype=jnp.float32,
                 param_dtype=jnp.float32, rngs: nnx.Rngs):
        if cfg.in_dim != vision.hidden_size:
            raise ValueError(f"ConnectorConfig.in_dim={cfg.in_dim} but the vision tower's hidden_size is "
                             f"{vision.hidden_size}; set in_dim to the tower width.")
        self.cfg, self.vision = cfg, vision
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        if cfg.kind == "stc":
            self.s1 = RegStage(cfg.in_dim, cfg.out_dim, cfg, **kw)
            self.sampler = nnx.Conv(
                cfg.out_dim, cfg.out_dim, kernel_size=cfg.stc_downsample, strides=cfg.stc_downsample,
                padding=((cfg.stc_padding, cfg.stc_padding),) * 3, **kw,
                kernel_init=nnx.with_partitioning(nnx.initializers.lecun_normal(),
                                                  (None, None, None, "conv_in", "conv_out")),
                bias_init=nnx.with_partitioning(nnx.initializers.zeros_init(), ("conv_out",)))
            self.s2 = RegStage(cfg.out_dim, cfg.out_dim, cfg, **kw)
            self.readout = MLPReadout(cfg.out_dim, cfg.out_dim, cfg.mlp_depth, from_vit=False, **kw)
        else:
            self.readout = MLPReadout(cfg.in_dim, cfg.out_dim, cfg.mlp_depth, from_vit=True, **kw)

    def _grid(self, x: Array) -> Array:
        g = self.vision.grid
        if x.shape[-2] != g * g:
            raise ValueError(f"Connector({self.cfg.kind}): features have {x.shape[-2]} tokens per frame, "
                             f"expected {g}x{g}={g * g} patch tokens (drop the class token: feature_select='patch').")
        return x.reshape(*x.shape[:-2], g, g, x.shape[-1])

    def _merge(self, x: Array) -> Array:
        """2D pooling of each frame's patch grid [..., g, g, D] (LLaVA-Video get_2dPool)."""
        cfg, s = self.cfg, self.cfg.merge_stride
        if cfg.merge_mode == "bilinear":
            m = _merge_side(x.shape[-2], cfg)
            # antialias=False matches torch F.interpolate(mode='bilinear', align_corners=False).
            return jax.image.resize(x, (*x.shape[:-3], m, m, x.shape[-1]), "bilinear", antialias=False)
        lead = x.shape[:-3]
        y = x.reshape(-1, *x.shape[-3:])
        pool = nnx.avg_pool if cfg.merge_mode == "average" else nnx.max_pool
        y = pool(y, window_shape=(s, s), strides=(s, s), padding="VALID")
        return y.reshape(*lead, *y.shape[1:])

    def __call__(self, feats: Array) -> Array:
        """feats [B, F, N, D_vit] -> [B, T_vis, D_llm] (token order: frame, row, column)."""
        if feats.ndim != 4:
            raise ValueError(f"Connector: expected features [B, F, N, D], got shape {feats.shape}.")
        b, f = feats.shape[:2]
        if self.cfg.kind == "mlp2x_gelu":
            return self.readout(feats).reshape(b, -1, self.cfg.out_dim)
        x = self._grid(feats)  # [B, F, g, g, D]
        if self.cfg.kind == "merge_mlp2x_gelu":
            return self.readout(self._merge(x)).reshape(b, -1, self.cfg.out_dim)
        x = self.s1(x.reshape(b * f, *x.shape[2:]))
        x = jax.nn.silu(self.sampler(x.reshape(b, f, *x.shape[1:])))  # Conv3d over (t, h, w)
        t2 = x.shape[1]
        x = self.s2(x.reshape(b * t2, *x.shape[2:]))
        return self.readout(x.reshape(b, -1, x.shape[-1]))
