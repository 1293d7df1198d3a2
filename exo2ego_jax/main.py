"""Entry point: python -m exo2ego_jax.main --config configs/<file>.py[:args] --workdir DIR.

The config's `job` field selects what runs (exo2ego_jax/jobs.py); `--help` lists the jobs and the
config files. Several processes (SLURM, Cloud TPU VM pods, explicit JAX_* variables) are joined
with jax.distributed before the first JAX call: see `distributed_init_kwargs`.
"""
from __future__ import annotations

import ast
import importlib
import logging as std_logging
import os
import sys
from collections.abc import Mapping

from absl import app, flags, logging
from ml_collections import config_flags

from exo2ego_jax import config_lib
from exo2ego_jax.jobs import DESCRIPTIONS, JOBS

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py[:args]).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and logs.")
flags.mark_flags_as_required(["config", "workdir"])

# Set by launch/tpu_vm.sh on every worker of a Cloud TPU VM pod (or by hand on each host): join the
# pod with a bare jax.distributed.initialize(), which reads the TPU VM metadata itself.
DISTRIBUTED_ENV = "EXO2EGO_DISTRIBUTED"


def _append_env(var: str, extra: str) -> None:
    if extra:
        os.environ[var] = f"{os.environ.get(var, '')} {extra}".strip()


def _int_env(env: Mapping[str, str], name: str) -> int:
    if name not in env:
        raise ValueError(f"environment variable {name} is not set (SLURM sets it inside `srun`: start "
                         f"the job with launch/slurm.sbatch)")
    try:
        return int(env[name])
    except ValueError:
        raise ValueError(f"environment variable {name}={env[name]!r} is not an integer") from None


def _slurm_gpu_count(env: Mapping[str, str]) -> int | None:
    """GPUs SLURM gave this task: SLURM_GPUS_ON_NODE, else the CUDA_VISIBLE_DEVICES list."""
    if env.get("SLURM_GPUS_ON_NODE", "").isdigit():
        return int(env["SLURM_GPUS_ON_NODE"])
    visible = [d for d in env.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    return len(visible) or None


def distributed_init_kwargs(env: Mapping[str, str]) -> dict | None:
    """The `jax.distributed.initialize` arguments for this process, or None for a single process.

    - Explicit: JAX_COORDINATOR_ADDRESS (+ JAX_NUM_PROCESSES, JAX_PROCESS_ID) names everything.
    - SLURM (`srun`, SLURM_NTASKS > 1): process id / count from SLURM_PROCID / SLURM_NTASKS. With one
      task per node (launch/slurm.sbatch) the process drives every GPU SLURM gave the node
      (local_device_ids 0..SLURM_GPUS_ON_NODE-1): jax's own SLURM detection would give it only GPU
      [SLURM_LOCALID] = [0]. With one task per GPU, local_device_ids = [SLURM_LOCALID]. The
      coordinator is JAX_COORDINATOR_ADDRESS when set (the sbatch exports it), else jax derives it
      from SLURM_STEP_NODELIST. A task that sees a single GPU (--gpus-per-task=1) drives it ([0]).
    - Cloud TPU VM pods (EXO2EGO_DISTRIBUTED=1, set by launch/tpu_vm.sh) and multislice
      (MEGASCALE_NUM_SLICES > 1): no arguments; jax reads the TPU metadata.
    """
    kwargs: dict = {}
    if env.get("JAX_COORDINATOR_ADDRESS"):
        kwargs["coordinator_address"] = env["JAX_COORDINATOR_ADDRESS"]
    for key, var in (("num_processes", "JAX_NUM_PROCESSES"), ("process_id", "JAX_PROCESS_ID")):
        if env.get(var, "") != "":
            kwargs[key] = _int_env(env, var)
    slurm_tasks = _int_env(env, "SLURM_NTASKS") if env.get("SLURM_JOB_ID") and env.get("SLURM_NTASKS") else 1
    if slurm_tasks > 1:
        kwargs.setdefault("num_processes", _int_env(env, "SLURM_NTASKS"))
        kwargs.setdefault("process_id", _int_env(env, "SLURM_PROCID"))
        nodes = env.get("SLURM_STEP_NUM_NODES") or env.get("SLURM_JOB_NUM_NODES") or env.get("SLURM_NNODES")
        if env.get("JAX_PLATFORMS", "") != "cpu":
            if nodes and int(nodes) == kwargs["num_processes"]:  # one process per node
                gpus = _slurm_gpu_count(env)
                if gpus is None:
                    raise ValueError(
                        "SLURM runs one task per node but says nothing about its GPUs (neither "
                        "SLURM_GPUS_ON_NODE nor CUDA_VISIBLE_DEVICES is set): request them with "
                        "#SBATCH --gpus-per-node=N (launch/slurm.sbatch), or set JAX_PLATFORMS=cpu.")
                kwargs["local_device_ids"] = list(range(gpus))
            else:  # one process per GPU: the task's own GPU (--gpus-per-task=1), else GPU SLURM_LOCALID
                visible = [d for d in env.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
                kwargs["local_device_ids"] = [0] if len(visible) == 1 else [_int_env(env, "SLURM_LOCALID")]
        return kwargs
    if kwargs.get("coordinator_address"):
        return kwargs
    if env.get(DISTRIBUTED_ENV, "0") not in ("", "0") or int(env.get("MEGASCALE_NUM_SLICES", "1") or 1) > 1:
        return kwargs  # {}: jax finds the Cloud TPU VM pod (or slice) itself
    return None


def run(config, workdir: str):
    from exo2ego_jax.train.loop import check_workdir
    check_workdir(workdir)  # before ~10 s of start-up: a file or unwritable path fails naming --workdir
    # XLA reads its flags when the backend starts: set them before the first JAX call.
    _append_env("XLA_FLAGS", config.hardware.xla_flags)
    _append_env("LIBTPU_INIT_ARGS", config.hardware.libtpu_flags)
    config_lib.configure_host(config.hardware)
    _LogFilter.tpu_expected = config.hardware.preset.startswith("tpu")
    import jax
    kwargs = distributed_init_kwargs(os.environ)
    if kwargs is not None:
        if os.environ.get("JAX_PLATFORMS") == "cpu":  # CPU-only multi-process runs (tests, laptops)
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
        logging.info("jax.distributed.initialize(%s)", ", ".join(f"{k}={v!r}" for k, v in kwargs.items()))
        jax.distributed.initialize(**kwargs)
    logging.info("process %d/%d, %d devices (%s)", jax.process_index(), jax.process_count(),
                 jax.device_count(), jax.devices()[0].device_kind)
    if config.job not in JOBS:
        raise ValueError(f"config.job={config.job!r} is not in exo2ego_jax/jobs.py; "
                         f"known jobs: {sorted(JOBS)}")
    module, fn = JOBS[config.job].split(":")
    return getattr(importlib.import_module(module), fn)(config, workdir)


class _LogFilter:
    """Drops INFO records from chatty libraries (Orbax logs every file it writes) and three messages
    known to be harmless: Orbax's "Metadata file does not exist" (a checkpoint read without the
    optional metadata file, e.g. every init_from), jax's "Unable to initialize backend 'tpu'" when
    the config's hardware preset is not a TPU one (jax then picks the CPU or GPU, as asked), and
    transformers' "PyTorch was not found" (only its tokenizers and configs are used here)."""

    tpu_expected = False

    def filter(self, record) -> bool:
        path = record.pathname.replace(os.sep, "/")
        if record.levelno < std_logging.WARNING and any(f"/{lib}/" in path for lib in ("orbax", "grain", "etils")):
            return False
        if "/orbax/" in path and record.msg == "Metadata file does not exist: %s":
            return False
        if (not self.tpu_expected and record.levelno < std_logging.WARNING and isinstance(record.msg, str)
                and record.msg.startswith("Unable to initialize backend 'tpu'")):
            return False
        if record.name == "transformers" and str(record.msg).startswith("PyTorch was not found"):
            return False
        return True


def install_log_filters() -> None:
    """Attaches _LogFilter to the loggers the libraries use (absl's for Orbax, jax's own) and to the
    root handlers; runs at import, so spawned worker processes (which re-import __main__) get it too."""
    for name in ("absl", "jax._src.xla_bridge", "orbax", "grain", "etils", "transformers"):
        std_logging.getLogger(name).addFilter(_LogFilter())
    for handler in std_logging.getLogger().handlers:
        handler.addFilter(_LogFilter())


def _repo_root() -> str:
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def config_files(root: str | None = None) -> list[tuple[str, str]]:
    """(configs/... path, first docstring line) of every config file, read without importing it."""
    root = root or _repo_root()
    out = []
    for dirpath, dirnames, filenames in os.walk(os.path.join(root, "configs")):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(("_", ".")))
        for f in sorted(filenames):
            if f.endswith(".py") and not f.startswith("_"):
                path = os.path.join(dirpath, f)
                with open(path, encoding="utf-8") as fh:
                    doc = ast.get_docstring(ast.parse(fh.read())) or ""
                out.append((os.path.relpath(path, root), doc.strip().split("\n", 1)[0]))
    return out


def usage() -> str:
    """The --help text: how to run, the job table, the config files."""
    width = max(map(len, JOBS))
    lines = [__doc__.split("\n", 1)[0], "",
             "usage: python -m exo2ego_jax.main --config configs/<file>.py[:key=value,...] "
             "[--config.<field>=<value> ...] --workdir DIR", "",
             "jobs (config.job):"]
    lines += [f"  {name:<{width}}  {DESCRIPTIONS.get(name, JOBS[name])}" for name in JOBS]
    files = config_files()
    width = max((len(p) for p, _ in files), default=0)
    lines += ["", "config files:"] + [f"  {p:<{width}}  {d}" for p, d in files]
    lines += ["", "flags:", "  --config    config file (configs/*.py[:args]); --config.<field>=<value> overrides a field",
              "  --workdir   directory for checkpoints, metrics and logs (re-running resumes)",
              "  --helpfull  every flag, absl's included"]
    return "\n".join(lines)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if __name__ == "__main__":  # the command line, never a caller's process
        config_lib.restart_with_host_huge_pages(_CONFIG.value.hardware)
    install_log_filters()  # absl's handler exists now
    result = run(_CONFIG.value, _WORKDIR.value)
    if result:
        logging.info("result: %s", result)


install_log_filters()

if __name__ == "__main__":
    if any(a in ("-h", "--help", "-help", "--helpshort", "-?") for a in sys.argv[1:]):
        print(usage())
        sys.exit(0)
    sys.path.insert(0, os.getcwd())
    app.run(main)
