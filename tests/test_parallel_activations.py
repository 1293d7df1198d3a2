"""Activation sharding: `rules.constrain` pins activations to the batch axes inside the train step.

The regression behind issues 6/7: with FSDP weights (`vit_embed` over `fsdp`) and no pins inside
the layer scan, the partitioner kept the folded frame batch replicated, so every device held the
whole micro-batch's attention scores. The step test below compiles a small ViT train step with the
trainer's `make_train_step` and checks that per-device temp memory matches a single device holding
1/8 of the batch.
"""
import jax
import jax.numpy as jnp
import optax
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from exo2ego_jax import config_lib
from exo2ego_jax.models import vit
from exo2ego_jax.parallel import aot, rules
from exo2ego_jax.parallel import mesh as mesh_lib
from exo2ego_jax.train import metrics as metrics_lib
from exo2ego_jax.train import state as state_lib
from exo2ego_jax.train.step import make_train_step

TINY = vit.VisionConfig(hidden_size=32, intermediate_size=64, num_layers=1, num_heads=4, image_size=16,
                        patch_size=4)


def _mesh(n: int) -> jax.sharding.Mesh:
    hw = config_lib.hardware_preset("cpu")
    hw.ici_data, hw.ici_fsdp, hw.ici_tensor = 1, -1, 1  # FSDP: weights and batch share `fsdp`
    return mesh_lib.make_mesh(hw, jax.devices()[:n])


def test_constrain_is_identity_without_a_mesh():
    x = jnp.ones((8, 4))
    assert rules.constrain(x, ("act_batch", None)) is x
    assert rules.constrain_batch(x) is x


def test_constrain_pins_batch_under_the_mesh():
    mesh = _mesh(8)
    rep = NamedSharding(mesh, P())

    def f(x):
        with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
            return rules.constrain(x * 2, ("act_batch", "act_len", "act_embed")), rules.constrain_batch(x[:3])

    y, odd = jax.jit(f, in_shardings=rep)(jnp.ones((16, 5, 4)))
    assert y.sharding.is_equivalent_to(NamedSharding(mesh, P("fsdp")), 3)
    assert odd.sharding.is_fully_replicated  # 3 rows do not split over 8 devices: left replicated


def _step_temp_bytes(n_devices: int, batch: int) -> float:
    """Per-device temp bytes of a compiled ViT train step (trainer's make_train_step)."""
    mesh = _mesh(n_devices)
    build = lambda: vit.VisionTower(TINY, rngs=nnx.Rngs(0))  # noqa: E731
    parts = state_lib.describe(build, [(".*", 1e-3)], mesh)
    tmpl = {p: parts.templates[p][1].get_value() for p in parts.templates}

    def abstract(names):
        return state_lib.unflatten({p: jax.ShapeDtypeStruct(tmpl[p].shape, tmpl[p].dtype,
                                                            sharding=parts.shardings[p]) for p in names})

    def loss_fn(model, b, rng):
        return jnp.mean(jnp.square(model(b["pixels"]))), {}

    tx = optax.sgd(1e-3)
    params = abstract(parts.trainable)
    state = {"step": jax.ShapeDtypeStruct((), jnp.int32), "params": params, "opt": jax.eval_shape(tx.init, params)}
    bsh = NamedSharding(mesh, P(mesh_lib.batch_axes()))
    pixels = jax.ShapeDtypeStruct((batch, 16, 16, 3), jnp.float32, sharding=bsh)
    step = make_train_step(parts, loss_fn, tx, micro_batches=1, mesh=mesh, skip_nonfinite=False)
    compiled = jax.jit(step).lower(state, abstract(parts.frozen), abstract(parts.other),
                                   {"pixels": pixels}).compile()
    return metrics_lib.memory_report(compiled)["temp_size_in_bytes"]


def test_train_step_activation_memory_scales_with_per_device_batch():
    # 8 devices x 16 images each must cost one device about what 16 images cost on their own.
    # Without the pins (before the fix) this ratio was ~6: the whole batch on every device.
    eight = _step_temp_bytes(8, 128)
    one = _step_temp_bytes(1, 16)
    assert eight <= 1.3 * one, (eight, one)


def test_aot_targets_and_hbm():
    assert aot.hbm_gib("tpu_v5p_128") == pytest.approx(95e9 / 2**30)
    assert aot.hbm_gib("tpu_v5e_64") == pytest.approx(16e9 / 2**30)
    assert len(aot.devices_for("cpu:8")) == 8  # conftest already started JAX with 8 CPU devices
    with pytest.raises(ValueError, match="cpu:N or tpu:TOPOLOGY"):
        aot.devices_for("gpu:8")
