"""Exo2Ego stages with the real trainer: exactly the intended parameters change, the rest stay
bit-identical; stage chaining loads the right sub-trees."""
import os
import re

import jax
import numpy as np
import pytest

from exo2ego_jax import config_lib
from exo2ego_jax import tokenizer as tokenizer_lib
from exo2ego_jax.methods import common
from exo2ego_jax.methods.exo2ego import method as exo2ego
from exo2ego_jax.methods.exo2ego import model as exo2ego_model
from exo2ego_jax.methods.exo2ego import config as ec
from exo2ego_jax.synthetic import tokenizer as synthetic_tokenizer
from exo2ego_jax.train import layer_slices
from exo2ego_jax.train import setup as setup_lib
from exo2ego_jax.train import state as state_lib

INTENDED = {1: r"^exo/", 2: r"^(ego|mapping_f|mapping_g)/", 3: r"^(ego|mapping_f)/|/lora_[ab]$"}

def stage_config(stage: int, hardware: str = "cpu"):
    """configs/exo2ego/stage<N>_*.py (the paper's stage), unlocked for the test to shrink."""
    c = config_lib.load(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs",
                                     "exo2ego", f"{ec.STAGE_NAMES[stage]}.py"), f"hardware={hardware}")
    c.unlock()
    return c



def tiny_stage(stage: int, **overrides):
    c = stage_config(stage)
    c.model = ec.tiny_model(vocab_size=32, width=32, vit_width=32, image_size=16, patch_size=8,
                            connector="mlp2x_gelu", mapping_width=8, mapping_blocks=1)
    c.data.num_frames = 2
    c.data.max_len = 24
    c.train.epochs = 0.0
    c.train.steps = 2
    c.train.global_batch = 2
    c.train.warmup_steps = 0
    c.train.groups = ec.with_lr(stage_config(stage).train.groups, 1e-2)
    c.exo2ego.lora_rank = 4 if stage == 3 else 0
    c.exo2ego.lora_dropout = 0.0
    for k, v in overrides.items():
        c.exo2ego[k] = v
    return c


def fake_batch(config, seed=0):
    k = exo2ego_model.tokens_per_video(config)
    t = config.data.max_len
    rng = np.random.default_rng(seed)
    ids = rng.integers(10, 32, (2, t)).astype(np.int32)
    ids[:, 1:1 + k] = config.model.video_token_id
    labels = np.full((2, t), -100, np.int32)
    labels[:, 2 + k:t - 2] = ids[:, 2 + k:t - 2]
    mask = np.ones((2, t), np.int32)
    mask[1, -2:] = 0
    px = rng.normal(size=(2, 1, 2, 16, 16, 3)).astype(np.float32)
    return {"input_ids": ids, "labels": labels, "attention_mask": mask, "ego_pixels": px,
            "exo_pixels": px[::-1].copy(), "video_mask": np.ones((2, 1), np.int32),
            "example_mask": np.ones((2,), np.int32)}


def one_device_mesh():
    return jax.sharding.Mesh(np.array(jax.devices()[:1]).reshape(1, 1, 1), ("data", "fsdp", "tensor"))


def all_params(s, state):
    # Stacked layout (the step keeps unrolled layers per layer: train/layer_slices.py).
    flat = state_lib.flatten(layer_slices.stack(jax.device_get(state["params"])))
    flat.update(state_lib.flatten(layer_slices.stack(jax.device_get(s.frozen))))
    return {k: np.asarray(v) for k, v in flat.items()}


def run_steps(config, steps=2):
    s = setup_lib.build(config, one_device_mesh())
    state = s.init_state()
    before = all_params(s, state)
    batch = s.global_batch(fake_batch(config))
    for _ in range(steps):
        state, metrics = s.step_fn(state, s.frozen, s.other, batch)
    return s, before, all_params(s, state), jax.device_get(metrics)


# One train-step compile per stage: 7-15 s each on 2 quiet cores (minutes under heavy load).
@pytest.mark.parametrize("stage", [1, 2, 3])
def test_stage_changes_exactly_its_groups(stage):
    s, before, after, metrics = run_steps(tiny_stage(stage))
    rx = re.compile(INTENDED[stage])
    changed = {p for p in before if not np.array_equal(before[p], after[p])}
    # The towers' final LayerNorm is not on the feature path (features come from feature_layer,
    # without post-norm), so it gets no gradient and correctly stays as it was.
    intended = {p for p in before if rx.search(p) and "/tower/post_norm/" not in p}
    assert intended, "the stage has no trainable parameters"
    assert changed == intended, (sorted(intended - changed)[:5], sorted(changed - intended)[:5])
    assert {p for p in s.parts.trainable if "/tower/post_norm/" not in p} == intended
    assert np.isfinite(metrics["loss"])
    if stage == 2:
        assert metrics["kl"] > 0 and metrics["cycle_fwd"] > 0 and metrics["cycle_bwd"] > 0


def test_stage_modules():
    assert exo2ego_model.modules_for_stage(1) == exo2ego_model.modules_for_stage(1, "connector")
    m1, m2, m3 = (exo2ego_model.modules_for_stage(s) for s in (1, 2, 3))
    assert (m1.ego, m1.exo, m1.f, m1.g) == (False, True, False, False)
    assert (m2.ego, m2.exo, m2.f, m2.g) == (True, True, True, True)
    assert (m3.ego, m3.exo, m3.f, m3.g) == (True, False, True, False)  # G dropped in stage 3
    assert exo2ego_model.modules_for_stage(3, "patch").exo  # F(x) goes through the frozen exo connector


@pytest.mark.slow  # three model builds + one train-step compile
def test_chaining_loads_the_right_subtrees(tmp_path):
    from exo2ego_jax.train import checkpoint as ckpt_lib
    c1 = tiny_stage(1)
    c1.train.groups = ec.with_lr(stage_config(1).train.groups, 1e-2, train_llm=True)  # demo-style stage 1: LLM trains too
    # Save a stage-1 checkpoint the way the trainer does.
    s1b = setup_lib.build(c1, one_device_mesh())
    st = s1b.init_state()
    st, _ = s1b.step_fn(st, s1b.frozen, s1b.other, s1b.global_batch(fake_batch(c1)))
    ck = ckpt_lib.Checkpointer(str(tmp_path / "s1" / "checkpoints"), c1.train)
    ck.save(1, st, None, c1)
    ck.close()
    trained1 = {k: np.asarray(v)
                for k, v in state_lib.flatten(layer_slices.stack(jax.device_get(st["params"]))).items()}

    c2 = tiny_stage(2)
    c2.train.init_from = str(tmp_path / "s1")
    s2 = setup_lib.build(c2, one_device_mesh())
    p2 = {**state_lib.flatten(jax.device_get(s2.trainable_init)),
          **state_lib.flatten(layer_slices.stack(jax.device_get(s2.frozen)))}
    fresh2 = setup_lib.build(tiny_stage(2), one_device_mesh())
    f2 = {**state_lib.flatten(jax.device_get(fresh2.trainable_init)),
          **state_lib.flatten(layer_slices.stack(jax.device_get(fresh2.frozen)))}
    for path, value in p2.items():
        if path.startswith(("exo/", "llm/")):  # trained in stage 1 -> loaded
            np.testing.assert_array_equal(value, trained1[path], err_msg=path)
            assert not np.array_equal(value, f2[path]) or "post_norm" in path, path
        else:  # ego encoder, F, G: not in stage 1 -> their own initialisation
            np.testing.assert_array_equal(value, f2[path], err_msg=path)

    c3 = tiny_stage(3)
    c3.exo2ego.init_sources = (f"^llm/={tmp_path / 's1'}",)
    model = exo2ego.Exo2Ego(c3).build_model(__import__("flax").nnx.Rngs(0))
    names = common.load_from_checkpoint(model, str(tmp_path / "s1"), "^llm/", field="config.exo2ego.init_sources")
    assert names and all(n.startswith("llm/") and "lora" not in n for n in names)
    got = common.param_variables(model)
    for n in names:
        np.testing.assert_array_equal(np.asarray(got[n].get_value()), trained1[n], err_msg=n)


def test_shard_batch_pins_batch_axis_only_under_a_mesh():
    import jax.numpy as jnp
    from exo2ego_jax.methods.exo2ego.model import shard_batch
    x = jnp.ones((8, 3))
    assert shard_batch(x) is x  # no mesh context: identity
    mesh = jax.make_mesh((2, 4, 1), ("data", "fsdp", "tensor"),
                         axis_types=(jax.sharding.AxisType.Auto,) * 3)
    with jax.set_mesh(mesh):
        y = jax.jit(lambda a: shard_batch(a * 2))(x)
        assert y.sharding.spec[0] == ("data", "fsdp")
        z = jax.jit(lambda a: shard_batch(a))(jnp.ones((3, 2)))  # 3 rows do not split over 8
        assert np.asarray(z).shape == (3, 2)


def test_tokenizer_larger_than_the_model_vocabulary_fails_at_build(tmp_path):
    words = " ".join(f"word{i}" for i in range(40))  # 40 words + specials > the tiny model's 32 rows
    path = synthetic_tokenizer.build_tokenizer([words], str(tmp_path / "tok"))
    n = len(tokenizer_lib.load_tokenizer(path))
    c = tiny_stage(2)
    c.data.tokenizer = path
    with pytest.raises(ValueError, match=rf"has {n} tokens but the model's vocabulary has 32 rows .*"
                                         rf"config.model.llm.vocab_size >= {n}"):
        exo2ego.Exo2Ego(c)
    c.model.llm.vocab_size = n
    assert exo2ego.Exo2Ego(c).vocab_size == n
