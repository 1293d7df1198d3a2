"""Logical axis names -> mesh axes. One model serves DP, FSDP and TP by changing this table."""
from __future__ import annotations

from typing import Any, Sequence

import jax
from jax.sharding import NamedSharding, PartitionSpec as P

# Each logical name maps to mesh axes tried in order; a mesh axis is used at most once per
# array, and a dimension that the axis size does not divide stays replicated.
RULES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("batch", ("data", "fsdp")),
    ("layers", ()),
    ("vocab", ("tensor",)),
    ("embed", ("fsdp",)),
    ("mlp", ("tensor",)),
    ("heads", ("tensor",)),
    ("kv_heads", ("tensor",)),
    ("head_dim", ()),
    ("q_lora", ()),
    ("lora_rank", ()),
    ("vit_embed", ("fsdp",)),
    ("vit_mlp", ("tensor",)),
    ("vit_heads", ("tensor",)),
    ("conv_in", ()),
    ("conv_out", ("fsdp",)),
    ("norm", ()),
    ("probes", ()),
    # Activations (names used by `constrain` inside the models). The batch is split over every
    # data-parallel-like axis, so per-device activation memory scales with the per-device
    # micro-batch; heads / MLP / vocab follow the tensor axis like their weights.
    ("act_batch", ("data", "fsdp")),
    ("act_len", ()),
    ("act_embed", ()),
    ("act_heads", ("tensor",)),
    ("act_kv_heads", ("tensor",)),
    ("act_mlp", ("tensor",)),
    ("act_vocab", ("tensor",)),
)


def logical_to_spec(names: Sequence[str | None] | None, shape: Sequence[int],
                    mesh: jax.sharding.Mesh, rules=RULES) -> P:
    """PartitionSpec for an array of `shape` whose dims carry logical `names`."""
    if not names:
        return P()
    if len(names) != len(shape):
        raise ValueError(f"logical axes {tuple(names)} do not match array shape {tuple(shape)}")
    table = dict(rules)
    used: set[str] = set()
    spec: list[Any] = []
    for name, dim in zip(names, shape):
        if name is None:
            spec.append(None)
            continue
        if name not in table:
            raise KeyError(f"logical axis {name!r} has no rule; known: {sorted(table)} "
                           "(add it to exo2ego_jax/parallel/rules.py:RULES)")
        axes = []
        size = 1
        for ax in table[name]:
            n = mesh.shape.get(ax, 1)
            if ax in used or n == 1 or dim % (size * n):
                continue
            axes.append(ax)
            size *= n
        used.update(axes)
        spec.append(None if not axes else axes[0] if len(axes) == 1 else tuple(axes))
    return P(*spec)


def constrain(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
    """Pins activation `x` (dims named by `names`, logical) to its mesh sharding.

    Acts only under a mesh context (`jax.set_mesh` or `jax.sharding.use_abstract_mesh`; the train
    step opens one while tracing); without one it is the identity, so models run unchanged
    on one device. Without these pins the partitioner tends to follow the FSDP-sharded weights
    (embed dims over `fsdp`) and leave activations replicated over the batch: every device then
    holds the whole micro-batch's attention scores.
    """
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or not mesh.axis_names:
        return x
    return jax.lax.with_sharding_constraint(x, logical_to_spec(names, x.shape, mesh))


def constrain_batch(x: jax.Array) -> jax.Array:
    """`constrain` with only the leading (batch) dim named: splits it over the batch axes."""
    return constrain(x, ("act_batch",) + (None,) * (x.ndim - 1))


def variable_axes(var) -> tuple | None:
    """Logical axis names stored on an nnx Variable (flax 0.12 keeps them as `out_sharding`)."""
    meta = var.get_metadata() if hasattr(var, "get_metadata") else {}
    for key in ("out_sharding", "sharding", "sharding_names"):
        if meta.get(key):
            return tuple(meta[key])
    return None

