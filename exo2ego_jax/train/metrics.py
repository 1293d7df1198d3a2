"""Training metrics: aggregation (clu.metrics), MFU, TensorBoard (tensorboardX) + JSONL writers."""
from __future__ import annotations

import json
import logging
import os
import time
from typing import Any

import jax
import numpy as np
from clu import metrics as clu_metrics

# Peak dense bf16 FLOP/s per device (chip for TPU, GPU for NVIDIA), from vendor spec sheets.
PEAK_FLOPS = {
    "tpu v4": 275e12,
    "tpu v5 lite": 197e12,  # v5e reports itself as "TPU v5 lite"
    "tpu v5e": 197e12,
    "tpu v5p": 459e12,
    "tpu v5": 459e12,
    "tpu v6 lite": 918e12,  # v6e (Trillium)
    "tpu v6e": 918e12,
    "a100": 312e12,
    "h100": 989e12,  # SXM, dense
    "h200": 989e12,
}


def peak_flops(device: jax.Device | None = None, override: float = 0.0) -> float | None:
    """Peak FLOP/s of `device` from PEAK_FLOPS (longest matching key), or `override` if > 0."""
    if override > 0:
        return override
    kind = (device or jax.devices()[0]).device_kind.lower()
    for key in sorted(PEAK_FLOPS, key=len, reverse=True):
        if key in kind:
            return PEAK_FLOPS[key]
    return None


_EXPLAINED_NO_PEAK: set[str] = set()  # device kinds whose missing MFU this process already explained


def resolve_peak_flops(override: float = 0.0, device: jax.Device | None = None) -> float | None:
    """`peak_flops`, logging (once per process and device kind) why MFU is absent when the peak is
    unknown: a demo trains many stages in one process."""
    peak = peak_flops(device, override)
    kind = (device or jax.devices()[0]).device_kind
    if peak is None and kind not in _EXPLAINED_NO_PEAK:
        _EXPLAINED_NO_PEAK.add(kind)
        logging.info("MFU is not reported: no peak FLOP/s is known for device kind %r; set "
                     "--config.hardware.peak_flops=<peak FLOP/s per device> to report it", kind)
    return peak


def mfu(flops_per_step: float, step_seconds: float, num_devices: int, peak: float | None) -> float | None:
    """Model FLOPs utilisation: model FLOPs per step / step time / (peak per device * devices)."""
    if not peak or not flops_per_step or step_seconds <= 0:
        return None
    return flops_per_step / step_seconds / (peak * num_devices)


class Aggregator:
    """Averages per-step scalar metrics over a logging window with clu.metrics.Average."""

    def __init__(self):
        self._acc: dict[str, clu_metrics.Average] = {}

    def add(self, metrics: dict[str, Any]) -> None:
        for k, v in metrics.items():
            m = clu_metrics.Average.from_model_output(np.asarray(v, np.float32))
            self._acc[k] = self._acc[k].merge(m) if k in self._acc else m

    def compute_and_reset(self) -> dict[str, float]:
        out = {k: float(m.compute()) for k, m in self._acc.items()}
        self._acc = {}
        return out


class Writer:
    """Writes scalars to TensorBoard event files and `metrics.jsonl` (process 0 only)."""

    def __init__(self, workdir: str):
        self.active = jax.process_index() == 0
        self.tb = None
        self.jsonl = None
        if self.active:
            os.makedirs(workdir, exist_ok=True)
            from tensorboardX import SummaryWriter
            self.tb = SummaryWriter(os.path.join(workdir, "tb"))
            self.jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")

    def write(self, step: int, scalars: dict[str, float]) -> None:
        if not self.active:
            return
        for k, v in scalars.items():
            if v is not None and np.isfinite(v):
                self.tb.add_scalar(k, v, step)
        row = {"step": step, "time": time.time(),
               **{k: (None if v is None or not np.isfinite(v) else v) for k, v in scalars.items()}}
        self.jsonl.write(json.dumps(row) + "\n")
        self.jsonl.flush()
        self.tb.flush()

    def close(self) -> None:
        if self.active:
            self.tb.close()
            self.jsonl.close()


def log_parameter_overview(trainable, frozen, workdir: str) -> str:
    """Writes the per-parameter table (clu's parameter_overview) to `workdir/parameters.txt` and
    logs one summary line; returns the file's path."""
    from clu import parameter_overview
    path = os.path.join(workdir, "parameters.txt")
    counts = {}
    sections = []
    for name, tree in (("trainable", trainable), ("frozen", frozen)):
        leaves = jax.tree.leaves(tree) if tree else []
        counts[name] = (sum(int(np.prod(x.shape)) for x in leaves), len(leaves))
        if tree:
            sections.append(f"{name} parameters:\n"
                            f"{parameter_overview.get_parameter_overview(tree, include_stats=False)}\n")
    if jax.process_index() == 0:
        with open(path, "w") as f:
            f.write("\n".join(sections))
    (nt, at), (nf, af) = counts["trainable"], counts["frozen"]
    logging.info("parameters: %s trainable in %d arrays, %s frozen in %d arrays; table in %s",
                 f"{nt:,}", at, f"{nf:,}", af, path)
    return path


def memory_report(compiled) -> dict[str, float]:
    """Bytes per device from `compiled.memory_analysis()` (None fields when unavailable)."""
    try:
        ma = compiled.memory_analysis()
    except Exception:  # some backends do not implement it
        return {}
    if ma is None:
        return {}
    keys = ("argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes",
            "alias_size_in_bytes", "generated_code_size_in_bytes")
    out = {k: float(getattr(ma, k, 0) or 0) for k in keys}
    out["total_bytes"] = (out["argument_size_in_bytes"] + out["output_size_in_bytes"]
                          + out["temp_size_in_bytes"] - out["alias_size_in_bytes"])
    return out


def compiled_flops(compiled) -> float:
    """FLOPs of one step from XLA's cost analysis (per device program), 0 if unknown."""
    try:
        ca = compiled.cost_analysis()
    except Exception:
        return 0.0
    if isinstance(ca, (list, tuple)):
        ca = ca[0] if ca else {}
    return float((ca or {}).get("flops", 0.0))
