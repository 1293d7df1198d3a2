"""Mesh sizing from ici/dcn values, logical-axis rules, parameters born sharded on a 2x4 mesh."""
import os

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from exo2ego_jax import config_lib
from exo2ego_jax.parallel import mesh as mesh_lib
from exo2ego_jax.parallel import rules

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _hw(**kw):
    hw = config_lib.hardware_preset("cpu")
    for k, v in kw.items():
        hw[k] = v
    return hw


def test_mesh_sizes_resolve_minus_one():
    m = mesh_lib.make_mesh(_hw(ici_data=-1, ici_fsdp=2, ici_tensor=2))
    assert dict(m.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
    assert all(t == jax.sharding.AxisType.Auto for t in m.axis_types)
    m = mesh_lib.make_mesh(_hw(ici_data=1, ici_fsdp=-1, ici_tensor=1), jax.devices()[:4])
    assert dict(m.shape) == {"data": 1, "fsdp": 4, "tensor": 1}
    assert mesh_lib.data_parallel_size(m) == 4


def test_mesh_errors_name_the_sizes():
    with pytest.raises(ValueError, match="at most one may be -1"):
        mesh_lib.make_mesh(_hw(ici_data=-1, ici_fsdp=-1))
    with pytest.raises(ValueError, match=r"multiply to 6 but there are 8"):
        mesh_lib.make_mesh(_hw(ici_data=3, ici_fsdp=2, ici_tensor=1))


def test_hybrid_shape_for_multislice():
    hw = _hw(ici_data=1, ici_fsdp=-1, ici_tensor=1, dcn_data=-1)
    assert mesh_lib.mesh_shape(hw, 64, num_slices=2) == ([1, 32, 1], [2, 1, 1])


def test_logical_rules():
    m = mesh_lib.make_mesh(_hw(ici_data=1, ici_fsdp=2, ici_tensor=4))
    assert rules.logical_to_spec(("embed", "mlp"), (64, 128), m) == P("fsdp", "tensor")
    assert rules.logical_to_spec(("vocab", "embed"), (64, 32), m) == P("tensor", "fsdp")
    assert rules.logical_to_spec(("norm",), (32,), m) == P(None)
    # A dimension the axis does not divide stays replicated instead of failing.
    assert rules.logical_to_spec(("embed", "mlp"), (63, 6), m) == P(None, None)
    with pytest.raises(KeyError, match="'bogus'"):
        rules.logical_to_spec(("bogus",), (4,), m)


def test_parameters_born_sharded_on_2x4_mesh():
    from exo2ego_jax.train import setup as setup_lib
    from exo2ego_jax.train.state import flatten
    config = config_lib.load(os.path.join(ROOT, "configs/toy.py"), "tiny")
    config.hardware.ici_data, config.hardware.ici_fsdp, config.hardware.ici_tensor = 1, 2, 4
    s = setup_lib.build(config)
    assert dict(s.mesh.shape) == {"data": 1, "fsdp": 2, "tensor": 4}
    params = flatten(s.trainable_init)
    specs = {k: v.sharding.spec for k, v in params.items()}
    assert specs["embed/embedding"] == P("tensor", "fsdp")
    assert specs["blocks/0/qkv/kernel"] == P("fsdp", "tensor")
    assert specs["blocks/0/out/kernel"] == P("tensor", "fsdp")
    assert specs["blocks/0/up/kernel"] == P("fsdp", "tensor")
    assert specs["blocks/0/down/kernel"] == P("tensor", "fsdp")
    assert specs["head/kernel"] == P("fsdp", "tensor")
    assert specs["norm/scale"] == P(None)
    # Each device holds only its shard: 1/8 of the embedding table.
    emb = params["embed/embedding"]
    assert emb.addressable_shards[0].data.shape == (emb.shape[0] // 4, emb.shape[1] // 2)
    # Optimizer moments follow their parameter's sharding.
    state = s.init_state()
    mu = flatten(state["opt"][1].inner_states["0"].inner_state[0].mu)
    assert mu["embed/embedding"].sharding.spec == P("tensor", "fsdp")
    # A per-process batch becomes one global array split over the batch axes.
    local = {"x": np.arange(16 * 3, dtype=np.int32).reshape(16, 3)}
    g = s.global_batch(local)["x"]
    assert g.shape == (16, 3) and g.sharding.spec == P(("data", "fsdp"))
    np.testing.assert_array_equal(np.asarray(g), local["x"])
