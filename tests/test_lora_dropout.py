"""LoRA dropout is applied in training (the loss's rng draws the masks) and off everywhere else."""
import os

import jax
import numpy as np
import pytest
from flax import nnx

from exo2ego_jax import config_lib
from exo2ego_jax.methods.exo2ego import config as ec
from exo2ego_jax.methods.exo2ego import method as exo2ego
from exo2ego_jax.methods.exo2ego.model import tokens_per_video

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def stage3(dropout: float):
    c = config_lib.load(os.path.join(ROOT, "configs", "exo2ego", "stage3_practice.py"))
    c.unlock()
    c.model = ec.tiny_model(vocab_size=32, width=32, vit_width=32, image_size=16, patch_size=8,
                            connector="mlp2x_gelu", mapping_width=8, mapping_blocks=1)
    c.data.num_frames, c.data.max_len, c.data.image_size = 2, 24, 16
    c.exo2ego.lora_rank, c.exo2ego.lora_dropout = 4, dropout
    c.lock()
    return c


def batch(config):
    k, t = tokens_per_video(config), config.data.max_len
    rng = np.random.default_rng(0)
    ids = rng.integers(10, 32, (2, t)).astype(np.int32)
    ids[:, 1:1 + k] = config.model.video_token_id
    labels = np.full((2, t), -100, np.int32)
    labels[:, 2 + k:] = ids[:, 2 + k:]
    return {"input_ids": ids, "labels": labels, "attention_mask": np.ones((2, t), np.int32),
            "ego_pixels": rng.integers(0, 255, (2, 1, 2, 16, 16, 3)).astype(np.uint8),
            "video_mask": np.ones((2, 1), np.int32), "example_mask": np.ones((2,), np.int32)}


def with_lora_b(model):
    """lora_b starts at zero (the adapters add nothing at init): give it values so that the
    adapters' output, and the gradient into lora_a, depend on the dropout masks."""
    for _, node in nnx.iter_graph(model.llm):
        if getattr(node, "lora_b", None) is not None:
            b = node.lora_b.get_value()
            node.lora_b.set_value(jax.random.normal(jax.random.key(1), b.shape, b.dtype) * 0.1)
    return model


def lora_grads(config, rng):
    method = exo2ego.Exo2Ego(config)
    model = with_lora_b(method.build_model(nnx.Rngs(0)))
    grads = nnx.grad(lambda m: method.loss(m, batch(config), rng)[0])(model)
    flat = nnx.to_flat_state(grads)
    return {"/".join(map(str, k)): np.asarray(v.get_value()) for k, v in flat if "lora_" in str(k[-1])}


@pytest.mark.parametrize("dropout", [0.0, 0.5])
def test_two_rngs_give_different_lora_gradients_only_with_dropout(dropout):
    config = stage3(dropout)
    g1 = lora_grads(config, jax.random.key(1))
    g2 = lora_grads(config, jax.random.key(2))
    assert g1 and set(g1) == set(g2)
    assert all(np.abs(v).sum() > 0 for v in g1.values())
    same = all(np.array_equal(g1[k], g2[k]) for k in g1)
    assert same == (dropout == 0.0)


def test_no_rng_means_no_dropout():
    """Evaluation and generation call the LLM without a dropout key: deterministic outputs."""
    config = stage3(0.5)
    model = with_lora_b(exo2ego.Exo2Ego(config).build_model(nnx.Rngs(0)))
    b = batch(config)
    x, _ = model.space_features(model.ego, b["ego_pixels"])
    tokens = model.learner_tokens(x, model.apply_map("f", x))
    visual = tokens.reshape(2, -1, tokens.shape[-1])
    one = model.llm_logits(b["input_ids"], b["attention_mask"], visual)
    two = model.llm_logits(b["input_ids"], b["attention_mask"], visual)
    train = model.llm_logits(b["input_ids"], b["attention_mask"], visual, dropout_rng=jax.random.key(3))
    np.testing.assert_array_equal(one, two)
    assert not np.array_equal(one, train)
