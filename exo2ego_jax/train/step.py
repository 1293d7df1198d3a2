"""The jitted train step: gradient accumulation over micro-batches, clipping, AdamW, NaN guard."""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax

from exo2ego_jax.parallel import mesh as mesh_lib
from exo2ego_jax.train.state import ModelParts

# Name of the remat policies understood by `remat_policy` (config.hardware.remat).
REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch")
# Optional metric a loss returns with a per-token mean loss: how many tokens it averaged. Then
# accumulated micro-batches are weighted by it, so the step equals the full batch's token mean
# (plain micro-batch means would overweight micro-batches with short answers).
LOSS_WEIGHT = "loss_weight"


def remat_policy(name: str):
    """(use_remat, jax.checkpoint policy) for `config.hardware.remat`; models call this."""
    cp = jax.checkpoint_policies
    table = {"none": (False, None), "full": (True, None),
             "dots": (True, cp.checkpoint_dots),
             "dots_no_batch": (True, cp.checkpoint_dots_with_no_batch_dims)}
    if name not in table:
        raise ValueError(f"config.hardware.remat={name!r}; expected one of {REMAT_POLICIES}")
    return table[name]


def split_micro(batch: dict, k: int, mesh) -> dict:
    """[B, ...] -> [k, B/k, ...] so that micro-batch i takes rows i, i+k, ... .

    Interleaving keeps every micro-batch spread over all data-parallel devices (each device's
    contiguous block of rows contributes to every micro-batch).
    """
    def one(x):
        b = x.shape[0]
        if b % k:
            raise ValueError(f"batch of {b} rows cannot be split into {k} micro-batches")
        y = x.reshape(b // k, k, *x.shape[1:]).swapaxes(0, 1)
        spec = jax.sharding.PartitionSpec(None, mesh_lib.batch_axes())
        return jax.lax.with_sharding_constraint(y, jax.sharding.NamedSharding(mesh, spec))
    return jax.tree.map(one, batch)


def _first_elements_finite(updates) -> jax.Array:
    """Whether the first element of every update leaf is finite (a scalar bool).

    For optimizers without ``apply_guarded`` (train/optim.AdamW checks its learning rates
    instead). The gradients are checked in full (their norm); params and moments are only ever
    written when a step is finite. What is left to catch is a non-finite learning rate, which
    makes every element of an update non-finite, so one element per leaf finds it.
    """
    firsts = [u.reshape(-1)[:1] for u in jax.tree.leaves(updates) if u.size]
    return jnp.all(jnp.isfinite(jnp.concatenate(firsts))) if firsts else jnp.bool_(True)


def make_train_step(parts: ModelParts, loss_fn: Callable, tx: optax.GradientTransformation,
                    *, micro_batches: int, mesh, seed: int = 0,
                    skip_nonfinite: bool = True) -> Callable:
    """Returns `step(state, frozen, other, batch) -> (state, metrics)` (pure; jit it outside).

    `loss_fn(model, batch, rng) -> (loss, metrics)` (a method's `loss`).
    state = {"step": int32 [], "params": trainable nested dict, "opt": optax state}.
    The step's rng is fold_in(PRNGKey(seed), step), so a resumed run draws the same numbers.
    With `skip_nonfinite`, a step whose loss or gradient norm is NaN/Inf leaves the state as it
    was (the loop then stops, naming the step), so a bad update is never written to a checkpoint.
    """
    def compute_loss(params, frozen, other, batch, rng):
        model = parts.merge(params, frozen, other)
        loss, metrics = loss_fn(model, batch, rng)
        return loss.astype(jnp.float32), metrics

    grad_fn = jax.value_and_grad(compute_loss, has_aux=True)

    def step(state, frozen, other, batch):
        # Trace under the mesh so the models' activation constraints (parallel/rules.constrain)
        # take effect whoever jits this step (trainer, memory tools, benchmarks).
        with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
            return traced_step(state, frozen, other, batch)

    def traced_step(state, frozen, other, batch):
        params = state["params"]
        rng = jax.random.fold_in(jax.random.PRNGKey(seed), state["step"])
        if micro_batches == 1:
            (loss, metrics), grads = grad_fn(params, frozen, other, batch, rng)
        else:
            micro = split_micro(batch, micro_batches, mesh)
            zeros = jax.tree.map(jnp.zeros_like, params)
            (_, m0_shape) = jax.eval_shape(
                lambda: compute_loss(params, frozen, other,
                                     jax.tree.map(lambda x: x[0], micro), rng))
            m_zero = jax.tree.map(lambda s: jnp.zeros(s.shape, jnp.float32), m0_shape)

            def body(carry, xs):
                g_acc, l_acc, w_acc, m_acc = carry
                i, mb = xs
                (l, m), g = grad_fn(params, frozen, other, mb, jax.random.fold_in(rng, i))
                w = jnp.asarray(m.get(LOSS_WEIGHT, 1.0), jnp.float32)
                g_acc = jax.tree.map(lambda a, b: a + w * b, g_acc, g)
                m_acc = jax.tree.map(lambda a, b: a + b.astype(jnp.float32), m_acc, m)
                return (g_acc, l_acc + w * l, w_acc + w, m_acc), None

            zero = jnp.zeros((), jnp.float32)
            (grads, loss, weight, metrics), _ = jax.lax.scan(
                body, (zeros, zero, zero, m_zero), (jnp.arange(micro_batches), micro))
            weight = jnp.maximum(weight, 1e-6)  # every micro-batch empty: zero gradient, not NaN
            grads = jax.tree.map(lambda g: g / weight, grads)
            loss = loss / weight
            metrics = {k: v if k == LOSS_WEIGHT else v / micro_batches for k, v in metrics.items()}

        grad_norm = optax.global_norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        if hasattr(tx, "apply_guarded"):  # the project's AdamW: one pass per output (train/optim.py)
            new_params, opt, ok = tx.apply_guarded(grads, state["opt"], params, grad_norm,
                                                   finite if skip_nonfinite else None)
            finite = finite & ok
        else:
            updates, opt = tx.update(grads, state["opt"], params)
            new_params = optax.apply_updates(params, updates)
            finite = finite & _first_elements_finite(updates)
            if skip_nonfinite:
                keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)
                new_params, opt = keep(new_params, params), keep(opt, state["opt"])
        new_state = {"step": state["step"] + 1, "params": new_params, "opt": opt}
        out = {"loss": loss, "grad_norm": grad_norm, "finite": finite,
               **{k: jnp.asarray(v, jnp.float32) for k, v in metrics.items()}}
        return new_state, out

    return step
