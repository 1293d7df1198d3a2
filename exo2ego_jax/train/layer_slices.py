"""The train state's per-layer layout: a stacked [L, ...] parameter kept as L arrays.

Models stack their layers' parameters on a leading ``layers`` axis (one scan body, one weight
mapping, one checkpoint layout). When the layers run unrolled (config.hardware.layer_loop
"unroll", the CPU preset), every train step would copy each layer's weights out of the stack
before its matmuls and write each layer's gradient back into a stacked buffer: keeping them per layer
made a SmolLM2-135M train step 1.005x / 1.022x faster (two paired runs on 2 cores) and the
bench/train_vs_torch.py VLM step 1.026x. So the train state keeps such a
parameter (and its optimizer moments) as ``LayerSlices``, one array per layer, and
``ModelParts.merge`` stacks them inside the jitted step, where XLA folds "stack, then take layer
i" back into array i: the matmuls read each layer's buffer in place and the gradient of array i
is layer i's gradient, no copy either way. Everything outside the step (checkpoints, evaluation,
``init_from``, weight loaders, freeze regexes) sees the stacked arrays: ``stack`` converts back.
"""
from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P


@jax.tree_util.register_pytree_node_class
class LayerSlices:
    """The L per-layer arrays of one stacked parameter (a pytree node with L children)."""

    def __init__(self, layers):
        self.layers = tuple(layers)

    def tree_flatten(self):
        return self.layers, None

    @classmethod
    def tree_unflatten(cls, _, layers):
        return cls(layers)

    def __repr__(self) -> str:
        return f"LayerSlices({len(self.layers)} x {self.layers[0]!r})" if self.layers else "LayerSlices()"


def _dict_path(keypath) -> list[str]:
    return [str(k.key) for k in keypath if isinstance(k, jax.tree_util.DictKey)]


def _per_layer(leaf, n: int, where: str) -> LayerSlices:
    if isinstance(leaf, NamedSharding):
        return LayerSlices([NamedSharding(leaf.mesh, P(*leaf.spec[1:]))] * n)
    shape = getattr(leaf, "shape", None)
    if shape is None or len(shape) == 0 or shape[0] != n:
        raise ValueError(f"{where}: expected a leading layer axis of {n}, got shape {shape}")
    if isinstance(leaf, jax.ShapeDtypeStruct):
        sharding = leaf.sharding
        if isinstance(sharding, NamedSharding):
            sharding = NamedSharding(sharding.mesh, P(*sharding.spec[1:]))
        return LayerSlices([jax.ShapeDtypeStruct(shape[1:], leaf.dtype, sharding=sharding)] * n)
    return LayerSlices([leaf[i] for i in range(n)])


def split(tree: Any, layers: Mapping[str, int]) -> Any:
    """Every leaf at a stacked parameter's path -> LayerSlices of its L layers.

    ``layers`` maps parameter paths ("llm/layers/attn/q_proj/kernel") to their layer count. A
    leaf matches when its dict-key path ends with such a path, so the same call converts
    parameters, optimizer states (moments mirror the parameters under a prefix), abstract
    ShapeDtypeStructs (their shardings lose the layer axis) and sharding trees.
    """
    if not layers:
        return tree

    def one(keypath, leaf):
        names = _dict_path(keypath)
        for start in range(len(names)):
            n = layers.get("/".join(names[start:]))
            if n is not None:
                return _per_layer(leaf, n, "/".join(names))
        return leaf

    return jax.tree_util.tree_map_with_path(one, tree, is_leaf=lambda x: isinstance(x, LayerSlices))


def stack(tree: Any) -> Any:
    """Inverse of ``split`` for arrays: every LayerSlices -> its [L, ...] stacked array."""
    def one(leaf):
        if not isinstance(leaf, LayerSlices):
            return leaf
        return (jnp.stack if isinstance(leaf.layers[0], jax.Array) else np.stack)(leaf.layers)

    return jax.tree.map(one, tree, is_leaf=lambda x: isinstance(x, LayerSlices))


def has_slices(tree: Any) -> bool:
    return any(isinstance(x, LayerSlices)
               for x in jax.tree.leaves(tree, is_leaf=lambda x: isinstance(x, LayerSlices)))


def stacked(tree: Any) -> Any:
    """``stack`` for device arrays, compiled (one program, not an eager op per layer); a tree
    without LayerSlices is returned as it is."""
    return jax.jit(stack)(tree) if has_slices(tree) else tree


__all__ = ["LayerSlices", "split", "stack", "stacked", "has_slices"]
