"""Full-size Exo2Ego on a pod, without the pod: abstract shapes and the compiled memory analysis.

``python -m exo2ego_jax.methods.exo2ego.memory --config configs/exo2ego/stage2_guidance.py --hardware tpu_v5p_128 --target cpu:128``
builds the stage's model with ``nnx.eval_shape`` (no parameter memory), shards it with the rule
table on the target's devices, lowers and compiles the real train step (the same
``make_train_step`` the trainer jits, which traces under the mesh so the models' activation
constraints apply) for one global batch, and prints per-device bytes from XLA's
``memory_analysis()`` next to the chip's HBM.

Targets (parallel/aot.py): ``cpu:N`` = N fake CPU devices (XLA:CPU runs bf16 dots in f32, so its
temp sizes are an upper bound); ``tpu:v5p:4x4x4`` = the TPU compiler itself for that slice, ahead
of time (needs ``pip install libtpu``, no TPU).
"""
from __future__ import annotations

import argparse
import json
import math
import time

import jax
import jax.numpy as jnp
import numpy as np

from exo2ego_jax.methods import common
from exo2ego_jax.parallel import aot
from exo2ego_jax.parallel import mesh as mesh_lib
from exo2ego_jax.train import metrics as metrics_lib
from exo2ego_jax.train import setup as setup_lib


def _bytes_per_device(tree) -> int:
    """Bytes one device holds of sharded abstract arrays (shape / shards along each mesh axis)."""
    total = 0
    for x in jax.tree.leaves(tree):
        shards = 1
        mesh_shape = dict(x.sharding.mesh.shape)
        for entry in x.sharding.spec:
            for ax in (entry if isinstance(entry, tuple) else (entry,)):
                if ax is not None:
                    shards *= mesh_shape[ax]
        total += math.prod(x.shape) * x.dtype.itemsize // shards
    return total


def analyse(config, num_devices: int | None = None, compile: bool = True, devices=None) -> dict:
    """Abstract build + compile of one train step; returns parameter counts and bytes per device.

    `devices`: what to compile for (default: the first `num_devices` of `jax.devices()`); pass
    `parallel.aot.devices_for("tpu:v5p:4x4x4")` to compile with the TPU compiler.
    """
    if devices is None:
        devices = jax.devices()[:num_devices] if num_devices else jax.devices()
    mesh = mesh_lib.make_mesh(config.hardware, devices)
    a = setup_lib.abstract(config, mesh, total_steps=1000)  # steps only shape the LR schedule
    k, dp = a.micro_batches, mesh_lib.data_parallel_size(mesh)
    trainable, frozen, state = a.abstract_state["params"], a.abstract_frozen, a.abstract_state
    b, t = config.train.global_batch, config.data.max_len
    f, s = config.data.num_frames, config.model.vision.image_size
    i32 = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.int32)  # noqa: E731
    batch = {"input_ids": i32(b, t), "labels": i32(b, t), "attention_mask": i32(b, t),
             "video_mask": i32(b, 1), "example_mask": i32(b)}
    pixel_dtype = jnp.dtype(config.data.get("pixel_dtype", "uint8"))  # what the pipeline yields
    for view in ("ego", "exo"):
        batch[f"{view}_pixels"] = jax.ShapeDtypeStruct((b, 1, f, s, s, 3), pixel_dtype)
    count = lambda tree: int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))  # noqa: E731
    gib = lambda n: round(n / 2**30, 3)  # noqa: E731
    out = {"params_per_device_GiB": gib(_bytes_per_device((trainable, frozen))),
           "opt_state_per_device_GiB": gib(_bytes_per_device(state["opt"]))}
    t0 = time.time()
    mem = {}
    if compile:
        # The step traces under the mesh itself (train/step.py); no context is needed here.
        compiled = a.lower(batch).compile()
        mem = metrics_lib.memory_report(compiled)
    hbm = aot.hbm_gib(config.hardware.preset)
    fit = {}
    if mem and hbm:
        fit = {"hbm_per_device_GiB": round(hbm, 1),
               "fits_hbm": mem["total_bytes"] / 2**30 <= hbm,
               "headroom_GiB": round(hbm - mem["total_bytes"] / 2**30, 2)}
    return {**out, "stage": config.exo2ego.stage, "hardware": config.hardware.preset,
            "platform": devices[0].platform, "devices": len(devices),
            "mesh": dict(mesh.shape), "micro_batches": k, "global_batch": b,
            "per_device_micro_batch": b // (k * dp), "remat": config.hardware.remat, "seq_len": t,
            "trainable_params": count(trainable), "frozen_params": count(frozen),
            "compile_s": round(time.time() - t0, 1),
            **{f"{key}_per_device_GiB": round(v / 2**30, 3) for key, v in mem.items()}, **fit}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_memory_tool_args(ap, config="configs/exo2ego/stage2_guidance.py", hardware="tpu_v5p_128")
    ap.add_argument("--target", default="", help="cpu:N (fake CPU devices) or tpu:TOPOLOGY "
                    "(e.g. tpu:v5p:4x4x4; needs libtpu); default cpu:--devices")
    ap.add_argument("--devices", type=int, default=128, help="fake CPU devices when --target is not set")
    ap.add_argument("--no-compile", action="store_true", help="shapes and sharded bytes only")
    args = ap.parse_args()
    devices = aot.devices_for(args.target or f"cpu:{args.devices}")
    c = common.memory_tool_config(args)
    print(json.dumps(analyse(c, compile=not args.no_compile, devices=devices), indent=1))


if __name__ == "__main__":
    main()
