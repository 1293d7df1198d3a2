"""Checkpoint faults: a damaged newest checkpoint falls back to the newest one that restores (with a
warning naming both steps and the damaged file), none restoring is one clear error, and a full disk
stops at the failed save with one message while the previous checkpoint stays restorable."""
import errno
import logging
import os
import subprocess
import sys

import grain
import jax
import numpy as np
import pytest

from exo2ego_jax import config_lib
from exo2ego_jax.train import checkpoint as ckpt_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tc(async_ckpt=False):
    tc = config_lib.load(os.path.join(ROOT, "configs/toy.py"), "tiny").train
    with tc.unlocked():
        tc.async_ckpt, tc.keep = async_ckpt, 5
    return tc


def _state(step):
    rng = np.random.default_rng(step)
    return {"step": np.int32(step), "params": {"w": rng.normal(size=(64, 32)).astype(np.float32)}}


def _abstract():
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype), _state(0))


def _iter():
    return iter(grain.MapDataset.range(1000).to_iter_dataset())


@pytest.fixture
def saved(tmp_path):
    """Steps 30 and 40 (state, frozen, data iterator at item 30 / 40, config, metrics window)."""
    config = config_lib.load(os.path.join(ROOT, "configs/toy.py"), "tiny")
    d = str(tmp_path / "checkpoints")
    ckpt = ckpt_lib.Checkpointer(d, _tc())
    it = _iter()
    for step in (30, 40):
        while next(it) < step - 1:
            pass
        ckpt.save(step, _state(step), it, config, frozen={"f": np.arange(8, dtype=np.float32) + step},
                  metrics_window=[{"step": step - 1, "loss": 0.5}])
    ckpt.close()
    return d


def _file(step_dir, item, pick):
    files = sorted(os.path.join(r, f) for r, _, fs in os.walk(os.path.join(step_dir, item)) for f in fs
                   if pick(f) and f != "commit_success.txt")
    assert files, (item, os.listdir(os.path.join(step_dir, item)))
    return max(files, key=os.path.getsize)


def _delete(path):
    os.remove(path)


def _truncate(path):
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)


def _garble(path):
    with open(path, "w") as f:
        f.write('{"version": 1, "tree": ')


DAMAGE = {
    "state data file deleted": ("state", lambda f: "manifest" not in f and not f.startswith("_"), _delete),
    "state data file truncated": ("state", lambda f: "manifest" not in f and not f.startswith("_"), _truncate),
    "state metadata bad JSON": ("state", lambda f: f == "_METADATA", _garble),
    "frozen data file deleted": ("frozen", lambda f: "manifest" not in f and not f.startswith("_"), _delete),
    "frozen data file truncated": ("frozen", lambda f: "manifest" not in f and not f.startswith("_"), _truncate),
    "data_iter file deleted": ("data_iter", lambda f: f.endswith(".json"), _delete),
    "data_iter file truncated": ("data_iter", lambda f: f.endswith(".json"), _truncate),
    "checkpoint metadata bad JSON": ("", lambda f: f == "_CHECKPOINT_METADATA", _garble),
}


@pytest.mark.parametrize("how", sorted(DAMAGE))
def test_damaged_newest_checkpoint_falls_back_to_the_older_one(saved, how, caplog):
    item, pick, damage = DAMAGE[how]
    step_dir = os.path.join(saved, "40")
    path = _file(step_dir, item, pick) if item else os.path.join(step_dir, "_CHECKPOINT_METADATA")
    damage(path)
    ckpt = ckpt_lib.Checkpointer(saved, _tc())
    it = _iter()
    with caplog.at_level(logging.WARNING):
        step, state = ckpt.restore_latest(_abstract(), it)
    assert step == 30
    np.testing.assert_array_equal(np.asarray(state["params"]["w"]), _state(30)["params"]["w"])  # bitwise
    assert next(it) == 30 and ckpt.metrics_window == [{"step": 29, "loss": 0.5}]
    warning = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("step 40" in m and "step 30" in m and os.path.relpath(path, step_dir).split(os.sep)[0] in m
               for m in warning), warning
    # Moved aside, not deleted; the step can be saved again.
    assert ckpt.latest_step() == 30 and os.listdir(os.path.join(os.path.dirname(saved), ckpt_lib.DAMAGED_DIR))
    ckpt.save(40, _state(41), it, config_lib.load(os.path.join(ROOT, "configs/toy.py"), "tiny"))
    ckpt.close()


def test_no_checkpoint_restores_is_one_clear_error(saved):
    for step in ("30", "40"):
        _garble(os.path.join(saved, step, "_CHECKPOINT_METADATA"))
    ckpt = ckpt_lib.Checkpointer(saved, _tc())
    with pytest.raises(ckpt_lib.CheckpointError, match=r"no checkpoint .* restores: step 40: .*_CHECKPOINT_METADATA: "
                       r"malformed JSON.*step 30: "):
        ckpt.restore_latest(_abstract(), _iter())


@pytest.mark.parametrize("async_ckpt", [False, True])
def test_full_disk_stops_at_the_failed_save_with_one_message(tmp_path, monkeypatch, async_ckpt):
    """Simulated ENOSPC inside Orbax's save (sync, or surfacing from the async thread)."""
    config = config_lib.load(os.path.join(ROOT, "configs/toy.py"), "tiny")
    d = str(tmp_path / "checkpoints")
    ckpt = ckpt_lib.Checkpointer(d, _tc(async_ckpt))
    ckpt.save(10, _state(10), None, config)
    ckpt.wait()

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", os.path.join(d, "20.orbax-checkpoint-tmp"))
    monkeypatch.setattr(ckpt.manager, "save", full)
    with pytest.raises(ckpt_lib.CheckpointError) as e:
        ckpt.save(20, _state(20), None, config)
    msg = str(e.value)
    assert "step 20" in msg and os.path.join(d, "20") in msg and "No space left on device" in msg
    assert f"Last good checkpoint: {os.path.join(d, '10')}" in msg and e.value.__cause__ is None
    with pytest.raises(ckpt_lib.CheckpointError):  # the run stops: no further save is attempted
        ckpt.check()
    monkeypatch.undo()
    ckpt.close()  # quiet after the reported failure
    restored = ckpt_lib.Checkpointer(d, _tc()).restore_latest(_abstract())
    assert restored[0] == 10


FULL_DISK = """
import os, sys, numpy as np, jax
from exo2ego_jax import config_lib
from exo2ego_jax.train import checkpoint as ckpt_lib
config = config_lib.load("configs/toy.py", "tiny")
tc = config.train
tc.async_ckpt = sys.argv[2] == "async"
ckpt = ckpt_lib.Checkpointer(sys.argv[1], tc)
ckpt.save(1, {"w": np.ones((1024,), np.float32)}, None, config)
ckpt.wait()
try:
    for step in range(2, 6):
        ckpt.save(step, {"w": np.random.default_rng(step).normal(size=(4 << 20,)).astype(np.float32)}, None, config)
        ckpt.check()
    ckpt.wait()
except ckpt_lib.CheckpointError as e:
    print("STOPPED:", e)
finally:
    ckpt.close()
"""


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_full_tmpfs_disk(tmp_path, mode):
    """A real full disk: a 2 MiB tmpfs (needs root to mount; skipped otherwise)."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (not root)")
    try:
        d = str(mnt / "checkpoints")
        p = subprocess.run([sys.executable, "-c", FULL_DISK, d, mode], cwd=ROOT, capture_output=True, text=True,
                           timeout=300, env={**os.environ, "PYTHONPATH": ROOT})
        out = p.stdout + p.stderr
        assert "STOPPED: saving checkpoint step 2" in p.stdout and "No space left on device" in p.stdout, out[-3000:]
        assert f"Last good checkpoint: {os.path.join(d, '1')}" in p.stdout
        assert out.count("Event loop is closed") == 0 and len(out.splitlines()) < 12, out[-3000:]
        restored = ckpt_lib.Checkpointer(d, _tc()).restore_latest(
            {"w": jax.ShapeDtypeStruct((1024,), np.float32)})
        assert restored[0] == 1 and (np.asarray(restored[1]["w"]) == 1).all()
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)


def test_workdir_that_is_a_file_fails_up_front_naming_the_flag(tmp_path):
    from exo2ego_jax.train import loop
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(NotADirectoryError, match=r"--workdir=.*file is a file"):
        loop.check_workdir(str(f))
    with pytest.raises(NotADirectoryError, match=r"--workdir=.*is inside .*file, which is a file"):
        loop.check_workdir(str(f / "run"))
    loop.check_workdir(str(tmp_path / "new" / "run"))  # missing directories are fine: created later
    p = subprocess.run([sys.executable, "-m", "exo2ego_jax.main", "--config", "configs/toy.py:tiny",
                        f"--workdir={f}"], cwd=ROOT, capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": ROOT})
    assert p.returncode != 0 and "--workdir=" in p.stderr and "is a file" in p.stderr


def test_resume_falls_back_and_logs_the_same_rows_as_an_uninterrupted_run(tmp_path, caplog):
    """Toy run (8 steps, checkpoints at 3 and 6, rows every 2 steps). A copy whose step 6 is damaged
    resumes from step 3 (not a multiple of log_every) with a warning, ends with the same parameters
    bit for bit and logs the same loss rows after step 3 as the uninterrupted run."""
    import json
    import shutil

    from exo2ego_jax.train import loop

    c = config_lib.load(os.path.join(ROOT, "configs/toy.py"), "tiny,steps=8")
    with c.unlocked():
        c.train.ckpt_every, c.train.log_every, c.train.keep, c.train.async_ckpt = 3, 2, 5, False
        c.train.progress = False
    full = tmp_path / "full"
    loop.train(c, str(full))
    part = tmp_path / "part"
    (part / "checkpoints").mkdir(parents=True)
    for step in ("3", "6"):
        shutil.copytree(full / "checkpoints" / step, part / "checkpoints" / step)
    _truncate(_file(str(part / "checkpoints" / "6"), "state", lambda f: "manifest" not in f and not f.startswith("_")))
    with caplog.at_level(logging.WARNING):
        loop.train(c, str(part))
    assert any("step 6" in r.getMessage() and "step 3" in r.getMessage() for r in caplog.records
               if r.levelno == logging.WARNING)

    def rows(d):
        return [(r["step"], r["loss"], r["grad_norm"]) for r in map(json.loads, open(d / "metrics.jsonl"))
                if "loss" in r and r["step"] > 3]
    assert rows(part) == rows(full) and len(rows(full)) == 3  # steps 4 (window 3-4), 6, 8
    import orbax.checkpoint as ocp
    final = [ocp.PyTreeCheckpointer().restore(os.fspath(d / "checkpoints" / "8" / "state")) for d in (full, part)]
    for x, y in zip(jax.tree.leaves(final[0]), jax.tree.leaves(final[1]), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))  # parameters and optimizer, bitwise
