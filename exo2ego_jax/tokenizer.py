"""Tokenizers and chat templates: transformers' AutoTokenizer for local dirs, GGUF metadata for ``.gguf``.

A ``.gguf`` file stores its tokenizer as llama.cpp metadata (vocabulary, merges, token types, special
token ids, chat template). ``gguf_tokenizer`` reads it with the ``gguf`` package and builds a
``tokenizers`` fast tokenizer, so chatting with a GGUF never imports torch (transformers' own
``gguf_file=`` loader does). Adds the special tokens the methods use (``<video>``, ``<probe>``) and
resizes a DecoderLM's embedding / LM head to match.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
from collections.abc import Sequence

import gguf
import jax
import jax.numpy as jnp
import numpy as np
import tokenizers
from flax import nnx
from tokenizers import decoders, pre_tokenizers, processors
from transformers import AutoTokenizer, PreTrainedTokenizerFast
from transformers.convert_slow_tokenizer import bytes_to_unicode

DEFAULT_EXTRA_TOKENS = ("<video>", "<probe>")


def load_tokenizer(path: str, extra_special_tokens: Sequence[str] = DEFAULT_EXTRA_TOKENS):
    """AutoTokenizer from a local HF directory, or ``gguf_tokenizer`` for a ``.gguf`` file.

    The extra tokens are added as *special* tokens (never split, skipped when decoding with
    ``skip_special_tokens=True``). Padding side is left, as generation needs; a missing pad token
    falls back to EOS. Works offline (``local_files_only``).
    """
    path = os.fspath(path)
    if path.endswith(".gguf"):
        tok = gguf_tokenizer(path)
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


# llama.cpp's token types (gguf.TokenType): CONTROL tokens are special (<|im_end|>), USER_DEFINED
# ones are matched whole but decoded as text.
_CONTROL, _USER_DEFINED = int(gguf.TokenType.CONTROL), int(gguf.TokenType.USER_DEFINED)
# Byte-level BPE splits by `tokenizer.ggml.pre`: GPT-2's regex (the `ByteLevel` default) unless the
# vocabulary was trained on another split. Regexes from the models' own tokenizer.json files.
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_PRE_TOKENIZER_SPLITS = {"llama3": _LLAMA3_SPLIT, "llama-v3": _LLAMA3_SPLIT, "llama-bpe": _LLAMA3_SPLIT,
                         "smaug-bpe": _LLAMA3_SPLIT, "qwen2": _QWEN2_SPLIT, "deepseek-r1-qwen": _QWEN2_SPLIT}


def gguf_tokenizer(path: str) -> PreTrainedTokenizerFast:
    """The byte-level BPE tokenizer a GGUF file describes (``tokenizer.ggml.model == "gpt2"``:
    SmolLM2, Llama 3, Qwen2), built from its metadata alone; torch is never imported.

    Vocabulary, merges and token types come from ``tokenizer.ggml.*``: CONTROL tokens become special
    added tokens, USER_DEFINED ones plain added tokens (both matched whole, as llama.cpp does); BOS
    is prepended only when ``tokenizer.ggml.add_bos_token`` says so; the chat template is
    ``tokenizer.chat_template``. Other tokenizer kinds (sentencepiece ``llama``, ``t5``...) raise,
    naming the way out.
    """
    reader = gguf.GGUFReader(path)

    def field(key: str, default=None):
        f = reader.fields.get(key)
        return default if f is None else f.contents()

    kind = field("tokenizer.ggml.model")
    tokens = field("tokenizer.ggml.tokens")
    if kind != "gpt2" or not tokens:
        raise ValueError(
            f"{path}: tokenizer.ggml.model={kind!r}; only byte-level BPE ('gpt2': SmolLM2, Llama 3, Qwen2) "
            f"tokenizers are read from GGUF metadata. Pass the model's Hugging Face tokenizer directory "
            f"instead (--config.chat.tokenizer=DIR, or --config.data.tokenizer=DIR).")
    types = field("tokenizer.ggml.token_type") or [1] * len(tokens)
    merges = field("tokenizer.ggml.merges")
    if not merges:
        raise ValueError(f"{path}: byte-level BPE without tokenizer.ggml.merges; pass the model's Hugging Face "
                         f"tokenizer directory instead.")
    # Every token of a byte-level vocabulary is spelled in GPT-2's byte alphabet; a token written in
    # plain UTF-8 (a llama.cpp conversion quirk) is respelled so the BPE model can reach it.
    spelling = bytes_to_unicode()
    alphabet = set(spelling.values())
    in_alphabet = [set(t) <= alphabet for t in tokens]
    vocab = {t if ok else "".join(spelling[b] for b in t.encode("utf-8")): i
             for i, (t, ok) in enumerate(zip(tokens, in_alphabet))}
    bpe = tokenizers.models.BPE(vocab=vocab, merges=[tuple(m.split(" ", 1)) for m in merges],
                                continuing_subword_prefix="", end_of_word_suffix="", fuse_unk=False)
    tok = tokenizers.Tokenizer(bpe)
    split = _PRE_TOKENIZER_SPLITS.get(field("tokenizer.ggml.pre", ""))
    if split is None:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    else:
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(tokenizers.Regex(split), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()

    def special(key: str) -> str | None:
        i = field(f"tokenizer.ggml.{key}")
        return None if i is None else tokens[int(i)]

    bos = special("bos_token_id")
    if field("tokenizer.ggml.add_bos_token", False) and bos is not None:
        bos_id = int(field("tokenizer.ggml.bos_token_id"))
        tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B:1",
                                                           special_tokens=[(bos, bos_id)])
    # A CONTROL token outside the byte alphabet would be a new id beyond the model's vocabulary: skip it.
    tok.add_special_tokens([tokenizers.AddedToken(t, normalized=False, special=True)
                            for t, ty, ok in zip(tokens, types, in_alphabet) if ty == _CONTROL and ok])
    tok.add_tokens([tokenizers.AddedToken(t, normalized=False, special=False)
                    for t, ty, ok in zip(tokens, types, in_alphabet) if ty == _USER_DEFINED and ok])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=bos, eos_token=special("eos_token_id"),
        unk_token=special("unknown_token_id"), pad_token=special("padding_token_id"),
        chat_template=field("tokenizer.chat_template"), add_bos_token=bool(field("tokenizer.ggml.add_bos_token")),
        add_eos_token=bool(field("tokenizer.ggml.add_eos_token")))


def _supports_replace(tok) -> bool:
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

