"""Config building blocks: base config, typed `file.py:key=value` arguments, hardware presets.

A config file in configs/ defines `get_config(arg=None)`; it calls `parse_arg` for its typed
arguments, starts from `base_config(...)`, fills the method's fields, and returns
`finalize(config)`, which locks it so a misspelt field is an error that names it.
"""
from __future__ import annotations

import ast
import ctypes
import ctypes.util
import importlib.util
import json
import logging
import os
import platform
import sys
from collections.abc import Mapping
from typing import Any

import ml_collections

ConfigDict = ml_collections.ConfigDict

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _convert(key: str, text: str, default: Any) -> Any:
    """Converts `text` to the type of `default` (bool / int / float / str / tuple / list)."""
    if isinstance(default, bool):
        low = text.lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise ValueError(f"config arg {key!r}: expected a bool (true/false), got {text!r}")
    if isinstance(default, int):
        try:
            return int(text)
        except ValueError:
            raise ValueError(f"config arg {key!r}: expected an int, got {text!r}") from None
    if isinstance(default, float):
        try:
            return float(text)
        except ValueError:
            raise ValueError(f"config arg {key!r}: expected a float, got {text!r}") from None
    if isinstance(default, (tuple, list)):
        value = ast.literal_eval(text)
        return type(default)(value if isinstance(value, (tuple, list)) else (value,))
    return text


def _split_top_level(text: str) -> list[str]:
    """Splits on commas that are not inside (), [] or {} (so tuple values survive)."""
    items, depth, cur = [], 0, []
    for ch in text:
        depth += ch in "([{"
        depth -= ch in ")]}"
        if ch == "," and depth == 0:
            items.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    items.append("".join(cur))
    return items


def parse_arg(arg: str | None, *, lazy: bool = False, **defaults: Any) -> ConfigDict:
    """Parses the `key=value,key=value` part of `--config file.py:ARG` into a typed ConfigDict.

    Each keyword gives a known key and its default; a value from `arg` is converted to the type
    of that default. A bare word `name` means `name=True` (for bool keys). Unknown keys are an
    error naming the key, unless `lazy=True` (then they are kept as strings).
    """
    out = ConfigDict(dict(defaults))
    if not arg:
        return out
    for item in _split_top_level(arg):
        item = item.strip()
        if not item:
            continue
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep:
            text = "true"
        if key not in defaults:
            if lazy:
                out[key] = text
                continue
            raise KeyError(
                f"config arg {key!r} is not known; known args: {sorted(defaults)}. "
                f"Check the spelling in --config file.py:{arg}")
        out[key] = _convert(key, text.strip(), defaults[key])
    return out


# Hardware presets. Sizes with -1 take whatever devices remain on that interconnect level.
# LIBTPU / XLA flags follow public MaxText recipes for collective/compute overlap.
_TPU_LIBTPU_FLAGS = " ".join([
    "--xla_tpu_enable_data_parallel_all_reduce_opt=true",
    "--xla_tpu_data_parallel_opt_different_sized_ops=true",
    "--xla_tpu_enable_async_collective_fusion=true",
    "--xla_tpu_enable_async_collective_fusion_fuse_all_gather=true",
    "--xla_tpu_enable_async_collective_fusion_multiple_steps=true",
    "--xla_tpu_overlap_compute_collective_tc=true",
    "--xla_enable_async_all_gather=true",
])
_GPU_XLA_FLAGS = " ".join([
    "--xla_gpu_enable_latency_hiding_scheduler=true",
    "--xla_gpu_enable_highest_priority_async_stream=true",
    "--xla_gpu_all_reduce_combine_threshold_bytes=134217728",
    "--xla_gpu_all_gather_combine_threshold_bytes=134217728",
])

# LM-head loss (config.hardware.loss_chunk_size; train/losses.answer_loss_and_accuracy): 0 = plain
# cross-entropy on [B, T, V] float32 logits, N = chunked over N tokens (all batch rows) at a time,
# never forming the logits. Accelerator presets chunk: with 32k-152k vocabularies the logits and
# their gradient are the largest activations of a step (152k x 4 B = 0.6 MB per token), and 8192
# tokens per chunk (global; ~1k per device at 8 devices) keeps each [chunk, V] block near 1 GB.
# CPU: chunked too; measured in one process, interleaved, on 2 cores: bench/loss_chunk.py VLM step
# (vocab 49152, 4 x 192 tokens; load 1.8) plain 1.93 s, chunk 2048 1.88 s (medians of 8); under
# load 12 plain 11.6 s, chunk 512 11.0 s, chunk 2048 10.7 s; the Exo2Ego demo's stage-1 step
# (vocab ~400, 16 x 48 tokens; load 6) 72.1 ms plain vs 71.8 ms chunked. Equal at tiny
# vocabularies, slightly faster at large ones, no [B, T, V] buffer: 2048 (demo batches fit one chunk).
CPU_LOSS_CHUNK = 2048

# Decoder layer loop (config.hardware.layer_loop -> DecoderLM's unroll_layers via `unroll_layers`).
# Models, checkpoints, LoRA and weight files hold stacked [L, ...] parameters either way. "scan":
# one jax.lax.scan over the layers, so XLA compiles one layer body and compile time stays flat in
# depth (MaxText's scan_layers=True on TPU/GPU; on 2 CPU cores, load 6-7, the SmolLM2-width train
# step compiled in 9.2 s at 4 layers and 9.3 s at 16 scanned, 8.1 s and 14.1 s unrolled).
# "unroll": the L layers inlined; on XLA:CPU the scan's
# zero-filled [L, ...] buffers of saved activations, per-layer weight slices and stacked-gradient
# writes cost more than they save: the unrolled train step ran 1.15x the scanned step rate when this
# default was chosen (bench/train_vs_torch.py --layer-loop scan|unroll), and 1.06x (VLM step) /
# 1.02x (12-layer LLM step) in interleaved steps on a loaded machine (load 5-6). With "unroll" the
# train state also keeps each stacked parameter as one array per layer (train/layer_slices.py: no
# copy of a layer's weights out of the stack, no stacked gradient buffer): 1.005x and 1.022x on the
# 30-layer SmolLM2-135M step, 1.026x on bench/train_vs_torch.py's VLM step (paired, interleaved, 2 cores).
LAYER_LOOPS = ("unroll", "scan")

# XLA:CPU allocates each step's temporary buffers with malloc. glibc serves blocks above its mmap
# threshold (32 MiB by default) with fresh pages and unmaps them when freed, so every step paid page
# faults and page zeroing: in the demo's one-core jobs ~20% of the CPU time was system time. Keeping
# blocks up to 1 GiB in the heap (config_lib.set_malloc_reuse, applied by main.py) made the stage-1
# step ~1.3x faster (58 -> 44 ms, system time 9.2 -> 5.0 s over 300 steps; load ~3). The preset now
# keeps blocks up to mallopt's largest value, so the SmolLM2-135M step's 1.9 GiB temporary fits too.
CPU_MALLOC_REUSE = (1 << 31) - 1

# The threshold only holds in the main thread's malloc arena: other threads' arenas map and unmap
# every block above 64 MiB whatever it says, and with JAX's asynchronous CPU dispatch XLA allocates
# each execution's buffers on a worker thread. The SmolLM2-135M train step (30 layers, 4 x 256
# tokens, one 1.9 GiB temporary buffer) paid 495k page faults and 1.0 s of system time per ~5.7 s
# step in 4 KiB pages; in transparent huge pages (`host_huge_pages`) 2k faults and 0.25 s; run on the
# calling thread (`cpu_async_dispatch=False`) the buffer stays in the heap: 200-400 faults, 0.02 s,
# the step 1.02x faster (median of eight alternating pairs of runs, 0.98-1.06), the process steady at
# 4.8 GB over 30 steps, and no step pays for pages the VM handed back to its host while the program
# waited (bench/train_vs_torch.py --block 1: 0.85x -> 1.08x torch eager). Huge pages still back the
# heap (5.2 vs 5.5 s per step without them, one run each). glibc reads that setting only at start:
# `restart_with_host_huge_pages`.

PRESETS: dict[str, dict[str, Any]] = {
    "cpu": dict(ici_data=-1, ici_fsdp=1, ici_tensor=1, per_device_batch=0,
                compute_dtype="float32", remat="none", attention="xla", xla_flags="",
                libtpu_flags="", loss_chunk_size=CPU_LOSS_CHUNK, layer_loop="unroll",
                malloc_reuse_bytes=CPU_MALLOC_REUSE, host_huge_pages=True, cpu_async_dispatch=False),
    "gpu_h100x8": dict(ici_data=1, ici_fsdp=-1, ici_tensor=1, per_device_batch=4,
                       compute_dtype="bfloat16", remat="dots", attention="cudnn",
                       xla_flags=_GPU_XLA_FLAGS, libtpu_flags="", loss_chunk_size=8192,
                       layer_loop="scan", malloc_reuse_bytes=0, host_huge_pages=False,
                       cpu_async_dispatch=True),
    "tpu_v5e_64": dict(ici_data=1, ici_fsdp=-1, ici_tensor=1, per_device_batch=2,
                       compute_dtype="bfloat16", remat="full", attention="xla", xla_flags="",
                       libtpu_flags=_TPU_LIBTPU_FLAGS, loss_chunk_size=8192, layer_loop="scan",
                       malloc_reuse_bytes=0, host_huge_pages=False, cpu_async_dispatch=True),
    # remat "dots" would also save the attention einsums (scores [B, H, T, T] per layer: ~50 GiB
    # for Exo2Ego stage 2); dots_no_batch saves only the weight matmuls (MaxText's "minimal").
    "tpu_v5p_128": dict(ici_data=1, ici_fsdp=-1, ici_tensor=1, per_device_batch=4,
                        compute_dtype="bfloat16", remat="dots_no_batch", attention="xla", xla_flags="",
                        libtpu_flags=_TPU_LIBTPU_FLAGS, loss_chunk_size=8192, layer_loop="scan",
                        malloc_reuse_bytes=0, host_huge_pages=False, cpu_async_dispatch=True),
}


def hardware_preset(name: str) -> ConfigDict:
    """The `config.hardware` block for preset `name` (see PRESETS)."""
    if name not in PRESETS:
        raise ValueError(f"unknown hardware preset {name!r}; choose one of {sorted(PRESETS)}")
    p = PRESETS[name]
    hw = ConfigDict()
    hw.preset = name  # which preset filled this block (cpu, gpu_h100x8, tpu_v5e_64, tpu_v5p_128)
    hw.ici_data = p["ici_data"]  # data-parallel size inside a slice/node (-1: the rest)
    hw.ici_fsdp = p["ici_fsdp"]  # FSDP size inside a slice/node (params sharded, -1: the rest)
    hw.ici_tensor = p["ici_tensor"]  # tensor-parallel size inside a slice/node
    hw.dcn_data = -1  # data-parallel size across slices/nodes (-1: number of slices)
    hw.dcn_fsdp = 1  # FSDP size across slices/nodes
    hw.dcn_tensor = 1  # tensor-parallel size across slices/nodes
    hw.per_device_batch = p["per_device_batch"]  # examples per device per micro-batch (0: no limit)
    hw.compute_dtype = p["compute_dtype"]  # activations/matmul dtype; master weights stay float32
    hw.param_dtype = "float32"  # dtype of stored (master) parameters
    hw.remat = p["remat"]  # rematerialisation policy: none | full | dots | dots_no_batch
    hw.attention = p["attention"]  # attention kernel: xla | cudnn | splash (passed to models)
    hw.loss_chunk_size = p["loss_chunk_size"]  # LM-head loss: 0 plain logits, N chunked (N tokens/chunk)
    hw.layer_loop = p["layer_loop"]  # decoder layers: unroll (train state per layer) | scan (LAYER_LOOPS)
    hw.malloc_reuse_bytes = p["malloc_reuse_bytes"]  # host malloc keeps freed blocks up to this size (0: glibc default)
    hw.host_huge_pages = p["host_huge_pages"]  # glibc backs large host blocks with transparent huge pages
    hw.cpu_async_dispatch = p["cpu_async_dispatch"]  # False: CPU programs run on the calling thread (its heap)
    hw.xla_flags = p["xla_flags"]  # appended to XLA_FLAGS before JAX starts
    hw.libtpu_flags = p["libtpu_flags"]  # appended to LIBTPU_INIT_ARGS before JAX starts
    hw.peak_flops = 0.0  # peak FLOP/s per device for MFU (0: look up the device kind)
    return hw


def unroll_layers(hardware: ConfigDict) -> bool | None:
    """`hardware.layer_loop` as the decoders' `unroll_layers` ("unroll" -> True, "scan" -> False).

    A block without the field (the config of a run saved before it) gives None: the backend's
    default that those runs had (unrolled on CPU, scanned elsewhere).
    """
    name = hardware.get("layer_loop")
    if name is None:
        return None
    if name not in LAYER_LOOPS:
        raise ValueError(f"config.hardware.layer_loop={name!r}; expected one of {LAYER_LOOPS}")
    return name == "unroll"


def base_config(*, method: str = "toy", job: str = "train", hardware: str = "cpu") -> ConfigDict:
    """Fields every job shares; config files fill `model`, `data`, `eval` and adjust `train`."""
    c = ConfigDict()
    c.job = job  # which entry of exo2ego_jax/jobs.py:JOBS runs
    c.method = method  # module exo2ego_jax/methods/<method>.py (model, loss, data)
    c.seed = 0  # seeds parameter init, dropout and data order

    t = c.train = ConfigDict()  # optimisation, schedule, logging and checkpointing
    t.steps = 100  # optimizer steps (used when epochs == 0)
    t.epochs = 0.0  # if > 0: steps = epochs * train examples / global_batch
    t.global_batch = 8  # examples per optimizer step, over all devices and micro-batches
    t.micro_batches = 0  # gradient accumulation steps per optimizer step (0: from per_device_batch)
    t.groups = [(".*", 1e-3)]  # (regex over param path, peak LR or None=frozen); first match wins
    t.warmup_ratio = 0.0  # warmup as a fraction of steps (used when warmup_steps < 0)
    t.warmup_steps = -1  # linear warmup steps (-1: warmup_ratio * steps)
    t.schedule = "cosine"  # LR decay after warmup: cosine | constant | linear
    t.end_lr_ratio = 0.0  # final LR as a fraction of each group's peak LR
    t.clip = 1.0  # max global gradient norm (0: no clipping)
    t.weight_decay = 0.0  # AdamW decoupled weight decay
    t.b1 = 0.9  # Adam beta1
    t.b2 = 0.999  # Adam beta2
    t.eps = 1e-8  # Adam epsilon
    t.init_from = ""  # checkpoint dir (or workdir) of another stage: load its parameters only
    t.log_every = 10  # steps between metric writes
    t.ckpt_every = 500  # steps between checkpoints (0: only at the end)
    t.ckpt_every_secs = 1800.0  # also save when this many seconds passed since the last (0: off)
    t.keep = 3  # checkpoints kept
    t.async_ckpt = True  # save in a background thread while training continues
    t.nan_guard = True  # stop with an error when loss or grad norm is NaN/Inf
    t.progress = True  # console progress bar with ETA

    c.hardware = hardware_preset(hardware)  # mesh, batch per device, dtypes, kernels, flags
    c.data = ConfigDict()  # method-specific data fields
    c.model = ConfigDict()  # method-specific model fields
    c.eval = ConfigDict()  # method-specific evaluation fields
    return c


def finalize(config: ConfigDict) -> ConfigDict:
    """Locks `config`: assigning or reading an unknown field is then an error naming it."""
    config.lock()
    return config


def to_json_dict(config: ConfigDict) -> dict:
    """A JSON-serialisable dict of `config` (tuples become lists)."""
    return json.loads(config.to_json())


def load(path: str, arg: str | None = None) -> ConfigDict:
    """Loads `get_config(arg)` from a config file path (for notebooks, tests and benchmarks).

    `path` may carry the argument as on the command line: "configs/toy.py:steps=10".
    """
    if arg is None and ":" in os.path.basename(path):
        path, arg = path.rsplit(":", 1)
    if not os.path.exists(path):
        raise FileNotFoundError(f"config file {path!r} not found (cwd: {os.getcwd()})")
    spec = importlib.util.spec_from_file_location(
        "config_" + os.path.splitext(os.path.basename(path))[0], path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


HUGE_PAGES_TUNABLE = "glibc.malloc.hugetlb=1"
THP_MODE_FILE = "/sys/kernel/mm/transparent_hugepage/enabled"


def thp_mode() -> str | None:
    """The kernel's transparent huge page mode (always, madvise, never), or None without THP."""
    try:
        with open(THP_MODE_FILE) as f:
            text = f.read()
    except OSError:
        return None
    start, end = text.find("["), text.find("]")
    return text[start + 1:end] if 0 <= start < end else None


def host_huge_pages_env(environ: Mapping[str, str]) -> dict[str, str] | None:
    """`environ` with glibc's tunable that backs malloc's large blocks with transparent huge pages
    (`madvise`), or None where it is set already or cannot help: not glibc, glibc older than 2.35
    (no such tunable), or the kernel's transparent huge pages not in `madvise` mode (`always` backs
    large blocks without it, `never` not at all)."""
    libc, version = platform.libc_ver()
    if libc != "glibc" or tuple(int(v) for v in version.split(".")[:2]) < (2, 35):
        return None
    if thp_mode() != "madvise":
        return None
    tunables = environ.get("GLIBC_TUNABLES", "")
    if "glibc.malloc.hugetlb=" in tunables:
        return None
    return {**environ, "GLIBC_TUNABLES": ":".join(t for t in (tunables, HUGE_PAGES_TUNABLE) if t)}


def restart_with_host_huge_pages(hardware: ConfigDict) -> None:
    """Re-executes this program (same pid, arguments and working directory) with huge pages for
    malloc's large blocks when `hardware.host_huge_pages` asks for them: glibc reads its tunables
    only when a process starts. For entry points only (main.py, the benches), before any work."""
    if not hardware.get("host_huge_pages", False):
        return
    env = host_huge_pages_env(os.environ)
    if env is None:
        return
    if not sys.executable:  # embedded interpreters: nothing to re-execute
        return
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
    except OSError as e:  # e.g. a sandbox that forbids exec: run on with 4 KiB pages
        logging.warning("could not restart with %s (%s); large host blocks stay in 4 KiB pages",
                        HUGE_PAGES_TUNABLE, e)


def set_malloc_reuse(nbytes: int) -> None:
    """glibc malloc keeps freed blocks up to `nbytes` for reuse (config.hardware.malloc_reuse_bytes).

    This process via mallopt (M_MMAP_THRESHOLD, M_TRIM_THRESHOLD), the processes it starts via
    glibc's MALLOC_*_ environment variables. 0 keeps glibc's defaults; not glibc: nothing to do.
    """
    if not nbytes:
        return
    if not 0 < nbytes < 2 ** 31:
        raise ValueError(f"config.hardware.malloc_reuse_bytes={nbytes}: expected 0 (glibc default) or a size "
                         "below 2 GiB (mallopt takes an int).")
    os.environ.setdefault("MALLOC_MMAP_THRESHOLD_", str(nbytes))
    os.environ.setdefault("MALLOC_TRIM_THRESHOLD_", str(nbytes))
    path = ctypes.util.find_library("c")
    libc = ctypes.CDLL(path) if path else None
    if libc is None or not hasattr(libc, "mallopt"):
        return
    m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
    if not (libc.mallopt(m_mmap_threshold, nbytes) and libc.mallopt(m_trim_threshold, nbytes)):
        logging.warning("mallopt refused malloc_reuse_bytes=%d: glibc's defaults stay", nbytes)


CPU_ASYNC_DISPATCH_ENV = "JAX_CPU_ENABLE_ASYNC_DISPATCH"


def set_cpu_async_dispatch(enabled: bool) -> None:
    """JAX's asynchronous dispatch of single-device CPU programs (config.hardware.cpu_async_dispatch),
    for this process and the processes it starts (through JAX's environment variable).

    Off, each program runs on the calling thread, so XLA's buffers come from that thread's malloc
    arena, the one that honours `set_malloc_reuse`. Read when JAX's CPU backend starts: call before it.
    """
    import jax  # here: configs import this module, and building a config needs no JAX

    os.environ[CPU_ASYNC_DISPATCH_ENV] = "true" if enabled else "false"
    jax.config.update("jax_cpu_enable_async_dispatch", bool(enabled))


def configure_host(hardware: ConfigDict) -> None:
    """The host settings of a `config.hardware` block: malloc reuse, then CPU dispatch. Entry points
    call it before JAX's first computation; blocks saved before a field existed get JAX's defaults."""
    set_malloc_reuse(hardware.get("malloc_reuse_bytes", 0))
    set_cpu_async_dispatch(hardware.get("cpu_async_dispatch", True))
