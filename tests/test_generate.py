"""KV-cache decoding vs full recomputation; left padding; sampling filters."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from exo2ego_jax import generate as gen
from exo2ego_jax.weights import llm_weights
from exo2ego_jax.models.llm import DecoderLM, LLMConfig, stack_layers, unstack_layers

CFG = LLMConfig(vocab_size=61, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
                num_kv_heads=2, head_dim=8, rope_theta=10000.0)
STEPS = 16


@pytest.fixture(scope="module", params=["scanned", "unstacked"])
def model(request):
    """Both layer layouts: lax.scan over stacked layers (training) and one Block per layer."""
    with nnx.use_eager_sharding(False):
        m = DecoderLM(CFG, rngs=nnx.Rngs(3), attention_impl="xla")
    # Larger weights than the 0.02 init so greedy tokens vary from step to step.
    state = nnx.state(m, nnx.Param)
    nnx.update(m, jax.tree.map(lambda x: x * 8 if x.ndim >= 2 else x, state))
    return m if request.param == "scanned" else unstack_layers(m)


@nnx.jit
def _forward(model, ids):
    return model(ids)[0]


@nnx.jit
def _forward_cached(model, ids, cache):
    """One cached forward of all of `ids` [B, T]; returns (logits [B, T, V], the updated cache)."""
    return model(ids, attention_mask=jnp.ones(ids.shape, jnp.int32), cache=cache)


def _greedy_by_recompute(model, prompt, steps):
    """Re-runs the whole sequence each step (right-padded to one shape: causal, so padding is inert)."""
    ids = list(prompt)
    width = len(prompt) + steps
    for _ in range(steps):
        padded = jnp.asarray([ids + [0] * (width - len(ids))])
        ids.append(int(jnp.argmax(_forward(model, padded)[0, len(ids) - 1])))
    return ids[len(prompt):]


def test_cache_equals_recompute_16_steps(model):
    prompts = [[5, 9, 17, 3, 40, 2], [7, 7, 1]]
    t = max(map(len, prompts))
    ids = np.zeros((2, t), np.int32)
    mask = np.zeros((2, t), np.int32)
    for i, p in enumerate(prompts):  # left padding
        ids[i, t - len(p):] = p
        mask[i, t - len(p):] = 1
    out = gen.generate(model, input_ids=ids, attention_mask=mask, max_new_tokens=STEPS, eos_token_id=-1)
    for i, p in enumerate(prompts):
        want = _greedy_by_recompute(model, p, STEPS)
        assert out.tokens[i].tolist() == want
        assert len(set(want)) > 3  # the check is meaningful only if tokens change
    assert out.lengths.tolist() == [STEPS, STEPS]


def test_cache_logits_match_full_forward(model):
    ids = jnp.asarray([[5, 9, 17, 3, 40, 2, 11, 30]])
    full = _forward(model, ids)  # jitted, like generate: three compiles instead of hundreds of eager ops
    cache = model.init_cache(1, 12)
    first, cache = _forward_cached(model, ids[:, :5], cache)
    # Logits reach ~10 with the x8 weights; the cached path sums in another order (f32).
    np.testing.assert_allclose(first, full[:, :5], atol=5e-5)
    for i in range(5, 8):
        step, cache = _forward_cached(model, ids[:, i:i + 1], cache)
        np.testing.assert_allclose(step[:, 0], full[:, i], atol=5e-5)


def test_inputs_embeds_prefill_and_eos(model):
    ids = jnp.asarray([[5, 9, 17, 3]])
    a = gen.generate(model, input_ids=ids, max_new_tokens=6, eos_token_id=-1)
    b = gen.generate(model, inputs_embeds=model.embed(ids), max_new_tokens=6, eos_token_id=-1)
    assert a.tokens.tolist() == b.tokens.tolist()
    eos = int(a.tokens[0, 2])
    c = gen.generate(model, input_ids=ids, max_new_tokens=6, eos_token_id=eos, pad_token_id=0)
    stop = a.tokens[0].tolist().index(eos)
    assert c.lengths[0] == stop + 1
    assert c.tokens[0, : stop + 1].tolist() == a.tokens[0, : stop + 1].tolist()
    assert (c.tokens[0, stop + 1:] == 0).all()


def test_sampling_filters():
    logits = jnp.log(jnp.asarray([[0.5, 0.3, 0.15, 0.05]] * 4000))
    keys = jax.random.key(0)
    top1 = gen._sample(logits, keys, 1.0, 1, 1.0)
    assert (top1 == 0).all()
    top_p = np.asarray(gen._sample(logits, keys, 1.0, 0, 0.7))
    assert set(top_p.tolist()) == {0, 1}  # 0.5 < 0.7 so token 1 is needed, token 2 is not
    free = np.bincount(np.asarray(gen._sample(logits, keys, 1.0, 0, 1.0)), minlength=4) / 4000
    np.testing.assert_allclose(free, [0.5, 0.3, 0.15, 0.05], atol=0.03)


def test_unstack_then_stack_round_trip_is_exact():
    """The layouts hold the same numbers; sharding names lose / regain the 'layers' axis."""
    with nnx.use_eager_sharding(False):
        m = DecoderLM(CFG, rngs=nnx.Rngs(5), attention_impl="xla")
    before = jax.tree.map(np.asarray, nnx.state(m, nnx.Param))
    ids = jnp.asarray([[5, 9, 17, 3, 40, 2, 11, 30]])  # the shape of the test above: its compile is reused
    want = _forward(m, ids)
    unstack_layers(m)
    assert not m.scanned and len(m.layers) == CFG.num_layers
    q = m.layers[1].attn.q_proj.kernel
    assert q.get_value().shape == (CFG.hidden_size, CFG.num_heads * CFG.head_dim)
    assert q.get_metadata()["out_sharding"] == ("embed", "heads")
    np.testing.assert_array_equal(np.asarray(q.get_value()), before["layers"]["attn"]["q_proj"]["kernel"][1])
    np.testing.assert_allclose(_forward(m, ids), want, atol=1e-5)
    exported = llm_weights.to_hf_tensors(m)  # HF export restacks a copy; the model stays unstacked
    assert not m.scanned
    np.testing.assert_array_equal(exported["model.layers.1.self_attn.q_proj.weight"],
                                  before["layers"]["attn"]["q_proj"]["kernel"][1].T)
    stack_layers(m)
    assert m.scanned
    assert m.layers.attn.q_proj.kernel.get_metadata()["out_sharding"] == ("layers", "embed", "heads")
    jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, nnx.state(m, nnx.Param)), before)


def _encoded(ids, first_label):
    """A right-padded row (width 12) whose tokens from `first_label` on are the labelled answer."""
    from exo2ego_jax.data import text
    width = 12
    row = np.zeros(width, np.int32)
    row[:len(ids)] = ids
    labels = np.full(width, text.IGNORE_INDEX, np.int32)
    labels[first_label:len(ids)] = ids[first_label:]
    mask = (np.arange(width) < len(ids)).astype(np.int32)
    return text.Encoded(input_ids=row, labels=labels, attention_mask=mask, num_videos=0, length=len(ids))


def test_option_log_likelihood_equals_scoring_whole_rows(model):
    """Two questions (prompts of 5 and 3 tokens) with 3 and 2 options of 1-3 tokens: each prompt runs
    once into a KV cache, its options continue from it; the scores equal whole-row scoring."""
    from exo2ego_jax.data import text
    from exo2ego_jax.train import losses
    rng = np.random.default_rng(0)
    prompts = [rng.integers(1, CFG.vocab_size, 5), rng.integers(1, CFG.vocab_size, 3)]
    options = [[[7], [8, 9], [10, 11, 12]], [[13, 14], [15]]]
    rows = [_encoded(np.concatenate([prompts[q], o]), len(prompts[q])) for q in (0, 1) for o in options[q]]
    question = [0, 0, 0, 1, 1]
    b = text.split_shared_prefix(rows, question, prefix_len=6)
    # Hand-checked layout: prompts left-padded to 6, options right-padded to 8 (a multiple of 8).
    np.testing.assert_array_equal(b["prefix_mask"], [[0, 1, 1, 1, 1, 1], [0, 0, 0, 1, 1, 1]])
    np.testing.assert_array_equal(b["prefix_ids"][1, 3:], prompts[1])
    np.testing.assert_array_equal(b["option_ids"][2, :4], [10, 11, 12, 0])
    np.testing.assert_array_equal(b["option_mask"].sum(1), [1, 2, 3, 2, 1])
    assert b["option_ids"].shape == (5, 8)
    whole = text.stack(rows)
    want = losses.label_log_likelihood(_forward(model, jnp.asarray(whole["input_ids"])), jnp.asarray(whole["labels"]))
    got = nnx.jit(lambda m, e, *a: gen.option_log_likelihood(m, e, *a))(
        model, model.embed(jnp.asarray(b["prefix_ids"])), *(jnp.asarray(b[k]) for k in (
            "prefix_mask", "option_ids", "option_mask", "option_labels")), jnp.asarray(question, jnp.int32))
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)


def test_split_shared_prefix_refuses_rows_it_cannot_share():
    from exo2ego_jax.data import text
    a, b = _encoded(np.array([1, 2, 3, 4]), 3), _encoded(np.array([1, 2, 5, 4]), 3)
    assert text.split_shared_prefix([a, b], [0, 0], prefix_len=8) is None  # prompts differ
    assert text.split_shared_prefix([a, b], [0, 1], prefix_len=8) is not None  # one each
    assert text.split_shared_prefix([a], [0], prefix_len=2) is None  # prompt longer than prefix_len
    unlabelled = _encoded(np.array([1, 2]), 2)
    assert text.split_shared_prefix([unlabelled], [0], prefix_len=8) is None  # nothing to score
