"""config.hardware.loss_chunk_size: every method's training loss, plain (0) vs chunked LM head (N).

The chunked loss must give the trainer the same loss, gradients and token accuracy as the plain
loss on [B, T, V] logits, and its compiled step must not hold a [B, T, V] float32 buffer.
"""
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from exo2ego_jax import config_lib
from exo2ego_jax.methods import build as build_method
from exo2ego_jax.models import llm as llm_lib
from exo2ego_jax.models import lora as lora_lib
from exo2ego_jax.parallel import mesh as mesh_lib
from exo2ego_jax.train import metrics as metrics_lib
from exo2ego_jax.train import state as state_lib
from exo2ego_jax.train.step import make_train_step

import test_ego2exo_model as e2x
import test_exo2ego_stages as x2e

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHUNK = 5  # ragged against every tiny batch below: exercises the padded last chunk


def _with_chunk(config, chunk):
    c = config.copy_and_resolve_references()
    c.hardware.loss_chunk_size = chunk
    return c


def _toy():
    c = config_lib.load(os.path.join(ROOT, "configs/toy.py"), "tiny")
    c.unlock()
    rng = np.random.default_rng(0)
    t = c.data.seq_len
    ids = rng.integers(0, c.model.vocab, (4, t)).astype(np.int32)
    labels = ids.copy()
    labels[:, :3] = -100
    labels[1, -4:] = -100
    return c, {"input_ids": jnp.asarray(ids), "labels": jnp.asarray(labels),
               "attention_mask": jnp.ones((4, t), jnp.int32)}


def _exo2ego():
    c = x2e.tiny_stage(3)  # learner tokens concat(x, F(x)), LoRA on the LLM
    return c, {k: jnp.asarray(v) for k, v in x2e.fake_batch(c).items()}


def _ego2exo():
    # No LoRA here (its eager init is slow; exo2ego stage 3 covers LoRA on the LLM under the chunked loss).
    c = e2x._config(num_probes=2, lora_rank=0)
    return c, e2x._batch(c, np.random.default_rng(3), 0)


@pytest.mark.parametrize("make", [_toy, _exo2ego, _ego2exo], ids=["toy", "exo2ego_stage3", "ego2exo"])
def test_chunked_loss_equals_plain_loss_and_gradients(make):
    config, batch = make()
    plain, chunked = build_method(_with_chunk(config, 0)), build_method(_with_chunk(config, CHUNK))
    model = plain.build_model(nnx.Rngs(0))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    rng = jax.random.key(1)

    @jax.jit
    def loss_and_grads(params):
        def f(method):
            def loss(p):
                return method.loss(nnx.merge(graphdef, p, rest), batch, rng)
            return jax.value_and_grad(loss, has_aux=True)(params)
        return f(plain), f(chunked)

    ((lp, mp), gp), ((lc, mc), gc) = loss_and_grads(params)
    np.testing.assert_allclose(float(lc), float(lp), rtol=1e-5, atol=1e-6)
    assert set(mp) == set(mc)
    for k in mp:  # token accuracy included: counted on each chunk's logits, same argmax
        np.testing.assert_allclose(np.asarray(mc[k]), np.asarray(mp[k]), rtol=1e-5, atol=1e-6, err_msg=k)
    flat_p, flat_c = nnx.to_flat_state(gp), nnx.to_flat_state(gc)
    # A parameter whose true gradient is zero (a conv bias ahead of instance norm) holds only float32
    # rounding noise of its layer's gradients: its tolerance floor follows the largest gradient.
    largest = max(float(np.abs(np.asarray(a.get_value())).max()) for _, a in flat_p)
    nonzero = 0
    for (path, a), (_, b) in zip(flat_p, flat_c):
        a, b = np.asarray(a.get_value()), np.asarray(b.get_value())
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5 * max(1e-3 * largest, float(np.abs(a).max())),
                                   err_msg="/".join(map(str, path)))
        nonzero += bool(np.abs(a).sum() > 0)
    assert nonzero > 3  # the gradients reach the LLM, not only the head


def _tiny_llm(**kw):
    cfg = llm_lib.LLMConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_layers=1, num_heads=2,
                            num_kv_heads=1, head_dim=8, tie_word_embeddings=False, **kw)
    return llm_lib.DecoderLM(cfg, rngs=nnx.Rngs(0))


def test_head_kernel_folds_in_lora_and_refuses_lora_dropout():
    model = _tiny_llm()
    lora_lib.apply_lora(model, r"lm_head$", rank=2, alpha=4.0, dropout=0.0, rngs=nnx.Rngs(1))
    head = model.lm_head
    head.lora_b.set_value(jax.random.normal(jax.random.key(2), head.lora_b.get_value().shape))
    h = jax.random.normal(jax.random.key(3), (3, 16))
    np.testing.assert_allclose(np.asarray(h @ model.head_kernel()), np.asarray(model.logits(h)), rtol=1e-5,
                               atol=1e-5)
    head.lora_dropout = 0.1
    with pytest.raises(ValueError, match="loss_chunk_size=0"):
        model.head_kernel()


def test_accelerator_presets_chunk_the_loss():
    for name in config_lib.PRESETS:
        size = config_lib.hardware_preset(name).loss_chunk_size
        assert size == (config_lib.CPU_LOSS_CHUNK if name == "cpu" else 8192), name


def _step_temp_bytes(config, batch) -> int:
    """Per-device temp bytes of the compiled trainer step (one device, SGD) for `config`."""
    method = build_method(config)
    mesh = mesh_lib.make_mesh(config_lib.hardware_preset("cpu"), jax.devices()[:1])
    parts = state_lib.describe(lambda: method.build_model(nnx.Rngs(0)), config.train.groups, mesh)
    tmpl = {p: parts.templates[p][1].get_value() for p in parts.templates}

    def abstract(names):
        return state_lib.unflatten({p: jax.ShapeDtypeStruct(tmpl[p].shape, tmpl[p].dtype) for p in names})

    tx = optax.sgd(1e-3)
    params = abstract(parts.trainable)
    state = {"step": jax.ShapeDtypeStruct((), jnp.int32), "params": params, "opt": jax.eval_shape(tx.init, params)}
    step = make_train_step(parts, method.loss, tx, micro_batches=1, mesh=mesh, skip_nonfinite=False)
    spec = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in batch.items()}
    compiled = jax.jit(step).lower(state, abstract(parts.frozen), abstract(parts.other), spec).compile()
    return metrics_lib.memory_report(compiled)["temp_size_in_bytes"]


def test_student_step_with_152k_vocabulary_holds_no_logits_buffer():
    config, batch = _ego2exo()
    config.model.llm.vocab_size = 152064  # Qwen2.5 (VideoLLaMA3's LLM) vocabulary
    b, t = batch["labels"].shape
    logits_bytes = b * t * 152064 * 4  # one [B, T, V] float32 buffer
    plain = _step_temp_bytes(_with_chunk(config, 0), batch)
    chunked = _step_temp_bytes(_with_chunk(config, 8), batch)
    # The plain step holds the logits (and their gradient); the chunked one only [8, V] blocks.
    assert plain - chunked >= logits_bytes, (plain, chunked, logits_bytes)
    assert chunked < logits_bytes, (chunked, logits_bytes)
