"""Functional core of an NNX model: split into trainable / frozen / other by parameter group.

Parameters live as nested dicts of arrays keyed by the `/`-separated nnx path (list indices
become strings), so optax, Orbax and regexes all see the same names. `ModelParts.merge` turns
them back into the nnx module inside jitted code.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
from flax import nnx, traverse_util
from jax.sharding import NamedSharding, PartitionSpec as P

from exo2ego_jax.parallel import rules as rules_lib
from exo2ego_jax.train import layer_slices
from exo2ego_jax.train import optim

Nested = dict[str, Any]


def flatten(tree: Nested) -> dict[str, Any]:
    return traverse_util.flatten_dict(tree, sep="/") if tree else {}


def unflatten(flat: dict[str, Any]) -> Nested:
    return traverse_util.unflatten_dict(flat, sep="/") if flat else {}


@dataclasses.dataclass
class ModelParts:
    """How to rebuild the module from (trainable, frozen, other) nested dicts."""
    graphdef: Any
    templates: dict[str, tuple[tuple, nnx.Variable]]  # path -> (nnx key path, abstract var)
    trainable: list[str]
    frozen: list[str]
    other: list[str]
    labels: dict[str, int]  # trainable path -> group index
    shardings: dict[str, NamedSharding]  # every path -> its sharding on the mesh
    # Stacked [L, ...] params the train step keeps as L arrays (path -> L; train/layer_slices.py).
    per_layer: dict[str, int] = dataclasses.field(default_factory=dict)

    def merge(self, trainable: Nested, frozen: Nested, other: Nested) -> nnx.Module:
        """The module from (trainable, frozen, other), in either layout (LayerSlices are stacked)."""
        values = layer_slices.stack({**flatten(trainable), **flatten(frozen), **flatten(other)})
        flat = [(key, var.replace(values[path])) for path, (key, var) in self.templates.items()]
        return nnx.merge(self.graphdef, nnx.from_flat_state(flat))

    def split(self, model: nnx.Module) -> tuple[Nested, Nested, Nested]:
        """Inverse of `merge` for a concrete module."""
        _, state = nnx.split(model)
        values = {_path(k): v.get_value() for k, v in nnx.to_flat_state(state)}
        pick = lambda names: unflatten({p: values[p] for p in names})
        return pick(self.trainable), pick(self.frozen), pick(self.other)

    def sharding_tree(self, names: list[str]) -> Nested:
        return unflatten({p: self.shardings[p] for p in names})

    def to_step(self, tree: Any) -> Any:
        """Stacked layout -> the train step's (params, moments, shapes or shardings; see `per_layer`)."""
        return layer_slices.split(tree, self.per_layer)

    def arrays_to_step(self, tree: Any, shardings: Any) -> Any:
        """Stacked arrays placed on `shardings` -> the step's layout on its shardings (one program)."""
        if not self.per_layer:
            return tree
        return jax.jit(self.to_step, out_shardings=self.to_step(shardings))(tree)


def _path(key: tuple) -> str:
    return "/".join(str(k) for k in key)


def describe(build: Callable[[], nnx.Module], groups, mesh: jax.sharding.Mesh, *,
             per_layer: bool = False) -> ModelParts:
    """Builds `ModelParts` from the abstract model (no memory is allocated).

    ``per_layer``: the train step keeps every parameter whose first logical axis is ``layers``
    as one array per layer (for unrolled layer loops; train/layer_slices.py).
    """
    abstract = nnx.eval_shape(build)
    graphdef, state = nnx.split(abstract)
    templates, params, other, shardings = {}, [], [], {}
    for key, var in nnx.to_flat_state(state):
        path = _path(key)
        templates[path] = (key, var)
        value = var.get_value()
        shape = getattr(value, "shape", ())
        spec = rules_lib.logical_to_spec(rules_lib.variable_axes(var), shape, mesh)
        shardings[path] = NamedSharding(mesh, spec)
        (params if isinstance(var, nnx.Param) else other).append(path)
    group_of = optim.assign_groups(params, groups)
    trainable = [p for p in params if groups[group_of[p]][1] is not None]
    frozen = [p for p in params if groups[group_of[p]][1] is None]
    labels = {p: group_of[p] for p in trainable}
    stacked = {}
    if per_layer:
        for p in params:
            axes, value = rules_lib.variable_axes(templates[p][1]), templates[p][1].get_value()
            if axes and axes[0] == "layers":
                stacked[p] = value.shape[0]
    return ModelParts(graphdef, templates, trainable, frozen, other, labels, shardings, stacked)


def init_sharded(build: Callable[..., nnx.Module], parts: ModelParts, *args) -> tuple[Nested, Nested, Nested]:
    """Runs `build(*args)` under jit with out_shardings, so every parameter is born on its devices.

    Pass the RNG key in `args` rather than closing over a seed: the program is then the same for
    every seed, and the persistent compilation cache serves runs that differ only in the seed."""
    def init(*a):
        return parts.split(build(*a))

    out = (parts.sharding_tree(parts.trainable), parts.sharding_tree(parts.frozen),
           parts.sharding_tree(parts.other))
    return jax.jit(init, out_shardings=out)(*args)


def opt_state_shardings(tx, params_abstract: Nested, param_shardings: Nested, mesh) -> Any:
    """Optimizer state shardings: moments like their parameter, everything else replicated."""
    abstract = jax.eval_shape(tx.init, params_abstract)
    replicated = NamedSharding(mesh, P())
    # Map every state leaf whose tree position mirrors a parameter to that parameter's sharding.
    flat_sh = flatten(param_shardings)

    def pick(path, leaf):
        keys = [getattr(k, "key", None) for k in path]
        names = [str(k) for k in keys if k is not None]
        for start in range(len(names)):
            cand = "/".join(names[start:])
            if cand in flat_sh and flat_sh[cand] is not None:
                sh = flat_sh[cand]
                if len(sh.spec) <= len(leaf.shape):
                    return sh
        return replicated

    return jax.tree_util.tree_map_with_path(pick, abstract), abstract


def abstract_like(tree: Any, shardings: Any) -> Any:
    """ShapeDtypeStructs with the given shardings (restore targets on any mesh)."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        tree, shardings)


__all__ = ["ModelParts", "describe", "init_sharded", "opt_state_shardings", "abstract_like",
           "flatten", "unflatten"]
