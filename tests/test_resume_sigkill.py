"""A run killed with SIGKILL and resumed ends bitwise equal to an uninterrupted run."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import orbax.checkpoint as ocp
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS, KILL_AFTER = 120, 40
ARGS = [f"--config=configs/toy.py:tiny,steps={STEPS}", "--config.train.ckpt_every=20",
        "--config.train.log_every=5", "--config.train.progress=false"]


def _cmd(workdir):
    return [sys.executable, "-m", "exo2ego_jax.main", *ARGS, f"--workdir={workdir}"]


def _losses(workdir):
    rows = {}
    for line in open(os.path.join(workdir, "metrics.jsonl")):
        r = json.loads(line)
        if "loss" in r:
            rows[r["step"]] = r["loss"]  # a resumed run rewrites steps after its checkpoint
    return rows


def _final(workdir):
    d = os.path.join(workdir, "checkpoints", str(STEPS))
    state = ocp.StandardCheckpointer().restore(os.path.join(d, "state"))
    data = sorted(f for f in os.listdir(os.path.join(d, "data_iter")) if f.endswith(".json"))
    data_state = [open(os.path.join(d, "data_iter", f)).read() for f in data]
    return state, data_state


@pytest.mark.slow
def test_sigkill_then_resume_matches_uninterrupted(tmp_path):
    env = {**os.environ, "PYTHONPATH": ROOT}
    full, killed = str(tmp_path / "full"), str(tmp_path / "killed")
    subprocess.run(_cmd(full), cwd=ROOT, env=env, check=True, capture_output=True, timeout=400)

    p = subprocess.Popen(_cmd(killed), cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    marker = os.path.join(killed, "checkpoints", str(KILL_AFTER))
    deadline = time.time() + 300
    while not os.path.exists(marker) and p.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert p.returncode == -9, "the run ended before it could be killed"
    done = sorted(int(n) for n in os.listdir(os.path.join(killed, "checkpoints")) if n.isdigit())
    assert STEPS not in done and done, done

    r = subprocess.run(_cmd(killed), cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resuming from" in r.stderr

    (s_full, d_full), (s_kill, d_kill) = _final(full), _final(killed)
    assert d_full and d_full == d_kill  # data iterator position
    leaves_full = dict(_flat(s_full))
    for k, v in _flat(s_kill):
        np.testing.assert_array_equal(np.asarray(v), np.asarray(leaves_full[k]), err_msg=k)
    lf, lk = _losses(full), _losses(killed)
    assert lf == lk  # every logged loss, before and after the kill, identical (data order too)


def _flat(tree, prefix=""):
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from _flat(v, f"{prefix}/{k}")
    elif isinstance(tree, (list, tuple)):
        for i, v in enumerate(tree):
            yield from _flat(v, f"{prefix}/{i}")
    else:
        yield prefix, tree
