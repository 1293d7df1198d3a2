"""Exo2Ego (METHODS.md part A) as a method for the one trainer: model, losses, stage wiring.

Stage (``config.exo2ego.stage``) -> what ``loss_fn`` computes:

- 0 init: VTG of the ego encoder and of the exo encoder on their clips (LLM frozen).
- 1 demonstrator self-preparation: VTG of the exo encoder on exo clip-text pairs.
- 2 demonstrator-learner guidance: VTG on concat(x, F(x)) + KL(y || F(x)) + L1 cycle, with
  x = ego features, y = frozen exo features (stop-gradient).
- 3 learner self-practice: VTG on concat(x, F(x)) (ego video only), LoRA on the LLM, no G.

Which parameters train is only ``config.train.groups`` (see exo2ego_config.stage_groups); the
loss never decides it. Loss weights and switches travel on the model as static fields, since the
trainer calls ``loss_fn(model, batch, rng, aux)`` without the config.
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import re

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from exo2ego_jax.methods.exo2ego import losses
from exo2ego_jax.methods.exo2ego.model import Exo2EgoModel, add_lora, modules_for_stage  # noqa: F401
from exo2ego_jax.models import connectors as conn_lib
from exo2ego_jax.models.llm import LLMConfig
from exo2ego_jax.models.mapping import MappingConfig
from exo2ego_jax.models.vit import VisionConfig


@dataclasses.dataclass(frozen=True)
class LossConfig:
    """Static loss switches (copied from config.exo2ego)."""
    stage: int
    vtg_weight: float
    kl_weight: float
    kl_temperature: float
    kl_direction: str
    cycle_weight: float
    cycle_forward_only: bool
    use_g: bool

    @classmethod
    def from_config(cls, e) -> "LossConfig":
        return cls(stage=e.stage, vtg_weight=e.vtg_weight, kl_weight=e.kl_weight,
                   kl_temperature=e.kl_temperature, kl_direction=e.kl_direction,
                   cycle_weight=e.cycle_weight, cycle_forward_only=e.cycle_forward_only,
                   use_g=e.use_g)

    @property
    def needs_exo(self) -> bool:
        """Stage 2 reads exo video only for the guidance terms (off in the ego-only baseline)."""
        return self.kl_weight > 0 or (self.use_g and self.cycle_weight > 0)


# --- model ------------------------------------------------------------------------------------
def model_configs(config) -> tuple[LLMConfig, VisionConfig, conn_lib.ConnectorConfig, MappingConfig]:
    m = config.model
    llm = LLMConfig(**dict(m.llm)) if not m.llm_hf else LLMConfig.from_hf(m.llm_hf)
    vision_kw = dict(m.vision)
    vision = VisionConfig(**vision_kw) if not m.vision_hf else VisionConfig.from_hf(
        m.vision_hf, feature_layer=vision_kw.get("feature_layer", -2), remat=vision_kw.get("remat", False))
    connector = conn_lib.ConnectorConfig(**dict(m.connector))
    return llm, vision, connector, MappingConfig.from_config(m.mapping)


def tokens_per_video(config) -> int:
    """Visual tokens one `<video>` placeholder stands for in this stage (data pipeline uses it)."""
    _, vision, connector, _ = model_configs(config)
    n = conn_lib.num_visual_tokens(connector, vision, config.data.num_frames)
    e = config.exo2ego
    learner = e.stage in (2, 3)
    return 2 * n if learner and e.llm_input == "concat" else n


def video_token_id(config) -> int:
    """Id of '<video>' in config.data.tokenizer when one is set (else config.model.video_token_id)."""
    if not config.data.get("tokenizer"):
        return config.model.video_token_id
    return _tokenizer_video_id(config.data.tokenizer)


@functools.lru_cache(maxsize=8)
def _tokenizer_video_id(path: str) -> int:
    import ml_collections
    from exo2ego_jax.data import text as text_lib
    from exo2ego_jax.data.pipeline import load_tokenizer
    return text_lib.special_id(load_tokenizer(ml_collections.ConfigDict({"tokenizer": path})), "<video>")


def build_model(config, rngs: nnx.Rngs) -> Exo2EgoModel:
    """Every parameter of this stage (trainable and frozen); see exo2ego_model.modules_for_stage."""
    e = config.exo2ego
    llm, vision, connector, mapping = model_configs(config)
    dtype = jnp.dtype(config.hardware.compute_dtype)
    param_dtype = jnp.dtype(config.hardware.param_dtype)
    remat = config.hardware.remat
    if remat != "none" and not vision.remat:
        vision = dataclasses.replace(vision, remat=True)
    attention = {"xla": "xla", "cudnn": "cudnn", "splash": "splash"}.get(config.hardware.attention, "auto")
    model = Exo2EgoModel(
        llm=llm, vision=vision, connector=connector, mapping=mapping,
        modules=modules_for_stage(e.stage, e.mapping_on, e.use_g), mapping_on=e.mapping_on,
        llm_input=e.llm_input, num_frames=config.data.num_frames,
        video_token_id=video_token_id(config), dtype=dtype, param_dtype=param_dtype,
        remat=remat, attention=attention, rngs=rngs)
    if e.lora_rank > 0:
        add_lora(model, rank=e.lora_rank, alpha=e.lora_alpha, dropout=e.lora_dropout,
                 targets=e.lora_targets, rngs=rngs)
    model.loss_cfg = LossConfig.from_config(e)
    return model


# --- losses -----------------------------------------------------------------------------------
def _masks(batch, b: int, v: int) -> tuple[jax.Array, jax.Array]:
    ex = batch.get("example_mask", jnp.ones((b,), jnp.int32))
    vm = batch.get("video_mask", jnp.ones((b, v), jnp.int32))
    return ex, (vm * ex[:, None]).reshape(b * v)


def _maps_mask(video_mask: jax.Array, feats: jax.Array, bv: int) -> jax.Array:
    """Per-video mask [B*V] broadcast to the leading axes of features [B*V, ...]."""
    return video_mask.reshape((bv,) + (1,) * (feats.ndim - 2))


def _vtg(model: Exo2EgoModel, batch, visual: jax.Array, ex_mask) -> tuple[jax.Array, dict]:
    b = batch["input_ids"].shape[0]
    visual = visual.reshape(b, -1, visual.shape[-1])
    logits = model.llm_logits(batch["input_ids"], batch["attention_mask"], visual)
    loss, n = losses.vtg_loss(logits, batch["labels"], ex_mask)
    labels = batch["labels"][:, 1:]
    valid = (labels != losses.IGNORE_INDEX) & (ex_mask[:, None] > 0)
    acc = jnp.sum(jnp.where(valid, jnp.argmax(logits[:, :-1], -1) == labels, False)) / jnp.maximum(n, 1.0)
    return loss, {"tokens": n, "token_accuracy": acc}


def loss_fn(model: Exo2EgoModel, batch: dict[str, jax.Array], rng: jax.Array, aux=None):
    """Weighted sum of this stage's losses; metrics carry each term unweighted."""
    del aux
    lc: LossConfig = model.loss_cfg
    if any(getattr(m, "lora_dropout", None) is not None for _, m in nnx.iter_graph(model.llm)):
        nnx.reseed(model.llm, dropout=rng)  # fresh LoRA dropout masks every step
    key = "exo_pixels" if lc.stage == 1 else "ego_pixels"
    if key not in batch:
        raise KeyError(f"exo2ego stage {lc.stage}: batch has no {key!r} (keys: {sorted(batch)})")
    b, v = batch[key].shape[:2]
    ex_mask, vid_mask = _masks(batch, b, v)
    metrics: dict[str, jax.Array] = {}

    if lc.stage in (0, 1):
        total = jnp.zeros((), jnp.float32)
        for name in (("ego", "exo") if lc.stage == 0 else ("exo",)):
            pk = f"{name}_pixels"
            if pk not in batch:
                continue
            enc = getattr(model, name)
            tok = enc.tokens(enc.patches(batch[pk]))
            vtg, m = _vtg(model, batch, tok, ex_mask)
            total = total + lc.vtg_weight * vtg
            metrics[f"vtg_{name}"] = vtg
            metrics.update({f"{k}_{name}": x for k, x in m.items()})
        return total, metrics

    x, _ = model.space_features(model.ego, batch["ego_pixels"])
    fx = model.apply_map("f", x)
    vtg, m = _vtg(model, batch, model.learner_tokens(x, fx), ex_mask)
    total = lc.vtg_weight * vtg
    metrics.update(vtg=vtg, **m)
    if lc.stage == 2 and lc.needs_exo:
        if "exo_pixels" not in batch:
            raise KeyError(f"exo2ego stage 2: batch has no 'exo_pixels' (keys: {sorted(batch)})")
        y, _ = model.space_features(model.exo, batch["exo_pixels"])
        y = jax.lax.stop_gradient(y)  # the demonstrator only teaches
        mask = _maps_mask(vid_mask, x, b * v)
        kl = losses.feature_kl(y, fx, temperature=lc.kl_temperature, direction=lc.kl_direction,
                               mask=mask)
        metrics["kl"] = kl
        total = total + lc.kl_weight * kl
        if lc.use_g and lc.cycle_weight > 0:
            g_fx = model.apply_map("g", fx)
            f_g_y = None if lc.cycle_forward_only else model.apply_map("f", model.apply_map("g", y))
            cyc, parts = losses.cycle_loss(x, g_fx, y, f_g_y, forward_only=lc.cycle_forward_only,
                                           mask=mask)
            metrics.update(parts)
            total = total + lc.cycle_weight * cyc
    return total, metrics


# --- initialisation ---------------------------------------------------------------------------
def _state_flat(model) -> dict[str, nnx.Variable]:
    return {"/".join(map(str, k)): v for k, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def load_from_checkpoint(model, path: str, pattern: str) -> list[str]:
    """Loads the parameters whose path matches `pattern` from a trainer checkpoint, in place."""
    from exo2ego_jax.train import checkpoint as ckpt_lib
    rx = re.compile(pattern)
    flat = {p: v for p, v in _state_flat(model).items() if rx.search(p)}
    abstract = {p: jax.ShapeDtypeStruct(v.get_value().shape, v.get_value().dtype,
                                        sharding=getattr(v.get_value(), "sharding", None))
                for p, v in flat.items()}
    loaded, missing = ckpt_lib.load_params(path, abstract)
    if not loaded:
        raise ValueError(f"config.exo2ego.init_sources: nothing matching {pattern!r} in the checkpoint "
                         f"{path!r} (it holds the trainable parameters of its run only)")
    for p, value in loaded.items():
        flat[p].set_value(value)
    if missing:
        logging.warning("init source %s: %d parameters matching %r not found: %s", path, len(missing),
                        pattern, missing[:8])
    return sorted(loaded)


def load_pretrained(model: Exo2EgoModel, config) -> None:
    """HF weights (LLM, CLIP into both towers, VideoLLaMA2 projector into both connectors), then
    `config.exo2ego.init_sources` checkpoints; the trainer applies `train.init_from` after this."""
    m = config.model
    if m.llm_hf:
        from exo2ego_jax.weights.llm_weights import load_hf_llm
        load_hf_llm(model.llm, m.llm_hf, strict=False)
    if m.vision_hf or m.connector_hf:
        from exo2ego_jax.weights import vision_weights
        for enc in (model.ego, model.exo):
            if enc is None:
                continue
            if m.vision_hf:
                vision_weights.load_vision_tower(enc.tower, m.vision_hf)
            if m.connector_hf:
                vision_weights.load_connector(enc.connector, m.connector_hf)
    for entry in config.exo2ego.init_sources:
        pattern, sep, path = entry.partition("=")
        if not sep or not path:
            raise ValueError(f"config.exo2ego.init_sources entry {entry!r}: expected 'regex=checkpoint_path'")
        names = load_from_checkpoint(model, path, pattern)
        logging.info("init source %s: loaded %d parameters matching %r", path, len(names), pattern)


# --- data / accounting hooks (data lives in exo2ego_data.py) ------------------------------------
def make_dataset(config, split: str, process_index: int, process_count: int):
    from exo2ego_jax.methods.exo2ego import data as exo2ego_data
    return exo2ego_data.make_dataset(config, split, process_index, process_count)


def num_train_examples(config) -> int:
    from exo2ego_jax.methods.exo2ego import data as exo2ego_data
    return exo2ego_data.num_examples(config, "train")


def tokens_in_batch(batch) -> int:
    return int(np.asarray(batch["attention_mask"]).sum())


def flops_per_example(config) -> float:
    """Approximate training FLOPs of one example (6 x params x tokens for the LLM + towers)."""
    llm, vision, connector, _ = model_configs(config)
    d, L = llm.hidden_size, llm.num_layers
    llm_params = L * (2 * d * llm.num_heads * llm.head_dim + 2 * d * llm.num_kv_heads * llm.head_dim
                      + 3 * d * llm.intermediate_size)
    vit_params = vision.num_layers * (4 * vision.hidden_size ** 2 + 2 * vision.hidden_size * vision.intermediate_size)
    frames = config.data.num_frames
    towers = 1 if config.exo2ego.stage in (1, 3) else 2
    return 6.0 * llm_params * config.data.max_len + 6.0 * vit_params * vision.num_patches * frames * towers


def eval_model(config, workdir: str):
    """MCQ adapter for the eval harness (exo2ego_jax/eval/adapter.py)."""
    from exo2ego_jax.methods.exo2ego import eval as exo2ego_eval
    return exo2ego_eval.eval_model(config, workdir)
