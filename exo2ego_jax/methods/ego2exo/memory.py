"""Full-size Ego2ExoVLM train step without allocating it: eval_shape + AOT compile + memory analysis.

The trainer's `setup.build` materialises parameters; a 7B student does not fit a laptop. This
builds the same pieces abstractly (parameter templates from `nnx.eval_shape`, optimizer state
from `jax.eval_shape`, shardings from the logical-axis rules), lowers and compiles the trainer's
own step function for the configured mesh, and returns XLA's per-device memory analysis.

    from exo2ego_jax.methods.ego2exo import memory as ego2exo_memory
    report = ego2exo_memory.analyse(config, mesh)   # config: configs/ego2exo/student.py

or from the shell (targets as in parallel/aot.py: `cpu:N` fake CPU devices, `tpu:TOPOLOGY` the
TPU compiler through libtpu):

    python -m exo2ego_jax.methods.ego2exo.memory --hardware tpu_v5e_64 --target tpu:v5e:8x8
"""
from __future__ import annotations

import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from exo2ego_jax.parallel import aot
from exo2ego_jax.parallel import mesh as mesh_lib
from exo2ego_jax.train import metrics as metrics_lib
from exo2ego_jax.train import optim
from exo2ego_jax.train import setup as setup_lib
from exo2ego_jax.train import state as state_lib
from exo2ego_jax.train.step import make_train_step


def abstract_batch(config, batch: int, sharding) -> dict[str, jax.ShapeDtypeStruct]:
    """Shapes of one global batch of the student pipeline (instruction samples, one video each)."""
    d = config.data
    t, f, s = d.max_len, d.num_frames, d.image_size
    i32 = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.int32, sharding=sharding)  # noqa: E731
    out = {"input_ids": i32(batch, t), "labels": i32(batch, t), "attention_mask": i32(batch, t),
           "pixels": jax.ShapeDtypeStruct((batch, 1, f, s, s, 3), jnp.dtype(d.get("pixel_dtype", "uint8")),
                                          sharding=sharding),
           "video_mask": i32(batch, 1), "example_mask": i32(batch)}
    if d.sampling == "fps":
        out["frame_mask"] = i32(batch, 1, f)
    return out


def analyse(config, mesh: jax.sharding.Mesh | None = None) -> dict[str, Any]:
    """Parameter counts, shapes and compiled per-device memory of one optimizer step."""
    from exo2ego_jax.methods.ego2exo import method as ego2exo
    mesh = mesh or mesh_lib.make_mesh(config.hardware)
    tc = config.train
    build = lambda: ego2exo.build_model(config, nnx.Rngs(0))  # noqa: E731
    with nnx.use_eager_sharding(False):
        parts = state_lib.describe(build, tc.groups, mesh)
    shapes = {p: parts.templates[p][1].get_value() for p in parts.templates}

    def abstract(names):
        return state_lib.unflatten({p: jax.ShapeDtypeStruct(shapes[p].shape, shapes[p].dtype,
                                                            sharding=parts.shardings[p]) for p in names})

    count = lambda names: int(sum(np.prod(shapes[p].shape) for p in names))  # noqa: E731
    dp = mesh_lib.data_parallel_size(mesh)
    k = setup_lib.micro_batches(config, dp)
    tx, _ = optim.make_optimizer(tc, parts.labels, max(tc.steps, 1))
    p_sh = parts.sharding_tree(parts.trainable)
    p_abs = abstract(parts.trainable)
    opt_sh, opt_abs = state_lib.opt_state_shardings(tx, p_abs, p_sh, mesh)
    rep = NamedSharding(mesh, P())
    state_sh = {"step": rep, "params": p_sh, "opt": opt_sh}
    state_abs = {"step": jax.ShapeDtypeStruct((), jnp.int32, sharding=rep), "params": p_abs,
                 "opt": state_lib.abstract_like(opt_abs, opt_sh)}
    batch_sh = NamedSharding(mesh, P(mesh_lib.batch_axes()))
    step = make_train_step(parts, ego2exo.loss_fn, tx, micro_batches=k, mesh=mesh, seed=config.seed)
    fn = jax.jit(step, in_shardings=(state_sh, parts.sharding_tree(parts.frozen), parts.sharding_tree(parts.other),
                                     batch_sh), out_shardings=(state_sh, rep), donate_argnums=0)
    t0 = time.time()
    lowered = fn.lower(state_abs, abstract(parts.frozen), abstract(parts.other),
                       abstract_batch(config, tc.global_batch, batch_sh))
    compiled = lowered.compile()
    mem = metrics_lib.memory_report(compiled)
    hbm = aot.hbm_gib(config.hardware.preset)
    return {"hbm_per_device_GiB": round(hbm, 1),
            "fits_hbm": bool(hbm) and mem.get("total_bytes", 0) / 2**30 <= hbm,
            "per_device_micro_batch": tc.global_batch // (k * dp), "remat": config.hardware.remat,
            "platform": mesh.devices.flat[0].platform,
            "params_total": count(parts.trainable) + count(parts.frozen),
            "params_trainable": count(parts.trainable), "params_frozen": count(parts.frozen),
            "devices": int(np.prod(list(mesh.shape.values()))), "mesh": dict(mesh.shape), "micro_batches": k,
            "compile_seconds": time.time() - t0, "memory_per_device": mem, "shapes": shapes}


def main() -> None:
    import argparse
    import json
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/ego2exo/student.py", help="config file[:args]")
    ap.add_argument("--hardware", default="tpu_v5e_64")
    ap.add_argument("--target", default="cpu:8", help="cpu:N or tpu:TOPOLOGY (e.g. tpu:v5e:8x8)")
    ap.add_argument("--per-device-batch", type=int, default=0, help="override hardware.per_device_batch")
    ap.add_argument("--remat", default="", help="override hardware.remat")
    ap.add_argument("--tensor", type=int, default=0, help="override hardware.ici_tensor (fsdp takes the rest)")
    ap.add_argument("--layers", type=int, default=0, help="override LLM/ViT depth (0 = full size)")
    args = ap.parse_args()
    devices = aot.devices_for(args.target)
    from exo2ego_jax import config_lib
    path, _, arg = args.config.partition(":")
    config = config_lib.load(path, ",".join(a for a in (arg, f"hardware={args.hardware}") if a))
    with config.unlocked():
        if args.per_device_batch:
            config.hardware.per_device_batch = args.per_device_batch
        if args.remat:
            config.hardware.remat = args.remat
        if args.tensor:
            config.hardware.ici_tensor = args.tensor
        if args.layers:
            config.model.llm.num_layers = args.layers
            config.model.vision.num_layers = args.layers
    mesh = mesh_lib.make_mesh(config.hardware, devices)
    report = analyse(config, mesh)
    report.pop("shapes")
    report["memory_per_device_GiB"] = {k: round(v / 2**30, 3) for k, v in report.pop("memory_per_device").items()}
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
