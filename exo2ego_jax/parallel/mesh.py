"""Device mesh with named axes (data, fsdp, tensor), sized per interconnect level.

`ici_*` sizes split the devices inside one slice (TPU) or node (GPU); `dcn_*` sizes split the
slices/nodes. At most one size per level is -1 ("whatever remains"). Axes are `Auto` (GSPMD
style): jit places collectives from the input/output shardings.
"""
from __future__ import annotations

import math
from typing import Sequence

import jax
import numpy as np
from jax.experimental import mesh_utils

AXES = ("data", "fsdp", "tensor")


def _fill(sizes: Sequence[int], total: int, what: str) -> list[int]:
    sizes = list(sizes)
    if sizes.count(-1) > 1:
        raise ValueError(f"{what} sizes {sizes}: at most one may be -1")
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if total % known:
            raise ValueError(f"{what} sizes {sizes}: {total} devices are not divisible by {known}")
        sizes[sizes.index(-1)] = total // known
    if math.prod(sizes) != total:
        raise ValueError(
            f"{what} sizes {sizes} multiply to {math.prod(sizes)} but there are {total} "
            f"devices on this level; fix config.hardware.{what.split()[0]}_* or use one -1")
    return sizes


def _num_slices(devices: Sequence[jax.Device]) -> int:
    ids = {getattr(d, "slice_index", 0) for d in devices}
    return len(ids)


def mesh_shape(hw, num_devices: int, num_slices: int = 1) -> tuple[list[int], list[int]]:
    """(ici sizes, dcn sizes) for the three axes, with -1s resolved."""
    dcn = _fill([hw.dcn_data, hw.dcn_fsdp, hw.dcn_tensor], num_slices, "dcn (slices)")
    ici = _fill([hw.ici_data, hw.ici_fsdp, hw.ici_tensor], num_devices // num_slices,
                "ici (devices per slice)")
    return ici, dcn


def make_mesh(hw, devices: Sequence[jax.Device] | None = None) -> jax.sharding.Mesh:
    """Builds the (data, fsdp, tensor) mesh from `config.hardware` over `devices` (all by default)."""
    devices = list(jax.devices() if devices is None else devices)
    slices = _num_slices(devices)
    ici, dcn = mesh_shape(hw, len(devices), slices)
    if slices > 1:
        arr = mesh_utils.create_hybrid_device_mesh(ici, dcn, devices)
    else:
        try:
            arr = mesh_utils.create_device_mesh(ici, devices)
        except (ValueError, NotImplementedError, AssertionError):
            # Device kinds without a known topology (fake CPU devices, subsets): plain order.
            arr = np.asarray(devices).reshape(ici)
    return jax.sharding.Mesh(arr, AXES, axis_types=(jax.sharding.AxisType.Auto,) * len(AXES))


def batch_axes() -> tuple[str, ...]:
    """Mesh axes the batch dimension is split over (every data-parallel-like axis)."""
    return ("data", "fsdp")


def data_parallel_size(mesh: jax.sharding.Mesh) -> int:
    return math.prod(mesh.shape[a] for a in batch_axes())
