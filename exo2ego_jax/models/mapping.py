"""Exo2Ego mapping functions F (ego -> exo features) and G (exo -> ego features).

The paper (docs/papers.md, Exo2Ego, mapping functions [S]) describes F and G as ResNet generators: downsampling,
9 residual blocks, upsampling (the CycleGAN generator layout [I]), and reports an ablation where
they are replaced by fully connected layers (-0.9 avg). The paper does not say how wide they are,
which normalisation they use, or on which features they act; those are `MappingConfig` fields
with inferred defaults.

Both generators map a stack of per-frame feature maps ``[N, H, W, C] -> [N, H, W, C]``; the
method module (methods/exo2ego.py) turns connector tokens or ViT patches into such maps.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

_CONV_AXES = (None, None, "conv_in", "conv_out")
_NORMS = ("instance", "group", "layer", "none")
_KINDS = ("resnet", "fc")


@dataclasses.dataclass(frozen=True)
class MappingConfig:
    """Shape of one mapping network (F or G).

    Attributes:
      kind: "resnet" (paper, [S]) or "fc" (the paper's fully connected ablation, [S]).
      width: channels of the first conv (CycleGAN's ngf) [I: 64, the CycleGAN default].
      n_downsample: stride-2 convs before / transposed convs after the residual blocks [I: 2,
        CycleGAN]. Each one doubles the width.
      n_blocks: residual blocks at the bottleneck (paper [S]: 9).
      norm: "instance" | "group" | "layer" | "none" [I: instance, as in CycleGAN].
      groups: groups for norm="group".
      stem_kernel: kernel of the first / last conv [I: 7, CycleGAN]; reflect-padded.
      global_residual: return x + net(x) instead of net(x) [I: False; CycleGAN has none]. True
        starts F near the identity, which helps when ego and exo features are already close.
      fc_hidden: hidden width of the "fc" variant (0 = the feature width).
      fc_layers: number of Dense layers of the "fc" variant [I: 2].
    """

    kind: str = "resnet"
    width: int = 64
    n_downsample: int = 2
    n_blocks: int = 9
    norm: str = "instance"
    groups: int = 32
    stem_kernel: int = 7
    global_residual: bool = False
    fc_hidden: int = 0
    fc_layers: int = 2

    @classmethod
    def from_config(cls, cfg: ml_collections.ConfigDict | dict[str, Any]) -> "MappingConfig":
        d = dict(cfg)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"mapping config: unknown keys {unknown}; expected a subset of {sorted(names)}")
        out = cls(**d)
        if out.kind not in _KINDS:
            raise ValueError(f"mapping config: kind={out.kind!r}; expected one of {_KINDS}")
        if out.norm not in _NORMS:
            raise ValueError(f"mapping config: norm={out.norm!r}; expected one of {_NORMS}")
        return out


def _norm(kind: str, channels: int, groups: int, rngs: nnx.Rngs, param_dtype) -> nnx.Module | None:
    meta = dict(scale_metadata={"sharding": ("norm",)}, bias_metadata={"sharding": ("norm",)})
    if kind == "none":
        return None
    if kind == "instance":
        # Instance norm = per-sample, per-channel statistics over H, W.
        return nnx.GroupNorm(channels, num_groups=channels, epsilon=1e-5, param_dtype=param_dtype,
                             rngs=rngs, **meta)
    if kind == "group":
        g = min(groups, channels)
        while channels % g:
            g -= 1
        return nnx.GroupNorm(channels, num_groups=g, epsilon=1e-5, param_dtype=param_dtype,
                             rngs=rngs, **meta)
    return nnx.LayerNorm(channels, epsilon=1e-5, param_dtype=param_dtype, rngs=rngs, **meta)


def _conv(cin: int, cout: int, k: int, stride: int, rngs: nnx.Rngs, dtype, param_dtype,
          padding="SAME") -> nnx.Conv:
    return nnx.Conv(cin, cout, (k, k), strides=(stride, stride), padding=padding, dtype=dtype,
                    param_dtype=param_dtype, rngs=rngs,
                    kernel_metadata={"sharding": _CONV_AXES}, bias_metadata={"sharding": ("conv_out",)})


def _pad_mode(h: int, w: int, p: int) -> str:
    # Reflect padding needs p < size; tiny maps (e.g. 2x2 demo frames) fall back to edge padding.
    return "reflect" if min(h, w) > p else "edge"


def _reflect(x: jax.Array, p: int) -> jax.Array:
    if p == 0:
        return x
    return jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)), mode=_pad_mode(x.shape[1], x.shape[2], p))


@functools.lru_cache(maxsize=None)
def _tap_sources(h: int, w: int, k: int) -> np.ndarray:
    """[H*W out positions, k*k taps, H*W in positions] 0/1: which input position each tap of a
    reflect/edge-padded ("same"-size), stride-1 k x k conv reads at each output position."""
    p = k // 2
    mode = _pad_mode(h, w, p) if p else "edge"
    rows = np.pad(np.arange(h), p, mode=mode)  # padded row -> source row (jnp.pad's modes are numpy's)
    cols = np.pad(np.arange(w), p, mode=mode)
    src = np.zeros((h * w, k * k, h * w), np.float32)
    for oy in range(h):
        for ox in range(w):
            for ty in range(k):
                for tx in range(k):
                    src[oy * w + ox, ty * k + tx, rows[oy + ty] * w + cols[ox + tx]] = 1.0
    return src


def padded_conv(conv: nnx.Conv, x: jax.Array) -> jax.Array:
    """`conv(_reflect(x, k // 2))` for a stride-1, VALID k x k `conv`: the same function.

    On maps no larger than the kernel (H * W <= k * k, e.g. the demo's 2x2 token maps) the conv is
    computed as one matmul over the whole map: the kernel taps that land on the same (padded)
    input position are summed into one [H*W*Cin, H*W*Cout] matrix. XLA:CPU runs that several
    times faster than a convolution whose window is mostly padding (same parameters, results equal
    up to float summation order). Larger maps use the convolution.
    """
    kh, kw = conv.kernel_size
    n, h, w, c = x.shape
    if kh != kw or kh % 2 == 0 or h * w > kh * kw:
        return conv(_reflect(x, kh // 2))
    dtype = conv.dtype or x.dtype
    kernel = conv.kernel[...].astype(dtype)  # [k, k, Cin, Cout]
    taps = jnp.asarray(_tap_sources(h, w, kh), dtype)  # [O, T, I]
    dense = jnp.einsum("oti,tcd->icod", taps, kernel.reshape(kh * kw, c, -1))  # [I, Cin, O, Cout]
    y = jnp.einsum("nic,icod->nod", x.astype(dtype).reshape(n, h * w, c), dense).reshape(n, h, w, -1)
    if conv.bias is not None:
        y = y + conv.bias[...].astype(dtype)
    return y


class _ConvNormAct(nnx.Module):
    def __init__(self, cin, cout, k, stride, cfg: MappingConfig, *, act: bool, rngs, dtype, param_dtype,
                 reflect: bool = False):
        self.pad = k // 2 if reflect else 0
        self.conv = _conv(cin, cout, k, stride, rngs, dtype, param_dtype,
                          padding="VALID" if reflect else "SAME")
        self.norm = _norm(cfg.norm, cout, cfg.groups, rngs, param_dtype)
        self.act = act

    def __call__(self, x):
        y = padded_conv(self.conv, x) if self.pad else self.conv(x)
        if self.norm is not None:
            y = self.norm(y)
        return jax.nn.relu(y) if self.act else y


class _ResBlock(nnx.Module):
    """CycleGAN residual block: reflect-pad, conv3, norm, relu, reflect-pad, conv3, norm, + x."""

    def __init__(self, c, cfg: MappingConfig, *, rngs, dtype, param_dtype):
        kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype, reflect=True)
        self.a = _ConvNormAct(c, c, 3, 1, cfg, act=True, **kw)
        self.b = _ConvNormAct(c, c, 3, 1, cfg, act=False, **kw)

    def __call__(self, x):
        return x + self.b(self.a(x))


class _Up(nnx.Module):
    def __init__(self, cin, cout, cfg: MappingConfig, *, rngs, dtype, param_dtype):
        self.conv = nnx.ConvTranspose(cin, cout, (3, 3), strides=(2, 2), padding="SAME", dtype=dtype,
                                      param_dtype=param_dtype, rngs=rngs,
                                      kernel_metadata={"sharding": _CONV_AXES},
                                      bias_metadata={"sharding": ("conv_out",)})
        self.norm = _norm(cfg.norm, cout, cfg.groups, rngs, param_dtype)

    def __call__(self, x, size: tuple[int, int]):
        y = self.conv(x)[:, : size[0], : size[1]]  # undo the ceil of odd sizes on the way down
        if self.norm is not None:
            y = self.norm(y)
        return jax.nn.relu(y)


class ResNetGenerator(nnx.Module):
    """CycleGAN-style generator on feature maps: stem, downsampling, residual blocks, upsampling, head."""

    def __init__(self, channels: int, cfg: MappingConfig, *, rngs: nnx.Rngs, dtype=jnp.float32,
                 param_dtype=jnp.float32):
        kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        self.cfg = cfg
        w = cfg.width
        self.stem = _ConvNormAct(channels, w, cfg.stem_kernel, 1, cfg, act=True, reflect=True, **kw)
        self.down = nnx.List([_ConvNormAct(w * 2**i, w * 2 ** (i + 1), 3, 2, cfg, act=True, **kw)
                              for i in range(cfg.n_downsample)])
        wb = w * 2**cfg.n_downsample
        self.blocks = nnx.List([_ResBlock(wb, cfg, **kw) for _ in range(cfg.n_blocks)])
        self.up = nnx.List([_Up(w * 2 ** (i + 1), w * 2**i, cfg, **kw)
                            for i in reversed(range(cfg.n_downsample))])
        # Features are unbounded, so no tanh at the end (CycleGAN's tanh is for pixels in [-1, 1]).
        self.head = _conv(w, channels, cfg.stem_kernel, 1, rngs, dtype, param_dtype, padding="VALID")

    def __call__(self, x: jax.Array) -> jax.Array:
        if x.ndim != 4:
            raise ValueError(f"ResNetGenerator expects [N, H, W, C] feature maps; got shape {x.shape}")
        h = self.stem(x)
        sizes = []
        for d in self.down:
            sizes.append(h.shape[1:3])
            h = d(h)
        if self.cfg.norm == "instance" and h.shape[1] * h.shape[2] == 1:
            # Instance norm of a single position is identically zero: the generator would be dead.
            raise ValueError(
                f"ResNetGenerator: {x.shape[1]}x{x.shape[2]} maps shrink to 1x1 after n_downsample="
                f"{self.cfg.n_downsample}, where instance norm outputs zeros; lower "
                "config.model.mapping.n_downsample or use norm='layer'/'group'")
        for b in self.blocks:
            h = b(h)
        for u, size in zip(self.up, reversed(sizes)):
            h = u(h, size)
        y = padded_conv(self.head, h).astype(x.dtype)
        return x + y if self.cfg.global_residual else y


class FCMapping(nnx.Module):
    """The paper's ablation: fully connected layers applied to every feature vector."""

    def __init__(self, channels: int, cfg: MappingConfig, *, rngs: nnx.Rngs, dtype=jnp.float32,
                 param_dtype=jnp.float32):
        self.cfg = cfg
        hidden = cfg.fc_hidden or channels
        dims = [channels] + [hidden] * (cfg.fc_layers - 1) + [channels]
        self.layers = nnx.List([
            nnx.Linear(a, b, dtype=dtype, param_dtype=param_dtype, rngs=rngs,
                       kernel_metadata={"sharding": ("embed", "mlp")},
                       bias_metadata={"sharding": ("mlp",)})
            for a, b in zip(dims[:-1], dims[1:])])

    def __call__(self, x: jax.Array) -> jax.Array:
        h = x
        for i, layer in enumerate(self.layers):
            h = layer(h)
            if i < len(self.layers) - 1:
                h = jax.nn.gelu(h)
        h = h.astype(x.dtype)
        return x + h if self.cfg.global_residual else h


def build_mapping(channels: int, cfg: MappingConfig, *, rngs: nnx.Rngs, dtype=jnp.float32,
                  param_dtype=jnp.float32) -> nnx.Module:
    """F or G for `channels`-wide feature maps, as `cfg.kind` says."""
    cls = ResNetGenerator if cfg.kind == "resnet" else FCMapping
    return cls(channels, cfg, rngs=rngs, dtype=dtype, param_dtype=param_dtype)
