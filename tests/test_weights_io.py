"""safetensors_io: lazy reading (bf16, slices, sharded index), sharded loading, error listing."""

import json
import os

import jax
import ml_dtypes
import numpy as np
import pytest
import safetensors.numpy
from flax import nnx

from exo2ego_jax.weights import safetensors_io as sio


def _tensors():
    rng = np.random.default_rng(0)
    return {
        "a.weight": rng.normal(size=(8, 4)).astype(np.float32),
        "b.weight": rng.normal(size=(6,)).astype(ml_dtypes.bfloat16),
        "layers.0.w": rng.normal(size=(4, 8)).astype(np.float32),
        "layers.1.w": rng.normal(size=(4, 8)).astype(np.float32),
    }


def test_roundtrip_single_and_sharded(tmp_path):
    t = _tensors()
    files = sio.save_safetensors(t, str(tmp_path / "one"))
    assert [os.path.basename(f) for f in files] == ["model.safetensors"]
    files = sio.save_safetensors(t, str(tmp_path / "many"), max_shard_bytes=100)
    assert len(files) > 1
    index = json.load(open(tmp_path / "many" / "model.safetensors.index.json"))
    assert set(index["weight_map"]) == set(t)
    for d in ("one", "many"):
        r = sio.open_checkpoint(str(tmp_path / d))
        assert sorted(r.keys()) == sorted(t)
        for k, v in t.items():
            assert r.shape(k) == v.shape and r.dtype(k) == v.dtype
            np.testing.assert_array_equal(r.get(k), v)
        np.testing.assert_array_equal(r.get("a.weight", (slice(2, 4),)), t["a.weight"][2:4])


def test_reads_files_written_by_safetensors_library(tmp_path):
    t = {k: v for k, v in _tensors().items() if v.dtype == np.float32}
    safetensors.numpy.save_file(t, str(tmp_path / "x.safetensors"))
    r = sio.open_checkpoint(str(tmp_path / "x.safetensors"))
    for k, v in t.items():
        np.testing.assert_array_equal(r.get(k), v)
    sio.save_safetensors(t, str(tmp_path / "ours"))
    back = safetensors.numpy.load_file(str(tmp_path / "ours" / "model.safetensors"))
    for k, v in t.items():
        np.testing.assert_array_equal(back[k], v)


class _Tiny(nnx.Module):
    def __init__(self):
        init = nnx.initializers.zeros
        self.a = nnx.Param(init(jax.random.key(0), (4, 8)), sharding=("embed", "mlp"))
        self.b = nnx.Param(init(jax.random.key(0), (6,), np.float32))
        self.w = nnx.Param(init(jax.random.key(0), (2, 8, 4)), sharding=("layers", "mlp", "embed"))


def _mapping():
    return {
        "a": sio.Src("a.weight", sio.Transpose()),
        "b": lambda r: r.get("b.weight"),
        "w": sio.stacked("layers.{i}.w", 2, sio.Transpose()),
    }


def test_load_params_sharded(tmp_path):
    t = _tensors()
    sio.save_safetensors(t, str(tmp_path), max_shard_bytes=100)
    mesh = jax.make_mesh((2, 4), ("fsdp", "tensor"), axis_types=(jax.sharding.AxisType.Auto,) * 2)
    with nnx.use_eager_sharding(False):
        model = nnx.eval_shape(_Tiny)
    rules = [("embed", ("fsdp",)), ("mlp", ("tensor",)), ("layers", ())]
    sio.load_params(model, sio.open_checkpoint(str(tmp_path)), _mapping(), mesh=mesh, rules=rules)
    np.testing.assert_array_equal(np.asarray(model.a.value), t["a.weight"].T)
    np.testing.assert_array_equal(np.asarray(model.b.value), t["b.weight"].astype(np.float32))
    np.testing.assert_array_equal(np.asarray(model.w.value),
                                  np.stack([t["layers.0.w"].T, t["layers.1.w"].T]))
    assert model.a.value.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor")
    assert model.w.value.sharding.spec == jax.sharding.PartitionSpec(None, "tensor", "fsdp")


def test_load_params_one_error_lists_everything(tmp_path):
    t = _tensors()
    t["extra.bias"] = np.zeros(3, np.float32)
    t["a.weight"] = np.zeros((5, 4), np.float32)  # wrong shape
    del t["layers.1.w"]
    sio.save_safetensors(t, str(tmp_path))
    with nnx.use_eager_sharding(False):
        model = nnx.eval_shape(_Tiny)
    with pytest.raises(ValueError) as e:
        sio.load_params(model, sio.open_checkpoint(str(tmp_path)), _mapping())
    msg = str(e.value)
    assert str(tmp_path) in msg
    assert "a: expected (4, 8), checkpoint gives (4, 5)" in msg
    assert "layers.1.w" in msg and "extra.bias" in msg
    # Non-strict still reports missing/mis-shaped keys.
    with pytest.raises(ValueError, match="mis-shaped"):
        sio.load_params(model, sio.open_checkpoint(str(tmp_path)), _mapping(), strict=False)


def test_permute_qk_inverts_llama_cpp():
    rng = np.random.default_rng(1)
    heads, hd, d = 3, 8, 5
    w = rng.normal(size=(heads * hd, d))
    # llama.cpp convert_hf_to_gguf.py: permute(weights, n_head)
    permuted = w.reshape(heads, 2, hd // 2, d).swapaxes(1, 2).reshape(w.shape)
    np.testing.assert_array_equal(sio.PermuteQK(heads)(permuted), w)


def test_partly_misshaped_stacked_key_joins_the_combined_error(tmp_path):
    """One bad layer of a stacked key is listed with the other problems instead of raising alone."""
    t = _tensors()
    t["layers.1.w"] = np.zeros((4, 7), np.float32)  # layer 1 only: layer 0 keeps (4, 8)
    t["extra.bias"] = np.zeros(3, np.float32)
    del t["b.weight"]
    sio.save_safetensors(t, str(tmp_path))
    with nnx.use_eager_sharding(False):
        model = nnx.eval_shape(_Tiny)
    mapping = {**_mapping(), "b": sio.Src("b.weight")}
    with pytest.raises(ValueError) as e:
        sio.load_params(model, sio.open_checkpoint(str(tmp_path)), mapping)
    msg = str(e.value)
    assert "mis-shaped (1)" in msg and "w: expected (2, 8, 4)" in msg
    assert "1 of 2 stacked layers differ from (8, 4)" in msg and "layers.1.w -> (7, 4)" in msg
    assert "b: checkpoint lacks ['b.weight']" in msg and "extra.bias" in msg
    # A transform that does not fit the tensor's rank is reported the same way.
    bad = {**mapping, "a": sio.Src("a.weight", sio.Transpose((0, 2, 1)))}
    with pytest.raises(ValueError, match=r"a: expected \(4, 8\); IndexError"):
        sio.load_params(model, sio.open_checkpoint(str(tmp_path)), bad, strict=False)
