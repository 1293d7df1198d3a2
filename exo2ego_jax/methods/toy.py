"""Toy method: a small decoder-only transformer LM on generated arithmetic-progression sequences.

Each sequence is x_0, x_0 + d, x_0 + 2d, ... (mod vocab) with random start x_0 and step d in
[1, max_step]: after two tokens every next token is predictable, so the loss falls from
log(vocab) towards zero. It exercises the whole trainer (sharding, groups, accumulation,
checkpointing of the Grain iterator) in seconds on a CPU.
"""
from __future__ import annotations

import dataclasses

import grain
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from exo2ego_jax.methods import common
from exo2ego_jax.train import losses
from exo2ego_jax.train.step import remat_policy

part = nnx.with_partitioning


class Block(nnx.Module):
    def __init__(self, d: int, heads: int, mlp: int, *, dtype, rngs: nnx.Rngs):
        init = nnx.initializers.lecun_normal()
        lin = lambda i, o, axes: nnx.Linear(i, o, use_bias=False, dtype=dtype,
                                            kernel_init=part(init, axes), rngs=rngs)
        self.heads = heads
        self.norm1 = nnx.RMSNorm(d, dtype=dtype, scale_init=part(nnx.initializers.ones, ("norm",)),
                                 rngs=rngs)
        self.qkv = lin(d, 3 * d, ("embed", "heads"))
        self.out = lin(d, d, ("heads", "embed"))
        self.norm2 = nnx.RMSNorm(d, dtype=dtype, scale_init=part(nnx.initializers.ones, ("norm",)),
                                 rngs=rngs)
        self.up = lin(d, mlp, ("embed", "mlp"))
        self.down = lin(mlp, d, ("mlp", "embed"))

    def __call__(self, x, mask):
        b, t, d = x.shape
        q, k, v = jnp.split(self.qkv(self.norm1(x)), 3, axis=-1)
        shape = (b, t, self.heads, d // self.heads)
        att = jax.nn.dot_product_attention(q.reshape(shape), k.reshape(shape), v.reshape(shape),
                                           mask=mask, is_causal=True)
        x = x + self.out(att.reshape(b, t, d))
        return x + self.down(jax.nn.gelu(self.up(self.norm2(x))))


class ToyLM(nnx.Module):
    def __init__(self, vocab: int, d: int, layers: int, heads: int, mlp: int, *, dtype,
                 remat: str = "none", rngs: nnx.Rngs):
        self.embed = nnx.Embed(vocab, d, dtype=dtype, rngs=rngs,
                               embedding_init=part(nnx.initializers.normal(0.02), ("vocab", "embed")))
        self.blocks = nnx.List([Block(d, heads, mlp, dtype=dtype, rngs=rngs) for _ in range(layers)])
        self.norm = nnx.RMSNorm(d, dtype=dtype, scale_init=part(nnx.initializers.ones, ("norm",)),
                                rngs=rngs)
        self.head = nnx.Linear(d, vocab, use_bias=False, dtype=dtype, rngs=rngs,
                               kernel_init=part(nnx.initializers.lecun_normal(), ("embed", "vocab")))
        self.remat = remat

    def __call__(self, input_ids, attention_mask, hidden_only: bool = False):
        """Logits [B, T, V] f32, or with ``hidden_only`` the normed hidden states [B, T, D]."""
        x = self.embed(input_ids)
        mask = attention_mask[:, None, None, :].astype(bool)
        use_remat, policy = remat_policy(self.remat)
        for blk in self.blocks:
            if use_remat:
                x = nnx.remat(lambda b, y, m: b(y, m), policy=policy)(blk, x, mask)
            else:
                x = blk(x, mask)
        x = self.norm(x)
        return x if hidden_only else self.head(x).astype(jnp.float32)


@dataclasses.dataclass(frozen=True)
class ProgressionSource:
    """Random-access source: example i is a deterministic function of (seed, i)."""
    vocab: int
    seq_len: int
    max_step: int
    seed: int
    size: int = 2**31 - 1

    def __len__(self):
        return self.size

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng([self.seed, int(i)])
        start = rng.integers(self.vocab)
        step = rng.integers(1, self.max_step + 1)
        ids = ((start + step * np.arange(self.seq_len)) % self.vocab).astype(np.int32)
        return {"input_ids": ids, "labels": ids.copy(),
                "attention_mask": np.ones(self.seq_len, np.int32)}


class Toy:
    """The toy method bound to its config (methods/__init__.py describes the interface)."""

    def __init__(self, config):
        self.config = config

    def build_model(self, rngs: nnx.Rngs) -> ToyLM:
        m, hw = self.config.model, self.config.hardware
        return ToyLM(m.vocab, m.dim, m.layers, m.heads, m.mlp_dim, dtype=jnp.dtype(hw.compute_dtype),
                     remat=hw.remat, rngs=rngs)

    def loss(self, model: ToyLM, batch: dict[str, jax.Array], rng: jax.Array):
        """Next-token cross entropy over positions whose label is not IGNORE_INDEX."""
        del rng  # no dropout
        chunk = self.config.hardware.loss_chunk_size
        out = model(batch["input_ids"], batch["attention_mask"], hidden_only=chunk > 0)
        loss, n, acc = losses.answer_loss_and_accuracy(
            out, batch["labels"], head_kernel=model.head.kernel[...].astype(out.dtype) if chunk else None,
            chunk_size=chunk)
        return loss, {"accuracy": acc, "loss_weight": n}  # token mean: weight accumulation

    def dataset(self, split: str, process_index: int, process_count: int):
        """Per-process batches of the global batch: process p gets rows [p*L, (p+1)*L) of each."""
        config = self.config
        g = config.train.global_batch
        if g % process_count:
            raise ValueError(f"config.train.global_batch={g} is not divisible by {process_count} processes")
        local = g // process_count
        seed = config.seed + (0 if split == "train" else 10_000)
        src = ProgressionSource(config.model.vocab, config.data.seq_len, config.data.max_step, seed)

        def global_index(j):
            return (j // local) * g + process_index * local + j % local

        ds = (grain.MapDataset.range(len(src) // g * local)
              .map(lambda j: src[global_index(j)])
              .batch(local, drop_remainder=True))
        return ds.to_iter_dataset()

    def flops_per_example(self) -> float:
        """Training FLOPs (forward + backward = 3x forward) of one sequence."""
        m, t = self.config.model, self.config.data.seq_len
        per_layer = 2 * (3 * m.dim * m.dim + m.dim * m.dim + 2 * m.dim * m.mlp_dim)
        attn = 2 * 2 * t * m.dim  # scores and weighted sum, per token
        fwd = t * (m.layers * (per_layer + attn) + 2 * m.dim * m.vocab)
        return 3.0 * fwd

    tokens_in_batch = staticmethod(common.tokens_in_batch)
