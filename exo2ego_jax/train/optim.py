"""Parameter groups by regex, per-group warmup + decay schedules, AdamW with global clipping."""
from __future__ import annotations

import re
from typing import Sequence

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


def make_optimizer(tc, labels: dict[str, int], total_steps: int
                   ) -> tuple[optax.GradientTransformation, dict[int, optax.Schedule]]:
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
        flat = traverse_util.flatten_dict(params, sep="/")
        return traverse_util.unflatten_dict({k: str(labels[k]) for k in flat}, sep="/")

    parts = [optax.clip_by_global_norm(tc.clip)] if tc.clip > 0 else []
    parts.append(optax.multi_transform(transforms, label_fn))
    return optax.chain(*parts), schedules
