"""Checkpoints: restore onto a mesh of another shape; an interrupted save keeps the last good one."""
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np

from exo2ego_jax import config_lib
from exo2ego_jax.parallel import mesh as mesh_lib
from exo2ego_jax.train import checkpoint as ckpt_lib
from exo2ego_jax.train import setup as setup_lib
from exo2ego_jax.train.state import flatten

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_saved_on_8_devices_restores_on_4(tmp_path):
    config = config_lib.load(os.path.join(ROOT, "configs/toy.py"), "tiny")
    config.train.async_ckpt = False
    config.hardware.ici_data, config.hardware.ici_fsdp = 2, -1
    s8 = setup_lib.build(config)
    assert s8.mesh.devices.size == 8
    state = s8.init_state()
    it = iter(s8.method.dataset("train", 0, 1))
    state, _ = s8.step_fn(state, s8.frozen, s8.other, s8.global_batch(next(it)))
    next(it)  # the iterator position is part of the checkpoint too
    ckpt = ckpt_lib.Checkpointer(str(tmp_path), config.train)
    ckpt.save(1, state, it, config)
    ckpt.close()
    saved = {k: np.asarray(v) for k, v in flatten(state["params"]).items()}

    config.hardware.ici_data, config.hardware.ici_fsdp = 1, -1
    mesh4 = mesh_lib.make_mesh(config.hardware, jax.devices()[:4])
    s4 = setup_lib.build(config, mesh=mesh4)
    it4 = iter(s4.method.dataset("train", 0, 1))
    ckpt4 = ckpt_lib.Checkpointer(str(tmp_path), config.train)
    assert ckpt4.latest_step() == 1
    restored = ckpt4.restore(1, s4.abstract_state, it4)
    ckpt4.close()
    assert int(restored["step"]) == 1 and it4.get_state() == it.get_state()
    for k, v in flatten(restored["params"]).items():
        assert v.sharding.mesh.devices.size == 4
        assert v.sharding.spec == s4.parts.shardings[k].spec
        np.testing.assert_array_equal(np.asarray(v), saved[k])
    mu = flatten(restored["opt"][1].inner_states["0"].inner_state[0].mu)
    assert mu["head/kernel"].sharding.mesh.devices.size == 4


KILLER = textwrap.dedent("""
    import os, signal, sys
    import jax, jax.numpy as jnp
    from exo2ego_jax import config_lib
    from exo2ego_jax.train import checkpoint as ckpt_lib
    config = config_lib.load("configs/toy.py", "tiny")
    ckpt = ckpt_lib.Checkpointer(sys.argv[1], config.train)
    ckpt.save(1, {"w": jnp.ones((1024,), jnp.float32)}, None, config)
    ckpt.wait()
    big = {"w": jax.random.normal(jax.random.PRNGKey(0), (1024,)),
           "big": jax.random.normal(jax.random.PRNGKey(1), (64, 1024, 1024))}
    ckpt.save(2, big, None, config)  # async: returns while files are still being written
    os.kill(os.getpid(), signal.SIGKILL)
""")


def test_interrupted_save_keeps_previous_checkpoint(tmp_path):
    d = str(tmp_path / "ckpt")
    env = {**os.environ, "PYTHONPATH": ROOT}
    p = subprocess.run([sys.executable, "-c", KILLER, d], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=240)
    assert p.returncode == -9, p.stderr[-2000:]
    names = os.listdir(d)
    assert "1" in names and "2" not in names, names
    assert any(n.startswith("2.") and "tmp" in n for n in names), names  # the half-written save
    config = config_lib.load(os.path.join(ROOT, "configs/toy.py"), "tiny")
    ckpt = ckpt_lib.Checkpointer(d, config.train)
    assert ckpt.latest_step() == 1
    abstract = {"w": jax.ShapeDtypeStruct((1024,), np.float32)}
    restored = ckpt.restore(1, abstract)
    np.testing.assert_array_equal(np.asarray(restored["w"]), np.ones(1024, np.float32))
    ckpt.close()
