"""Matmul bounds of a train step on this machine: FLOP counts, the f32 GEMM peak, and the floor.

The roofline prices every FLOP at one 2048^3 GEMM's rate (``matmul_peak``); the matmul floor
(``dense_matmul_times``) times each of the step's own dense matmuls alone at its shape and operand
layout, in JAX and in torch, and the kernel floor (``kernel_floor``) adds the attention and the
optimizer update as each library runs them. Used by bench/train_vs_torch.py.
"""
from __future__ import annotations

import time
import types

import numpy as np


def llm_forward_flops(c: dict, layers: int, tokens: int, seq: int) -> float:
    """Matmul FLOPs of one decoder forward: projections, attention (full T x T square), LM head."""
    d, hd = c["hidden_size"], c["head_dim"]
    proj = 2 * d * hd * (2 * c["num_heads"] + 2 * c["num_kv_heads"]) + 3 * 2 * d * c["intermediate_size"]
    attn = 2 * 2 * seq * c["num_heads"] * hd
    return tokens * (layers * (proj + attn) + 2 * d * c["vocab_size"])


def llm_step_gemms(c: dict, layers: int, tokens: int) -> list[tuple[int, int, int, str, int]]:
    """(m, k, n, layout, count) of every dense matmul of one LLM train step, ``count`` times.

    Each projection [in, out] runs three: forward x[T, in] @ W ("nn"), input gradient dY @ W^T
    ("nt") and weight gradient x^T @ dY ("tn"); the tied LM head (E [V, D]) runs h @ E^T, dlogits @ E
    and dlogits^T @ h. The attention's batched products are not in the list (``causal_attention_flops``).
    """
    d, f, v = c["hidden_size"], c["intermediate_size"], c["vocab_size"]
    q, kv = c["num_heads"] * c["head_dim"], c["num_kv_heads"] * c["head_dim"]
    shapes: dict[tuple[int, int, int, str], int] = {}
    for d_in, d_out in ((d, q), (d, kv), (d, kv), (q, d), (d, f), (d, f), (f, d)):
        for gemm in ((tokens, d_in, d_out, "nn"), (tokens, d_out, d_in, "nt"), (d_in, tokens, d_out, "tn")):
            shapes[gemm] = shapes.get(gemm, 0) + layers
    for gemm in ((tokens, d, v, "nt"), (tokens, v, d, "nn"), (v, tokens, d, "tn")):
        shapes[gemm] = shapes.get(gemm, 0) + 1
    return [(*gemm, count) for gemm, count in shapes.items()]


def best_call(fn, reps: int) -> float:
    """Best wall time of ``reps`` back-to-back calls after one warm-up call (compile, first touch).

    One library's calls run back to back: right after a torch call its OpenMP workers still spin
    for a while, and a JAX call started then shares the cores with them.
    """
    fn()
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def matmul_peak(n: int = 2048, reps: int = 10) -> tuple[float, float]:
    """Best f32 GEMM FLOP/s of an n^3 matmul in JAX and in torch (each library's calls back to back,
    ``best_call``); the max is the peak."""
    import jax
    import jax.numpy as jnp
    import torch

    a = np.random.default_rng(0).standard_normal((n, n), np.float32)
    f = jax.jit(lambda x, y: x @ y)
    xj, xt = jnp.asarray(a), torch.from_numpy(a)
    best_j = best_call(lambda: f(xj, xj).block_until_ready(), reps)
    best_t = best_call(lambda: torch.mm(xt, xt), reps)
    return 2 * n ** 3 / best_j, 2 * n ** 3 / best_t


def causal_attention_flops(c: dict, layers: int, batch: int, seq: int) -> float:
    """Scores and probabilities x values, forward and backward (3x), over the causal half of T x T."""
    return 3 * 2 * 2 * batch * c["num_heads"] * c["head_dim"] * seq * seq / 2 * layers


def dense_matmul_times(c: dict, layers: int, batch: int, seq: int, reps: int = 5, passes: int = 3
                       ) -> tuple[float, float]:
    """Seconds per LLM train step in its dense matmuls alone, (jax, torch): each matmul of
    ``llm_step_gemms`` timed by itself at its shape and operand layout (best of ``reps`` calls in
    each of ``passes`` passes over the list: a slow spell of this shared VM lasts seconds). Prints
    each shape's rate in both libraries. With the attention's FLOPs at the peak this is the matmul
    floor: no step of that library on this machine can take less (``kernel_floor`` adds the attention
    and the optimizer as run).
    """
    import jax
    import jax.numpy as jnp
    import torch

    dims = {"nn": ((1,), (0,)), "nt": ((1,), (1,)), "tn": ((0,), (0,))}
    rng = np.random.default_rng(0)
    gemms = llm_step_gemms(c, layers, batch * seq)
    calls = []
    for m, k, n, layout, _ in gemms:
        a = rng.standard_normal((k, m) if layout == "tn" else (m, k), np.float32)
        b = rng.standard_normal((n, k) if layout == "nt" else (k, n), np.float32)
        f = jax.jit(lambda x, y, dn=dims[layout]: jax.lax.dot_general(x, y, (dn, ((), ()))))
        aj, bj = jnp.asarray(a), jnp.asarray(b)
        at, bt = torch.from_numpy(a), torch.from_numpy(b)
        at, bt = (at.T, bt) if layout == "tn" else (at, bt.T) if layout == "nt" else (at, bt)
        calls.append((lambda f=f, aj=aj, bj=bj: f(aj, bj).block_until_ready(),
                      lambda at=at, bt=bt: torch.mm(at, bt)))
    best = _best_of_passes(calls, reps, passes)
    counts = np.array([g[-1] for g in gemms], np.float64)
    for (m, k, n, layout, count), (time_j, time_t) in zip(gemms, best):
        print(f"     matmul [{m} x {k}] @ [{k} x {n}] ({layout}, {count} per step): jax "
              f"{2 * m * k * n / time_j / 1e9:.0f}, torch {2 * m * k * n / time_t / 1e9:.0f} GFLOP/s")
    dense_j, dense_t = counts @ best
    return float(dense_j), float(dense_t)


def _best_of_passes(calls, reps: int, passes: int) -> np.ndarray:
    """[len(calls), 2] best seconds of each (jax, torch) pair of calls: ``passes`` passes over the
    list, ``best_call(fn, reps)`` per call and pass."""
    best = np.full((len(calls), 2), np.inf)
    for _ in range(passes):
        for i, fns in enumerate(calls):
            best[i] = np.minimum(best[i], [best_call(fn, reps) for fn in fns])
    return best


def llm_param_shapes(c: dict, layers: int) -> list[tuple[int, ...]]:
    """Shapes of every trained parameter of a Llama-style decoder with a tied LM head."""
    d, f = c["hidden_size"], c["intermediate_size"]
    q, kv = c["num_heads"] * c["head_dim"], c["num_kv_heads"] * c["head_dim"]
    layer = [(d, q), (d, kv), (d, kv), (q, d), (d, f), (d, f), (f, d), (d,), (d,)]
    return [(c["vocab_size"], d)] + layer * layers + [(d,)]


def kernel_floor(c: dict, layers: int, batch: int, seq: int, dense: tuple[float, float], adamw: dict,
                 reps: int = 5, passes: int = 3) -> dict:
    """The step's dense matmuls (``dense``: ``dense_matmul_times``), its attention and its optimizer
    update, each timed alone in each library as that library's step runs it: {part: (jax, torch)}
    seconds per step, with "step" their sum. ``adamw``: lr, betas, eps, weight_decay, clip.

    The step's other work (norms, RoPE, SwiGLU, residual adds, the loss, the embedding lookup's
    gradient) comes on top, so no step of that library on this machine takes less than "step".
    """
    calls = [attention_calls(c, batch, seq), optimizer_calls(llm_param_shapes(c, layers), **adamw)[:2]]
    best = _best_of_passes(calls, reps, passes)
    parts = {"dense matmuls": dense, "attention": tuple(float(t) * layers for t in best[0]),
             "optimizer": tuple(float(t) for t in best[1])}
    parts["step"] = tuple(sum(part[i] for part in parts.values()) for i in range(2))
    return parts


def attention_calls(c: dict, batch: int, seq: int):
    """(jax, torch) calls running forward and backward of one layer's causal grouped-query attention
    on [B, T, H, D] activations: ours through models/attention.attention (the decoder's call and its
    causal XLA path, with the q/k/v layout transposes that the step partly fuses into RoPE), torch's
    scaled_dot_product_attention (is_causal, grouped keys: transformers' sdpa path without a padding
    mask) on its [B, H, T, D] layout. Each returns the q, k, v gradients in its layout."""
    import jax
    import jax.numpy as jnp
    import torch
    import torch.nn.functional as F

    from exo2ego_jax.models import attention as attention_lib

    rng = np.random.default_rng(0)
    h, kv, hd = c["num_heads"], c["num_kv_heads"], c["head_dim"]
    q, k, v, d_out = (rng.standard_normal((batch, seq, heads, hd), np.float32) for heads in (h, kv, kv, h))
    mask = np.broadcast_to(np.tril(np.ones((seq, seq), bool)), (batch, seq, seq))

    def attention_grads(q, k, v, mask, d_out):  # [B,T,H,D], [B,T,K,D] x2, [B,T,T], [B,T,H,D]
        _, vjp = jax.vjp(lambda q, k, v: attention_lib.attention(q, k, v, mask, hd ** -0.5, "xla", causal=True),
                         q, k, v)
        return vjp(d_out)
    attention_jax = jax.jit(attention_grads)
    jax_args = [jnp.asarray(x) for x in (q, k, v, mask, d_out)]
    qt, kt, vt = (torch.from_numpy(x).transpose(1, 2).contiguous().requires_grad_() for x in (q, k, v))
    d_out_t = torch.from_numpy(d_out).transpose(1, 2).contiguous()

    def attention_torch():
        out = F.scaled_dot_product_attention(qt, kt, vt, is_causal=True, enable_gqa=True)
        out.backward(d_out_t)
        grads = qt.grad, kt.grad, vt.grad
        qt.grad = kt.grad = vt.grad = None
        return grads
    return lambda: jax.block_until_ready(attention_jax(*jax_args)), attention_torch


def constant_lr_train_config(groups, betas: tuple[float, float], eps: float, weight_decay: float,
                             clip: float) -> types.SimpleNamespace:
    """The train config fields train/optim.make_optimizer reads: AdamW per (regex, lr) group at a
    constant learning rate, no warmup, global-norm clipping at ``clip``."""
    return types.SimpleNamespace(groups=groups, warmup_steps=0, warmup_ratio=0.0, end_lr_ratio=1.0,
                                 schedule="constant", b1=betas[0], b2=betas[1], eps=eps,
                                 weight_decay=weight_decay, clip=clip)


def optimizer_calls(shapes, lr: float, betas: tuple[float, float], eps: float, weight_decay: float, clip: float):
    """(jax, torch, read) for one AdamW update with global-norm clipping of parameters of ``shapes``
    (the same random gradients every call); ``read()`` gives both libraries' parameters as numpy.

    Ours: train/optim's optimizer as the train step applies it (``apply_guarded``: one elementwise
    pass per output, the NaN guard's selects included; the gradient norm given: the step's norm
    reductions fuse into the passes that produce the gradients, 0.4 ms per 30-layer step in its
    profile, where a pass of their own here would take ~45 ms); torch: ``clip_grad_norm_`` and
    ``torch.optim.AdamW`` as the bench's torch step runs them.
    """
    import jax
    import jax.numpy as jnp
    import torch

    from exo2ego_jax.train import optim

    rng = np.random.default_rng(0)
    params = [rng.standard_normal(s, np.float32) * 0.02 for s in shapes]
    grads = [rng.standard_normal(s, np.float32) * 1e-3 for s in shapes]
    grad_norm = np.float32(np.sqrt(sum(np.sum(np.square(g, dtype=np.float64)) for g in grads)))
    names = [f"p{i}" for i in range(len(shapes))]
    tc = constant_lr_train_config(((".*", lr),), betas, eps, weight_decay, clip)
    tx, _ = optim.make_optimizer(tc, dict.fromkeys(names, 0), 1000)

    def update(params, opt_state, grads, grad_norm):
        new_params, opt_state, _ = tx.apply_guarded(grads, opt_state, params, grad_norm, jnp.bool_(True))
        return new_params, opt_state
    update_jax = jax.jit(update, donate_argnums=(0, 1))
    params_jax = {n: jnp.asarray(p) for n, p in zip(names, params)}
    state = [params_jax, tx.init(params_jax)]
    grads_jax = {n: jnp.asarray(g) for n, g in zip(names, grads)}

    def optimizer_jax():
        state[:] = update_jax(*state, grads_jax, grad_norm)
        jax.block_until_ready(state[0])

    trainable = [torch.nn.Parameter(torch.from_numpy(p.copy())) for p in params]
    for p, g in zip(trainable, grads):
        p.grad = torch.from_numpy(g)
    opt = torch.optim.AdamW(trainable, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)

    def optimizer_torch():
        torch.nn.utils.clip_grad_norm_(trainable, clip)
        opt.step()

    def read():
        return [np.asarray(state[0][n]) for n in names], [p.detach().numpy().copy() for p in trainable]
    return optimizer_jax, optimizer_torch, read
