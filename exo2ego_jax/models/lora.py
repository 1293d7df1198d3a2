"""LoRA on the Linear layers of a model, chosen by regex over parameter paths; merge for export.

Base weights keep their paths (``layers/attn/q_proj/kernel``) and LoRA adds
``layers/attn/q_proj/lora_a`` [.., in, r] and ``.../lora_b`` [.., r, out] beside them, so optimizer
groups such as ``(r"lora_", 1e-4), (r".*", None)`` train only the adapters.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
from flax import nnx

from exo2ego_jax.models.llm import Linear

# LoRA paper (Hu et al. 2021) / common LLaVA-style defaults; every value is overridable.
DEFAULT_TARGETS = r"(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)$"


def lora_targets(model: nnx.Module, pattern: str) -> list[tuple[str, Linear]]:
    """(path, Linear) for every Linear whose '/'-joined path ``re.search``es ``pattern``."""
    rx = re.compile(pattern)
    out = []
    for path, node in nnx.iter_graph(model):
        if isinstance(node, Linear):
            p = "/".join(str(x) for x in path)
            if rx.search(p):
                out.append((p, node))
    return out


def apply_lora(model: nnx.Module, pattern: str = DEFAULT_TARGETS, *, rank: int = 8, alpha: float = 16.0,
               dropout: float = 0.0, rngs: nnx.Rngs) -> list[str]:
    """Adds LoRA adapters in place; returns the adapted paths.

    ``lora_a`` ~ Kaiming-uniform-like normal(1/sqrt(in)), ``lora_b`` = 0 (so the model is unchanged
    at init, as in the LoRA paper); output scale alpha / rank. Errors if nothing matches.
    """
    targets = lora_targets(model, pattern)
    if not targets:
        paths = ["/".join(map(str, p)) for p, n in nnx.iter_graph(model) if isinstance(n, Linear)]
        raise ValueError(f"LoRA pattern {pattern!r} matches no Linear layer; layers are e.g. {paths[:8]}.")
    for _, lin in targets:
        k = lin.kernel
        shape = k.get_value().shape
        lead, d_in, d_out = shape[:-2], shape[-2], shape[-1]
        axes = k.get_metadata().get("out_sharding") or (None,) * len(shape)
        lead_ax, in_ax, out_ax = tuple(axes[:-2]), axes[-2], axes[-1]
        dtype = k.get_value().dtype
        a = jax.random.normal(rngs.params(), (*lead, d_in, rank), dtype) / jnp.sqrt(d_in).astype(dtype)
        lin.lora_a = nnx.Param(a, sharding=(*lead_ax, in_ax, "lora_rank"))
        lin.lora_b = nnx.Param(jnp.zeros((*lead, rank, d_out), dtype), sharding=(*lead_ax, "lora_rank", out_ax))
        lin.lora_scale = float(alpha) / rank
        # Static rate; dropout is active only when the model is called with ``dropout_rng``
        # (one key per scanned layer), so inference and merged exports are deterministic.
        lin.lora_dropout = float(dropout)
    return [p for p, _ in targets]


def merge_lora(model: nnx.Module) -> nnx.Module:
    """Folds every adapter into its kernel (W += A @ B * scale) and removes it, in place."""
    for _, lin in lora_targets(model, ".*"):
        if lin.lora_a is None:
            continue
        a, b = lin.lora_a.get_value(), lin.lora_b.get_value()
        delta = jnp.einsum("...ir,...ro->...io", a.astype(jnp.float32), b.astype(jnp.float32))
        k = lin.kernel.get_value()
        lin.kernel.set_value((k.astype(jnp.float32) + delta * lin.lora_scale).astype(k.dtype))
        lin.lora_a = lin.lora_b = None
        lin.lora_dropout = 0.0
        lin.lora_scale = 0.0
    return model


def merged_copy(model: nnx.Module) -> nnx.Module:
    """A merged copy, leaving ``model`` (e.g. still being trained) untouched."""
    return merge_lora(nnx.clone(model))
