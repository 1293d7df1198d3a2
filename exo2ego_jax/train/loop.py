"""The training job: one loop for every stage of every method.

    train(config, workdir) -> final metrics

Resumes from the latest checkpoint in `workdir/checkpoints` when there is one (train state and
data iterator position, so the continued run is bitwise the uninterrupted one).
"""
from __future__ import annotations

import json
import logging
import os
import signal
import time

import jax
import numpy as np

from exo2ego_jax import config_lib
from exo2ego_jax import progress as progress_lib
from exo2ego_jax.data.pipeline_ops import skip_metrics
from exo2ego_jax.train import checkpoint as ckpt_lib
from exo2ego_jax.train import metrics as metrics_lib
from exo2ego_jax.train import setup as setup_lib


class NonFiniteError(FloatingPointError):
    """Raised by the NaN guard."""


class _Preemption:
    """SIGTERM (preemptible VMs, SLURM time limits) -> save at the next step and stop.

    Single-process only: with several processes, jax.distributed's preemption sync manager
    catches SIGTERM and Orbax's `reached_preemption` makes every process save at the same step.
    """

    def __init__(self):
        self.requested = False
        self._old = None
        if jax.process_count() > 1:
            return
        try:
            self._old = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread (e.g. a notebook executor)
            self._old = None

    def _handle(self, signum, frame):
        logging.warning("SIGTERM received: saving a checkpoint and stopping")
        self.requested = True

    def restore(self):
        if self._old is not None:
            signal.signal(signal.SIGTERM, self._old)


def _check_finite(pending, ckpt, workdir):
    """Raises NonFiniteError naming the first step whose loss or gradient norm was not finite."""
    for step, m in pending:
        if not bool(m["finite"]):
            last = ckpt.latest_step()
            where = (f"{os.path.join(workdir, 'checkpoints', str(last))}" if last is not None
                     else "none (no checkpoint was written yet)")
            raise NonFiniteError(
                f"non-finite loss or gradient at step {step} (loss={float(m['loss'])}, "
                f"grad_norm={float(m['grad_norm'])}); the update was not applied. "
                f"Last good checkpoint: {where}. Lower the learning rate, check the data, "
                "or resume from that checkpoint.")


def check_workdir(path: str, flag: str = "--workdir") -> None:
    """Fails up front, naming `flag`, when `path` cannot be a directory to write into."""
    if not path:
        raise ValueError(f"{flag} is empty: give a directory for checkpoints, metrics and logs")
    probe = os.path.abspath(path)
    while not os.path.exists(probe):  # the nearest existing ancestor decides
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        what = "is a file" if probe == os.path.abspath(path) else f"is inside {probe}, which is a file"
        raise NotADirectoryError(f"{flag}={path} {what}, not a directory: point {flag} at a directory "
                                 "(it is created if missing)")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise PermissionError(f"{flag}={path}: {probe} is not writable")


def train(config, workdir: str) -> dict:
    """Trains `config.method` for `config.train` steps, writing to `workdir`."""
    tc = config.train
    check_workdir(workdir)
    os.makedirs(workdir, exist_ok=True)
    if jax.process_index() == 0:
        with open(ckpt_lib.config_path(workdir), "w") as f:
            json.dump(config_lib.to_json_dict(config), f, indent=2)

    s = setup_lib.build(config)
    logging.info("mesh %s, %d micro-batches of %d, %d steps", dict(s.mesh.shape), s.micro_batches,
                 tc.global_batch // s.micro_batches, s.total_steps)
    metrics_lib.log_parameter_overview(s.abstract_state["params"], s.abstract_frozen, workdir)

    data = s.method.dataset("train", jax.process_index(), jax.process_count())
    data_iter = iter(data)
    ckpt = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"), tc)
    restored = ckpt.restore_latest(s.abstract_state, data_iter)
    pending = []  # (step, metrics) of the logging window not logged yet
    if restored is not None:
        start, state = restored
        state = s.step_state(state)  # checkpoints hold stacked layers (train/layer_slices.py)
        logging.info("resuming from %s/checkpoints/%d", workdir, start)
        s.trainable_init = None
        # The window that was open at the checkpoint: the next row averages the same steps as in
        # an uninterrupted run.
        pending = [(int(r["step"]), {k: np.float32(v) for k, v in r.items() if k != "step"})
                   for r in (ckpt.metrics_window or [])]
    else:
        start = 0
        state = s.init_state()

    writer = metrics_lib.Writer(workdir)
    flops_example = s.method.flops_per_example()
    peak = metrics_lib.resolve_peak_flops(config.hardware.peak_flops)
    tokens_fn = s.method.tokens_in_batch
    agg = metrics_lib.Aggregator()
    preempt = _Preemption()
    progress = None

    compiled, last = None, {}
    window_start, window_steps, window_tokens = time.time(), 0, 0
    step = start
    try:
        while step < s.total_steps:
            local = next(data_iter)
            batch = s.global_batch(local)
            if compiled is None:
                compiled, compile_s, mem = s.compile(batch)
                if not flops_example:  # fall back to XLA's count of the per-device program
                    flops_example = (metrics_lib.compiled_flops(compiled) * jax.device_count()
                                     / tc.global_batch)
                writer.write(step, {"compile_seconds": compile_s,
                                    **{f"memory/{k}": v for k, v in mem.items()}})
                if tc.progress:  # after compiling: honest ETA
                    progress = progress_lib.bar(total=s.total_steps, initial=start, unit="step", desc="train")
                window_start = time.time()
            state, m = compiled(state, s.frozen, s.other, batch)
            step += 1
            ckpt.check()  # a failed asynchronous save stops here, not steps later
            pending.append((step, m))
            window_steps += 1
            window_tokens += (tokens_fn(local) * jax.process_count() if tokens_fn else 0)
            if progress is not None:
                progress.update(1)

            is_last = step == s.total_steps
            log_now = step % tc.log_every == 0 or is_last
            save_now = ckpt.should_save(step, is_last or preempt.requested, check_time=log_now)
            if tc.nan_guard and (log_now or save_now):
                pending = jax.device_get(pending)
                _check_finite(pending, ckpt, workdir)
            if log_now:
                for _, pm in jax.device_get(pending):
                    agg.add({k: v for k, v in pm.items() if k != "finite"})
                pending = []
                jax.block_until_ready(state["step"])
                dt = (time.time() - window_start) / max(window_steps, 1)
                last = agg.compute_and_reset()
                last.update(s.lrs(step - 1))
                last.update({"steps_per_sec": 1.0 / dt, "clips_per_sec": tc.global_batch / dt,
                             "tokens_per_sec": window_tokens / window_steps / dt})
                u = metrics_lib.mfu(flops_example * tc.global_batch, dt, jax.device_count(), peak)
                if u is not None:
                    last["mfu"] = u
                last.update(skip_metrics(data_iter))  # skipped/<reason>, skipped/fraction (pipeline sources)
                writer.write(step, last)
                if progress is not None:
                    progress.set_postfix(loss=f"{last['loss']:.4f}")
                window_start, window_steps, window_tokens = time.time(), 0, 0
            if save_now:
                pending = jax.device_get(pending)
                window = [{"step": int(st), **{k: float(v) for k, v in pm.items()}} for st, pm in pending]
                ckpt.save(step, state, data_iter, config, frozen=s.frozen, metrics_window=window)
            if preempt.requested:
                logging.warning("stopped after step %d on SIGTERM", step)
                break
    finally:
        preempt.restore()
        if progress is not None:
            progress.close()
        ckpt.close()
        writer.close()
    last["step"] = step
    return last
