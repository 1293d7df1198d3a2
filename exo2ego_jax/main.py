"""Entry point: python -m exo2ego_jax.main --config configs/<file>.py[:args] --workdir DIR."""
from __future__ import annotations

import importlib
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py[:args]).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and logs.")
flags.mark_flags_as_required(["config", "workdir"])


def _append_env(var: str, extra: str) -> None:
    if extra:
        os.environ[var] = f"{os.environ.get(var, '')} {extra}".strip()


def _multi_process() -> bool:
    """True when a launcher started several processes (explicit env, SLURM, or a TPU pod)."""
    env = os.environ
    if env.get("JAX_COORDINATOR_ADDRESS") or int(env.get("SLURM_NTASKS", "1")) > 1:
        return True
    return "," in env.get("TPU_WORKER_HOSTNAMES", "") or "," in env.get("MEGASCALE_SLICE_ID", "")


def run(config, workdir: str):
    from exo2ego_jax.train.loop import check_workdir
    check_workdir(workdir)  # before ~10 s of start-up: a file or unwritable path fails naming --workdir
    # XLA reads its flags when the backend starts: set them before the first JAX call.
    _append_env("XLA_FLAGS", config.hardware.xla_flags)
    _append_env("LIBTPU_INIT_ARGS", config.hardware.libtpu_flags)
    import jax
    if _multi_process():
        env = os.environ
        kwargs = {k: int(env[v]) for k, v in (("num_processes", "JAX_NUM_PROCESSES"),
                                               ("process_id", "JAX_PROCESS_ID")) if v in env}
        if env.get("JAX_PLATFORMS") == "cpu":  # CPU-only multi-process runs (tests, laptops)
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(**kwargs)  # coordinator: JAX_COORDINATOR_ADDRESS or cluster env
    logging.info("process %d/%d, %d devices (%s)", jax.process_index(), jax.process_count(),
                 jax.device_count(), jax.devices()[0].device_kind)
    from exo2ego_jax.jobs import JOBS
    if config.job not in JOBS:
        raise ValueError(f"config.job={config.job!r} is not in exo2ego_jax/jobs.py; "
                         f"known jobs: {sorted(JOBS)}")
    module, fn = JOBS[config.job].split(":")
    return getattr(importlib.import_module(module), fn)(config, workdir)


class _QuietLibraries:
    """Drops INFO records from chatty libraries (Orbax logs every file it writes)."""

    def filter(self, record) -> bool:
        return record.levelno >= 30 or not any(
            f"/{lib}/" in record.pathname for lib in ("orbax", "grain", "etils"))


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    import logging as std_logging
    for handler in std_logging.getLogger().handlers:
        handler.addFilter(_QuietLibraries())
    result = run(_CONFIG.value, _WORKDIR.value)
    if result:
        logging.info("result: %s", result)


if __name__ == "__main__":
    sys.path.insert(0, os.getcwd())
    app.run(main)
