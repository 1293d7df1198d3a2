"""DecoderLM vs transformers' PyTorch Llama / Mistral / Qwen2 on tiny random checkpoints."""

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx

from exo2ego_jax.models.llm import DecoderLM, LLMConfig
from exo2ego_jax.weights import llm_weights

TINY = dict(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
CASES = {
    "llama": (transformers.LlamaConfig, dict(rope_theta=10000.0)),
    "llama3_rope": (transformers.LlamaConfig, dict(rope_scaling={
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 16}, rope_theta=500000.0)),
    "mistral": (transformers.MistralConfig, dict(rope_theta=1e6, head_dim=16)),
    "qwen2_tied_bias": (transformers.Qwen2Config, dict(tie_word_embeddings=True, rope_theta=1e6)),
}


def make_hf(tmp_path, name, shard=False):
    cls, extra = CASES[name]
    torch.manual_seed(0)
    cfg = cls(**TINY, **extra)
    hf = transformers.AutoModelForCausalLM.from_config(cfg).float().eval()
    with torch.no_grad():  # random (non-unit) norms and biases so every parameter matters
        for n, p in hf.named_parameters():
            if "norm" in n or n.endswith("bias"):
                p.uniform_(0.5, 1.5)
    d = tmp_path / name
    hf.save_pretrained(d, max_shard_size="20KB" if shard else "10GB")
    return hf, str(d)


def load_ours(path):
    cfg = LLMConfig.from_hf(path)
    with nnx.use_eager_sharding(False):
        model = nnx.eval_shape(lambda: DecoderLM(cfg, rngs=nnx.Rngs(0), attention_impl="xla"))
    return llm_weights.load_hf_llm(model, path)


IDS = np.random.default_rng(0).integers(0, 97, size=(2, 24))


@pytest.mark.parametrize("name", list(CASES))
def test_logits_match_transformers(tmp_path, name):
    hf, path = make_hf(tmp_path, name, shard=name == "mistral")
    if name == "mistral":
        assert any(p.name.endswith(".index.json") for p in (tmp_path / name).iterdir())
    if name == "qwen2_tied_bias":
        assert LLMConfig.from_hf(path).attention_bias and LLMConfig.from_hf(path).tie_word_embeddings
    model = load_ours(path)
    with torch.no_grad():
        ref = hf(torch.tensor(IDS)).logits.numpy()
    ours, _ = model(jnp.asarray(IDS), attention_mask=jnp.ones_like(IDS))
    np.testing.assert_allclose(np.asarray(ours), ref, atol=1e-4, rtol=0)


def test_export_roundtrip(tmp_path):
    from exo2ego_jax.weights import export

    hf, path = make_hf(tmp_path, "qwen2_tied_bias")
    model = load_ours(path)
    out = tmp_path / "exported"
    export.export_hf(model, str(out), source_dir=path)
    back = transformers.AutoModelForCausalLM.from_pretrained(out).float().eval()
    with torch.no_grad():
        a = hf(torch.tensor(IDS)).logits.numpy()
        b = back(torch.tensor(IDS)).logits.numpy()
    np.testing.assert_array_equal(a, b)


def test_sharded_load_matches(tmp_path):
    """Loading straight into an FSDP x TP mesh gives sharded params and the same logits."""
    import jax

    from exo2ego_jax.weights import safetensors_io as sio

    hf, path = make_hf(tmp_path, "llama")
    mesh = jax.make_mesh((2, 4), ("fsdp", "tensor"), axis_types=(jax.sharding.AxisType.Auto,) * 2)
    model = llm_weights.load_llm(path, mesh=mesh, attention_impl="xla")
    q = sio.param_paths(model)["layers/attn/q_proj/kernel"].get_value()
    assert q.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor")
    assert len(q.addressable_shards) == 8 and q.addressable_shards[0].data.shape == (2, 32, 16)
    with torch.no_grad():
        ref = hf(torch.tensor(IDS)).logits.numpy()
    with jax.set_mesh(mesh):
        ours, _ = nnx.jit(lambda m, x: m(x))(model, jnp.asarray(IDS))
    np.testing.assert_allclose(np.asarray(ours), ref, atol=1e-4, rtol=0)
