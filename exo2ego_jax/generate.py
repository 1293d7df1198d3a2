"""Batched KV-cache decoding: one jitted prefill + ``lax.while_loop`` decode, left-padded prompts.

The prefill accepts ``inputs_embeds`` so the VideoLLM can splice visual tokens into the prompt;
every later step embeds the sampled token with the decoder's own embedding table.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from exo2ego_jax.train import losses


@dataclasses.dataclass
class GenerateOutput:
    tokens: np.ndarray  # [B, max_new_tokens] int32, pad_token_id after a row stops
    lengths: np.ndarray  # [B] number of new tokens per row (including the EOS token)
    texts: list[str] | None = None  # decoded (and stop-string-truncated) when a tokenizer is given


def _sample(logits, rng, temperature: float, top_k: int, top_p: float):
    """logits [B, V] float32 -> tokens [B]. temperature 0 = greedy (static choice, no RNG)."""
    if temperature == 0.0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits / temperature
    neg = jnp.finfo(logits.dtype).min
    if top_k > 0:
        kth = jax.lax.top_k(logits, top_k)[0][:, -1:]
        logits = jnp.where(logits < kth, neg, logits)
    if top_p < 1.0:
        sorted_logits = jnp.sort(logits, axis=-1)[:, ::-1]
        probs = jax.nn.softmax(sorted_logits, axis=-1)
        # Keep the smallest prefix whose mass reaches top_p (the token crossing it included).
        keep = jnp.cumsum(probs, axis=-1) - probs < top_p
        cutoff = jnp.min(jnp.where(keep, sorted_logits, jnp.inf), axis=-1, keepdims=True)
        logits = jnp.where(logits < cutoff, neg, logits)
    return jax.random.categorical(rng, logits, axis=-1).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("graphdef", "max_new_tokens", "temperature", "top_k",
                                             "top_p", "cache_dtype"))
def _generate(graphdef, state, inputs, attention_mask, rng, eos_ids, pad_id, *, max_new_tokens: int,
              temperature: float, top_k: int, top_p: float, cache_dtype):
    model = nnx.merge(graphdef, state)
    b, t = attention_mask.shape
    cache = model.init_cache(b, t + max_new_tokens, dtype=cache_dtype)
    kw = {"inputs_embeds": inputs} if inputs.ndim == 3 else {"input_ids": inputs}
    logits, cache = model(**kw, attention_mask=attention_mask, cache=cache, last_only=True)
    rng, sub = jax.random.split(rng)
    tok = _sample(logits[:, 0], sub, temperature, top_k, top_p)
    tokens = jnp.full((b, max_new_tokens), pad_id, jnp.int32).at[:, 0].set(tok)
    done = jnp.isin(tok, eos_ids)
    lengths = jnp.ones((b,), jnp.int32)

    def cond(c):
        i, _, done, *_ = c
        return (i < max_new_tokens) & ~jnp.all(done)

    def body(c):
        i, tokens, done, lengths, tok, cache, rng = c
        logits, cache = model(tok[:, None], attention_mask=jnp.ones((b, 1), jnp.int32), cache=cache,
                              last_only=True)
        rng, sub = jax.random.split(rng)
        new = _sample(logits[:, 0], sub, temperature, top_k, top_p)
        new = jnp.where(done, pad_id, new)
        tokens = jax.lax.dynamic_update_slice_in_dim(tokens, new[:, None], i, axis=1)
        lengths = lengths + (~done).astype(jnp.int32)
        done = done | jnp.isin(new, eos_ids)
        return i + 1, tokens, done, lengths, new, cache, rng

    init = (jnp.int32(1), tokens, done, lengths, tok, cache, rng)
    _, tokens, _, lengths, *_ = jax.lax.while_loop(cond, body, init)
    return tokens, lengths


def generate(model: nnx.Module, *, input_ids=None, inputs_embeds=None, attention_mask=None,
             max_new_tokens: int = 32, temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
             eos_token_id: int | Sequence[int] | None = None, pad_token_id: int = 0,
             rng: jax.Array | None = None, tokenizer=None, stop_strings: Sequence[str] = (),
             cache_dtype=None) -> GenerateOutput:
    """Decodes up to ``max_new_tokens`` for a left-padded batch.

    Args:
      model: a ``DecoderLM`` (or anything with the same ``__call__``/``init_cache``).
      input_ids / inputs_embeds: [B, T] ids or [B, T, D] embeddings (exactly one).
      attention_mask: [B, T], 1 = real token, prompts left-padded (default all ones).
      temperature: 0 = greedy; otherwise sample with optional ``top_k`` (0 = off) / ``top_p``.
      eos_token_id: one id or several; a row stops after emitting one (it is kept in ``tokens``).
      tokenizer / stop_strings: when a tokenizer is given, texts are decoded and cut at the first
        stop string (stop strings are applied after decoding, not inside the jitted loop).
    """
    if (input_ids is None) == (inputs_embeds is None):
        raise ValueError("generate: pass exactly one of input_ids [B, T] or inputs_embeds [B, T, D].")
    inputs = jnp.asarray(input_ids if input_ids is not None else inputs_embeds)
    if input_ids is not None:
        inputs = inputs.astype(jnp.int32)
    b, t = inputs.shape[:2]
    attention_mask = jnp.ones((b, t), jnp.int32) if attention_mask is None else jnp.asarray(attention_mask, jnp.int32)
    if attention_mask.shape != (b, t):
        raise ValueError(f"generate: attention_mask shape {attention_mask.shape} != inputs' (B, T) = {(b, t)}.")
    if eos_token_id is None:
        eos_token_id = getattr(getattr(model, "cfg", None), "eos_token_id", None)
    eos = [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id or [-1])
    rng = jax.random.key(0) if rng is None else rng
    graphdef, state = nnx.split(model)
    tokens, lengths = _generate(
        graphdef, state, inputs, attention_mask, rng, jnp.asarray(eos, jnp.int32), jnp.int32(pad_token_id),
        max_new_tokens=max_new_tokens, temperature=float(temperature), top_k=int(top_k),
        top_p=float(top_p), cache_dtype=cache_dtype)
    out = GenerateOutput(np.asarray(tokens), np.asarray(lengths))
    if tokenizer is not None:
        texts = []
        for row, n in zip(out.tokens, out.lengths):
            text = tokenizer.decode(row[:n], skip_special_tokens=True)
            for s in stop_strings:
                if s in text:
                    text = text[: text.index(s)]
            texts.append(text)
        out.texts = texts
    return out


def _cache_rows(cache: dict, rows: jax.Array, scanned: bool) -> dict:
    """The KV cache of each row's prompt: batch entries picked by ``rows`` [R]."""
    kv_axis = 1 if scanned else 0  # scanned: [L, B, ...]; unstacked: tuples of [B, ...]
    take = (lambda a: jnp.take(a, rows, axis=kv_axis)) if scanned else (lambda t: tuple(jnp.take(a, rows, axis=0) for a in t))
    return {"k": take(cache["k"]), "v": take(cache["v"]), "mask": cache["mask"][rows], "pos": cache["pos"][rows],
            "index": cache["index"]}


def option_log_likelihood(model: nnx.Module, prefix_embeds: jax.Array, prefix_mask: jax.Array,
                          option_ids: jax.Array, option_mask: jax.Array, option_labels: jax.Array,
                          question: jax.Array) -> jax.Array:
    """Sum of log p(labelled option tokens | prompt) per row [R], each prompt run once.

    Multiple-choice scoring reads every option after the same prompt: the prompt of each question
    (``prefix_embeds`` [Q, P, D], left-padded by ``prefix_mask`` [Q, P]) fills a KV cache once, each
    row (question[r]) continues from its question's cache with its option tokens (``option_ids`` /
    ``option_mask`` / ``option_labels`` [R, O], right-padded; data/text.split_shared_prefix). Equal to
    scoring the whole (prompt + option) rows (label_log_likelihood) at a fraction of the compute when
    prompts are long and options short. ``model``: a DecoderLM (``init_cache``, ``scanned``).
    """
    n_q, p = prefix_mask.shape
    cache = model.init_cache(n_q, p + option_ids.shape[1], dtype=jnp.float32)
    last, cache = model(inputs_embeds=prefix_embeds, attention_mask=prefix_mask, cache=cache, last_only=True)
    logits, _ = model(option_ids, attention_mask=option_mask, cache=_cache_rows(cache, question, model.scanned))
    # The prompt's last position predicts the first option token, option position t the token t+1:
    # as one [R, 1 + O] row for label_log_likelihood (its position t predicts label t + 1).
    logits = jnp.concatenate([last[question], logits], axis=1)  # [R, 1 + O, V]
    labels = jnp.concatenate([jnp.full_like(option_labels[:, :1], losses.IGNORE_INDEX), option_labels], axis=1)
    return losses.label_log_likelihood(logits, labels)
