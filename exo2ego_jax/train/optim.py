"""Parameter groups by regex, per-group warmup + decay schedules, AdamW with global clipping.

``make_optimizer`` returns an optax transformation (``init`` / ``update``, used as any optax
optimizer) that also carries ``apply_guarded``: the same update computed in one pass per output
(moments, then parameters), with the NaN guard folded in. The train step uses it; see
``_fused_adamw`` for why.
"""
from __future__ import annotations

import re
from typing import Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import optax


def assign_groups(paths: Sequence[str], groups: Sequence[tuple[str, float | None]]) -> dict[str, int]:
    """Maps each param path to the index of the first group whose regex `re.search`es it.

    Raises ValueError listing every path matched by no group (add a catch-all `(".*", lr)` or
    `(".*", None)` group to train or freeze the rest).
    """
    compiled = [(re.compile(rx), lr) for rx, lr in groups]
    out, missing = {}, []
    for path in paths:
        for i, (rx, _) in enumerate(compiled):
            if rx.search(path):
                out[path] = i
                break
        else:
            missing.append(path)
    if missing:
        raise ValueError(
            f"{len(missing)} parameters match no entry of config.train.groups "
            f"{[g[0] for g in groups]}: {missing[:20]}{' ...' if len(missing) > 20 else ''}. "
            "Add a group for them (lr=None freezes).")
    return out


def warmup_steps(tc, total_steps: int) -> int:
    return tc.warmup_steps if tc.warmup_steps >= 0 else int(round(tc.warmup_ratio * total_steps))


def make_schedule(tc, peak_lr: float, total_steps: int) -> optax.Schedule:
    """Linear warmup from 0 to `peak_lr`, then `tc.schedule` decay to `peak_lr * end_lr_ratio`."""
    warm = warmup_steps(tc, total_steps)
    end = peak_lr * tc.end_lr_ratio
    if tc.schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(
            0.0, peak_lr, warmup_steps=warm, decay_steps=max(total_steps, warm + 1), end_value=end)
    if tc.schedule == "constant":
        decay = optax.constant_schedule(peak_lr)
    elif tc.schedule == "linear":
        decay = optax.linear_schedule(peak_lr, end, max(total_steps - warm, 1))
    else:
        raise ValueError(f"config.train.schedule={tc.schedule!r}; expected cosine | constant | linear")
    if warm == 0:
        return decay
    return optax.join_schedules([optax.linear_schedule(0.0, peak_lr, warm), decay], [warm])


class AdamW(NamedTuple):
    """An optax GradientTransformation (``init``, ``update``) plus ``apply_guarded``.

    ``apply_guarded(grads, opt_state, params, grad_norm, finite) -> (params, opt_state, ok)``
    returns the new params and state of ``update`` + ``optax.apply_updates``, or the old ones
    where ``finite`` (a scalar bool) is False or a group's learning rate is not finite; ``ok`` is
    ``finite`` and that learning-rate check. ``finite=None``: no guard (the update is applied
    whatever it holds) and ``ok`` is the learning-rate check alone. ``grad_norm`` is the
    gradients' global norm (the step logs it; the clipping reuses it).
    """
    init: Callable
    update: Callable
    apply_guarded: Callable


def make_optimizer(tc, labels: dict[str, int], total_steps: int) -> tuple[AdamW, dict[int, optax.Schedule]]:
    """AdamW per trainable group behind global-norm clipping.

    `labels` maps each *trainable* param path to its group index (frozen params are not passed:
    they get no optimizer state at all). Returns the transformation and the group schedules.
    """
    used = sorted(set(labels.values()))
    schedules = {i: make_schedule(tc, tc.groups[i][1], total_steps) for i in used}
    transforms = {
        str(i): optax.adamw(schedules[i], b1=tc.b1, b2=tc.b2, eps=tc.eps,
                            weight_decay=tc.weight_decay)
        for i in used
    }

    def label_fn(params):
        from flax import traverse_util
        # A LayerSlices (a parameter kept per layer, train/layer_slices.py) is one entry: its label
        # is a prefix, so a group masks all its layers alike (one MaskedNode, as when stacked).
        flat = traverse_util.flatten_dict(params, sep="/")
        return traverse_util.unflatten_dict({k: str(labels[k]) for k in flat}, sep="/")

    parts = [optax.clip_by_global_norm(tc.clip)] if tc.clip > 0 else []
    parts.append(optax.multi_transform(transforms, label_fn))
    chain = optax.chain(*parts)
    fused = _fused_adamw(tc, {str(i): schedules[i] for i in used})
    return AdamW(chain.init, chain.update, fused), schedules


def _fused_adamw(tc, schedules: dict[str, optax.Schedule]) -> Callable:
    """The chain's update on its own state layout, written so XLA makes one pass per output.

    Through optax, XLA:CPU materialises the clipped gradient twice (its select between the clipped
    and unclipped gradient reads both), the moments before and after the guard, and the update
    before it is added: ~24 passes over every parameter's size per step (~7% of a SmolLM2-135M
    train step on 2 cores; bench/train_vs_torch.py --profile). Here the clipping is a scalar
    factor, the guard selects inside each output's expression, and the learning-rate check that
    needed the updates' first elements reads the scalar rates: each of the new first moment,
    second moment and parameters is one elementwise fusion over the old values (~11 passes).
    Equal to ``update`` + ``apply_updates`` up to float rounding (tests/test_optim.py).
    """
    b1, b2, eps, wd = tc.b1, tc.b2, tc.eps, tc.weight_decay

    def is_masked(x) -> bool:
        return isinstance(x, optax.MaskedNode)

    def apply_guarded(grads, opt_state, params, grad_norm, finite):
        partition = opt_state[-1]  # (clip state, partition state) or (partition state,)
        scale = (jnp.where(grad_norm < tc.clip, 1.0, tc.clip / grad_norm) if tc.clip > 0
                 else jnp.ones((), jnp.float32))
        rates = {label: jnp.asarray(schedules[label](inner.inner_state[2].count), jnp.float32)
                 for label, inner in partition.inner_states.items()}
        rates_ok = jnp.bool_(True)
        for rate in rates.values():
            rates_ok = rates_ok & jnp.isfinite(rate)
        if finite is None:
            keep = lambda new, old: new
        else:
            finite = finite & rates_ok
            keep = lambda new, old: jnp.where(finite, new, old)
        new_params, inner_states = params, {}
        for label, inner in partition.inner_states.items():
            adam, decay_state, sched = inner.inner_state
            count = optax.safe_increment(adam.count)
            bc1 = 1 - b1 ** count
            bc2 = 1 - b2 ** count
            lr = rates[label]

            def moment(decay, power):
                def update(old, g):  # a group's moments hold MaskedNode where another group's params are
                    if is_masked(old):
                        return old
                    g = g.astype(old.dtype) * scale.astype(old.dtype)
                    return keep((1 - decay) * g ** power + decay * old, old)
                return update

            mu = jax.tree.map(moment(b1, 1), adam.mu, grads, is_leaf=is_masked)
            nu = jax.tree.map(moment(b2, 2), adam.nu, grads, is_leaf=is_masked)

            def param(m, v, p):
                if is_masked(m):
                    return p
                step = (m / bc1.astype(m.dtype)) / (jnp.sqrt(v / bc2.astype(v.dtype)) + eps) + wd * p
                return keep((p + (-lr).astype(p.dtype) * step).astype(p.dtype), p)

            new_params = jax.tree.map(param, mu, nu, new_params, is_leaf=is_masked)
            inner_states[label] = inner._replace(inner_state=(
                adam._replace(count=keep(count, adam.count), mu=mu, nu=nu), decay_state,
                sched._replace(count=keep(optax.safe_increment(sched.count), sched.count))))
        partition = partition._replace(inner_states=inner_states)
        return new_params, (*opt_state[:-1], partition), rates_ok if finite is None else finite

    return apply_guarded
