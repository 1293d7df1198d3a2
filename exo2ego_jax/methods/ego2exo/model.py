"""The Ego2ExoVLM student (and teacher) model: the shared VideoLLM plus optional EAVT probes.

Parameter paths (config.train.groups match them; Ego2ExoVLM paper):

- ``vision/...``: SigLIP (or CLIP) vision tower, frozen in the student.
- ``connector/...``: 2x spatial token merge + mlp2x_gelu projector.
- ``eavt/probes`` [N, D_vit], ``eavt/cross_attn/attn/...`` [L, ...], ``eavt/projector/...``: Ego
  Adaptive Visual Tokens (models/probes.py): probe vectors, one cross-attention module per run ViT
  layer (copies of that layer's self-attention at init) and the probe projector (a copy of the
  main projector at init).
- ``llm/...`` (+ ``.../lora_a``, ``.../lora_b``): the decoder and its LoRA adapters.

Batch pixels [B, V, F, H, W, 3] become visual tokens at the ``<video>`` placeholders and, with
EAVT, projected probes at the ``<probe>`` placeholders the pipeline puts right after them.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from exo2ego_jax.models import connectors as conn_lib
from exo2ego_jax.models.llm import LLMConfig
from exo2ego_jax.models.mllm import VideoLLM, VideoLLMConfig, scatter_tokens
from exo2ego_jax.models.probes import EAVT, EAVTConfig
from exo2ego_jax.models.vit import VisionConfig
from exo2ego_jax.weights import llm_weights

Array = jax.Array


class Ego2ExoModel(VideoLLM):
    """VideoLLM + optional EAVT (``eavt`` is None without probes)."""

    def __init__(self, cfg: VideoLLMConfig, *, num_probes: int = 0, eavt_layers: tuple[int, ...] | None = None,
                 probe_token_id: int = 32001, dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs,
                 remat_policy: str = "none", attention_impl: str = "auto", unroll_layers: bool | None = None):
        super().__init__(cfg, dtype=dtype, param_dtype=param_dtype, rngs=rngs, remat_policy=remat_policy,
                         attention_impl=attention_impl, unroll_layers=unroll_layers)
        self.probe_token_id = int(probe_token_id)
        if num_probes > 0:
            self.eavt = EAVT(EAVTConfig(num_probes=num_probes, layers=eavt_layers, probe_token_id=probe_token_id),
                             self, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        else:
            self.eavt = None

    def init_probe_modules(self) -> None:
        """EAVT <- the tower's self-attention and the main projector (after loading new weights)."""
        if self.eavt is not None:
            self.eavt.init_from(self)

    def visual(self, pixels: Array, frame_mask: Array | None = None) -> tuple[Array, Array | None]:
        """pixels [B, V, F, H, W, 3] -> (visual tokens [B, V, N, D], probe tokens [B, V, P, D] | None).

        ``frame_mask`` [B, V, F] (1 = real frame; the pipeline's fps sampling zero-pads short clips):
        the EAVT probes do not attend to padded frames, and the visual tokens of a padded frame are
        zero, so black padding reaches the LLM as content-free tokens (ViT attention is per frame,
        so padding cannot leak into a real frame's tokens)."""
        if self.eavt is None:
            tokens, probe_tokens = self.connect(self.encode_features(pixels)), None
        else:
            tokens, probe_tokens = self.eavt.encode(self, pixels, frame_mask)
        if frame_mask is not None:
            tokens = tokens * self.visual_token_mask(frame_mask, tokens.shape[2])[..., None].astype(tokens.dtype)
        return tokens, probe_tokens

    def visual_token_mask(self, frame_mask: Array, num_tokens: int) -> Array:
        """[B, V, F] frame mask -> [B, V, N] mask of the visual tokens (token order: frame, row, column)."""
        f = frame_mask.shape[-1]
        frames = conn_lib.visual_grid(self.cfg.connector, self.cfg.vision, f)[0]
        if frames != f or num_tokens % f:
            raise ValueError(f"Ego2ExoModel: frame_mask needs a per-frame connector (mlp2x_gelu or "
                             f"merge_mlp2x_gelu); {self.cfg.connector.kind} turns {f} frames into {frames} "
                             f"token slices of {num_tokens} tokens. Drop frame_mask or use uniform sampling.")
        return jnp.repeat(jnp.asarray(frame_mask) > 0, num_tokens // f, axis=-1)

    def splice(self, input_ids: Array, tokens: Array, probe_tokens: Array | None,
               video_mask: Array | None = None) -> Array:
        """Text embeddings with visual tokens at ``<video>`` and probe tokens at ``<probe>``."""
        ids = input_ids if probe_tokens is None else jnp.where(input_ids == self.probe_token_id, 0, input_ids)
        embeds = self.embed_inputs(ids, tokens, video_mask)
        if probe_tokens is not None:
            embeds = scatter_tokens(embeds, input_ids, self.probe_token_id, probe_tokens, video_mask)
        return embeds

    def embed_all(self, input_ids: Array, pixels: Array, video_mask: Array | None = None,
                  frame_mask: Array | None = None) -> Array:
        tokens, probe_tokens = self.visual(pixels, frame_mask)
        return self.splice(input_ids, tokens, probe_tokens, video_mask)

    def __call__(self, input_ids: Array, pixels: Array, attention_mask: Array | None = None,
                 video_mask: Array | None = None, positions: Array | None = None,
                 frame_mask: Array | None = None, dropout_rng: Array | None = None,
                 hidden_only: bool = False) -> Array:
        """Logits [B, T, vocab] (float32), or with `hidden_only` the LLM's final normed hidden states
        [B, T, D] (chunked LM-head loss); `dropout_rng` turns on LoRA dropout (training only)."""
        logits, _ = self.llm(inputs_embeds=self.embed_all(input_ids, pixels, video_mask, frame_mask),
                             attention_mask=attention_mask, positions=positions, dropout_rng=dropout_rng,
                             hidden_only=hidden_only)
        return logits


def model_configs(config) -> tuple[LLMConfig, VisionConfig, conn_lib.ConnectorConfig]:
    """(LLM, vision, connector) configs from config.model (HF config.json files where given)."""
    m = config.model
    llm_kw = dict(m.llm)
    llm = llm_weights.llm_config(m.llm_hf) if m.llm_hf else LLMConfig(**llm_kw)
    v_kw = dict(m.vision)
    vision = (VisionConfig.from_hf(m.vision_hf, feature_layer=v_kw.get("feature_layer", -2),
                                   remat=v_kw.get("remat", False)) if m.vision_hf else VisionConfig(**v_kw))
    return llm, vision, conn_lib.ConnectorConfig(**dict(m.connector))


def tokens_per_video(config) -> int:
    """Visual tokens one `<video>` placeholder expands to (the data pipeline needs it)."""
    _, vision, connector = model_configs(config)
    return conn_lib.num_visual_tokens(connector, vision, config.data.num_frames)


def sync_data_fields(config) -> None:
    """Copies the model-derived counts into config.data (call in config files before locking)."""
    config.data.num_visual_tokens = tokens_per_video(config)
    config.data.num_probes = int(config.model.num_probes)
