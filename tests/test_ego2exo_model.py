"""Ego2ExoVLM model: EAVT init, per-video isolation, probe placement, answer-only loss, groups."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from exo2ego_jax import config_lib
from exo2ego_jax.methods.ego2exo import method as ego2exo
from exo2ego_jax.methods.ego2exo import model as ego2exo_model
from exo2ego_jax.train import losses
from exo2ego_jax.methods.ego2exo import config as ego2exo_config
from exo2ego_jax.train import optim

B, V, F, S = 2, 1, 2, 16  # batch, videos per sample, frames, image side


def _config(num_probes=3, lora_rank=4):
    c = config_lib.base_config(method="ego2exo")
    c.model = ego2exo_config.tiny_model(vocab_size=40, width=32, vit_width=16, image_size=S, patch_size=4,
                                        num_probes=num_probes)
    c.ego2exo = ego2exo_config.method_block()
    c.ego2exo.lora_rank = lora_rank
    c.data = ego2exo_config.data_block(image_size=S, num_frames=F)
    ego2exo_model.sync_data_fields(c)
    c.train.groups = ego2exo_config.student_groups(1e-5, 2e-6)
    return c


@pytest.fixture(scope="module")
def setup():
    c = _config(lora_rank=0)  # LoRA paths are checked abstractly below (eager LoRA init is slow)
    with nnx.use_eager_sharding(False):
        model = ego2exo.Ego2Exo(c).build_model(nnx.Rngs(0))
    # Make the tower's attention weights distinct from a fresh init so the copy check means something.
    attn = model.vision.layers.attn
    attn.q_proj.kernel.value = attn.q_proj.kernel.value * 3.0 + 0.1
    model.init_probe_modules()
    return c, model


def _batch(c, rng, num_tokens):
    """Ids: [text, <video> x K, <probe> x N, text...]; labels only on the last 3 tokens."""
    k, n = c.data.num_visual_tokens, c.model.num_probes
    t = 4 + k + n + 6
    ids = rng.integers(8, 40, size=(B, t)).astype(np.int32)
    ids[:, 4:4 + k] = c.model.video_token_id
    ids[:, 4 + k:4 + k + n] = c.model.probe_token_id
    labels = np.full((B, t), -100, np.int32)
    labels[:, -3:] = ids[:, -3:]
    pixels = rng.normal(size=(B, V, F, S, S, 3)).astype(np.float32)
    return {"input_ids": jnp.asarray(ids), "labels": jnp.asarray(labels),
            "attention_mask": jnp.ones((B, t), jnp.int32), "pixels": jnp.asarray(pixels),
            "example_mask": jnp.ones((B,), jnp.int32)}


def test_eavt_starts_equal_to_vit_attention(setup):
    _, model = setup
    n = model.eavt.num_layers
    assert n == model.vision.cfg.feature_num_layers
    for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
        for name in ("kernel", "bias"):
            src = getattr(getattr(model.vision.layers.attn, proj), name).value[:n]
            dst = getattr(getattr(model.eavt.cross_attn.attn, proj), name).value
            np.testing.assert_array_equal(np.asarray(src), np.asarray(dst))
    for a, b in zip(jax.tree.leaves(nnx.state(model.connector.readout, nnx.Param)),
                    jax.tree.leaves(nnx.state(model.eavt.projector, nnx.Param))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert model.eavt.probes.value.shape == (3, 16)


def test_probes_attend_only_within_their_own_video(setup):
    _, model = setup
    rng = np.random.default_rng(1)
    pix = rng.normal(size=(1, 3, F, S, S, 3)).astype(np.float32)  # one sample, three videos
    base = model.visual(jnp.asarray(pix))[1]
    changed = pix.copy()
    changed[0, 1] += 5.0  # perturb video 1 only
    out = model.visual(jnp.asarray(changed))[1]
    np.testing.assert_allclose(np.asarray(out[:, 0]), np.asarray(base[:, 0]), atol=1e-5)
    np.testing.assert_allclose(np.asarray(out[:, 2]), np.asarray(base[:, 2]), atol=1e-5)
    assert float(jnp.abs(out[:, 1] - base[:, 1]).max()) > 1e-4


def test_probe_embeddings_land_at_probe_positions(setup):
    c, model = setup
    batch = _batch(c, np.random.default_rng(2), 0)
    k, n = c.data.num_visual_tokens, c.model.num_probes
    embeds = model.embed_all(batch["input_ids"], batch["pixels"])
    tokens, ptoks = model.visual(batch["pixels"])
    np.testing.assert_allclose(np.asarray(embeds[:, 4:4 + k]), np.asarray(tokens[:, 0]), atol=1e-6)
    np.testing.assert_allclose(np.asarray(embeds[:, 4 + k:4 + k + n]), np.asarray(ptoks[:, 0]), atol=1e-6)
    text = model.llm.embed(batch["input_ids"])
    np.testing.assert_allclose(np.asarray(embeds[:, :4]), np.asarray(text[:, :4]), atol=1e-6)
    np.testing.assert_allclose(np.asarray(embeds[:, 4 + k + n:]), np.asarray(text[:, 4 + k + n:]), atol=1e-6)


def test_loss_is_answer_only(setup):
    c, model = setup
    batch = _batch(c, np.random.default_rng(3), 0)

    @nnx.jit
    def run(m, b):
        loss, metrics = ego2exo.Ego2Exo(c).loss(m, b, jax.random.key(0))
        return loss, metrics, m(b["input_ids"], b["pixels"], b["attention_mask"])

    loss, m, logits = run(model, batch)
    assert float(m["answer_tokens"]) == B * 3  # the 3 labelled positions of each row
    labels = np.asarray(batch["labels"])
    logp = np.asarray(jax.nn.log_softmax(logits[:, :-1]))
    tgt = labels[:, 1:]
    mask = tgt >= 0
    manual = -logp[np.arange(B)[:, None], np.arange(tgt.shape[1])[None], np.where(mask, tgt, 0)][mask].mean()
    np.testing.assert_allclose(float(loss), manual, rtol=1e-5)
    _, n1 = losses.answer_cross_entropy(logits, batch["labels"], jnp.asarray([1, 0], jnp.int32))
    assert float(n1) == 3  # a padding example (example_mask 0) contributes nothing


def test_groups_train_probes_and_freeze_tower():
    c = _config()
    with nnx.use_eager_sharding(False):
        model = nnx.eval_shape(lambda: ego2exo.Ego2Exo(c).build_model(nnx.Rngs(0)))
    paths = ["/".join(map(str, k)) for k, _ in nnx.to_flat_state(nnx.state(model, nnx.Param))]
    g = optim.assign_groups(paths, c.train.groups)
    lr = {p: c.train.groups[i][1] for p, i in g.items()}
    assert lr["eavt/probes"] == 2e-6  # the authors' code forgets these; we train them
    assert lr["eavt/cross_attn/attn/q_proj/kernel"] == 2e-6
    assert lr["eavt/projector/fc/0/kernel"] == 2e-6
    assert lr["connector/readout/fc/0/kernel"] == 2e-6
    assert lr["llm/layers/attn/q_proj/lora_a"] == 1e-5
    assert lr["vision/layers/attn/q_proj/kernel"] is None
    assert lr["llm/layers/attn/q_proj/kernel"] is None


def test_padded_frames_are_invisible_with_frame_mask(setup):
    """fps sampling zero-pads short clips: with frame_mask the probes ignore padded frames and their
    visual tokens are zero, so whatever the padding holds cannot change the logits."""
    c, model = setup
    batch = _batch(c, np.random.default_rng(4), 0)
    fmask = jnp.asarray([[[1, 0]], [[1, 1]]], jnp.int32)  # sample 0: frame 1 is padding
    pix = np.asarray(batch["pixels"]).copy()
    other = pix.copy()
    other[0, 0, 1] += 3.0  # change the padded frame of sample 0 only

    @nnx.jit
    def run(m, ids, p, am, fm):
        return m(ids, p, am, frame_mask=fm), m.visual(p, fm)

    la, (ta, pa) = run(model, batch["input_ids"], jnp.asarray(pix), batch["attention_mask"], fmask)
    lb, (tb, pb) = run(model, batch["input_ids"], jnp.asarray(other), batch["attention_mask"], fmask)
    np.testing.assert_allclose(np.asarray(lb), np.asarray(la), atol=1e-5)
    np.testing.assert_allclose(np.asarray(pb), np.asarray(pa), atol=1e-6)
    per_frame = ta.shape[2] // F
    assert float(jnp.abs(ta[0, 0, per_frame:]).max()) == 0.0  # padded frame: zero tokens
    assert float(jnp.abs(ta[0, 0, :per_frame]).max()) > 0.0
    # Without the mask the padded frame leaks into the probes (the check above is not vacuous) ...
    _, p_open = model.visual(jnp.asarray(other))
    _, p_base = model.visual(jnp.asarray(pix))
    assert float(jnp.abs(p_open[0] - p_base[0]).max()) > 1e-4
    # ... and an all-ones mask changes nothing.
    t1, p1 = model.visual(jnp.asarray(pix), jnp.ones((B, V, F), jnp.int32))
    t0, p0 = model.visual(jnp.asarray(pix))
    np.testing.assert_allclose(np.asarray(t1), np.asarray(t0), atol=1e-6)
    np.testing.assert_allclose(np.asarray(p1), np.asarray(p0), atol=1e-6)


def test_lora_dropout_draws_from_the_loss_rng():
    """The student's LoRA dropout (paper: 0.05) changes the LoRA gradients with the step's rng."""
    c = _config(num_probes=2, lora_rank=4)
    assert c.ego2exo.lora_dropout == 0.05
    method = ego2exo.Ego2Exo(c)
    model = method.build_model(nnx.Rngs(0))
    batch = _batch(c, np.random.default_rng(5), 0)

    def lora_b_grads(rng):
        g = nnx.grad(lambda m: method.loss(m, batch, rng)[0])(model)
        return {k: np.asarray(v.get_value()) for k, v in nnx.to_flat_state(g) if k[-1] == "lora_b"}

    g1, g2, g1_again = lora_b_grads(jax.random.key(1)), lora_b_grads(jax.random.key(2)), lora_b_grads(jax.random.key(1))
    assert g1 and any(np.abs(v).sum() > 0 for v in g1.values())
    assert all(np.array_equal(g1[k], g1_again[k]) for k in g1)  # same rng, same masks
    assert not all(np.array_equal(g1[k], g2[k]) for k in g1)
