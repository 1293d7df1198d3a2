"""Causal grouped-query attention with the Pallas TPU splash kernel (training / prefill path).

The kernel (jax.experimental.pallas.ops.tpu.splash_attention) takes one example [H, T, D] with
causal block sparsity, so it skips the masked upper triangle instead of computing and discarding
it, and never materialises the [T, T] scores. Right padding is expressed as segment ids (real
tokens 1, padding 0), which keeps the mask static. A Pallas call cannot be partitioned by GSPMD,
so under a mesh it runs inside ``jax.shard_map``: batch over the data axes, heads over ``tensor``.
On CPU it runs in Pallas interpret mode (tests only; slow).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm
from jax.sharding import PartitionSpec as P

BLOCK = 128  # the kernel's q / kv block (and lane) size: sequence lengths must be multiples


def supported(seq_len: int) -> bool:
    return seq_len % BLOCK == 0


@functools.cache
def _kernel(num_heads: int, seq_len: int, interpret: bool, window: int = 0):
    # A sliding window is a causal local mask: the query and the window - 1 keys before it.
    one = (sm.LocalMask((seq_len, seq_len), window_size=(window - 1, 0), offset=0) if window
           else sm.CausalMask((seq_len, seq_len)))
    mask = sm.MultiHeadMask([one for _ in range(num_heads)])
    blocks = sk.BlockSizes(block_q=BLOCK, block_kv=BLOCK, block_kv_compute=BLOCK, block_q_dkv=BLOCK,
                           block_kv_dkv=BLOCK, block_kv_dkv_compute=BLOCK, block_q_dq=BLOCK,
                           block_kv_dq=BLOCK)
    return sk.make_splash_mha(mask, block_sizes=blocks, head_shards=1, q_seq_shards=1, interpret=interpret)


def _local(q, k, v, lengths, scale: float, interpret: bool, window: int = 0):
    """Per device: q [B,T,H,D], k/v [B,T,K,D], lengths [B] -> [B,T,H,D]."""
    b, t, h, _ = q.shape
    kernel = _kernel(h, t, interpret, window)
    seg = (jnp.arange(t)[None, :] < lengths[:, None]).astype(jnp.int32)  # 1 = real token

    def one(q1, k1, v1, s1):
        ids = sk.SegmentIds(q=s1, kv=s1)
        return kernel(q1.swapaxes(0, 1) * scale, k1.swapaxes(0, 1), v1.swapaxes(0, 1), segment_ids=ids)

    return jax.vmap(one)(q, k, v, seg).swapaxes(1, 2).astype(q.dtype)


def splash_attention(q, k, v, lengths, scale: float, *, interpret: bool | None = None, window: int = 0):
    """Causal GQA over right-padded rows: q [B,T,H,D], k/v [B,T,K,D], lengths [B] -> [B,T,H,D].

    ``window`` > 0: sliding-window attention (a query sees itself and the window - 1 keys before it).

    Padded queries attend to padded keys only (segment 0), so their outputs stay finite; the
    loss masks them anyway.
    """
    b, t, h, d = q.shape
    if not supported(t):
        raise ValueError(f"splash attention needs the sequence length to be a multiple of {BLOCK}; got "
                         f"{t}. Pad data.max_len to a multiple of {BLOCK} or use hardware.attention=xla.")
    if interpret is None:
        interpret = jax.default_backend() != "tpu"
    fn = functools.partial(_local, scale=scale, interpret=interpret, window=window)
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or mesh.size == 1:
        return fn(q, k, v, lengths)
    batch = tuple(a for a in ("data", "fsdp") if a in mesh.axis_names and mesh.shape[a] > 1) or None
    heads = "tensor" if "tensor" in mesh.axis_names and mesh.shape["tensor"] > 1 else None
    nb = 1 if batch is None else math.prod(mesh.shape[a] for a in batch)
    nh = 1 if heads is None else mesh.shape[heads]
    if b % nb or h % nh or k.shape[2] % nh:
        raise ValueError(f"splash attention under mesh {dict(mesh.shape)}: batch {b} must divide by {nb} and "
                         f"query / kv heads {h} / {k.shape[2]} by {nh} (tensor). Use hardware.attention=xla.")
    spec = P(batch, None, heads, None)
    return jax.shard_map(fn, mesh=mesh, in_specs=(spec, spec, spec, P(batch)), out_specs=spec,
                         check_vma=False)(q, k, v, lengths)
