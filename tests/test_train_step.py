"""The jitted train step: frozen groups, no recompiles, gradient accumulation, NaN guard."""
import os

import jax
import numpy as np
import pytest

from exo2ego_jax import config_lib
from exo2ego_jax.train import loop
from exo2ego_jax.train import setup as setup_lib
from exo2ego_jax.train.state import flatten

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny(arg="", **fields):
    c = config_lib.load(os.path.join(ROOT, "configs/toy.py"), "tiny" + ("," + arg if arg else ""))
    for k, v in fields.items():
        section, name = k.split("__")
        c[section][name] = v
    return c


def batches(s, n):
    it = iter(s.method.dataset("train", 0, 1))
    return [s.global_batch(next(it)) for _ in range(n)]


@pytest.fixture(scope="module")
def frozen_run():
    """Three steps with the embedding frozen; keeps copies of what the tests compare.

    Also runs the bf16-compute + rematerialised path (float32 master weights stay float32).
    """
    s = setup_lib.build(tiny("freeze_embed,steps=3", hardware__remat="dots",
                             hardware__compute_dtype="bfloat16"))
    init_trainable = jax.tree.map(np.asarray, s.trainable_init)
    init_frozen = jax.tree.map(np.asarray, s.frozen)
    state = s.init_state()
    opt0 = state["opt"]
    opt_paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(opt0)]
    metrics = []
    for b in batches(s, 3):
        state, m = s.step_fn(state, s.frozen, s.other, b)
        metrics.append(jax.device_get(m))
    return s, state, init_trainable, init_frozen, opt_paths, metrics


def test_frozen_params_bit_identical_and_without_adam_state(frozen_run):
    s, state, init_trainable, init_frozen, opt_paths, metrics = frozen_run
    assert list(flatten(init_frozen)) == ["embed/embedding"]
    assert "embed/embedding" not in s.parts.trainable
    for k, v in flatten(init_frozen).items():
        np.testing.assert_array_equal(np.asarray(flatten(s.frozen)[k]), v)  # bit-identical
    assert not any("embed" in p for p in opt_paths), opt_paths
    assert any("'head'" in p for p in opt_paths)  # trainable params do have moments
    # Trainable parameters moved; the loss is finite.
    moved = [k for k, v in flatten(state["params"]).items()
             if not np.array_equal(np.asarray(v), flatten(init_trainable)[k])]
    assert sorted(moved) == sorted(s.parts.trainable)
    assert all(m["finite"] for m in metrics) and int(state["step"]) == 3
    assert all(v.dtype == np.float32 for v in flatten(state["params"]).values())


def test_no_recompile_after_first_step(frozen_run):
    s = frozen_run[0]
    assert s.step_fn._cache_size() == 1


def test_unmatched_parameter_is_an_error():
    with pytest.raises(ValueError, match="match no entry.*blocks/0/qkv/kernel"):
        setup_lib.build(tiny(train__groups=[("embed", 1e-3), ("head", None)]))


def test_accumulated_micro_batches_equal_one_large_batch():
    s1 = setup_lib.build(tiny("batch=32,micro=1"))
    s4 = setup_lib.build(tiny("batch=32,micro=4"))
    assert (s1.micro_batches, s4.micro_batches) == (1, 4)
    b = batches(s1, 1)[0]
    st1, m1 = s1.step_fn(s1.init_state(), s1.frozen, s1.other, b)
    st4, m4 = s4.step_fn(s4.init_state(), s4.frozen, s4.other, b)
    np.testing.assert_allclose(m1["loss"], m4["loss"], rtol=1e-6)
    np.testing.assert_allclose(m1["grad_norm"], m4["grad_norm"], rtol=1e-5)
    p1, p4 = flatten(st1["params"]), flatten(st4["params"])
    for k in p1:
        np.testing.assert_allclose(np.asarray(p1[k]), np.asarray(p4[k]), rtol=1e-5, atol=1e-6)


def test_accumulation_weights_micro_batches_by_tokens():
    """Micro-batches with very different label counts: the step still equals the full batch's token mean."""
    s1 = setup_lib.build(tiny("batch=32,micro=1"))
    s4 = setup_lib.build(tiny("batch=32,micro=4"))
    b = dict(batches(s1, 1)[0])
    labels = np.asarray(b["labels"]).copy()
    # split_micro gives micro-batch i the rows i, i+4, ...: keep 1 label in micro 0's rows, all in the others.
    labels[0::4, 2:] = -100
    b["labels"] = jax.device_put(labels, b["labels"].sharding)
    st1, m1 = s1.step_fn(s1.init_state(), s1.frozen, s1.other, b)
    st4, m4 = s4.step_fn(s4.init_state(), s4.frozen, s4.other, b)
    np.testing.assert_allclose(m1["loss"], m4["loss"], rtol=1e-5)
    np.testing.assert_allclose(m1["grad_norm"], m4["grad_norm"], rtol=1e-4)
    assert float(m4["loss_weight"]) == float(m1["loss_weight"]) == float((labels[:, 1:] != -100).sum())
    p1, p4 = flatten(st1["params"]), flatten(st4["params"])
    for k in p1:
        np.testing.assert_allclose(np.asarray(p1[k]), np.asarray(p4[k]), rtol=1e-4, atol=1e-6)


def test_micro_batches_from_per_device_batch():
    c = tiny("batch=32,micro=0")
    c.hardware.per_device_batch = 2
    assert setup_lib.micro_batches(c, dp_size=8) == 2  # 4 rows per device -> 2 x 2
    with pytest.raises(ValueError, match="global_batch=32 is not divisible by the 3"):
        setup_lib.micro_batches(c, dp_size=3)


def test_nan_stops_run_naming_step(tmp_path):
    c = tiny("steps=6", train__groups=[(".*", float("nan"))], train__ckpt_every=0,
             train__log_every=2)
    with pytest.raises(loop.NonFiniteError, match=r"at step 1 .*Last good checkpoint: none"):
        loop.train(c, str(tmp_path))
