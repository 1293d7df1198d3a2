"""Video MLLM: vision tower + connector + decoder LLM, visual tokens spliced into the text.

Contract with the data pipeline (docs/ARCHITECTURE.md): each ``<video>`` placeholder of a sample
is already expanded into exactly ``num_visual_tokens(cfg)`` copies of ``cfg.video_token_id``; a
video with ``video_mask == 0`` has no placeholders. ``embed_inputs`` puts the k-th visual token of
the sample's real videos (in video order) at its k-th placeholder, so all shapes stay static.

Methods build on the three steps instead of ``__call__``: Exo2Ego concatenates x and F(x) per
video before splicing (2N placeholders per video), Ego2ExoVLM splices probe tokens at its own
``<probe>`` id with a second ``scatter_tokens`` call.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from exo2ego_jax.models import connectors
from exo2ego_jax.models.connectors import Connector, ConnectorConfig
from exo2ego_jax.models.llm import DecoderLM, LLMConfig
from exo2ego_jax.models.vit import VisionConfig, VisionTower

Array = jax.Array

# VideoLLaMA2 mm_projector_type -> our connector settings.
_VIDEOLLAMA2_PROJECTORS = {
    "mlp2x_gelu": dict(kind="mlp2x_gelu"),
    "linear": dict(kind="mlp2x_gelu", mlp_depth=1),
    "stc_connector": dict(kind="stc", stc_padding=1),
    "stc_connector_v35": dict(kind="stc", stc_padding=0),
}


@dataclasses.dataclass(frozen=True)
class VideoLLMConfig:
    """A VideoLLaMA2-style MLLM. Defaults: CLIP ViT-L/14-336 + STC + Mistral-7B, 16 frames.

    The pixel mean/std for uint8 input live in ``vision`` (``VisionConfig.image_mean/image_std``,
    default: the tower family's standard; ``vision.with_preprocess(PreprocessConfig)`` sets them).
    """

    vision: VisionConfig = VisionConfig()
    connector: ConnectorConfig = ConnectorConfig()
    llm: LLMConfig = LLMConfig()
    num_frames: int = 16  # VideoLLaMA2-7B-16F (Exo2Ego backbone): frames per video
    video_token_id: int = 32000  # id the data pipeline writes for each visual-token placeholder

    def __post_init__(self):
        if self.connector.in_dim != self.vision.hidden_size or self.connector.out_dim != self.llm.hidden_size:
            raise ValueError(
                f"VideoLLMConfig: connector maps {self.connector.in_dim} -> {self.connector.out_dim}, but the "
                f"tower width is {self.vision.hidden_size} and the LLM width {self.llm.hidden_size}.")

    @classmethod
    def from_videollama2(cls, config: Mapping[str, Any], vision: VisionConfig, **overrides) -> "VideoLLMConfig":
        """From a VideoLLaMA2 / LLaVA ``config.json`` dict (LLM fields + ``mm_*`` fields) and the
        tower's config (its ``mm_vision_tower`` checkpoint's config.json)."""
        d = dict(config)
        kind = d.get("mm_projector_type", "mlp2x_gelu")
        if kind not in _VIDEOLLAMA2_PROJECTORS:
            raise ValueError(f"mm_projector_type={kind!r} is not supported; expected one of "
                             f"{sorted(_VIDEOLLAMA2_PROJECTORS)}.")
        mt = str(d.get("model_type", "llama"))
        d["model_type"] = next((m for m in ("mistral", "qwen2", "llama") if m in mt), mt)
        llm = LLMConfig.from_hf(d)
        vision = dataclasses.replace(
            vision, feature_layer=d.get("mm_vision_select_layer", vision.feature_layer),
            feature_select=d.get("mm_vision_select_feature", vision.feature_select))
        conn = ConnectorConfig(in_dim=d.get("mm_hidden_size", vision.hidden_size), out_dim=llm.hidden_size,
                               **_VIDEOLLAMA2_PROJECTORS[kind])
        kw = dict(vision=vision, connector=conn, llm=llm, num_frames=d.get("num_frames", 16))
        kw.update(overrides)
        return cls(**kw)


def num_visual_tokens(cfg: VideoLLMConfig, num_frames: int | None = None) -> int:
    """Placeholder tokens one video stands for (1152 for VideoLLaMA2 STC with 16 frames)."""
    return connectors.num_visual_tokens(cfg.connector, cfg.vision, num_frames or cfg.num_frames)


def scatter_tokens(embeds: Array, input_ids: Array, token_id: int, tokens: Array,
                   token_mask: Array | None = None) -> Array:
    """Writes ``tokens`` into ``embeds`` at the positions where ``input_ids == token_id``.

    Args:
      embeds: [B, T, D] text embeddings.
      input_ids: [B, T].
      token_id: placeholder id.
      tokens: [B, V, N, D] (V groups of N tokens, e.g. videos) or [B, K, D].
      token_mask: [B, V], 1 = real group. Real groups fill the placeholders in order; groups with
        mask 0 are skipped (they must have no placeholders).

    The k-th placeholder of a row gets the k-th token of its real groups; extra placeholders
    (more than the real tokens) keep the last token, so callers validate counts on the host
    (``check_placeholders``) where an error can name the sample.
    """
    if tokens.ndim == 4:
        if token_mask is not None:
            # Stable sort puts real groups first, in their original order.
            order = jnp.argsort(1 - token_mask.astype(jnp.int32), axis=1, stable=True)
            tokens = jnp.take_along_axis(tokens, order[:, :, None, None], axis=1)
        tokens = tokens.reshape(tokens.shape[0], -1, tokens.shape[-1])
    is_tok = input_ids == token_id
    rank = jnp.clip(jnp.cumsum(is_tok, axis=1) - 1, 0, tokens.shape[1] - 1)
    gathered = jnp.take_along_axis(tokens.astype(embeds.dtype), rank[:, :, None], axis=1)
    return jnp.where(is_tok[:, :, None], gathered, embeds)


def check_placeholders(input_ids: np.ndarray, video_mask: np.ndarray | None, tokens_per_video: int,
                       token_id: int) -> None:
    """Host-side check of the placeholder contract; raises naming the first bad sample."""
    ids = np.asarray(input_ids)
    count = (ids == token_id).sum(axis=1)
    if video_mask is None:
        video_mask = np.ones((ids.shape[0], 1), np.int32)
    want = np.asarray(video_mask).sum(axis=1) * tokens_per_video
    bad = np.nonzero(count != want)[0]
    if bad.size:
        b = int(bad[0])
        raise ValueError(f"sample {b} of the batch has {int(count[b])} placeholder tokens (id {token_id}) but "
                         f"{int(np.asarray(video_mask)[b].sum())} real videos x {tokens_per_video} tokens = "
                         f"{int(want[b])}; expand each <video> to num_visual_tokens(cfg) ids ({len(bad)} bad samples).")


class VideoLLM(nnx.Module):
    """``vision`` (VisionTower) -> ``connector`` -> ``llm`` (DecoderLM)."""

    def __init__(self, cfg: VideoLLMConfig, *, dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs,
                 remat_policy: str = "none", attention_impl: str = "auto", unroll_layers: bool | None = None):
        self.cfg = cfg
        self.vision = VisionTower(cfg.vision, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.connector = Connector(cfg.connector, cfg.vision, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.llm = DecoderLM(cfg.llm, dtype=dtype, param_dtype=param_dtype, rngs=rngs,
                             remat_policy=remat_policy, attention_impl=attention_impl, unroll_layers=unroll_layers)

    @property
    def num_visual_tokens(self) -> int:
        return num_visual_tokens(self.cfg)

    def encode_features(self, pixels: Array, **hook) -> Any:
        """Tower features [B, V, F, P, D_vit] (``hook``: layer_hook / hook_carry, see vit.LayerHook).

        ``pixels`` are uint8 (the data pipeline's default: the tower normalises them on the device with
        ``cfg.vision.pixel_mean/pixel_std``, fused into its patch conv) or float32 already normalised.
        """
        if pixels.ndim != 6:
            raise ValueError(f"VideoLLM: pixels must be [B, V, F, H, W, 3], got shape {pixels.shape}.")
        return self.vision.features(pixels, **hook)

    def connect(self, feats: Array) -> Array:
        """Tower features [B, V, F, P, D_vit] -> visual tokens [B, V, N, D_llm]."""
        b, v = feats.shape[:2]
        out = self.connector(feats.reshape(b * v, *feats.shape[2:]))
        return out.reshape(b, v, *out.shape[1:])

    def encode_video(self, pixels: Array) -> Array:
        """pixels [B, V, F, H, W, 3] (uint8, or float32 normalised) -> visual tokens [B, V, N, D_llm]."""
        if pixels.shape[2] != self.cfg.num_frames:
            raise ValueError(f"VideoLLM: pixels have {pixels.shape[2]} frames, the config says "
                             f"num_frames={self.cfg.num_frames}.")
        return self.connect(self.encode_features(pixels))

    def embed_inputs(self, input_ids: Array, visual_tokens: Array, video_mask: Array | None = None, *,
                     token_id: int | None = None) -> Array:
        """Text embeddings with ``visual_tokens`` [B, V, N, D] at the placeholder positions."""
        tid = self.cfg.video_token_id if token_id is None else token_id
        # Placeholder ids may lie outside the vocabulary (LLaVA uses negative ids): embed a valid id there.
        safe = jnp.where(input_ids == tid, 0, input_ids)
        embeds = self.llm.embed(safe)
        return scatter_tokens(embeds, input_ids, tid, visual_tokens, video_mask)

    def __call__(self, input_ids: Array, pixels: Array, attention_mask: Array | None = None,
                 video_mask: Array | None = None, positions: Array | None = None) -> Array:
        """Logits [B, T, V] (float32) of the text with the videos spliced in."""
        embeds = self.embed_inputs(input_ids, self.encode_video(pixels), video_mask)
        logits, _ = self.llm(inputs_embeds=embeds, attention_mask=attention_mask, positions=positions)
        return logits
