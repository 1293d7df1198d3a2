"""train/layer_slices: stacked [L, ...] params kept per layer in the train state (unrolled layers)."""
import os
import types

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from exo2ego_jax import config_lib
from exo2ego_jax.models.llm import DecoderLM, LLMConfig
from exo2ego_jax.parallel import mesh as mesh_lib
from exo2ego_jax.train import checkpoint as ckpt_lib
from exo2ego_jax.train import layer_slices, losses, optim
from exo2ego_jax.train import state as state_lib
from exo2ego_jax.train.step import make_train_step

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAYERS = {"llm/layers/w": 2}


def test_split_and_stack_by_hand():
    params = {"llm": {"layers": {"w": jnp.arange(6.0).reshape(2, 3)}, "embed": jnp.ones((4, 3))}}
    step = layer_slices.split(params, LAYERS)
    w = step["llm"]["layers"]["w"]
    assert isinstance(w, layer_slices.LayerSlices) and len(w.layers) == 2
    np.testing.assert_array_equal(w.layers[0], [0.0, 1.0, 2.0])
    np.testing.assert_array_equal(w.layers[1], [3.0, 4.0, 5.0])
    assert step["llm"]["embed"] is params["llm"]["embed"]  # not a layer stack: untouched
    back = layer_slices.stack(step)
    np.testing.assert_array_equal(back["llm"]["layers"]["w"], params["llm"]["layers"]["w"])
    # Host arrays stack with numpy (tests, device_get trees).
    np.testing.assert_array_equal(layer_slices.stack(jax.device_get(step))["llm"]["layers"]["w"],
                                  np.arange(6.0).reshape(2, 3))


def test_split_reaches_optimizer_moments_shapes_and_shardings():
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]).reshape(1, 1, 1), ("data", "fsdp", "tensor"))
    stacked = NamedSharding(mesh, P(None, "fsdp"))
    # An optimizer state mirrors the params under a prefix (here "mu"): its leaf is split too.
    opt = (optax.EmptyState(), {"mu": {"llm": {"layers": {"w": jnp.zeros((2, 3))}}}})
    out = layer_slices.split(opt, LAYERS)
    assert [x.shape for x in out[1]["mu"]["llm"]["layers"]["w"].layers] == [(3,), (3,)]
    abstract = {"llm": {"layers": {"w": jax.ShapeDtypeStruct((2, 3), jnp.float32, sharding=stacked)}}}
    per_layer = layer_slices.split(abstract, LAYERS)["llm"]["layers"]["w"].layers
    assert [(a.shape, a.sharding.spec) for a in per_layer] == [((3,), P("fsdp")), ((3,), P("fsdp"))]
    shardings = layer_slices.split({"llm": {"layers": {"w": stacked}}}, LAYERS)["llm"]["layers"]["w"]
    assert [s.spec for s in shardings.layers] == [P("fsdp"), P("fsdp")]
    with pytest.raises(ValueError, match=r"llm/layers/w: expected a leading layer axis of 2, got shape \(3, 2\)"):
        layer_slices.split({"llm": {"layers": {"w": jnp.zeros((3, 2))}}}, LAYERS)


def _tiny_run(per_layer: bool, steps: int = 3):
    cfg = LLMConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_layers=2, num_heads=2,
                    num_kv_heads=1, head_dim=8, tie_word_embeddings=True, max_position_embeddings=64)
    build = lambda: DecoderLM(cfg, rngs=nnx.Rngs(0), unroll_layers=True)  # noqa: E731
    # A frozen per-layer group (q_proj), a trained one, the embedding trained: all three layouts meet.
    groups = (("attn/q_proj", None), ("layers/", 1e-2), (".*", 3e-3))
    mesh = mesh_lib.make_mesh(config_lib.hardware_preset("cpu"), jax.devices()[:1])
    parts = state_lib.describe(build, groups, mesh, per_layer=per_layer)
    params, frozen, other = parts.split(build())
    params, frozen = parts.to_step(params), parts.to_step(frozen)
    tc = types.SimpleNamespace(groups=groups, warmup_steps=1, warmup_ratio=0.0, end_lr_ratio=0.1,
                               schedule="cosine", b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.01, clip=1.0)
    tx, _ = optim.make_optimizer(tc, parts.labels, 10)

    def loss_fn(model, batch, rng):
        hidden, _ = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], hidden_only=True)
        value, n, _ = losses.answer_loss_and_accuracy(hidden, batch["labels"], head_kernel=model.head_kernel(),
                                                      chunk_size=64)
        return value, {"loss_weight": n}

    step = jax.jit(make_train_step(parts, loss_fn, tx, micro_batches=2, mesh=mesh))
    state = {"step": jnp.zeros((), jnp.int32), "params": params, "opt": tx.init(params)}
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 64, (4, 12)).astype(np.int32)
    batch = {"input_ids": ids, "labels": ids, "attention_mask": np.ones_like(ids)}
    for _ in range(steps):
        state, metrics = step(state, frozen, other, batch)
    return parts, state, frozen, metrics


def test_per_layer_step_equals_stacked_step_and_checkpoints_stacked(tmp_path):
    parts_s, state_s, frozen_s, m_s = _tiny_run(per_layer=False)
    parts_p, state_p, frozen_p, m_p = _tiny_run(per_layer=True)
    assert not parts_s.per_layer
    # Every stacked param (and only those) is kept per layer: 9 per block, 2 layers each.
    assert set(parts_p.per_layer) == {p for p in parts_p.templates if p.startswith("layers/")}
    assert set(parts_p.per_layer.values()) == {2} and len(parts_p.per_layer) == 9
    q = state_lib.flatten(frozen_p)["layers/attn/q_proj/kernel"]
    assert isinstance(q, layer_slices.LayerSlices) and q.layers[0].shape == (16, 16)
    assert not layer_slices.has_slices(state_s)
    # The same three updates: equal up to the global norm's summation order.
    np.testing.assert_allclose(float(m_p["loss"]), float(m_s["loss"]), rtol=1e-6)
    stacked_p = layer_slices.stacked(state_p)
    assert jax.tree.structure(stacked_p) == jax.tree.structure(state_s)
    for a, b in zip(jax.tree.leaves(stacked_p), jax.tree.leaves(state_s)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)
    # A checkpoint of the per-layer state holds the stacked layout: it restores into the stacked
    # abstract state and equals the stacked arrays bit for bit.
    tc = config_lib.load(os.path.join(ROOT, "configs/toy.py"), "tiny").train
    with tc.unlocked():
        tc.async_ckpt = False
    ckpt = ckpt_lib.Checkpointer(str(tmp_path / "checkpoints"), tc)
    ckpt.save(3, state_p, None, config_lib.load(os.path.join(ROOT, "configs/toy.py"), "tiny"), frozen=frozen_p)
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), stacked_p)
    restored = ckpt.restore(3, abstract)
    ckpt.close()
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(stacked_p)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # And back to the step's layout: the same tree the step returned.
    again = parts_p.to_step(restored)
    assert jax.tree.structure(again) == jax.tree.structure(state_p)
    for a, b in zip(jax.tree.leaves(again), jax.tree.leaves(state_p)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
