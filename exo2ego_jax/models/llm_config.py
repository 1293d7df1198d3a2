"""LLMConfig: the decoder's sizes and options, and what it reads from a Hugging Face config.json.

Every HF field that changes the forward pass is implemented or refused by name (the three field
sets below); tests/test_llm_fidelity.py walks transformers' config classes against them.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from typing import Any

from exo2ego_jax.models import rope as rope_lib

# ---------------------------------------------------------------------------------------------
# Which HF config fields (LlamaConfig, MistralConfig, Qwen2Config and the PreTrainedConfig base)
# LLMConfig.from_hf honours. tests/test_llm_fidelity.py walks the fields of each class and fails on
# a field that is in none of the three sets, so a new transformers field is triaged, not ignored.

# Read and implemented (they change the forward pass, or generation's stop tokens).
HF_IMPLEMENTED_FIELDS = frozenset({
    "model_type", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
    "num_attention_heads", "num_key_value_heads", "head_dim", "rms_norm_eps", "tie_word_embeddings",
    "rope_parameters", "rope_scaling", "rope_theta",  # transformers 5 / legacy spellings of the rope
    "original_max_position_embeddings",  # top-level override of the rope's pretraining length
    "max_position_embeddings",  # yarn / llama3 default pretraining length
    "attention_bias", "mlp_bias",  # Llama: q/k/v/o and gate/up/down biases
    "sliding_window", "use_sliding_window", "max_window_layers", "layer_types",  # Mistral / Qwen2 windows
    "initializer_range",  # init of parameters a checkpoint does not hold (e.g. added tokens)
    "bos_token_id", "eos_token_id",  # generation stops at eos
})

# Change the forward pass and are not implemented: refused unless they hold the neutral value.
# field -> (neutral value, what to do).
HF_REFUSED_FIELDS: dict[str, tuple[Any, str]] = {
    "hidden_act": ("silu", "the MLP implements SiLU only"),
    "attention_dropout": (0.0, "this decoder has no attention dropout (transformers applies it in training)"),
    "partial_rotary_factor": (1.0, "RoPE here rotates the whole head_dim"),
}

# Do not change the forward pass of these decoders (why, per field).
HF_FIELDS_WITHOUT_FORWARD_EFFECT = frozenset({
    "transformers_version", "architectures", "_name_or_path",  # bookkeeping
    "output_hidden_states", "output_attentions", "return_dict",  # what transformers returns, not its values
    "dtype", "torch_dtype",  # storage dtype of the checkpoint; the compute dtype is the caller's choice
    "chunk_size_feed_forward",  # read by no Llama / Mistral / Qwen2 module in transformers 5
    "is_encoder_decoder",  # False for these decoder-only models (generation bookkeeping)
    "id2label", "label2id", "problem_type",  # sequence-classification heads only
    "use_cache",  # decoding speed only
    "pad_token_id",  # embedding padding_idx only zeroes that row's gradient; generation fills with it
    "pretraining_tp",  # transformers 5 Llama no longer reads it (it only split matmuls into slices)
})

# Keys of a rope dict (transformers' RopeParameters) that change nothing for the types implemented
# in models/rope.py: they belong to types refused by name there (longrope, mrope).
ROPE_KEYS_OF_REFUSED_TYPES = frozenset({"short_factor", "long_factor", "mrope_section"})


def _freeze(value: Any) -> Any:
    """Mappings -> (key, value) tuples sorted by key, lists -> tuples, recursively (hashable)."""
    if isinstance(value, Mapping):
        return tuple(sorted((str(k), _freeze(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    return value


@dataclasses.dataclass(frozen=True)
class LLMConfig:
    """Architecture hyper-parameters (names follow HF's LlamaConfig, shortened).

    Frozen and hashable (it is static data of the model graph, e.g. a ``jax.jit`` static argument in
    generate.py): ``rope_scaling`` given as a dict is stored as sorted (key, value) pairs; read it
    with ``rope_dict``.
    """

    vocab_size: int = 32000
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_layers: int = 32
    num_heads: int = 32
    num_kv_heads: int = 32
    head_dim: int = 128
    rope_theta: float = 10000.0
    rope_scaling: tuple[tuple[str, Any], ...] | None = None  # see models/rope.py for the types
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = False
    attention_bias: bool = False  # q/k/v bias (Qwen2; Llama attention_bias)
    o_proj_bias: bool = False  # o_proj bias (Llama attention_bias; Qwen2 has none)
    mlp_bias: bool = False  # gate/up/down bias (Llama mlp_bias)
    # Sliding-window attention: a query attends to keys fewer than this many tokens back (itself
    # included), as transformers' sliding_window_overlay (kv_idx > q_idx - sliding_window).
    sliding_window: int | None = None
    # Which layers use the window (Qwen2's layer_types); None = every layer (Mistral).
    sliding_window_layers: tuple[bool, ...] | None = None
    max_position_embeddings: int = 4096
    initializer_range: float = 0.02
    bos_token_id: int | None = None
    eos_token_id: int | tuple[int, ...] | None = None
    model_type: str = "llama"

    def __post_init__(self):
        if isinstance(self.rope_scaling, Mapping) or isinstance(self.rope_scaling, list):
            object.__setattr__(self, "rope_scaling", _freeze(dict(self.rope_scaling)) or None)
        if isinstance(self.eos_token_id, list):
            object.__setattr__(self, "eos_token_id", tuple(self.eos_token_id))
        if isinstance(self.sliding_window_layers, list):
            object.__setattr__(self, "sliding_window_layers", tuple(bool(x) for x in self.sliding_window_layers))
        if self.sliding_window is not None and self.sliding_window < 1:
            raise ValueError(f"LLMConfig.sliding_window={self.sliding_window}; expected a positive number of "
                             "tokens or None (full attention).")
        if self.sliding_window_layers is not None and len(self.sliding_window_layers) != self.num_layers:
            raise ValueError(f"LLMConfig.sliding_window_layers has {len(self.sliding_window_layers)} entries for "
                             f"{self.num_layers} layers.")

    @property
    def rope_dict(self) -> dict[str, Any] | None:
        return dict(self.rope_scaling) if self.rope_scaling else None

    @property
    def layer_windows(self) -> tuple[int, ...]:
        """Per layer, the sliding window in tokens; 0 = full causal attention."""
        if not self.sliding_window:
            return (0,) * self.num_layers
        use = self.sliding_window_layers or (True,) * self.num_layers
        return tuple(self.sliding_window if u else 0 for u in use)

    @classmethod
    def from_hf(cls, src: str | os.PathLike | Mapping[str, Any]) -> "LLMConfig":
        """From a HF config.json (dir, file, dict or transformers config).

        Options that change the forward pass and are not implemented are refused by name (see
        HF_REFUSED_FIELDS and models/rope.py). A ``.gguf`` file's config is read in weights/
        (``weights.llm_weights.llm_config``), which owns the GGUF reader.
        """
        where = "config"
        if isinstance(src, (str, os.PathLike)):
            path = os.fspath(src)
            if path.endswith(".gguf"):
                raise ValueError(f"{path} is a GGUF file: read its config with "
                                 "exo2ego_jax.weights.llm_weights.llm_config(path).")
            if os.path.isdir(path):
                path = os.path.join(path, "config.json")
            with open(path) as fh:
                d = json.load(fh)
            where = path
        elif hasattr(src, "to_dict"):
            d = src.to_dict()
        else:
            d = dict(src)
        mt = d.get("model_type", "llama")
        if mt not in ("llama", "mistral", "qwen2"):
            raise ValueError(f"{where}: model_type={mt!r} is not a supported decoder (llama, mistral, qwen2).")
        for field, (neutral, why) in HF_REFUSED_FIELDS.items():
            value = d.get(field)
            if value is not None and value != neutral:
                raise ValueError(f"{where}: {field}={value!r} is not supported ({why}); only {neutral!r} is. "
                                 "Loading it anyway would give different outputs than the checkpoint's.")
        theta, scaling = _hf_rope(d, where)
        heads = d["num_attention_heads"]
        window, window_layers = _hf_windows(d, mt, where)
        llama_bias = mt == "llama" and bool(d.get("attention_bias", False))
        return cls(
            vocab_size=d["vocab_size"],
            hidden_size=d["hidden_size"],
            intermediate_size=d["intermediate_size"],
            num_layers=d["num_hidden_layers"],
            num_heads=heads,
            num_kv_heads=d.get("num_key_value_heads") or heads,
            head_dim=d.get("head_dim") or d["hidden_size"] // heads,
            rope_theta=theta,
            rope_scaling=scaling,
            rms_norm_eps=d.get("rms_norm_eps", 1e-6),
            tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
            # transformers hard-codes Qwen2's q/k/v bias and Mistral's none; Llama reads its flags.
            attention_bias=mt == "qwen2" or llama_bias,
            o_proj_bias=llama_bias,
            mlp_bias=mt == "llama" and bool(d.get("mlp_bias", False)),
            sliding_window=window,
            sliding_window_layers=window_layers,
            max_position_embeddings=d.get("max_position_embeddings", 4096),
            initializer_range=d.get("initializer_range", 0.02),
            bos_token_id=d.get("bos_token_id"),
            eos_token_id=d.get("eos_token_id"),
            model_type=mt,
        )


def _hf_rope(d: Mapping[str, Any], where: str) -> tuple[float, dict[str, Any] | None]:
    """(theta, rope dict or None) with transformers 5's precedence: rope_scaling, rope_parameters,
    then top-level rope_theta / original_max_position_embeddings."""
    params = dict(d.get("rope_scaling") or d.get("rope_parameters") or {})
    nested = sorted(k for k, v in params.items() if isinstance(v, Mapping))
    if nested:
        raise ValueError(f"{where}: rope parameters per layer type ({nested}) are not supported.")
    theta = float(params.pop("rope_theta", None) or d.get("rope_theta") or 10000.0)
    kind = rope_lib.rope_type(params)
    if kind not in rope_lib.SUPPORTED_ROPE_TYPES or kind == "rope_freqs":
        raise ValueError(f"{where}: rope type {kind!r} is not supported (supported: default, linear, llama3, "
                         "yarn); its positions would differ from the checkpoint's.")
    prf = params.get("partial_rotary_factor")
    if prf is not None and prf != 1.0:
        raise ValueError(f"{where}: rope partial_rotary_factor={prf!r} is not supported "
                         f"({HF_REFUSED_FIELDS['partial_rotary_factor'][1]}).")
    if kind == "default":
        return theta, None
    if kind in ("llama3", "yarn") and d.get("original_max_position_embeddings"):
        params["original_max_position_embeddings"] = d["original_max_position_embeddings"]
    params["rope_type"] = kind
    params.pop("type", None)
    return theta, params


def _hf_windows(d: Mapping[str, Any], mt: str, where: str) -> tuple[int | None, tuple[bool, ...] | None]:
    """(window, per-layer use) as transformers' Mistral (every layer) and Qwen2 (layer_types) use them."""
    n = d["num_hidden_layers"]
    if mt == "mistral":
        return d.get("sliding_window") or None, None
    if mt != "qwen2":
        return None, None  # LlamaConfig has no window; transformers' Llama ignores one
    window = d.get("sliding_window") if d.get("use_sliding_window", False) else None
    if not window:
        return None, None
    types = d.get("layer_types") or ["sliding_attention" if i >= d.get("max_window_layers", 28)
                                     else "full_attention" for i in range(n)]
    unknown = sorted(set(types) - {"sliding_attention", "full_attention"})
    if unknown or len(types) != n:
        raise ValueError(f"{where}: layer_types {unknown or types} are not supported (expected {n} entries of "
                         "'full_attention' / 'sliding_attention').")
    use = tuple(t == "sliding_attention" for t in types)
    return (int(window), use) if any(use) else (None, None)
