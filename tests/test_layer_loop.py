"""config.hardware.layer_loop: how the decoder loops over its stacked layers, chosen per hardware preset.

The CPU preset unrolls the layers, the GPU/TPU presets scan them (config_lib.LAYER_LOOPS); both run the
same stacked [L, ...] parameters, so logits and gradients agree, while the compiled programs differ: a
scan lowers to one `stablehlo.while` over the layers, the unrolled loop to none.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from exo2ego_jax import config_lib
from exo2ego_jax.methods import build as build_method
from exo2ego_jax.methods.ego2exo import config as ego2exo_config
from exo2ego_jax.models.llm import DecoderLM, LLMConfig
from exo2ego_jax.weights import export as export_lib
from exo2ego_jax.weights import llm_weights

import helpers
import test_exo2ego_stages as x2e

CFG = LLMConfig(vocab_size=61, hidden_size=32, intermediate_size=64, num_layers=3, num_heads=4,
                num_kv_heads=2, head_dim=8, rope_theta=10000.0)


def _loss_and_grads(model: DecoderLM, ids):
    """(jitted (logits [B, T, V], grads of their mean square), its StableHLO text) for `model`."""
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def f(p):
        def loss(p):
            logits, _ = nnx.merge(graphdef, p, rest)(input_ids=ids)
            return jnp.mean(logits ** 2), logits
        (_, logits), grads = jax.value_and_grad(loss, has_aux=True)(p)
        return logits, grads

    jitted = jax.jit(f)
    return jitted(params), jitted.lower(params).as_text()


def _scans_layers(model: DecoderLM, ids) -> bool:
    """Whether the forward pass of `model` compiles its layer loop as a while loop (lax.scan)."""
    graphdef, state = nnx.split(model)
    text = jax.jit(lambda s: nnx.merge(graphdef, s)(input_ids=ids)[0]).lower(state).as_text()
    return "stablehlo.while" in text


def test_cpu_preset_unrolls_tpu_preset_scans_same_logits_and_gradients():
    ids = jnp.asarray(np.random.default_rng(0).integers(0, CFG.vocab_size, (2, 7)), jnp.int32)
    out, scans = {}, {}
    for preset in ("cpu", "tpu_v5p_128"):
        unroll = config_lib.unroll_layers(config_lib.hardware_preset(preset))
        model = DecoderLM(CFG, rngs=nnx.Rngs(0), attention_impl="xla", unroll_layers=unroll)  # same init
        assert model.unroll_layers is (preset == "cpu")
        out[preset], text = _loss_and_grads(model, ids)
        scans[preset] = "stablehlo.while" in text
    assert scans == {"cpu": False, "tpu_v5p_128": True}
    (logits_u, grads_u), (logits_s, grads_s) = out["cpu"], out["tpu_v5p_128"]
    np.testing.assert_allclose(np.asarray(logits_u), np.asarray(logits_s), rtol=1e-5, atol=1e-5)
    flat_u, flat_s = nnx.to_flat_state(grads_u), nnx.to_flat_state(grads_s)
    assert [k for k, _ in flat_u] == [k for k, _ in flat_s]
    for (path, gu), (_, gs) in zip(flat_u, flat_s):  # stacked [L, ...] gradients, same layout
        np.testing.assert_allclose(np.asarray(gu.get_value()), np.asarray(gs.get_value()), rtol=1e-5,
                                   atol=1e-6, err_msg="/".join(map(str, path)))


def test_decoder_refuses_a_layer_loop_name():
    # "scan" is a truthy string: taken as unroll_layers it would silently unroll.
    with pytest.raises(ValueError, match=r"unroll_layers='scan'.*config_lib.unroll_layers"):
        DecoderLM(CFG, rngs=nnx.Rngs(0), unroll_layers="scan")


def test_exo2ego_builder_takes_the_layer_loop_override():
    """The Exo2Ego method's model builder (what the trainer calls) hands the preset's choice, or a
    `hardware.layer_loop` override, to its LLM, and the LLM compiles that loop."""
    ids = jnp.zeros((1, 5), jnp.int32)
    for loop, unroll in (("", True), ("scan", False), ("unroll", True)):  # "": the CPU preset's
        c = x2e.tiny_stage(1)
        if loop:
            c.hardware.layer_loop = loop  # as --config.hardware.layer_loop=<loop> sets it
        model = build_method(c).build_model(nnx.Rngs(0))
        assert model.llm.unroll_layers is unroll, loop
        assert _scans_layers(model.llm, ids) is not unroll, loop
        tower = model.exo.tower  # stage 1 trains the exo demonstrator's tower: the same loop
        assert tower.unroll_layers is unroll, loop
        pixels = jnp.zeros((1, tower.cfg.image_size, tower.cfg.image_size, 3), jnp.uint8)
        assert ("stablehlo.while" in jax.jit(lambda p: tower(p)).lower(pixels).as_text()) is not unroll, loop
    c = x2e.tiny_stage(1)
    c.hardware.layer_loop = "while"
    with pytest.raises(ValueError, match=r"config.hardware.layer_loop='while'.*\('unroll', 'scan'\)"):
        build_method(c).build_model(nnx.Rngs(0))


@pytest.mark.parametrize("arch", ["llava_video", "videollama3"])
def test_ego2exo_builders_take_the_preset_loop(arch):
    """Both Ego2ExoVLM students get the preset's loop (built abstractly: only the wiring is checked here)."""
    for preset, unroll in (("tpu_v5e_64", False), ("cpu", True)):
        c = helpers.load_config("configs/ego2exo/student.py", f"hardware={preset},arch={arch},probes=2,frames=2")
        c.unlock()
        if arch == "videollama3":
            c.model = ego2exo_config.tiny_videollama3_model(vocab_size=40, width=32, patch_size=4, num_probes=2)
        else:
            c.model = ego2exo_config.tiny_model(vocab_size=40, width=32, vit_width=16, image_size=16, patch_size=4,
                                                num_probes=2)
        c.ego2exo.lora_rank = 0
        with nnx.use_eager_sharding(False):
            model = nnx.eval_shape(lambda: build_method(c).build_model(nnx.Rngs(0)))
        assert model.llm.unroll_layers is unroll, (arch, preset)


def test_load_llm_builds_the_requested_loop(tmp_path):
    """The HF loader (chat's text path) builds the loop it is given; the weights land in the same
    stacked layout either way, so the loaded models give the saved model's logits."""
    ids = jnp.asarray([[3, 17, 5, 40, 2]], jnp.int32)
    saved = DecoderLM(CFG, rngs=nnx.Rngs(1), attention_impl="xla")
    export_lib.export_hf(saved, str(tmp_path))
    want, _ = nnx.jit(lambda m, x: m(input_ids=x))(saved, ids)
    for unroll in (True, False):
        model = llm_weights.load_llm(str(tmp_path), attention_impl="xla", unroll_layers=unroll)
        assert model.unroll_layers is unroll and _scans_layers(model, ids) is not unroll
        got, _ = nnx.jit(lambda m, x: m(input_ids=x))(model, ids)
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)
