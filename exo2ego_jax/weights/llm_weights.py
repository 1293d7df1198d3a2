"""HF Llama / Mistral / Qwen2 checkpoints (and llama.cpp GGUF files) <-> DecoderLM parameter trees.

This module is where a checkpoint path is dispatched by format (``llm_config``, ``load_llm_params``,
``load_llm``): models/ never imports weights/, and safetensors_io / gguf never import each other's
callers, so the import graph has no cycle.
"""

from __future__ import annotations

import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from exo2ego_jax.models import lora
from exo2ego_jax.models.llm import DecoderLM, LLMConfig, stack_layers, unstack_layers
from exo2ego_jax.weights import gguf
from exo2ego_jax.weights import safetensors_io as sio

log = logging.getLogger(__name__)

# Our path (under layers/) -> HF per-layer name; kernels are transposed ([out, in] -> [in, out]).
_LAYER_LINEARS = {
    "attn/q_proj": "self_attn.q_proj", "attn/k_proj": "self_attn.k_proj",
    "attn/v_proj": "self_attn.v_proj", "attn/o_proj": "self_attn.o_proj",
    "mlp/gate_proj": "mlp.gate_proj", "mlp/up_proj": "mlp.up_proj", "mlp/down_proj": "mlp.down_proj",
}
_LAYER_NORMS = {"input_norm": "input_layernorm", "post_attn_norm": "post_attention_layernorm"}
# Buffers some exporters write that carry no parameters.
IGNORED_HF_KEYS = (r"rotary_emb\.inv_freq$",)


def hf_names(cfg: LLMConfig, prefix: str = "model.") -> dict[str, tuple[str, bool]]:
    """Our path -> (HF key template with {i}, is_linear_kernel) for one decoder."""
    names: dict[str, tuple[str, bool]] = {"embed/embedding": (f"{prefix}embed_tokens.weight", False),
                                          "final_norm/scale": (f"{prefix}norm.weight", False)}
    for ours, hf in _LAYER_LINEARS.items():
        names[f"layers/{ours}/kernel"] = (f"{prefix}layers.{{i}}.{hf}.weight", True)
    biased = [p for p, on in (("q_proj", cfg.attention_bias), ("k_proj", cfg.attention_bias),
                              ("v_proj", cfg.attention_bias), ("o_proj", cfg.o_proj_bias)) if on]
    for p in biased:
        names[f"layers/attn/{p}/bias"] = (f"{prefix}layers.{{i}}.self_attn.{p}.bias", False)
    if cfg.mlp_bias:
        for p in ("gate_proj", "up_proj", "down_proj"):
            names[f"layers/mlp/{p}/bias"] = (f"{prefix}layers.{{i}}.mlp.{p}.bias", False)
    for ours, hf in _LAYER_NORMS.items():
        names[f"layers/{ours}/scale"] = (f"{prefix}layers.{{i}}.{hf}.weight", False)
    if not cfg.tie_word_embeddings:
        names["lm_head/kernel"] = ("lm_head.weight", True)
    return names


def hf_mapping(cfg: LLMConfig, prefix: str = "model.") -> dict[str, sio.Src]:
    """Mapping for ``safetensors_io.load_params`` from a HF ``*ForCausalLM`` checkpoint."""
    out = {}
    for ours, (key, linear) in hf_names(cfg, prefix).items():
        t = sio.Transpose() if linear else None
        out[ours] = sio.stacked(key, cfg.num_layers, t) if "{i}" in key else sio.Src(key, t)
    return out


def load_hf_llm(model, path_or_reader, *, mesh=None, rules=None, prefix: str = "",
                hf_prefix: str = "model.", strict: bool = True, cfg: LLMConfig | None = None):
    """Loads a HF checkpoint (dir / file / index.json) into ``model`` in place.

    ``prefix`` selects the decoder inside a larger model (e.g. ``"llm/"`` in the VideoLLM; pass
    its ``cfg`` then); ``hf_prefix`` is the HF key prefix of the decoder (``"model."``).

    A tied checkpoint that still stores ``lm_head.weight`` (some exporters do) is accepted.
    """
    reader = sio.open_checkpoint(path_or_reader) if isinstance(path_or_reader, str) else path_or_reader
    ignore = list(IGNORED_HF_KEYS)
    cfg = cfg or model.cfg
    if cfg.tie_word_embeddings:
        ignore.append(r"^lm_head\.weight$")
    return sio.load_params(model, reader, hf_mapping(cfg, hf_prefix), mesh=mesh, rules=rules,
                           strict=strict, ignore_unexpected=ignore, prefix=prefix)


def to_hf_tensors(model: DecoderLM, hf_prefix: str = "model.", dtype=None) -> dict[str, np.ndarray]:
    """HF-named numpy tensors of ``model`` (LoRA merged if present; see models.lora.merge_lora)."""
    if not model.scanned:  # the HF names below follow the scanned layout
        model = stack_layers(nnx.clone(model))
    params = sio.param_paths(model)
    if any(p.endswith("lora_a") for p in params):
        params = sio.param_paths(lora.merged_copy(model))
    out: dict[str, np.ndarray] = {}
    for ours, (key, linear) in hf_names(model.cfg, hf_prefix).items():
        arr = np.asarray(jax.device_get(params[ours].get_value()))
        if dtype is not None:
            arr = arr.astype(dtype)
        if "{i}" in key:
            for i in range(model.cfg.num_layers):
                out[key.format(i=i)] = np.ascontiguousarray(arr[i].T if linear else arr[i])
        else:
            out[key] = np.ascontiguousarray(arr.T if linear else arr)
    return out


def param_count(model_or_state) -> int:
    """Number of parameters (works on abstract models from nnx.eval_shape)."""
    return sum(int(np.prod(v.get_value().shape)) for v in sio.param_paths(model_or_state).values())


def llm_config(path: str | os.PathLike) -> LLMConfig:
    """The LLMConfig of a checkpoint: a HF directory, its config.json, a .safetensors file (the
    config.json beside it) or a llama.cpp ``.gguf`` file (its metadata)."""
    path = os.fspath(path)
    if path.endswith(".gguf"):
        return gguf.config_from_gguf(path)
    if path.endswith(".safetensors") or path.endswith(".index.json"):
        path = os.path.dirname(path) or "."
    return LLMConfig.from_hf(path)


def load_llm_params(model, path: str, *, mesh=None, rules=None, prefix: str = "", strict: bool = True,
                    cfg: LLMConfig | None = None):
    """Loads a HF checkpoint or a ``.gguf`` file into ``model`` (or the decoder under ``prefix``)."""
    if os.fspath(path).endswith(".gguf"):
        return gguf.load_gguf_llm(model, path, mesh=mesh, rules=rules, prefix=prefix, cfg=cfg)
    return load_hf_llm(model, path, mesh=mesh, rules=rules, prefix=prefix, strict=strict, cfg=cfg)


def load_llm(path: str, *, dtype=None, param_dtype=None, mesh=None, rules=None,
             attention_impl: str = "auto", remat_policy: str = "none", scan_layers: bool = True,
             unroll_layers: bool | None = None) -> DecoderLM:
    """Builds a DecoderLM from a HF directory / safetensors file or a ``.gguf`` and loads its weights.

    The model is first built abstractly (``nnx.eval_shape``), so no random init is computed and
    each parameter is materialised once, straight into its target sharding. ``scan_layers=False``
    gives the unstacked inference layout (``models.llm.unstack_layers``: faster CPU decoding);
    ``unroll_layers`` is how the stacked layout loops over its layers (DecoderLM; None: the backend's).
    """
    dtype = dtype or jnp.float32
    param_dtype = param_dtype or jnp.float32
    cfg = llm_config(path)
    with nnx.use_eager_sharding(False):
        model = nnx.eval_shape(lambda: DecoderLM(cfg, dtype=dtype, param_dtype=param_dtype, rngs=nnx.Rngs(0),
                                                 attention_impl=attention_impl, remat_policy=remat_policy,
                                                 unroll_layers=unroll_layers))
    model = load_llm_params(model, path, mesh=mesh, rules=rules)
    return model if scan_layers else unstack_layers(model)
