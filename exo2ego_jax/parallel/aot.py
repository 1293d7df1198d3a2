"""Devices to compile for without owning them: fake CPU devices, or a TPU slice through libtpu.

The memory tools (methods/exo2ego/memory.py, methods/ego2exo/memory.py) lower the real train
step for a pod and read XLA's `memory_analysis()`. Two targets:

* ``cpu:N``: N fake CPU devices (``--xla_force_host_platform_device_count``). Always available,
  but XLA:CPU is not the TPU compiler: it runs bf16 dots in f32 and fuses less, so its temp
  sizes are an upper bound (roughly 2x on the big activations).
* ``tpu:TOPOLOGY`` (e.g. ``tpu:v5p:4x4x4``, ``tpu:v5e:8x8``): the TPU compiler itself,
  ahead of time, through ``jax.experimental.topologies``. Needs the `libtpu` package installed
  (``pip install libtpu``; no TPU is needed) and gives the numbers the chip would see.

A target must be chosen before JAX initialises its backends (first `jax.devices()` call).
"""
from __future__ import annotations

import os
from typing import Sequence

# Chip counts and HBM per chip of the hardware presets' slices (Cloud TPU docs: v5p 95 GB,
# v5e 16 GB per chip). Cloud TPU names count TensorCores: v5p-128 = 64 chips (2 cores per chip,
# one JAX device each), v5e-64 = 64 chips (1 core per chip).
PRESET_TARGETS = {
    "tpu_v5p_128": ("tpu:v5p:4x4x4", 95.0),
    "tpu_v5e_64": ("tpu:v5e:8x8", 16.0),
    "gpu_h100x8": ("cpu:8", 80.0),
    "cpu": ("cpu:8", 0.0),
}


def hbm_gib(preset: str) -> float:
    """HBM of one device of `preset` in GiB (0 when unknown)."""
    gb = PRESET_TARGETS.get(preset, ("", 0.0))[1]
    return gb * 1e9 / 2**30


def configure_cpu(n: int) -> None:
    """Asks for `n` fake CPU devices (call before the first JAX computation)."""
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_force_host_platform_device_count" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={n}".strip()
    import jax  # here, after XLA_FLAGS is set: a memory tool may call this before anything imported JAX
    jax.config.update("jax_num_cpu_devices", n)
    jax.config.update("jax_platforms", "cpu")


def tpu_devices(topology: str) -> list:
    """Abstract devices of a TPU slice (`v5p:4x4x4`, `v5e:8x8`, ...) for AOT compilation."""
    try:
        import libtpu  # noqa: F401  (optional dependency: only AOT compilation for TPU targets needs it)
    except ImportError as e:
        raise RuntimeError(f"target tpu:{topology} needs the libtpu package (pip install libtpu; no TPU "
                           "is needed to compile), or use a cpu:N target") from e
    # Without these libtpu tries to discover a real TPU VM and logs errors; compiling needs neither.
    os.environ.setdefault("TPU_ACCELERATOR_TYPE", "v5p-8")
    os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
    # Compiling touches no chip, so several memory analyses may run side by side.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    from jax.experimental import topologies
    return list(topologies.get_topology_desc(platform="tpu", topology_name=topology).devices)


def devices_for(target: str) -> Sequence:
    """`cpu:N` -> N fake CPU devices; `tpu:TOPOLOGY` -> the slice's abstract TPU devices."""
    kind, _, rest = target.partition(":")
    if kind == "cpu":
        n = int(rest or 8)
        configure_cpu(n)
        import jax
        devices = jax.devices()
        if len(devices) < n:
            raise RuntimeError(f"target {target}: JAX already started with {len(devices)} CPU devices; "
                               "choose the target before any JAX computation")
        return devices[:n]
    if kind == "tpu":
        return tpu_devices(rest)
    raise ValueError(f"target {target!r}: expected cpu:N or tpu:TOPOLOGY (e.g. tpu:v5p:4x4x4)")

