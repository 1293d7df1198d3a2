"""Two local processes join through jax.distributed (CPU collectives over gloo), 4 fake devices
each, and run the same train steps as one process with 8 devices: the results must match."""
import json
import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

WORKER = textwrap.dedent("""
    import json, os, sys
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
    import jax
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    pid, port, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    jax.distributed.initialize(f"localhost:{port}", num_processes=2, process_id=pid)
    sys.path.insert(0, os.getcwd())
    from tests.test_multihost_distributed import run_steps
    result = run_steps()
    if pid == 0:
        json.dump(result, open(out, "w"))
""")


def tiny_config():
    from exo2ego_jax import config_lib
    c = config_lib.load(os.path.join(ROOT, "configs/toy.py"), "steps=3,batch=16,micro=2,tiny")
    c.hardware.ici_data, c.hardware.ici_fsdp = 2, -1
    return c


def run_steps(steps: int = 3) -> dict:
    """Runs `steps` train steps of the tiny toy config; returns losses and parameter checksums."""
    import jax
    from exo2ego_jax.train import setup as setup_lib
    from exo2ego_jax.train.state import flatten
    config = tiny_config()
    s = setup_lib.build(config)
    state = s.init_state()
    it = iter(s.method.dataset("train", jax.process_index(), jax.process_count()))
    losses = []
    for _ in range(steps):
        state, m = s.step_fn(state, s.frozen, s.other, s.global_batch(next(it)))
        losses.append(float(m["loss"]))
    from jax.experimental import multihost_utils
    params = {k: np.asarray(multihost_utils.process_allgather(v, tiled=True), np.float64)
              for k, v in flatten(state["params"]).items()}
    return {"losses": losses, "sums": {k: float(v.sum()) for k, v in params.items()},
            "abs": {k: float(np.abs(v).sum()) for k, v in params.items()},
            "processes": jax.process_count(), "devices": jax.device_count()}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_match_one(tmp_path):
    port, out = _free_port(), str(tmp_path / "result.json")
    env = {**os.environ, "PYTHONPATH": ROOT, "JAX_PLATFORMS": "cpu"}
    env.pop("XLA_FLAGS", None)
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(i), str(port), out], cwd=ROOT,
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(2)]
    logs = [p.communicate(timeout=240)[0] for p in procs]
    for p, log in zip(procs, logs):
        assert p.returncode == 0, log[-3000:]
    multi = json.load(open(out))
    assert multi["processes"] == 2 and multi["devices"] == 8

    single = run_steps()  # this process: 1 process, 8 fake devices, same global batches
    np.testing.assert_allclose(multi["losses"], single["losses"], rtol=1e-5)
    for k in single["sums"]:
        np.testing.assert_allclose(multi["sums"][k], single["sums"][k], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(multi["abs"][k], single["abs"][k], rtol=1e-5)
