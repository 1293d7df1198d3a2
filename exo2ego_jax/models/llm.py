"""Decoder-only LLM for the Llama / Mistral / Qwen2 families (Flax NNX).

RMSNorm, RoPE (theta + scaling from the config), grouped-query attention with optional sliding
windows (per layer), SwiGLU MLP, optional q/k/v/o and MLP biases, tied or untied embeddings.
Layers are stacked on a leading ``layers`` axis and run with ``jax.lax.scan`` over the split layer
state (remat optional), so compile time does not grow with depth; on CPU the scan is unrolled by
default (``unroll_layers``: faster train steps, the parameter layout is the same). Parameter paths follow HF names (``layers/attn/q_proj/kernel``) so weight mappings stay
one-liners; kernels are [in, out] (HF stores [out, in]).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from exo2ego_jax.models import attention as attn_lib
from exo2ego_jax.models import rope as rope_lib
from exo2ego_jax.parallel.rules import constrain
# LLMConfig lives in llm_config.py; `models.llm.LLMConfig` stays importable from here.
from exo2ego_jax.models.llm_config import LLMConfig

Cache = dict[str, jax.Array]
# Up to this many tokens (batch x length) the tied LM head uses the decode-friendly product order.
_FEW_TOKENS = 64


def _init(cfg: LLMConfig):
    return nnx.initializers.normal(cfg.initializer_range)


class Linear(nnx.Module):
    """y = x @ kernel (+ bias), kernel [in, out] with logical axes; LoRA adds lora_a / lora_b.

    With ``stack`` the params get a leading ``layers`` axis (one slice per scanned layer).
    """

    def __init__(self, d_in: int, d_out: int, axes: tuple[str | None, str | None], *, cfg: LLMConfig,
                 use_bias: bool = False, stack: int | None = None, param_dtype=jnp.float32,
                 dtype=jnp.float32, rngs: nnx.Rngs):
        lead = (stack,) if stack else ()
        lead_ax = ("layers",) if stack else ()
        self.dtype = dtype
        self.kernel = nnx.Param(_init(cfg)(rngs.params(), (*lead, d_in, d_out), param_dtype),
                                sharding=(*lead_ax, *axes))
        self.bias = nnx.data(nnx.Param(jnp.zeros((*lead, d_out), param_dtype), sharding=(*lead_ax, axes[1]))
                             if use_bias else None)
        # Set by models.lora.apply_lora; declared here so the graph structure is explicit.
        self.lora_a: nnx.Param | None = nnx.data(None)
        self.lora_b: nnx.Param | None = nnx.data(None)
        self.lora_scale: float = 0.0
        self.lora_dropout: float = 0.0

    def __call__(self, x, rng: jax.Array | None = None):
        """``rng`` enables LoRA dropout (training); without it dropout is off (inference)."""
        if x.ndim > 2:
            # Tokens as one [N, in] matrix: the backward's weight gradient is then a plain 2-D
            # matmul, where with [B, T, in] XLA:CPU first copies the activation and its gradient
            # transposed (~20% fewer bytes copied per train step; bench/train_vs_torch.py).
            y = self(x.reshape(-1, x.shape[-1]), rng)
            return y.reshape(*x.shape[:-1], y.shape[-1])
        y = jnp.dot(x.astype(self.dtype), self.kernel[...].astype(self.dtype))
        if self.lora_a is not None:
            h = x.astype(self.dtype)
            if self.lora_dropout > 0 and rng is not None:
                keep = jax.random.bernoulli(rng, 1.0 - self.lora_dropout, h.shape)
                h = jnp.where(keep, h / (1.0 - self.lora_dropout), 0).astype(h.dtype)
            h = jnp.dot(h, self.lora_a[...].astype(self.dtype))
            y = y + jnp.dot(h, self.lora_b[...].astype(self.dtype)) * self.lora_scale
        if self.bias is not None:
            y = y + self.bias[...].astype(self.dtype)
        return y


class RMSNorm(nnx.Module):
    def __init__(self, dim: int, eps: float, *, stack: int | None = None, param_dtype=jnp.float32):
        lead = (stack,) if stack else ()
        self.eps = eps
        self.scale = nnx.Param(jnp.ones((*lead, dim), param_dtype),
                               sharding=(("layers",) if stack else ()) + ("norm",))

    def __call__(self, x):
        return rms_norm(x, self.scale[...], self.eps)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def rms_norm(x, scale, eps: float):
    """x [..., D] -> scale * x / rms(x): statistics in float32, then (as HF) cast back to x's dtype
    before the weight multiply.

    The backward keeps x and the [..., 1] reciprocal RMS and forms both gradients in one pass after
    one row reduction; autodiff of the expression also sums the gradient of each of x's three uses
    (the square, the product, the cast) as separate [tokens, D] passes: 1.000-1.010x per SmolLM2-135M
    train step on 2 cores in four paired, interleaved runs.
    """
    return _rms_norm_fwd(x, scale, eps)[0]


def _rms_norm_fwd(x, scale, eps):
    xf = x.astype(jnp.float32)
    inv = jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + eps)  # [..., 1]
    return scale.astype(x.dtype) * (xf * inv).astype(x.dtype), (x, inv, scale)


def _rms_norm_bwd(eps, res, d_out):
    x, inv, scale = res
    normed = x.astype(jnp.float32) * inv
    d_normed = d_out.astype(jnp.float32) * scale.astype(x.dtype).astype(jnp.float32)
    # d (x * inv) / dx = inv * (I - normed normed^T / D), applied to d_normed.
    d_x = inv * (d_normed - normed * jnp.mean(d_normed * normed, axis=-1, keepdims=True))
    d_scaled = d_out.astype(jnp.float32) * normed.astype(x.dtype).astype(jnp.float32)
    d_scale = jnp.sum(d_scaled.reshape(-1, x.shape[-1]), axis=0)  # over all tokens: [D]
    return d_x.astype(x.dtype), d_scale.astype(scale.dtype)


rms_norm.defvjp(_rms_norm_fwd, _rms_norm_bwd)


class Attention(nnx.Module):
    def __init__(self, cfg: LLMConfig, *, stack, dtype, param_dtype, rngs, impl: str):
        kw = dict(cfg=cfg, stack=stack, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        d, hd = cfg.hidden_size, cfg.head_dim
        self.q_proj = Linear(d, cfg.num_heads * hd, ("embed", "heads"), use_bias=cfg.attention_bias, **kw)
        self.k_proj = Linear(d, cfg.num_kv_heads * hd, ("embed", "kv_heads"), use_bias=cfg.attention_bias, **kw)
        self.v_proj = Linear(d, cfg.num_kv_heads * hd, ("embed", "kv_heads"), use_bias=cfg.attention_bias, **kw)
        self.o_proj = Linear(cfg.num_heads * hd, d, ("heads", "embed"), use_bias=cfg.o_proj_bias, **kw)
        self.num_heads, self.num_kv_heads, self.head_dim = cfg.num_heads, cfg.num_kv_heads, hd
        self.impl = impl
        # The fused kernels take a static window: one shared by every layer (DecoderLM sends mixed
        # windows down the XLA path, whose mask carries each layer's window).
        windows = set(cfg.layer_windows)
        self.fused_window = windows.pop() if len(windows) == 1 else 0

    def __call__(self, x, rope, mask, cache_kv=None, cache_index=None, causal_lengths=None, rng=None):
        """x [B, T, D]; rope: ``rope_lib.rope_tables`` (cos, sin) [B, T, head_dim] of the T positions."""
        b, t, _ = x.shape
        r = _split(rng, 4)
        q = self.q_proj(x, r[0]).reshape(b, t, self.num_heads, self.head_dim)
        k = self.k_proj(x, r[1]).reshape(b, t, self.num_kv_heads, self.head_dim)
        v = self.v_proj(x, r[2]).reshape(b, t, self.num_kv_heads, self.head_dim)
        q = rope_lib.apply_rope(q, *rope)
        k = rope_lib.apply_rope(k, *rope)
        new_kv = None
        scale = self.head_dim ** -0.5
        if cache_kv is not None:
            # Cache layout (init_cache): keys [B, KV, D, S], values [B, KV, S, D], i.e. the operand
            # layouts of the two attention matmuls, so no step transposes the whole cache.
            ck, cv = cache_kv
            ck = jax.lax.dynamic_update_slice_in_dim(ck, k.transpose(0, 2, 3, 1).astype(ck.dtype),
                                                     cache_index, axis=3)
            cv = jax.lax.dynamic_update_slice_in_dim(cv, v.transpose(0, 2, 1, 3).astype(cv.dtype),
                                                     cache_index, axis=2)
            new_kv = (ck, cv)
            out = attn_lib.cached_attention(q, ck.astype(q.dtype), cv.astype(q.dtype), mask, scale)
        else:
            # Without a cache the mask is causal (DecoderLM.__call__): key blocks may be skipped.
            out = attn_lib.attention(q, k, v, mask, scale, self.impl, causal_lengths=causal_lengths,
                                     window=self.fused_window, causal=True)
        return self.o_proj(out.reshape(b, t, -1), r[3]), new_kv


class MLP(nnx.Module):
    def __init__(self, cfg: LLMConfig, *, stack, dtype, param_dtype, rngs):
        kw = dict(cfg=cfg, stack=stack, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        kw["use_bias"] = cfg.mlp_bias
        self.gate_proj = Linear(cfg.hidden_size, cfg.intermediate_size, ("embed", "mlp"), **kw)
        self.up_proj = Linear(cfg.hidden_size, cfg.intermediate_size, ("embed", "mlp"), **kw)
        self.down_proj = Linear(cfg.intermediate_size, cfg.hidden_size, ("mlp", "embed"), **kw)

    def __call__(self, x, rng=None):
        r = _split(rng, 3)
        return self.down_proj(swiglu(self.gate_proj(x, r[0]), self.up_proj(x, r[1])), r[2])


@jax.custom_vjp
def swiglu(gate, up):
    """silu(gate) * up (SwiGLU's gate; the MLP's [tokens, intermediate] activations).

    The backward keeps only the two projections (saved anyway: they are matmul outputs) and
    recomputes the sigmoid in its one elementwise pass; autodiff of ``jax.nn.silu(gate) * up``
    also writes the sigmoid and silu(gate) to memory in the forward pass for the backward.
    """
    return jax.nn.silu(gate) * up


def _swiglu_fwd(gate, up):
    return swiglu(gate, up), (gate, up)


def _swiglu_bwd(res, d_out):
    gate, up = res
    sig = jax.nn.sigmoid(gate)
    d_out = d_out.astype(gate.dtype)
    # d silu(g) / dg = sig * (1 + g * (1 - sig)).
    return d_out * up * sig * (1 + gate * (1 - sig)), d_out * gate * sig


swiglu.defvjp(_swiglu_fwd, _swiglu_bwd)


class Block(nnx.Module):
    """One decoder layer; constructed once with stacked params for all layers."""

    def __init__(self, cfg: LLMConfig, *, stack, dtype, param_dtype, rngs, impl):
        self.input_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, stack=stack, param_dtype=param_dtype)
        self.attn = Attention(cfg, stack=stack, dtype=dtype, param_dtype=param_dtype, rngs=rngs, impl=impl)
        self.post_attn_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, stack=stack,
                                      param_dtype=param_dtype)
        self.mlp = MLP(cfg, stack=stack, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

    def __call__(self, x, rope, mask, cache_kv=None, cache_index=None, causal_lengths=None, rng=None):
        r = _split(rng, 2)
        h, new_kv = self.attn(self.input_norm(x), rope, mask, cache_kv, cache_index, causal_lengths, r[0])
        x = x + h
        return x + self.mlp(self.post_attn_norm(x), r[1]), new_kv


def _split(rng, n):
    return [None] * n if rng is None else list(jax.random.split(rng, n))


_REMAT = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}


class DecoderLM(nnx.Module):
    """Llama-family decoder. ``__call__`` returns (float32 logits [B, T, V], updated cache)."""

    def __init__(self, cfg: LLMConfig, *, dtype=jnp.float32, param_dtype=jnp.float32,
                 rngs: nnx.Rngs, remat_policy: str = "none", attention_impl: str = "auto",
                 unroll_layers: bool | None = None):
        if remat_policy not in _REMAT:
            raise ValueError(f"remat_policy={remat_policy!r}; expected one of {sorted(_REMAT)}.")
        # Configs choose per hardware preset (config.hardware.layer_loop -> config_lib.unroll_layers);
        # a string here ("scan" is truthy) would silently unroll.
        if unroll_layers not in (None, True, False):
            raise ValueError(f"unroll_layers={unroll_layers!r}; expected None (backend default), True or False "
                             "(config.hardware.layer_loop via config_lib.unroll_layers).")
        if cfg.num_heads % cfg.num_kv_heads:
            raise ValueError(f"num_heads={cfg.num_heads} is not a multiple of num_kv_heads={cfg.num_kv_heads}.")
        self.cfg = cfg
        self.dtype = dtype
        self.remat_policy = remat_policy
        # The stacked layers run as one lax.scan (compile time flat in depth) or unrolled (None:
        # unrolled on CPU). A scan writes every layer's saved activations into zero-filled
        # [L, ...] buffers and slices each layer's weights out with a copy: on XLA:CPU ~10% of a
        # train step's op time (bench/train_vs_torch.py --profile). Unrolled, XLA folds the
        # stacking and slicing of activations away; the parameters keep their stacked layout.
        self.unroll_layers = unroll_layers
        inv, self.rope_attention_scaling = rope_lib.inv_frequencies(
            cfg.head_dim, cfg.rope_theta, cfg.rope_dict, cfg.max_position_embeddings)
        self.rope_inv_freq = tuple(float(f) for f in inv)  # static metadata, not a param
        self.embed = nnx.Embed(cfg.vocab_size, cfg.hidden_size, dtype=dtype, param_dtype=param_dtype,
                               embedding_init=nnx.with_partitioning(_init(cfg), ("vocab", "embed")),
                               rngs=rngs)
        self.layers = Block(cfg, stack=cfg.num_layers, dtype=dtype, param_dtype=param_dtype, rngs=rngs,
                            impl=attention_impl)
        self.final_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, param_dtype=param_dtype)
        self.lm_head = (None if cfg.tie_word_embeddings else
                        Linear(cfg.hidden_size, cfg.vocab_size, ("embed", "vocab"), cfg=cfg, dtype=dtype,
                               param_dtype=param_dtype, rngs=rngs))

    @property
    def scanned(self) -> bool:
        """True while the layers are one stacked Block run by ``lax.scan`` (see unstack_layers)."""
        return isinstance(self.layers, Block)

    @property
    def _attn_impl(self) -> str:
        return (self.layers if self.scanned else self.layers[0]).attn.impl

    def init_cache(self, batch: int, max_len: int, dtype=None) -> Cache:
        """Empty KV cache: slot mask [B, S], next slot ``index``, ``pos`` [B], and k/v.

        Per layer, keys are [B, KV, D, S] and values [B, KV, S, D] (see Attention); k/v stack them
        on a leading layer axis for the scanned layout and are tuples of L arrays for the unstacked
        one (each layer then updates its own buffer in place).
        """
        c = self.cfg
        dtype = dtype or self.dtype
        k_shape = (batch, c.num_kv_heads, c.head_dim, max_len)
        v_shape = (batch, c.num_kv_heads, max_len, c.head_dim)
        if self.scanned:
            k = jnp.zeros((c.num_layers, *k_shape), dtype)
            v = jnp.zeros((c.num_layers, *v_shape), dtype)
        else:
            k = tuple(jnp.zeros(k_shape, dtype) for _ in range(c.num_layers))
            v = tuple(jnp.zeros(v_shape, dtype) for _ in range(c.num_layers))
        return {"k": k, "v": v, "mask": jnp.zeros((batch, max_len), jnp.int32),
                "index": jnp.zeros((), jnp.int32), "pos": jnp.zeros((batch,), jnp.int32)}

    def _run_unstacked(self, x, rope, masks, cache, idx, causal_lengths, dropout_rng):
        rngs = _split(dropout_rng, len(self.layers))
        ks, vs = [], []
        for i, layer in enumerate(self.layers):
            kv = (cache["k"][i], cache["v"][i]) if cache is not None else None
            x, new_kv = layer(x, rope, masks[i], kv, idx, causal_lengths, rngs[i])
            if new_kv is not None:
                ks.append(new_kv[0])
                vs.append(new_kv[1])
        return x, ({"k": tuple(ks), "v": tuple(vs)} if cache is not None else None)

    def head_kernel(self) -> jax.Array:
        """The LM head as a [D, V] kernel (the embedding table transposed when tied).

        A LoRA adapter on an untied head is folded in (kernel + scale * A @ B: rank r, cheap next
        to the [T, V] logits); LoRA dropout on the head's input has no kernel form, so it raises.
        """
        if self.lm_head is None:
            return self.embed.embedding[...].astype(self.dtype).T
        head = self.lm_head
        kernel = head.kernel[...].astype(self.dtype)
        if head.lora_a is None:
            return kernel
        if head.lora_dropout > 0:
            raise ValueError(f"the LM head has LoRA with dropout {head.lora_dropout}: the chunked LM-head loss "
                             "needs one [D, V] kernel; drop 'lm_head' from the LoRA targets, set its dropout "
                             "to 0, or set config.hardware.loss_chunk_size=0 (plain loss on logits)")
        delta = jnp.dot(head.lora_a[...].astype(self.dtype), head.lora_b[...].astype(self.dtype))
        return kernel + delta * head.lora_scale

    def logits(self, h):
        if self.lm_head is None:
            emb = self.embed.embedding[...].astype(self.dtype)
            n = h.size // h.shape[-1]
            if n <= _FEW_TOKENS:
                # Decoding: E @ h^T reads the [V, D] table in its stored layout; h @ E^T makes
                # XLA:CPU copy the whole transposed table (V x D) on every step.
                out = jnp.dot(emb, h.reshape(n, -1).T, preferred_element_type=jnp.float32)
                return out.T.reshape(*h.shape[:-1], -1)
            return jnp.dot(h, emb.T, preferred_element_type=jnp.float32)
        return self.lm_head(h).astype(jnp.float32)

    def __call__(self, input_ids=None, *, inputs_embeds=None, attention_mask=None, positions=None,
                 cache: Cache | None = None, last_only: bool = False, dropout_rng: jax.Array | None = None,
                 hidden_only: bool = False):
        """Runs the decoder on T new tokens (ids or embeddings [B, T, D]).

        attention_mask [B, T]: 1 = real token. Without a cache, queries attend causally to real
        tokens; with a cache the T tokens are written at slot ``cache['index']`` and attend to all
        earlier real slots, so left-padded prompts and batched decoding share one code path. Layers
        with a sliding window (``cfg.layer_windows``) see only the slots of their window, with or
        without a cache.
        positions default to the running count of real tokens (so left padding does not shift RoPE).
        ``last_only`` returns logits for the last position only ([B, 1, V]; for generation).
        ``dropout_rng`` turns on LoRA dropout (training only).
        ``hidden_only`` returns the final normed hidden states [B, T, D] instead of the logits (for
        train/losses.chunked_answer_cross_entropy with ``head_kernel()``: no [B, T, V] logits).
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids [B, T] or inputs_embeds [B, T, D].")
        x = self.embed(input_ids) if inputs_embeds is None else inputs_embeds.astype(self.dtype)
        b, t = x.shape[:2]
        if attention_mask is None:
            attention_mask = jnp.ones((b, t), jnp.int32)
        attention_mask = attention_mask.astype(jnp.int32)
        start = cache["pos"][:, None] if cache is not None else 0
        # Without a cache the default positions lie in [0, T): the RoPE tables come from a T-row table.
        bounded = positions is None and cache is None
        if positions is None:
            positions = jnp.maximum(start + jnp.cumsum(attention_mask, axis=1) - 1, 0)
        rope = rope_lib.rope_tables(positions, self.rope_inv_freq, self.rope_attention_scaling,
                                    num_positions=t if bounded else None)  # each [B, T, head_dim]
        q_idx = jnp.arange(t)
        causal_lengths = None
        windows = self.cfg.layer_windows
        if cache is None:
            q_slot, k_slot = q_idx, q_idx
            mask = (q_idx[None, :, None] >= q_idx[None, None, :]) & (attention_mask[:, None, :] > 0)
            idx = None
            # Fused kernels take causal (+ one static window) and per-row lengths; only valid for
            # right padding. Layers with different windows need per-layer masks: XLA path.
            if attn_lib.resolve_impl(self._attn_impl) != "xla":
                if len(set(windows)) == 1:
                    causal_lengths = attention_mask.sum(-1)
                else:
                    attn_lib.warn_once("layers with different sliding windows run the XLA attention path "
                                       f"(the fused kernels take one static window); windows {windows}.")
        else:
            idx = cache["index"]
            q_slot, k_slot = idx + q_idx, jnp.arange(cache["mask"].shape[1])
            slot_mask = jax.lax.dynamic_update_slice_in_dim(cache["mask"], attention_mask, idx, axis=1)
            mask = (k_slot[None, None, :] <= q_slot[None, :, None]) & (slot_mask[:, None, :] > 0)
        # Padded queries see nothing; give them their own slot so softmax stays finite.
        pad_rows = (attention_mask[:, :, None] == 0) & (k_slot[None, None, :] == 0)
        # Sliding windows count slots, as transformers counts cache positions; padding only sits
        # before (left) or after (right) a row's tokens, so slot and token distances agree.
        distance = q_slot[:, None] - k_slot[None, :]  # [T, S]

        def layer_mask(window: int):  # [B, T, S] bool
            return ((mask & (distance < window)[None]) if window else mask) | pad_rows

        masks = {w: layer_mask(w) for w in sorted(set(windows))}

        if not isinstance(self.layers, Block):  # unstacked (see unstack_layers): plain loop
            x, cache_kv = self._run_unstacked(x, rope, [masks[w] for w in windows], cache, idx,
                                              causal_lengths, dropout_rng)
            if last_only:
                x = x[:, -1:]
            logits = self.final_norm(x) if hidden_only else self.logits(self.final_norm(x))
            if cache is not None:
                cache = {**cache_kv, "mask": slot_mask, "index": idx + t,
                         "pos": cache["pos"] + attention_mask.sum(-1)}
            return logits, cache

        # Only params carry the stacked layer axis; anything else is broadcast to every layer.
        graphdef, layer_state, rest = nnx.split(self.layers, nnx.Param, ...)

        # One mask for every layer, or (Qwen2 max_window_layers) a per-layer choice of two.
        if len(masks) == 1:
            mask, windowed = next(iter(masks.values())), None
        else:
            (_, mask), (_, window_mask) = sorted(masks.items())
            windowed = jnp.asarray([w > 0 for w in windows])

        def body(carry, xs):
            h = constrain(carry, ("act_batch", "act_len", "act_embed"))  # no-op without a mesh
            state, kv, rng, use_window = xs
            layer = nnx.merge(graphdef, state, rest)
            m = mask if use_window is None else jnp.where(use_window, window_mask, mask)
            h, new_kv = layer(h, rope, m, kv, idx, causal_lengths, rng)
            return h, new_kv

        policy = _REMAT[self.remat_policy]
        if self.remat_policy != "none":
            body = jax.checkpoint(body, policy=policy, prevent_cse=False)
        kv_in = (cache["k"], cache["v"]) if cache is not None else None
        rngs = None if dropout_rng is None else jax.random.split(dropout_rng, self.cfg.num_layers)
        unroll = jax.default_backend() == "cpu" if self.unroll_layers is None else self.unroll_layers
        x, kv_out = jax.lax.scan(body, x, (layer_state, kv_in, rngs, windowed), unroll=bool(unroll))
        if last_only:
            x = x[:, -1:]
        logits = self.final_norm(x) if hidden_only else self.logits(self.final_norm(x))
        if cache is not None:
            cache = {"k": kv_out[0], "v": kv_out[1], "mask": slot_mask, "index": idx + t,
                     "pos": cache["pos"] + attention_mask.sum(-1)}
        return logits, cache


def unstack_layers(model: DecoderLM) -> DecoderLM:
    """Turns the scanned layer stack into one Block per layer, in place (an inference layout).

    ``lax.scan`` reads each layer's weights with a dynamic slice, which XLA:CPU materialises as a
    copy before every matmul: decoding then moves every weight three times per token. With one
    buffer per layer the matmuls read the weights directly (see bench/generate.py). Parameters are
    moved one at a time, so peak memory stays ~one model. Compile time grows with depth, so
    training keeps the scanned layout; ``stack_layers`` undoes this.
    """
    if not model.scanned:
        return model
    n = model.cfg.num_layers
    graphdef, params, rest = nnx.split(model.layers, nnx.Param, ...)
    flat = dict(nnx.to_flat_state(params))
    per_layer: list[dict] = [{} for _ in range(n)]
    with nnx.use_eager_sharding(False):
        for path in list(flat):
            var = flat.pop(path)  # drop our reference so the stacked buffer can be freed
            meta = dict(var.get_metadata())
            axes = meta.get("out_sharding")
            if axes:
                meta["out_sharding"] = tuple(axes[1:])
            value = var.get_value()
            for i in range(n):
                per_layer[i][path] = type(var)(value[i], **meta)
            del var, value
    blocks = [nnx.merge(graphdef, nnx.from_flat_state(per_layer[i]), rest) for i in range(n)]
    model.layers = nnx.List(blocks)
    return model


def stack_layers(model: DecoderLM) -> DecoderLM:
    """Inverse of ``unstack_layers`` (e.g. before training or saving in the scanned layout)."""
    if model.scanned:
        return model
    graphdef, _, rest = nnx.split(model.layers[0], nnx.Param, ...)
    flats = [dict(nnx.to_flat_state(nnx.state(b, nnx.Param))) for b in model.layers]
    stacked = {}
    with nnx.use_eager_sharding(False):
        for path, var in flats[0].items():
            meta = dict(var.get_metadata())
            if meta.get("out_sharding"):
                meta["out_sharding"] = ("layers", *meta["out_sharding"])
            stacked[path] = type(var)(jnp.stack([f[path].get_value() for f in flats]), **meta)
    model.layers = nnx.merge(graphdef, nnx.from_flat_state(stacked), rest)
    return model
