"""HF safetensors <-> our parameter trees for CLIP / SigLIP towers, connectors and full checkpoints.

One table of ``Entry(path, key, kind)`` rows per module drives both directions: loading builds a
``safetensors_io`` mapping from it (lazy reads into the target sharding, one error listing every
missing / unexpected / mis-shaped key) and exporting applies the inverse transforms.

Key layouts:
* CLIP / SigLIP vision models: ``vision_model.embeddings.*``, ``vision_model.encoder.layers.{i}.*``
  (CLIPModel / SiglipModel checkpoints also hold text keys; they are skipped).
* LLaVA / VideoLLaMA2 full checkpoints: ``model.vision_tower.vision_tower.vision_model.*``,
  ``model.mm_projector.*`` (mlp2x_gelu: ``0``, ``2``; STC: ``s1.b{j}.*``, ``sampler.0.*``,
  ``s2.b{j}.*``, ``readout.{0,2}.*``), and the LLM's ``model.layers.*``, ``model.embed_tokens.*``,
  ``model.norm.*``, ``lm_head.*`` (mapped by the LLM's own converter).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from exo2ego_jax.data.preprocess_config import PreprocessConfig
from exo2ego_jax.models.connectors import Connector, ConnectorConfig
from exo2ego_jax.models.mllm import VideoLLM, VideoLLMConfig
from exo2ego_jax.models.vit import VisionConfig, VisionTower
from exo2ego_jax.weights import llm_weights
from exo2ego_jax.weights import safetensors_io as sio

CLIP_PREFIX = "vision_model."
LLAVA_VISION_PREFIX = "model.vision_tower.vision_tower.vision_model."
LLAVA_PROJECTOR_PREFIX = "model.mm_projector."
# Keys of CLIPModel / SiglipModel / SiglipVisionModel checkpoints that no VLM tower uses.
TOWER_IGNORE = (r"^text_model\.", r"^text_projection\.", r"^visual_projection\.", r"^logit_scale$",
                r"^logit_bias$", r"position_ids$")


# Torch layout -> ours (forward) and back (inverse), per kind of tensor.
def _conv1x1_fwd(x):  # torch Conv2d 1x1 [out, in, 1, 1] used as our Linear [in, out]
    return x[:, :, 0, 0].T


_KINDS: dict[str, tuple[sio.Transform | None, Any]] = {
    "copy": (None, lambda x: x),
    "linear": (sio.Transpose(), lambda x: x.T),
    "conv2d": (sio.Transpose((2, 3, 1, 0)), lambda x: np.transpose(x, (3, 2, 0, 1))),
    "conv3d": (sio.Transpose((2, 3, 4, 1, 0)), lambda x: np.transpose(x, (4, 3, 0, 1, 2))),
    "conv1x1_linear": (sio.Fn(_conv1x1_fwd, lambda s: (s[1], s[0])), lambda x: x.T[:, :, None, None]),
}


@dataclasses.dataclass(frozen=True)
class Entry:
    """Our param ``path`` <- checkpoint ``key`` (with ``{i}`` = layer index when ``layers`` > 0)."""

    path: str
    key: str
    kind: str = "copy"
    layers: int = 0  # > 0: per-layer HF keys stacked on our leading ``layers`` axis


def _ln(path: str, key: str, layers: int = 0) -> list[Entry]:
    return [Entry(f"{path}/scale", f"{key}.weight", layers=layers),
            Entry(f"{path}/bias", f"{key}.bias", layers=layers)]


def _linear(path: str, key: str, layers: int = 0, kind: str = "linear") -> list[Entry]:
    return [Entry(f"{path}/kernel", f"{key}.weight", kind, layers),
            Entry(f"{path}/bias", f"{key}.bias", layers=layers)]


def vision_entries(cfg: VisionConfig) -> list[Entry]:
    """Rows for a ``VisionTower`` against HF ``CLIPVisionModel`` / ``SiglipVisionModel`` keys
    (without the ``vision_model.`` prefix)."""
    n = cfg.num_layers
    rows = [Entry("patch_embed/kernel", "embeddings.patch_embedding.weight", "conv2d"),
            Entry("position_embedding", "embeddings.position_embedding.weight")]
    if cfg.has_cls:
        rows += [Entry("class_embedding", "embeddings.class_embedding")]
        rows += _ln("pre_norm", "pre_layrnorm")  # sic: HF CLIP's attribute name
    else:
        rows += [Entry("patch_embed/bias", "embeddings.patch_embedding.bias")]
    layer = "encoder.layers.{i}"
    rows += _ln("layers/norm1", f"{layer}.layer_norm1", n) + _ln("layers/norm2", f"{layer}.layer_norm2", n)
    for p in ("q_proj", "k_proj", "v_proj", "out_proj"):
        rows += _linear(f"layers/attn/{p}", f"{layer}.self_attn.{p}", n)
    rows += _linear("layers/mlp/fc1", f"{layer}.mlp.fc1", n) + _linear("layers/mlp/fc2", f"{layer}.mlp.fc2", n)
    rows += _ln("post_norm", "post_layernorm")
    return rows


def _conv_norm(path: str, key: str) -> list[Entry]:
    return [Entry(f"{path}/conv/kernel", f"{key}.conv.weight", "conv2d")] + _ln(f"{path}/norm", f"{key}.bn")


def connector_entries(cfg: ConnectorConfig) -> list[Entry]:
    """Rows for a ``Connector`` against VideoLLaMA2 / LLaVA ``mm_projector`` keys (no prefix)."""
    readout = "readout." if cfg.kind == "stc" else ""  # LLaVA mlp2x_gelu is a bare nn.Sequential
    rows = [e for j in range(cfg.mlp_depth) for e in _linear(f"readout/fc/{j}", f"{readout}{2 * j}")]
    if cfg.kind != "stc":
        return rows
    rows += _linear("sampler", "sampler.0", kind="conv3d")
    for stage, cin in (("s1", cfg.in_dim), ("s2", cfg.out_dim)):
        for j in range(cfg.stc_depth):
            p, k = f"{stage}/blocks/{j}", f"{stage}.b{j + 1}"
            for c in ("conv1", "conv2", "conv3"):
                rows += _conv_norm(f"{p}/{c}", f"{k}.{c}")
            if cfg.stc_se_ratio:
                rows += _linear(f"{p}/se/fc1", f"{k}.se.fc1", kind="conv1x1_linear")
                rows += _linear(f"{p}/se/fc2", f"{k}.se.fc2", kind="conv1x1_linear")
            if j == 0 and cin != cfg.out_dim:
                rows += _conv_norm(f"{p}/downsample", f"{k}.downsample")
    return rows


def to_mapping(entries: Iterable[Entry], key_prefix: str = "", path_prefix: str = "") -> dict[str, sio.Src]:
    """``{path_prefix + path: Src(key_prefix + key ...)}`` for ``safetensors_io.load_params``."""
    out = {}
    for e in entries:
        tf = _KINDS[e.kind][0]
        key = key_prefix + e.key
        src = sio.stacked(key, e.layers, tf) if e.layers else sio.Src(key, tf)
        out[path_prefix + e.path] = src
    return out


def export(module: nnx.Module, entries: Iterable[Entry], key_prefix: str = "",
           path_prefix: str = "", dtype: Any = None) -> dict[str, np.ndarray]:
    """Our params -> ``{HF key: numpy array}`` in torch layout (the inverse of loading)."""
    params = sio.param_paths(module)
    out: dict[str, np.ndarray] = {}
    missing = [path_prefix + e.path for e in entries if path_prefix + e.path not in params]
    if missing:
        raise ValueError(f"export: {type(module).__name__} lacks params {missing[:10]}; "
                         "the entry table does not match the module's config.")
    for e in entries:
        value = np.asarray(jax.device_get(params[path_prefix + e.path].get_value()))
        if dtype is not None:
            value = value.astype(dtype)
        inv = _KINDS[e.kind][1]
        if e.layers:
            for i in range(e.layers):
                out[key_prefix + e.key.format(i=i)] = np.ascontiguousarray(inv(value[i]))
        else:
            out[key_prefix + e.key] = np.ascontiguousarray(inv(value))
    return out


# ----------------------------------------------------------------------------- convenience


def _reader(path_or_reader):
    return sio.open_checkpoint(path_or_reader) if isinstance(path_or_reader, (str, bytes)) or hasattr(
        path_or_reader, "__fspath__") else path_or_reader


def detect_vision_prefix(reader) -> str:
    """The key prefix in front of ``embeddings.patch_embedding.weight`` (one vision tower only)."""
    suffix = "embeddings.patch_embedding.weight"
    found = sorted(k[: -len(suffix)] for k in reader.keys() if k.endswith(suffix))
    if len(found) != 1:
        raise ValueError(f"{reader.path}: expected one vision tower (a key ending in {suffix!r}), found "
                         f"{len(found)}: {found[:5]}; pass key_prefix= explicitly.")
    return found[0]


def load_vision_tower(tower: VisionTower, checkpoint, *, key_prefix: str | None = None, mesh=None,
                      rules: Sequence[tuple[str, Any]] | None = None) -> VisionTower:
    """Loads a HF CLIP / SigLIP (vision) model checkpoint into ``tower`` in place.

    ``key_prefix`` defaults to the prefix found in the checkpoint (``vision_model.`` in CLIPModel and
    older CLIPVisionModel files, none in transformers-5 CLIPVisionModel files, LLaVA's
    ``model.vision_tower.vision_tower.vision_model.``); text-model keys and SigLIP's unused MAP head are skipped, anything else unread is an error.
    """
    reader = _reader(checkpoint)
    prefix = detect_vision_prefix(reader) if key_prefix is None else key_prefix
    # SigLIP's MAP pooling head (``head.*``) is not built: no VLM here uses the pooled output.
    ignore = [*TOWER_IGNORE, f"^{re.escape(prefix)}head\\."] + ([f"^(?!{re.escape(prefix)})"] if prefix else [])
    return sio.load_params(tower, reader, to_mapping(vision_entries(tower.cfg), prefix), mesh=mesh,
                           rules=rules, ignore_unexpected=ignore)


def load_connector(connector: Connector, checkpoint, *, key_prefix: str = LLAVA_PROJECTOR_PREFIX,
                   mesh=None, rules=None) -> Connector:
    """Loads ``mm_projector`` weights (e.g. VideoLLaMA2's ``mm_projector.bin`` converted, or a full
    checkpoint: other keys are skipped) into ``connector`` in place."""
    reader = _reader(checkpoint)
    return sio.load_params(connector, reader, to_mapping(connector_entries(connector.cfg), key_prefix),
                           mesh=mesh, rules=rules, ignore_unexpected=[f"^(?!{re.escape(key_prefix)})"])


def export_vision_tower(tower: VisionTower, key_prefix: str = CLIP_PREFIX, dtype=None) -> dict[str, np.ndarray]:
    """The tower as HF ``CLIPVisionModel`` / ``SiglipVisionModel`` tensors."""
    return export(tower, vision_entries(tower.cfg), key_prefix, dtype=dtype)


def export_connector(connector: Connector, key_prefix: str = LLAVA_PROJECTOR_PREFIX, dtype=None):
    """The connector as ``mm_projector`` tensors."""
    return export(connector, connector_entries(connector.cfg), key_prefix, dtype=dtype)


# ----------------------------------------------------------------------------- full checkpoints


def videollm_mappings(model, *, vision_prefix: str = LLAVA_VISION_PREFIX,
                      projector_prefix: str = LLAVA_PROJECTOR_PREFIX, llm_prefix: str = "model."):
    """``{module prefix: mapping}`` for a LLaVA / VideoLLaMA2-style checkpoint of a ``VideoLLM``."""
    return {
        "vision/": to_mapping(vision_entries(model.cfg.vision), vision_prefix),
        "connector/": to_mapping(connector_entries(model.cfg.connector), projector_prefix),
        "llm/": llm_weights.hf_mapping(model.cfg.llm, llm_prefix),
    }


def load_videollm(model, checkpoint, *, vision_checkpoint=None, vision_prefix: str | None = None,
                  projector_prefix: str = LLAVA_PROJECTOR_PREFIX, llm_prefix: str = "model.",
                  mesh=None, rules=None, ignore_unexpected: Sequence[str] = ()):
    """Loads a full LLaVA / VideoLLaMA2-style checkpoint (tower + mm_projector + LLM) in place.

    Args:
      model: a ``VideoLLM`` (may be abstract, from ``nnx.eval_shape``).
      checkpoint: directory / file / index.json with ``model.vision_tower.vision_tower.vision_model.*``,
        ``model.mm_projector.*``, ``model.layers.*``, ``model.embed_tokens.*``, ``model.norm.*``,
        ``lm_head.*``.
      vision_checkpoint: a separate CLIP / SigLIP checkpoint for the tower (VideoLLaMA2 releases do not
        store it; it is ``mm_vision_tower``). Its prefix is detected unless ``vision_prefix`` is given.
      ignore_unexpected: regexes of checkpoint keys to skip on purpose.

    Raises:
      ValueError: one error listing every missing, mis-shaped and unexpected key of all parts.
    """
    reader = _reader(checkpoint)
    vreader = reader if vision_checkpoint is None else _reader(vision_checkpoint)
    if vision_prefix is None:
        vision_prefix = LLAVA_VISION_PREFIX if vision_checkpoint is None else detect_vision_prefix(vreader)
    maps = videollm_mappings(model, vision_prefix=vision_prefix, projector_prefix=projector_prefix,
                             llm_prefix=llm_prefix)
    errors, used = [], set()
    for prefix, mapping in maps.items():
        r = vreader if prefix == "vision/" else reader
        if r is reader:
            used |= {k for src in mapping.values() for k in src.keys}
        try:
            sio.load_params(model, r, mapping, prefix=prefix, strict=False, mesh=mesh, rules=rules)
        except ValueError as e:
            errors.append(str(e))
    ignore = [re.compile(p) for p in (*llm_weights.IGNORED_HF_KEYS, *ignore_unexpected,
                                      rf"^{re.escape(vision_prefix)}head\.", r"position_ids$")]
    if model.cfg.llm.tie_word_embeddings:
        ignore.append(re.compile(r"^lm_head\.weight$"))
    unexpected = sorted(k for k in set(reader.keys()) - used if not any(p.search(k) for p in ignore))
    if errors or unexpected:
        lines = [f"Cannot load {reader.path} into VideoLLM:"] + errors
        if unexpected:
            lines.append(f"  unexpected checkpoint keys ({len(unexpected)}): " + ", ".join(unexpected[:30])
                         + (" ..." if len(unexpected) > 30 else ""))
            lines.append("  (pass ignore_unexpected=[regex] for keys you mean to skip)")
        raise ValueError("\n".join(lines))
    return model


def export_videollm(model, *, include_vision: bool = True, dtype=None,
                    vision_prefix: str = LLAVA_VISION_PREFIX,
                    projector_prefix: str = LLAVA_PROJECTOR_PREFIX) -> dict[str, np.ndarray]:
    """A ``VideoLLM`` as one LLaVA / VideoLLaMA2-style state dict (LoRA merged into the LLM)."""
    out = export(model.connector, connector_entries(model.cfg.connector), projector_prefix, dtype=dtype)
    if include_vision:
        out.update(export(model.vision, vision_entries(model.cfg.vision), vision_prefix, dtype=dtype))
    out.update(llm_weights.to_hf_tensors(model.llm, "model.", dtype=dtype))
    return out


# ----------------------------------------------------------------------------- checkpoint directories

# Towers that VideoLLaMA2 / LLaVA config.json files name in ``mm_vision_tower`` (HF hub ids), for
# checkpoints that hold the tower's weights but no local copy of its config: their published
# config.json / preprocessor_config.json values.
KNOWN_TOWERS: dict[str, tuple[dict, dict]] = {
    # VideoLLaMA2-7B(-16F), LLaVA-1.5: CLIP ViT-L/14 at 336 px.
    "openai/clip-vit-large-patch14-336": (
        dict(model_type="clip_vision_model", hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
             num_attention_heads=16, image_size=336, patch_size=14, hidden_act="quick_gelu", layer_norm_eps=1e-5),
        dict(size={"shortest_edge": 336}, do_center_crop=True, crop_size=336, resample=3)),
    # VideoLLaMA2.1 / Qwen2-based releases: SigLIP so400m at 384 px.
    "google/siglip-so400m-patch14-384": (
        dict(model_type="siglip_vision_model", hidden_size=1152, intermediate_size=4304, num_hidden_layers=27,
             num_attention_heads=16, image_size=384, patch_size=14, hidden_act="gelu_pytorch_tanh",
             layer_norm_eps=1e-6),
        dict(size={"height": 384, "width": 384}, do_center_crop=False, resample=3,
             image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])),
}


@dataclasses.dataclass(frozen=True)
class TowerSpec:
    """Where a full checkpoint's vision tower comes from."""

    vision: VisionConfig
    preprocess: Any  # data.preprocess_config.PreprocessConfig
    weights: str | None  # separate CLIP / SigLIP checkpoint dir, None = the tower is in the checkpoint
    source: str  # what was used, for logs and errors


def _has_safetensors(d: str) -> bool:
    return os.path.isdir(d) and any(f.endswith(".safetensors") for f in os.listdir(d))


def resolve_tower(checkpoint: str, hf_config: Mapping[str, Any], vision_tower: str = "", *,
                  reader=None) -> TowerSpec:
    """The tower config, preprocessing and weights of a LLaVA / VideoLLaMA2 checkpoint directory.

    Looks, in order, at ``vision_tower`` (a local CLIP / SigLIP dir, e.g. ``--config.chat.vision_tower``),
    the config's ``mm_vision_tower`` when it is a local dir (absolute or relative to ``checkpoint``),
    then the published configs of the towers in ``KNOWN_TOWERS``. The tower's weights come from the
    checkpoint when it holds ``model.vision_tower.vision_tower.vision_model.*`` keys (the fine-tuned
    copy), else from the tower dir. Preprocessing comes from the tower dir's
    ``preprocessor_config.json``, else the checkpoint's, else ``KNOWN_TOWERS``.
    """
    reader = reader if reader is not None else _reader(checkpoint)
    embedded = any(k.startswith(LLAVA_VISION_PREFIX) for k in reader.keys())
    name = str(hf_config.get("mm_vision_tower") or hf_config.get("vision_tower") or "")
    tower_dir = None
    for cand in (vision_tower, name, os.path.join(checkpoint, name) if name else ""):
        if cand and os.path.isfile(os.path.join(cand, "config.json")):
            tower_dir = cand
            break
    if vision_tower and tower_dir != vision_tower:
        raise FileNotFoundError(f"vision tower dir {vision_tower!r} has no config.json; pass a HF CLIP / SigLIP "
                                "directory (config.json, preprocessor_config.json, model.safetensors).")
    if tower_dir is not None:
        vision, source = VisionConfig.from_hf(tower_dir), tower_dir
    elif name in KNOWN_TOWERS:
        vision, source = VisionConfig.from_hf(KNOWN_TOWERS[name][0]), f"known tower {name}"
    else:
        raise FileNotFoundError(
            f"{checkpoint}: cannot find the vision tower's config: mm_vision_tower={name!r} is neither a local "
            f"directory nor one of {sorted(KNOWN_TOWERS)}; pass --config.chat.vision_tower=<CLIP/SigLIP dir>.")
    pre_dirs = [d for d in (tower_dir, checkpoint) if d and os.path.isfile(os.path.join(d, "preprocessor_config.json"))]
    if pre_dirs:
        preprocess = PreprocessConfig.from_hf(pre_dirs[0])
    elif name in KNOWN_TOWERS:
        preprocess = PreprocessConfig.from_hf(KNOWN_TOWERS[name][1])
    else:
        raise FileNotFoundError(f"{source}: no preprocessor_config.json (nor in {checkpoint}); the frames' "
                                "resize / crop / normalisation would be unknown.")
    weights = None
    if not embedded:
        if tower_dir is None or not _has_safetensors(tower_dir):
            raise FileNotFoundError(
                f"{checkpoint} holds no {LLAVA_VISION_PREFIX}* keys and the tower ({source}) has no local "
                "safetensors; pass --config.chat.vision_tower=<dir with the CLIP/SigLIP model.safetensors>.")
        weights = tower_dir
    return TowerSpec(vision, preprocess, weights, source)


def load_videollm_dir(checkpoint: str, *, vision_tower: str = "", num_frames: int = 0,
                      video_token_id: int = 32000, dtype=None, param_dtype=None, mesh=None, rules=None,
                      attention_impl: str = "auto", unroll_layers: bool | None = None):
    """Builds and loads a ``VideoLLM`` from a LLaVA / VideoLLaMA2-style checkpoint directory.

    The directory holds ``config.json`` (the LLM config plus ``mm_projector_type``, ``mm_hidden_size``,
    ``mm_vision_select_layer``, ``mm_vision_tower``, ``num_frames`` as VideoLLaMA2 writes them) and
    ``model.safetensors`` / ``*.safetensors.index.json``; the tower comes from ``resolve_tower``.
    ``num_frames`` 0 = the config's (VideoLLaMA2 constants.py NUM_FRAMES=8 when it has none).

    Returns ``(model, tower_spec)``; the model is built abstractly and each parameter is read once.
    """
    cfg_path = os.path.join(checkpoint, "config.json")
    if not os.path.isfile(cfg_path):
        raise FileNotFoundError(f"{checkpoint}: no config.json; a video chat checkpoint is a LLaVA / VideoLLaMA2 "
                                "directory (config.json with mm_* fields, model.safetensors, tokenizer files).")
    with open(cfg_path) as fh:
        hf = json.load(fh)
    if "mm_projector_type" not in hf and "mm_hidden_size" not in hf:
        raise ValueError(f"{cfg_path}: no mm_projector_type / mm_hidden_size fields, so this is not a LLaVA / "
                         "VideoLLaMA2 checkpoint; leave --config.video empty for text-only chat.")
    reader = _reader(checkpoint)
    tower = resolve_tower(checkpoint, hf, vision_tower, reader=reader)
    frames = num_frames or int(hf.get("num_frames") or 8)  # VideoLLaMA2 constants.py NUM_FRAMES = 8
    cfg = VideoLLMConfig.from_videollama2(hf, tower.vision, num_frames=frames, video_token_id=video_token_id)
    with nnx.use_eager_sharding(False):
        model = nnx.eval_shape(lambda: VideoLLM(cfg, dtype=dtype or jnp.float32, param_dtype=param_dtype or jnp.float32,
                                                rngs=nnx.Rngs(0), attention_impl=attention_impl,
                                                unroll_layers=unroll_layers))
    load_videollm(model, reader, vision_checkpoint=tower.weights, mesh=mesh, rules=rules)
    return model, tower
