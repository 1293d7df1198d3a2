"""The Exo2Ego model: ego and exo visual encoders, mappings F / G, and the LLM.

Parameter paths (the stage configs' optimizer groups match them):

- ``ego/tower/...``, ``ego/connector/...``: the learner's encoder (CLIP tower + connector).
- ``exo/tower/...``, ``exo/connector/...``: the demonstrator's encoder, same architecture,
  separately parameterised (both can load the same HF checkpoint).
- ``mapping_f/...`` (F: ego -> exo), ``mapping_g/...`` (G: exo -> ego).
- ``llm/...`` (+ ``.../lora_a``, ``.../lora_b`` in stage 3).

Which modules a stage builds (``modules_for_stage``) follows Exo2Ego paper: stage 1 has no
use for the ego encoder or the mappings, and in stage 3 G is dropped (and the exo encoder too,
unless F acts on ViT patches, where F(x) goes through the frozen exo connector).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx

from exo2ego_jax.models import connectors as conn_lib
from exo2ego_jax.models import lora as lora_lib
from exo2ego_jax.models.llm import DecoderLM, LLMConfig
from exo2ego_jax.models.mapping import MappingConfig, build_mapping
from exo2ego_jax.models.vit import VisionConfig, VisionTower
from exo2ego_jax.parallel import mesh as mesh_lib
from exo2ego_jax.weights import llm_weights

Array = jax.Array
LLM_INPUTS = ("concat", "mapped", "ego")
MAPPING_SPACES = ("connector", "patch")


@dataclasses.dataclass(frozen=True)
class Modules:
    ego: bool
    exo: bool
    f: bool
    g: bool


def modules_for_stage(stage: int, mapping_on: str = "connector", use_g: bool = True) -> Modules:
    """Which sub-modules stage `stage` (0..3, Exo2Ego paper) holds."""
    if stage == 0:
        return Modules(ego=True, exo=True, f=False, g=False)
    if stage == 1:
        return Modules(ego=False, exo=True, f=False, g=False)
    if stage == 2:
        return Modules(ego=True, exo=True, f=True, g=use_g)
    if stage == 3:
        return Modules(ego=True, exo=mapping_on == "patch", f=True, g=False)
    raise ValueError(f"config.exo2ego.stage={stage}; expected 0, 1, 2 or 3 (Exo2Ego paper)")


class Encoder(nnx.Module):
    """Vision tower + connector: pixels [B, V, F, H, W, 3] -> features and visual tokens."""

    def __init__(self, vision: VisionConfig, connector: conn_lib.ConnectorConfig, *, dtype,
                 param_dtype, rngs: nnx.Rngs, remat: bool = False, unroll_layers: bool | None = None):
        self.remat = remat
        self.tower = VisionTower(vision, dtype=dtype, param_dtype=param_dtype, rngs=rngs, unroll_layers=unroll_layers)
        self.connector = conn_lib.Connector(connector, vision, dtype=dtype, param_dtype=param_dtype,
                                            rngs=rngs)

    def patches(self, pixels: Array) -> Array:
        """[B, V, F, H, W, 3] -> ViT features [B*V, F, N, D_vit]."""
        b, v, f = pixels.shape[:3]
        feats = self.tower.features(shard_batch(pixels.reshape(b * v * f, *pixels.shape[3:])))
        return shard_batch(feats.reshape(b * v, f, *feats.shape[1:]))

    def tokens(self, patches: Array) -> Array:
        """ViT features [B*V, F, N, D_vit] -> visual tokens [B*V, T, D_llm]."""
        if not self.remat:
            return shard_batch(self.connector(patches))
        # STC convolves 16 frames of 24x24 maps at LLM width: without remat its saved
        # activations (~40 maps of [frames, 24, 24, 4096]) outlive the LLM's forward and backward.
        gdef, state = nnx.split(self.connector)
        run = jax.checkpoint(lambda s, x: nnx.merge(gdef, s)(x), prevent_cse=False)
        return shard_batch(run(state, shard_batch(patches)))


@dataclasses.dataclass(frozen=True)
class Grids:
    """Spatial layout used to fold features into maps for F / G."""
    patch: tuple[int, int]  # ViT patch grid (g, g)
    tokens: tuple[int, int, int]  # connector output grid (t, h, w)


def grids(vision: VisionConfig, connector: conn_lib.ConnectorConfig, num_frames: int) -> Grids:
    t, h, w = conn_lib.visual_grid(connector, vision, num_frames)
    if connector.kind == "mlp2x_gelu" and h == 1:  # tokens of one frame are its g x g patches
        h = w = vision.grid
    return Grids(patch=(vision.grid, vision.grid), tokens=(t, h, w))


class Exo2EgoModel(nnx.Module):
    """Two encoders, F / G and the LLM. See the module docstring for parameter paths."""

    def __init__(self, *, llm: LLMConfig, vision: VisionConfig, connector: conn_lib.ConnectorConfig,
                 mapping: MappingConfig, modules: Modules, mapping_on: str, llm_input: str,
                 num_frames: int, video_token_id: int, dtype=jnp.float32, param_dtype=jnp.float32,
                 remat: str = "none", attention: str = "auto", unroll_layers: bool | None = None,
                 rngs: nnx.Rngs):
        if mapping_on not in MAPPING_SPACES:
            raise ValueError(f"config.exo2ego.mapping_on={mapping_on!r}; expected one of {MAPPING_SPACES}")
        if llm_input not in LLM_INPUTS:
            raise ValueError(f"config.exo2ego.llm_input={llm_input!r}; expected one of {LLM_INPUTS}")
        if connector.out_dim != llm.hidden_size:
            raise ValueError(f"connector out_dim={connector.out_dim} != LLM hidden_size={llm.hidden_size}; "
                             "set config.model.connector.out_dim to the LLM width")
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.mapping_on, self.llm_input = mapping_on, llm_input
        self.video_token_id = video_token_id
        self.grids = grids(vision, connector, num_frames)
        enc_remat = remat != "none"  # the hardware preset's remat also covers the connector
        self.ego = Encoder(vision, connector, remat=enc_remat, unroll_layers=unroll_layers, **kw) if modules.ego else None
        self.exo = Encoder(vision, connector, remat=enc_remat, unroll_layers=unroll_layers, **kw) if modules.exo else None
        channels = vision.hidden_size if mapping_on == "patch" else llm.hidden_size
        self.mapping_f = build_mapping(channels, mapping, **kw) if modules.f else None
        self.mapping_g = build_mapping(channels, mapping, **kw) if modules.g else None
        self.llm = DecoderLM(llm, remat_policy=remat, attention_impl=attention, unroll_layers=unroll_layers, **kw)

    # -- feature maps ------------------------------------------------------------------------
    def _to_maps(self, x: Array) -> tuple[Array, tuple]:
        """Features of one feature space -> [N, H, W, C] maps (+ the shape to undo it)."""
        if self.mapping_on == "patch":  # [BV, F, N, D]
            gh, gw = self.grids.patch
            return x.reshape(-1, gh, gw, x.shape[-1]), x.shape
        t, h, w = self.grids.tokens  # [BV, T, D]
        return x.reshape(-1, h, w, x.shape[-1]), x.shape

    def apply_map(self, which: str, x: Array) -> Array:
        """F or G on features in the mapping space (same shape in and out)."""
        net = self.mapping_f if which == "f" else self.mapping_g
        if net is None:
            raise ValueError(f"mapping {which.upper()} is not part of this stage's model")
        maps, shape = self._to_maps(x)
        return net(maps).reshape(shape)

    def space_features(self, enc: Encoder, pixels: Array) -> tuple[Array, Array | None]:
        """(features in the mapping space, visual tokens or None when they need F first)."""
        patches = enc.patches(pixels)
        if self.mapping_on == "patch":
            return patches, None
        tok = enc.tokens(patches)
        return tok, tok

    def space_to_tokens(self, feats: Array, *, mapped: bool) -> Array:
        """Mapping-space features -> visual tokens (connector space: identity)."""
        if self.mapping_on == "connector":
            return feats
        # F(x) lives in the exo feature space, so the (frozen) exo connector reads it.
        enc = self.exo if mapped else self.ego
        return enc.tokens(feats)

    def learner_tokens(self, x: Array, fx: Array | None) -> Array:
        """What the LLM sees for ego video: concat(x, F(x)) along tokens (or one of them)."""
        parts = []
        if self.llm_input in ("concat", "ego"):
            parts.append(self.space_to_tokens(x, mapped=False))
        if self.llm_input in ("concat", "mapped"):
            parts.append(self.space_to_tokens(fx, mapped=True))
        return jnp.concatenate(parts, axis=1) if len(parts) > 1 else parts[0]

    # -- LLM ----------------------------------------------------------------------------------
    def llm_logits(self, input_ids: Array, attention_mask: Array, visual: Array,
                   dropout_rng: Array | None = None, hidden_only: bool = False) -> Array:
        """Logits with visual tokens [B, V*K, D] spliced in at the `<video>` placeholders
        (with `hidden_only`: the LLM's final normed hidden states, for the chunked LM-head loss).

        `dropout_rng` turns on LoRA dropout (training); without it the LLM is deterministic.
        """
        logits, _ = self.llm(inputs_embeds=self.llm_embeds(input_ids, visual), attention_mask=attention_mask,
                             dropout_rng=dropout_rng, hidden_only=hidden_only)
        return shard_batch(logits)

    def llm_embeds(self, input_ids: Array, visual: Array) -> Array:
        """Token embeddings [B, T, D] with visual tokens [B, V*K, D] spliced in at `<video>`."""
        # '<video>' may lie outside the LLM vocabulary (Mistral: id 32000 of 32000); its rows are
        # replaced by visual tokens, so embed a valid id there.
        safe = jnp.where(input_ids == self.video_token_id, 0, input_ids)
        return shard_batch(splice(self.llm.embed(safe), input_ids, visual, self.video_token_id))


def shard_batch(x: Array) -> Array:
    """Pins the leading (batch) axis of an activation to the data-parallel mesh axes.

    Only under a mesh context (`jax.set_mesh`); without one it is the identity. GSPMD otherwise
    may follow the FSDP-sharded weights and keep activations replicated over the batch.
    """
    mesh = jax.sharding.get_abstract_mesh()
    axes = tuple(a for a in mesh_lib.batch_axes() if a in mesh.axis_names)
    if not axes or x.shape[0] % math.prod(mesh.shape[a] for a in axes):
        return x
    spec = jax.sharding.PartitionSpec(axes, *([None] * (x.ndim - 1)))
    return jax.lax.with_sharding_constraint(x, spec)


def splice(embeds: Array, input_ids: Array, visual: Array, video_token_id: int) -> Array:
    """Replaces the k-th `<video>` placeholder of each row by visual token k of that row.

    embeds [B, T, D]; visual [B, K, D] (all videos of a row, in order). The data pipeline expanded
    each `<video>` to exactly the tokens one video becomes, so placeholder count == K for rows
    with all videos present; rows with fewer placeholders use a prefix of `visual`.
    """
    is_vid = input_ids == video_token_id
    idx = jnp.clip(jnp.cumsum(is_vid, axis=1) - 1, 0, visual.shape[1] - 1)
    gathered = jnp.take_along_axis(visual.astype(embeds.dtype), idx[..., None], axis=1)
    return jnp.where(is_vid[..., None], gathered, embeds)


def add_lora(model: Exo2EgoModel, *, rank: int, alpha: float, dropout: float, targets: str,
             rngs: nnx.Rngs) -> list[str]:
    """LoRA on the LLM's Linear layers matching `targets` (stage 3)."""
    return lora_lib.apply_lora(model.llm, targets, rank=rank, alpha=alpha, dropout=dropout, rngs=rngs)


def model_configs(config) -> tuple[LLMConfig, VisionConfig, conn_lib.ConnectorConfig, MappingConfig]:
    """(LLM, vision, connector, mapping) configs from `config.model` (HF config.json where given)."""
    m = config.model
    llm = LLMConfig(**dict(m.llm)) if not m.llm_hf else llm_weights.llm_config(m.llm_hf)
    vision_kw = dict(m.vision)
    vision = VisionConfig(**vision_kw) if not m.vision_hf else VisionConfig.from_hf(
        m.vision_hf, feature_layer=vision_kw.get("feature_layer", -2), remat=vision_kw.get("remat", False))
    connector = conn_lib.ConnectorConfig(**dict(m.connector))
    return llm, vision, connector, MappingConfig.from_config(m.mapping)


def tokens_per_video(config) -> int:
    """Visual tokens one `<video>` placeholder stands for in this stage (the learner's stages 2-3
    feed concat(x, F(x)): twice a video's tokens)."""
    _, vision, connector, _ = model_configs(config)
    n = conn_lib.num_visual_tokens(connector, vision, config.data.num_frames)
    e = config.exo2ego
    learner = e.stage in (2, 3)
    return 2 * n if learner and e.llm_input == "concat" else n
