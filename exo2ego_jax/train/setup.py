"""Everything a run needs before step 1: mesh, sharded parameters, optimizer, compiled step.

Shared by the training loop, bench/train_step.py and tests, so they all run the same code.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from exo2ego_jax import config_lib
from exo2ego_jax import methods as methods_lib
from exo2ego_jax.parallel import mesh as mesh_lib
from exo2ego_jax.train import checkpoint as ckpt_lib
from exo2ego_jax.train import metrics as metrics_lib
from exo2ego_jax.train import optim
from exo2ego_jax.train import state as state_lib
from exo2ego_jax.train.step import make_train_step


def total_steps(config, method) -> int:
    tc = config.train
    if tc.epochs > 0:
        if not hasattr(method, "num_train_examples"):
            raise ValueError(f"config.train.epochs={tc.epochs} needs method {config.method!r} to "
                             "define num_train_examples(); or set config.train.steps")
        return max(1, int(math.ceil(tc.epochs * method.num_train_examples() / tc.global_batch)))
    return tc.steps


_total_steps = total_steps  # `abstract`'s keyword of the same name shadows it


def micro_batches(config, dp_size: int) -> int:
    """Accumulation steps: explicit, or enough to keep per_device_batch rows per device."""
    tc, hw = config.train, config.hardware
    if tc.global_batch % dp_size:
        raise ValueError(f"config.train.global_batch={tc.global_batch} is not divisible by the "
                         f"{dp_size} data-parallel devices (mesh axes data x fsdp)")
    k = tc.micro_batches
    if k <= 0:
        rows = tc.global_batch // dp_size
        k = 1 if hw.per_device_batch <= 0 else max(1, math.ceil(rows / hw.per_device_batch))
        while (tc.global_batch // dp_size) % k:
            k += 1
    if tc.global_batch % (k * dp_size):
        raise ValueError(f"config.train.global_batch={tc.global_batch} cannot be split into "
                         f"{k} micro-batches over {dp_size} data-parallel devices")
    return k


@dataclasses.dataclass
class Abstract:
    """The shapes, shardings and jitted step of a run, without any parameter memory.

    `train/loop.py` fills it with arrays (`build`); the memory tools lower `step_fn` on it.
    Shapes and shardings here are in the stacked layout (checkpoints, tools); `step_fn` takes the
    state and frozen params in the step's layout (`parts.to_step`: per layer where the layers run
    unrolled, train/layer_slices.py).
    """
    config: Any
    method: Any
    mesh: jax.sharding.Mesh
    parts: state_lib.ModelParts
    tx: optim.AdamW  # optax-compatible (init, update) + the fused apply_guarded the step uses
    schedules: dict[int, Callable]
    state_shardings: dict  # stacked layout, as checkpoints hold the state
    abstract_state: dict  # {"step", "params", "opt"} as ShapeDtypeStructs with shardings
    abstract_frozen: dict
    abstract_other: dict
    batch_sharding: NamedSharding
    micro_batches: int
    total_steps: int
    step_fn: Callable  # jitted step: (state, frozen, other, batch) -> (state, metrics)

    def lower(self, batch: dict[str, jax.ShapeDtypeStruct]):
        """Lowers the step for one global batch of these shapes (arrays or ShapeDtypeStructs)."""
        abstract_batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=self.batch_sharding)
                          for k, v in batch.items()}
        return self.step_fn.lower(self.parts.to_step(self.abstract_state), self.parts.to_step(self.abstract_frozen),
                                  self.abstract_other, abstract_batch)

    def step_state(self, state: dict) -> dict:
        """A stacked-layout state (a restored checkpoint) -> the layout `step_fn` takes."""
        return self.parts.arrays_to_step(state, self.state_shardings)


def abstract(config, mesh: jax.sharding.Mesh | None = None, *, total_steps: int | None = None) -> Abstract:
    """Mesh, parameter shapes and shardings (nnx.eval_shape: no memory), optimizer and jitted step.

    `total_steps` overrides the run length (tools that only lower the step need no data to count it).
    """
    method = methods_lib.build(config)
    mesh = mesh or mesh_lib.make_mesh(config.hardware)
    tc = config.train
    k = micro_batches(config, mesh_lib.data_parallel_size(mesh))
    steps = _total_steps(config, method) if total_steps is None else total_steps
    # No mesh context here: the logical names on parameters are not mesh axes; placement
    # comes from the rule table through out_shardings.
    unroll = config_lib.unroll_layers(config.hardware)  # None: the backend's default, as the models
    per_layer = jax.default_backend() == "cpu" if unroll is None else unroll
    parts = state_lib.describe(lambda: method.build_model(nnx.Rngs(config.seed)), tc.groups, mesh,
                               per_layer=per_layer)

    def shapes(names):
        return state_lib.unflatten({p: jax.ShapeDtypeStruct(parts.templates[p][1].get_value().shape,
                                                            parts.templates[p][1].get_value().dtype,
                                                            sharding=parts.shardings[p]) for p in names})

    tx, schedules = optim.make_optimizer(tc, parts.labels, steps)
    p_sh = parts.sharding_tree(parts.trainable)
    p_abs = shapes(parts.trainable)
    opt_sh, opt_abs = state_lib.opt_state_shardings(tx, p_abs, p_sh, mesh)
    rep = NamedSharding(mesh, P())
    state_sh = {"step": rep, "params": p_sh, "opt": opt_sh}
    abstract_state = {"step": jax.ShapeDtypeStruct((), jnp.int32, sharding=rep), "params": p_abs,
                      "opt": state_lib.abstract_like(opt_abs, opt_sh)}
    batch_sh = NamedSharding(mesh, P(mesh_lib.batch_axes()))
    step = make_train_step(parts, method.loss, tx, micro_batches=k, mesh=mesh, seed=config.seed,
                           skip_nonfinite=tc.nan_guard)
    step_state_sh = parts.to_step(state_sh)
    step_fn = jax.jit(step, in_shardings=(step_state_sh, parts.to_step(parts.sharding_tree(parts.frozen)),
                                          parts.sharding_tree(parts.other), batch_sh),
                      out_shardings=(step_state_sh, rep), donate_argnums=0)
    return Abstract(config, method, mesh, parts, tx, schedules, state_sh, abstract_state,
                    shapes(parts.frozen), shapes(parts.other), batch_sh, k, steps, step_fn)


@dataclasses.dataclass
class Setup:
    """`Abstract` plus the run's arrays: frozen parameters, other variables, initial trainables."""
    abstract: Abstract
    frozen: dict  # in the step's layout (`step_fn` takes it; `parts.merge` takes either layout)
    other: dict
    trainable_init: dict | None  # initial trainable params, stacked (None once consumed by init_state)

    def __getattr__(self, name):  # config, method, mesh, parts, tx, step_fn, ... of the Abstract
        if name == "abstract":
            raise AttributeError(name)
        return getattr(self.abstract, name)

    def init_state(self) -> dict:
        """A fresh train state in the step's layout (params from init / load_pretrained / init_from)."""
        params, self.trainable_init = self.trainable_init, None
        tx, to_step = self.abstract.tx, self.abstract.parts.to_step

        def init(p):
            p = to_step(p)
            return {"step": jnp.zeros((), jnp.int32), "params": p, "opt": tx.init(p)}

        # Per-layer slices cannot reuse the stacked input buffers: donate only without them.
        donate = () if self.abstract.parts.per_layer else 0
        return jax.jit(init, out_shardings=to_step(self.abstract.state_shardings), donate_argnums=donate)(params)

    def global_batch(self, local: dict[str, np.ndarray]) -> dict[str, jax.Array]:
        """Assembles each process's rows into global arrays sharded over the batch axes."""
        n = jax.process_count()
        return {k: jax.make_array_from_process_local_data(
                    self.batch_sharding, np.asarray(v), (v.shape[0] * n, *v.shape[1:]))
                for k, v in local.items()}

    def compile(self, batch: dict[str, jax.Array]):
        """Ahead-of-time compile of the step for these batch shapes; logs memory analysis."""
        t0 = time.time()
        compiled = self.abstract.lower(batch).compile()
        seconds = time.time() - t0
        mem = metrics_lib.memory_report(compiled)
        logging.info("compiled train step in %.1f s; memory per device: %s", seconds,
                     {k: f"{v / 2**20:.1f} MiB" for k, v in mem.items()})
        return compiled, seconds, mem

    def lrs(self, step: int) -> dict[str, float]:
        return {f"lr/{i}": float(s(step)) for i, s in self.schedules.items()}


def build(config, mesh: jax.sharding.Mesh | None = None) -> Setup:
    """`abstract(config, mesh)` plus parameters: init (sharded at birth), then the method's
    `load_pretrained`, then `train.init_from`."""
    a = abstract(config, mesh)
    parts, method = a.parts, a.method
    build_fn = lambda key: method.build_model(nnx.Rngs(jax.random.wrap_key_data(key)))  # noqa: E731
    # The key is an argument (host data, replicated), not a constant: one init program for every seed.
    key = np.asarray(jax.random.key_data(jax.random.key(config.seed)))
    trainable, frozen, other = state_lib.init_sharded(build_fn, parts, key)
    if hasattr(method, "load_pretrained"):
        model = parts.merge(trainable, frozen, other)
        method.load_pretrained(model)
        trainable, frozen, other = jax.device_put(
            parts.split(model), (parts.sharding_tree(parts.trainable),
                                 parts.sharding_tree(parts.frozen),
                                 parts.sharding_tree(parts.other)))
    if config.train.init_from:
        abstract_params = {p: jax.ShapeDtypeStruct(parts.templates[p][1].get_value().shape,
                                                   parts.templates[p][1].get_value().dtype,
                                                   sharding=parts.shardings[p])
                           for p in parts.trainable + parts.frozen}
        loaded, missing = ckpt_lib.load_params(config.train.init_from, abstract_params)
        if missing:
            logging.warning("init_from: %d parameters not in the checkpoint keep their "
                            "initial values: %s", len(missing), missing[:10])
        t_flat, f_flat = state_lib.flatten(trainable), state_lib.flatten(frozen)
        for p, v in loaded.items():
            (t_flat if p in t_flat else f_flat)[p] = v
        trainable, frozen = state_lib.unflatten(t_flat), state_lib.unflatten(f_flat)
    frozen = parts.arrays_to_step(frozen, parts.sharding_tree(parts.frozen))
    return Setup(a, frozen, other, trainable)
