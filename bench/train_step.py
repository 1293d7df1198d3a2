"""Benchmark one config's train step: compile time, memory analysis, steps/s, tokens/s, MFU.

    python bench/train_step.py --config configs/toy.py:hardware=cpu --steps 20
    python bench/train_step.py --config configs/demo.py --config.hardware.remat=full

Runs on whatever devices JAX sees (the config's mesh), with the method's real data pipeline.
"""
from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from exo2ego_jax import config_lib  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py[:args]).",
                                          lock_config=True)
_STEPS = flags.DEFINE_integer("steps", 20, "Timed steps (after 2 warm-up steps).")
flags.mark_flags_as_required(["config"])


def main(argv):
    del argv
    config = _CONFIG.value
    config_lib.restart_with_host_huge_pages(config.hardware)
    for var, extra in (("XLA_FLAGS", config.hardware.xla_flags),
                       ("LIBTPU_INIT_ARGS", config.hardware.libtpu_flags)):
        if extra:
            os.environ[var] = f"{os.environ.get(var, '')} {extra}".strip()
    config_lib.configure_host(config.hardware)
    import jax
    import numpy as np
    from exo2ego_jax.train import metrics as metrics_lib
    from exo2ego_jax.train import setup as setup_lib

    s = setup_lib.build(config)
    state = s.init_state()
    it = iter(s.method.dataset("train", jax.process_index(), jax.process_count()))
    locals_ = [next(it) for _ in range(_STEPS.value + 2)]
    batches = [s.global_batch(b) for b in locals_]
    compiled, compile_s, mem = s.compile(batches[0])

    for b in batches[:2]:  # warm-up (first execution allocates buffers)
        state, m = compiled(state, s.frozen, s.other, b)
    jax.block_until_ready(state)
    t0 = time.perf_counter()
    for b in batches[2:]:
        state, m = compiled(state, s.frozen, s.other, b)
    jax.block_until_ready(state)
    dt = (time.perf_counter() - t0) / _STEPS.value

    tokens = np.mean([s.method.tokens_in_batch(b) for b in locals_]) * jax.process_count()
    flops_ex = (s.method.flops_per_example()
                or metrics_lib.compiled_flops(compiled) * jax.device_count() / config.train.global_batch)
    peak = metrics_lib.peak_flops(override=config.hardware.peak_flops)
    mfu = metrics_lib.mfu(flops_ex * config.train.global_batch, dt, jax.device_count(), peak)
    if jax.process_index() == 0:
        print(f"devices            {jax.device_count()} x {jax.devices()[0].device_kind}, "
              f"mesh {dict(s.mesh.shape)}, {s.micro_batches} micro-batch(es)")
        print(f"compile            {compile_s:.2f} s")
        for k, v in mem.items():
            print(f"memory/{k:<28s} {v / 2**20:10.1f} MiB per device")
        print(f"step time          {dt * 1e3:.2f} ms  ({1 / dt:.2f} steps/s)")
        print(f"examples/s         {config.train.global_batch / dt:.1f}")
        print(f"tokens/s           {tokens / dt:.1f}")
        print(f"model FLOPs/step   {flops_ex * config.train.global_batch:.3e}")
        print(f"MFU                {'n/a (unknown peak for this device)' if mfu is None else f'{100 * mfu:.2f} %'}")
        print(f"final loss         {float(m['loss']):.4f}")


if __name__ == "__main__":
    app.run(main)
