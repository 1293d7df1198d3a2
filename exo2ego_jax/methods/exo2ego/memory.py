"""Full-size Exo2Ego on a pod, without the pod: abstract shapes and the compiled memory analysis.

``python -m exo2ego_jax.methods.exo2ego.memory --stage 2 --hardware tpu_v5p_128 --target cpu:128``
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
import time


def _bytes_per_device(tree) -> int:
    """Bytes one device holds of sharded abstract arrays (shape / shards along each mesh axis)."""
    import math
    import jax
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
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx
    from jax.sharding import NamedSharding, PartitionSpec as P

    from exo2ego_jax.methods.exo2ego import method as exo2ego
    from exo2ego_jax.parallel import aot
    from exo2ego_jax.parallel import mesh as mesh_lib
    from exo2ego_jax.train import metrics as metrics_lib, optim, setup as setup_lib, state as state_lib
    from exo2ego_jax.train.step import make_train_step

    if devices is None:
        devices = jax.devices()[:num_devices] if num_devices else jax.devices()
    mesh = mesh_lib.make_mesh(config.hardware, devices)
    build_fn = lambda: exo2ego.build_model(config, nnx.Rngs(0))  # noqa: E731
    parts = state_lib.describe(build_fn, config.train.groups, mesh)
    tmpl = {p: parts.templates[p][1].get_value() for p in parts.templates}

    def abstract(names):
        return state_lib.unflatten({p: jax.ShapeDtypeStruct(tmpl[p].shape, tmpl[p].dtype,
                                                            sharding=parts.shardings[p]) for p in names})

    trainable, frozen, other = abstract(parts.trainable), abstract(parts.frozen), abstract(parts.other)
    dp = mesh_lib.data_parallel_size(mesh)
    k = setup_lib.micro_batches(config, dp)
    tx, _ = optim.make_optimizer(config.train, parts.labels, 1000)
    p_sh = parts.sharding_tree(parts.trainable)
    opt_sh, opt_abs = state_lib.opt_state_shardings(tx, trainable, p_sh, mesh)
    rep = NamedSharding(mesh, P())
    state = {"step": jax.ShapeDtypeStruct((), jnp.int32, sharding=rep), "params": trainable,
             "opt": state_lib.abstract_like(opt_abs, opt_sh)}
    b, t = config.train.global_batch, config.data.max_len
    f, s = config.data.num_frames, config.model.vision.image_size
    bsh = NamedSharding(mesh, P(mesh_lib.batch_axes()))
    batch = {"input_ids": jax.ShapeDtypeStruct((b, t), jnp.int32, sharding=bsh),
             "labels": jax.ShapeDtypeStruct((b, t), jnp.int32, sharding=bsh),
             "attention_mask": jax.ShapeDtypeStruct((b, t), jnp.int32, sharding=bsh),
             "video_mask": jax.ShapeDtypeStruct((b, 1), jnp.int32, sharding=bsh),
             "example_mask": jax.ShapeDtypeStruct((b,), jnp.int32, sharding=bsh)}
    pixel_dtype = jnp.dtype(config.data.get("pixel_dtype", "uint8"))  # what the pipeline yields
    for view in ("ego", "exo"):
        batch[f"{view}_pixels"] = jax.ShapeDtypeStruct((b, 1, f, s, s, 3), pixel_dtype, sharding=bsh)
    step = make_train_step(parts, exo2ego.loss_fn, tx, micro_batches=k, mesh=mesh, seed=0)
    state_sh = {"step": rep, "params": p_sh, "opt": opt_sh}
    jitted = jax.jit(step, in_shardings=(state_sh, parts.sharding_tree(parts.frozen),
                                         parts.sharding_tree(parts.other), bsh),
                     out_shardings=(state_sh, rep), donate_argnums=0)
    count = lambda tree: int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))  # noqa: E731
    gib = lambda n: round(n / 2**30, 3)  # noqa: E731
    out = {"params_per_device_GiB": gib(_bytes_per_device((trainable, frozen))),
           "opt_state_per_device_GiB": gib(_bytes_per_device(state["opt"]))}
    t0 = time.time()
    mem = {}
    if compile:
        # The step traces under the mesh itself (train/step.py); no context is needed here.
        compiled = jitted.lower(state, frozen, other, batch).compile()
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
    ap.add_argument("--stage", type=int, default=2)
    ap.add_argument("--hardware", default="tpu_v5p_128")
    ap.add_argument("--target", default="", help="cpu:N (fake CPU devices) or tpu:TOPOLOGY "
                    "(e.g. tpu:v5p:4x4x4; needs libtpu); default cpu:--devices")
    ap.add_argument("--devices", type=int, default=128, help="fake CPU devices when --target is not set")
    ap.add_argument("--layers", type=int, default=0, help="override LLM/ViT depth (0 = full size)")
    ap.add_argument("--tensor", type=int, default=0, help="override hardware.ici_tensor (0 = preset)")
    ap.add_argument("--per-device-batch", type=int, default=0, help="override hardware.per_device_batch")
    ap.add_argument("--global-batch", type=int, default=0, help="override train.global_batch")
    ap.add_argument("--remat", default="", help="override hardware.remat (none|full|dots|dots_no_batch)")
    ap.add_argument("--no-compile", action="store_true", help="shapes and sharded bytes only")
    args = ap.parse_args()
    from exo2ego_jax.parallel import aot
    devices = aot.devices_for(args.target or f"cpu:{args.devices}")
    from exo2ego_jax.methods.exo2ego import config as exo2ego_config
    c = exo2ego_config.stage_config(args.stage, hardware=args.hardware)
    if args.tensor:
        c.hardware.ici_tensor = args.tensor
    if args.per_device_batch:
        c.hardware.per_device_batch = args.per_device_batch
    if args.global_batch:
        c.train.global_batch = args.global_batch
    if args.remat:
        c.hardware.remat = args.remat
    if args.layers:
        c.model.llm.num_layers = args.layers
        c.model.vision.num_layers = args.layers
    print(json.dumps(analyse(c, compile=not args.no_compile, devices=devices), indent=1))


if __name__ == "__main__":
    main()
