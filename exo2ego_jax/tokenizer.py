"""Tokenizers and chat templates via transformers' AutoTokenizer (local dirs or GGUF files).

Adds the special tokens the methods use (``<video>``, ``<probe>``) and resizes a DecoderLM's
embedding / LM head to match.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

DEFAULT_EXTRA_TOKENS = ("<video>", "<probe>")


def load_tokenizer(path: str, extra_special_tokens: Sequence[str] = DEFAULT_EXTRA_TOKENS):
    """AutoTokenizer from a local HF directory or a ``.gguf`` file, with extra special tokens.

    The extra tokens are added as *special* tokens (never split, skipped when decoding with
    ``skip_special_tokens=True``). Padding side is left, as generation needs; a missing pad token
    falls back to EOS. Works offline (``local_files_only``).
    """
    from transformers import AutoTokenizer

    path = os.fspath(path)
    if path.endswith(".gguf"):
        tok = AutoTokenizer.from_pretrained(os.path.dirname(path) or ".", gguf_file=os.path.basename(path),
                                            local_files_only=True)
    else:
        if not os.path.isdir(path):
            raise FileNotFoundError(f"tokenizer path {path!r} is neither a directory nor a .gguf file.")
        tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    new = [t for t in extra_special_tokens if t not in tok.get_vocab()]
    if new:
        # Keep the tokenizer's own extra special tokens (transformers 5 replaces them by default).
        kw = {"replace_extra_special_tokens": False} if _supports_replace(tok) else {}
        tok.add_special_tokens({"additional_special_tokens": list(new)}, **kw)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    return tok


def _supports_replace(tok) -> bool:
    import inspect

    return "replace_extra_special_tokens" in inspect.signature(tok.add_special_tokens).parameters


def special_token_ids(tok, tokens: Sequence[str] = DEFAULT_EXTRA_TOKENS) -> dict[str, int]:
    """{token: id}; errors naming the token if the tokenizer lacks it."""
    vocab = tok.get_vocab()
    missing = [t for t in tokens if t not in vocab]
    if missing:
        raise KeyError(f"tokenizer lacks special tokens {missing}; load it with load_tokenizer(..., "
                       f"extra_special_tokens={tuple(tokens)}).")
    return {t: vocab[t] for t in tokens}


def resize_token_embeddings(model, new_vocab: int, *, rng: jax.Array | None = None):
    """Grows (or shrinks) a DecoderLM's embedding and untied LM head to ``new_vocab`` rows, in place.

    New rows start at the mean of the existing embeddings (plus tiny noise when ``rng`` is given),
    the usual choice (e.g. LLaVA, HF ``mean_resizing``) so added tokens do not disturb the output
    distribution before training. ``model.cfg.vocab_size`` is updated.
    """
    import dataclasses

    def resize(param: nnx.Param, axis: int):
        old = param.get_value()
        n_old = old.shape[axis]
        if new_vocab <= n_old:
            param.set_value(jax.lax.slice_in_dim(old, 0, new_vocab, axis=axis))
            return
        mean = jnp.mean(old.astype(jnp.float32), axis=axis, keepdims=True)
        shape = list(old.shape)
        shape[axis] = new_vocab - n_old
        extra = jnp.broadcast_to(mean, shape)
        if rng is not None:
            extra = extra + 1e-3 * jax.random.normal(rng, shape)
        new = jnp.concatenate([old, extra.astype(old.dtype)], axis=axis)
        sharding = getattr(old, "sharding", None)
        param.set_value(jax.device_put(new, sharding) if sharding is not None else new)

    resize(model.embed.embedding, 0)
    model.embed.num_embeddings = new_vocab
    if model.lm_head is not None:
        resize(model.lm_head.kernel, 1)
    model.cfg = dataclasses.replace(model.cfg, vocab_size=new_vocab)
    return model

