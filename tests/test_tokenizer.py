"""load_tokenizer (local HF dir), added special tokens, chat template, embedding resize."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from exo2ego_jax.models.llm import DecoderLM, LLMConfig
from exo2ego_jax.tokenizer import load_tokenizer, resize_token_embeddings, special_token_ids
from helpers import save_word_level_tokenizer

WORDS = ["<unk>", "<s>", "</s>", "hello", "world", "what", "is", "this", "?", "user", "assistant", ":"]


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tok")
    save_word_level_tokenizer(d, WORDS)
    return str(d)


def test_special_tokens_and_template(tok_dir):
    tok = load_tokenizer(tok_dir)
    ids = special_token_ids(tok)
    assert set(ids) == {"<video>", "<probe>"} and min(ids.values()) >= len(WORDS)
    enc = tok("what is <video> this ?", add_special_tokens=False).input_ids
    assert enc == [5, 6, ids["<video>"], 7, 8]  # <video> is one unsplit token
    assert tok.decode(enc, skip_special_tokens=True).split() == ["what", "is", "this", "?"]
    assert tok.padding_side == "left" and tok.pad_token == "</s>"
    text = tok.apply_chat_template([{"role": "user", "content": "hello <video>"}], tokenize=False,
                                   add_generation_prompt=True)
    assert text == "user: hello <video>\nassistant:"
    with pytest.raises(KeyError, match="<foo>"):
        special_token_ids(tok, ["<foo>"])
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_tokenizer("/nowhere")


def test_resize_embeddings(tok_dir):
    tok = load_tokenizer(tok_dir)
    cfg = LLMConfig(vocab_size=len(WORDS), hidden_size=16, intermediate_size=32, num_layers=1, num_heads=2,
                    num_kv_heads=1, head_dim=8)
    with nnx.use_eager_sharding(False):
        model = DecoderLM(cfg, rngs=nnx.Rngs(0), attention_impl="xla")
    old = np.asarray(model.embed.embedding[...])
    resize_token_embeddings(model, len(tok))
    new = np.asarray(model.embed.embedding[...])
    assert new.shape == (len(tok), 16) and model.cfg.vocab_size == len(tok)
    np.testing.assert_array_equal(new[: len(WORDS)], old)
    np.testing.assert_allclose(new[len(WORDS):], np.broadcast_to(old.mean(0), (2, 16)), atol=1e-6)
    assert model.lm_head.kernel[...].shape == (16, len(tok))
    logits, _ = model(jnp.asarray([[special_token_ids(tok)["<probe>"], 3]]))
    assert logits.shape == (1, 2, len(tok))
