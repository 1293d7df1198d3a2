"""Matmul bounds of a train step on this machine: FLOP counts, the f32 GEMM peak, and the floor.

The roofline prices every FLOP at one 2048^3 GEMM's rate (``matmul_peak``); the floor
(``matmul_floor``) times each of the step's own dense matmuls alone at its shape and operand layout,
in JAX and in torch. Used by bench/train_vs_torch.py.
"""
from __future__ import annotations

import time

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
    and dlogits^T @ h. The attention's batched products are not in the list (matmul_floor).
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


def matmul_floor(c: dict, layers: int, batch: int, seq: int, peak: float, reps: int = 5, passes: int = 3
                 ) -> tuple[float, float]:
    """Seconds per LLM train step in its matmuls alone, (jax, torch): each dense matmul of
    ``llm_step_gemms`` timed by itself at its shape and operand layout (best of ``reps`` calls in
    each of ``passes`` passes over the list: a slow spell of this shared VM lasts seconds), plus the
    attention products' causal-half FLOPs at ``peak``. Prints each shape's rate in both libraries.

    No implementation's step on this machine can take less than its library's floor (softmax, norms,
    the optimizer and every other op come on top), so this bounds the ratio ours can reach.
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
    best = np.full((len(gemms), 2), np.inf)
    for _ in range(passes):
        for i, fns in enumerate(calls):
            best[i] = np.minimum(best[i], [best_call(fn, reps) for fn in fns])
    counts = np.array([g[-1] for g in gemms], np.float64)
    for (m, k, n, layout, count), (time_j, time_t) in zip(gemms, best):
        print(f"     matmul [{m} x {k}] @ [{k} x {n}] ({layout}, {count} per step): jax "
              f"{2 * m * k * n / time_j / 1e9:.0f}, torch {2 * m * k * n / time_t / 1e9:.0f} GFLOP/s")
    # Scores and probabilities x values, forward and backward (3x), over the causal half of T x T.
    attn = 3 * 2 * 2 * batch * c["num_heads"] * c["head_dim"] * seq * seq / 2 * layers / peak
    floor_j, floor_t = counts @ best + attn
    return float(floor_j), float(floor_t)
