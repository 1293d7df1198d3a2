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

from exo2ego_jax.methods import common
from exo2ego_jax.methods.ego2exo import videollama3_student as vl3_student
from exo2ego_jax.parallel import aot
from exo2ego_jax.parallel import mesh as mesh_lib
from exo2ego_jax.train import metrics as metrics_lib
from exo2ego_jax.train import setup as setup_lib


def abstract_batch(config, batch: int, sharding) -> dict[str, jax.ShapeDtypeStruct]:
    """Shapes of one global batch of the student pipeline (instruction samples, one video each)."""
    d = config.data
    if config.model.get("arch", "llava_video") == "videollama3":  # patches / grids / keep masks per frame slot
        return {k: jax.ShapeDtypeStruct(shape, dtype, sharding=sharding)
                for k, (shape, dtype) in vl3_student.batch_spec(d, batch).items()}
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
    mesh = mesh or mesh_lib.make_mesh(config.hardware)
    tc = config.train
    a = setup_lib.abstract(config, mesh, total_steps=max(tc.steps, 1))  # steps only shape the LR schedule
    parts, k, dp = a.parts, a.micro_batches, mesh_lib.data_parallel_size(mesh)
    shapes = {p: parts.templates[p][1].get_value() for p in parts.templates}
    count = lambda names: int(sum(np.prod(shapes[p].shape) for p in names))  # noqa: E731
    t0 = time.time()
    lowered = a.lower(abstract_batch(config, tc.global_batch, a.batch_sharding))
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
    common.add_memory_tool_args(ap, config="configs/ego2exo/student.py", hardware="tpu_v5e_64")
    ap.add_argument("--target", default="cpu:8", help="cpu:N or tpu:TOPOLOGY (e.g. tpu:v5e:8x8)")
    args = ap.parse_args()
    devices = aot.devices_for(args.target)
    config = common.memory_tool_config(args)
    mesh = mesh_lib.make_mesh(config.hardware, devices)
    report = analyse(config, mesh)
    report.pop("shapes")
    report["memory_per_device_GiB"] = {k: round(v / 2**30, 3) for k, v in report.pop("memory_per_device").items()}
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
