"""VideoLLaMA3 checkpoints <-> the ``models.videollama3.VideoLlama3`` tree, in both key layouts.

* transformers' ``VideoLlama3ForConditionalGeneration`` (``save_pretrained``):
  ``model.vision_model.{embeddings.patch_embedding, encoder.layers.{i}.*, post_layernorm}.*``,
  ``model.projector.readout.{0,2}.*``, ``model.language_model.{embed_tokens, layers.{i}.*, norm}.*``,
  ``lm_head.weight``.
* DAMO-NLP-SG's release (``Videollama3Qwen2ForCausalLM``, config ``model_type: videollama3_qwen2``):
  ``model.vision_encoder.{embeddings, encoder.layers.{i}, post_layernorm}.*``,
  ``model.mm_projector.readout.{0,2}.*``, the Qwen2 decoder at ``model.{embed_tokens, layers, norm}.*``,
  ``lm_head.weight``.

One table of rows drives loading (lazy reads straight into the target sharding through
``safetensors_io.load_params``: one error listing every missing / unexpected / mis-shaped key) and
export (the inverse transforms).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from exo2ego_jax.models.videollama3 import VideoLlama3, VideoLlama3Config
from exo2ego_jax.weights import export, llm_weights
from exo2ego_jax.weights import safetensors_io as sio


@dataclasses.dataclass(frozen=True)
class Layout:
    """Key prefixes of one checkpoint layout."""

    name: str
    vision: str
    projector: str
    llm: str  # prefix of embed_tokens / layers / norm


HF = Layout("transformers", "model.vision_model.", "model.projector.readout.", "model.language_model.")
RELEASE = Layout("DAMO-NLP-SG release", "model.vision_encoder.", "model.mm_projector.readout.", "model.")


@dataclasses.dataclass(frozen=True)
class Row:
    """Our param ``path`` <- checkpoint ``key`` ({i} = layer when ``layers``), torch layout ``kind``."""

    path: str
    key: str
    kind: str = "copy"  # copy | linear | patch (Conv2d [D, C, p, p] as our Linear [C*p*p, D])
    layers: int = 0


def _rows(cfg: VideoLlama3Config, layout: Layout) -> list[Row]:
    n = cfg.vision.num_layers
    rows = [Row("vision/patch_embed/kernel", f"{layout.vision}embeddings.patch_embedding.weight", "patch"),
            Row("vision/patch_embed/bias", f"{layout.vision}embeddings.patch_embedding.bias")]
    layer = f"{layout.vision}encoder.layers.{{i}}"

    def ln(path, key, layers=0):
        return [Row(f"{path}/scale", f"{key}.weight", layers=layers), Row(f"{path}/bias", f"{key}.bias", layers=layers)]

    def linear(path, key, layers=0):
        return [Row(f"{path}/kernel", f"{key}.weight", "linear", layers),
                Row(f"{path}/bias", f"{key}.bias", layers=layers)]

    rows += ln("vision/layers/norm1", f"{layer}.layer_norm1", n) + ln("vision/layers/norm2", f"{layer}.layer_norm2", n)
    for p in ("q_proj", "k_proj", "v_proj", "out_proj"):
        rows += linear(f"vision/layers/attn/{p}", f"{layer}.self_attn.{p}", n)
    for fc in ("fc1", "fc2"):
        rows += linear(f"vision/layers/mlp/{fc}", f"{layer}.mlp.{fc}", n)
    rows += ln("vision/post_norm", f"{layout.vision}post_layernorm")
    rows += linear("projector/fc1", f"{layout.projector}0") + linear("projector/fc2", f"{layout.projector}2")
    return rows


def _forward(row: Row) -> sio.Transform | None:
    if row.kind == "linear":
        return sio.Transpose()
    if row.kind == "patch":
        return sio.Fn(lambda x: x.reshape(x.shape[0], -1).T, lambda s: (int(np.prod(s[1:])), s[0]))
    return None


def _inverse(row: Row, cfg: VideoLlama3Config, x: np.ndarray) -> np.ndarray:
    if row.kind == "linear":
        return x.T
    if row.kind == "patch":
        v = cfg.vision
        return x.T.reshape(v.hidden_size, v.num_channels, v.patch_size, v.patch_size)
    return x


def mappings(cfg: VideoLlama3Config, layout: Layout) -> dict[str, dict[str, sio.Src]]:
    """``{module prefix: {param path: Src}}`` for ``safetensors_io.load_params``."""
    vis = {}
    for r in _rows(cfg, layout):
        tf = _forward(r)
        vis[r.path] = sio.stacked(r.key, r.layers, tf) if r.layers else sio.Src(r.key, tf)
    llm_prefix = layout.llm
    return {"": vis, "llm/": llm_weights.hf_mapping(cfg.llm, llm_prefix)}


def detect_layout(reader) -> Layout:
    """Which layout a checkpoint uses, from its patch-embedding key."""
    keys = set(reader.keys())
    for layout in (HF, RELEASE):
        if f"{layout.vision}embeddings.patch_embedding.weight" in keys:
            return layout
    raise ValueError(f"{reader.path}: not a VideoLLaMA3 checkpoint: no {HF.vision}embeddings.patch_embedding"
                     f".weight (transformers) nor {RELEASE.vision}embeddings.patch_embedding.weight "
                     "(DAMO-NLP-SG release).")


def load_videollama3(model: VideoLlama3, checkpoint, *, layout: Layout | None = None, mesh=None,
                     rules=None) -> VideoLlama3:
    """Loads a VideoLLaMA3 checkpoint (dir / file / sharded index) into ``model`` in place.

    Each parameter is read lazily, shard by shard, into its target sharding (``mesh`` + logical
    ``rules``; default: the sharding of the model's current values).

    Raises:
      ValueError: one message listing every missing, mis-shaped and unexpected key.
    """
    reader = sio.open_checkpoint(checkpoint) if isinstance(checkpoint, (str, os.PathLike)) else checkpoint
    layout = layout or detect_layout(reader)
    maps = mappings(model.cfg, layout)
    flat = {**maps[""], **{f"llm/{k}": v for k, v in maps["llm/"].items()}}
    ignore = list(llm_weights.IGNORED_HF_KEYS)
    if model.cfg.llm.tie_word_embeddings:
        ignore.append(r"^lm_head\.weight$")
    try:
        return sio.load_params(model, reader, flat, mesh=mesh, rules=rules, ignore_unexpected=ignore)
    except ValueError as e:
        raise ValueError(f"{e}\n(VideoLLaMA3 checkpoint read with the {layout.name} key layout.)") from None


def export_videollama3(model: VideoLlama3, *, layout: Layout = HF, dtype=None) -> dict[str, np.ndarray]:
    """The model as ``{key: numpy array}`` in torch layout (LoRA merged into the LLM if present)."""
    params = sio.param_paths(model)
    out: dict[str, np.ndarray] = {}
    for r in _rows(model.cfg, layout):
        value = np.asarray(jax.device_get(params[r.path].get_value()))
        if dtype is not None:
            value = value.astype(dtype)
        if r.layers:
            for i in range(r.layers):
                out[r.key.format(i=i)] = np.ascontiguousarray(_inverse(r, model.cfg, value[i]))
        else:
            out[r.key] = np.ascontiguousarray(_inverse(r, model.cfg, value))
    out.update(llm_weights.to_hf_tensors(model.llm, layout.llm, dtype=dtype))
    return out


def hf_config_dict(cfg: VideoLlama3Config) -> dict[str, Any]:
    """A transformers ``video_llama_3`` config.json dict for ``cfg``."""
    v, t = cfg.vision, cfg.llm
    eos = list(t.eos_token_id) if isinstance(t.eos_token_id, tuple) else t.eos_token_id
    # The Qwen2 text config as the LLM exporter writes it (windows, biases, RoPE scaling included).
    text = {k: v for k, v in export.hf_config(t).items() if k != "architectures"}
    text.update(vocab_size=t.vocab_size, eos_token_id=eos)
    vision = dict(model_type="video_llama_3_vision", hidden_size=v.hidden_size,
                  intermediate_size=v.intermediate_size, num_hidden_layers=v.num_layers,
                  num_attention_heads=v.num_heads, patch_size=v.patch_size, num_channels=v.num_channels,
                  layer_norm_eps=v.layer_norm_eps, hidden_act=v.hidden_act,
                  rope_parameters=dict(rope_type="axial", rope_theta=v.rope_theta))
    return dict(model_type="video_llama_3", architectures=["VideoLlama3ForConditionalGeneration"],
                text_config=text, vision_config=vision, image_token_id=cfg.image_token_id,
                video_token_id=cfg.video_token_id, tie_word_embeddings=t.tie_word_embeddings)


def save_hf(model: VideoLlama3, directory: str, *, dtype=None, max_shard_bytes: int = 5 * 2**30) -> list[str]:
    """Writes a transformers-loadable ``VideoLlama3ForConditionalGeneration`` folder (config + safetensors)."""
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "config.json"), "w") as fh:
        json.dump(hf_config_dict(model.cfg), fh, indent=2)
    return sio.save_safetensors(export_videollama3(model, dtype=dtype), directory, max_shard_bytes=max_shard_bytes)


def load_videollama3_dir(path: str, *, dtype=None, param_dtype=None, mesh=None, rules=None,
                         attention_impl: str = "auto", remat_policy: str = "none",
                         unroll_layers: bool | None = None, config_overrides: Mapping[str, Any] | None = None) -> VideoLlama3:
    """Builds the model abstractly from ``path/config.json`` (either layout) and loads its weights,
    so every parameter is materialised once, in its target sharding."""

    cfg = VideoLlama3Config.from_hf(path, **dict(config_overrides or {}))
    with nnx.use_eager_sharding(False):
        model = nnx.eval_shape(lambda: VideoLlama3(cfg, dtype=dtype or jnp.float32,
                                                   param_dtype=param_dtype or jnp.float32, rngs=nnx.Rngs(0),
                                                   attention_impl=attention_impl, remat_policy=remat_policy,
                                                   unroll_layers=unroll_layers))
    return load_videollama3(model, path, mesh=mesh, rules=rules)
