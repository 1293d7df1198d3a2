"""Exo2Ego as a method for the one trainer: `Exo2Ego(config)` binds the stage's static switches.

Stage (``config.exo2ego.stage``) -> what ``Exo2Ego.loss`` computes:

- 0 init: VTG of the ego encoder and of the exo encoder on their clips (LLM frozen).
- 1 demonstrator self-preparation: VTG of the exo encoder on exo clip-text pairs.
- 2 demonstrator-learner guidance: VTG on concat(x, F(x)) + KL(y || F(x)) + L1 cycle, with
  x = ego features, y = frozen exo features (stop-gradient).
- 3 learner self-practice: VTG on concat(x, F(x)) (ego video only), LoRA on the LLM, no G.

Which parameters train is only ``config.train.groups`` (configs/exo2ego/stage*.py); the loss
never decides it.
"""
from __future__ import annotations

import dataclasses
import functools
import logging

import jax
import jax.numpy as jnp
from flax import nnx

from exo2ego_jax import config_lib
from exo2ego_jax import tokenizer as tokenizer_lib
from exo2ego_jax.data import text as text_lib
from exo2ego_jax.methods import common
from exo2ego_jax.methods.exo2ego import data as data_lib
from exo2ego_jax.methods.exo2ego import eval as eval_lib
from exo2ego_jax.methods.exo2ego import losses
from exo2ego_jax.methods.exo2ego.model import (Exo2EgoModel, add_lora, model_configs, modules_for_stage,
                                               tokens_per_video)
from exo2ego_jax.train import losses as train_losses


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
    loss_chunk_size: int = 0  # config.hardware.loss_chunk_size (0: plain VTG loss on logits)

    @classmethod
    def from_config(cls, e, loss_chunk_size: int = 0) -> "LossConfig":
        return cls(loss_chunk_size=loss_chunk_size, stage=e.stage, vtg_weight=e.vtg_weight, kl_weight=e.kl_weight,
                   kl_temperature=e.kl_temperature, kl_direction=e.kl_direction,
                   cycle_weight=e.cycle_weight, cycle_forward_only=e.cycle_forward_only,
                   use_g=e.use_g)

    @property
    def needs_exo(self) -> bool:
        """Stage 2 reads exo video only for the guidance terms (off in the ego-only baseline)."""
        return self.kl_weight > 0 or (self.use_g and self.cycle_weight > 0)


def video_token_id(config) -> int:
    """Id of '<video>' in config.data.tokenizer when one is set (else config.model.video_token_id)."""
    if not config.data.get("tokenizer"):
        return config.model.video_token_id
    return _tokenizer_video_id(config.data.tokenizer)


@functools.lru_cache(maxsize=8)
def _tokenizer(path: str):
    return tokenizer_lib.load_tokenizer(path)


def _tokenizer_video_id(path: str) -> int:
    return text_lib.special_id(_tokenizer(path), "<video>")


# --- losses -----------------------------------------------------------------------------------
def _masks(batch, b: int, v: int) -> tuple[jax.Array, jax.Array]:
    ex = batch.get("example_mask", jnp.ones((b,), jnp.int32))
    vm = batch.get("video_mask", jnp.ones((b, v), jnp.int32))
    return ex, (vm * ex[:, None]).reshape(b * v)


def _maps_mask(video_mask: jax.Array, feats: jax.Array, bv: int) -> jax.Array:
    """Per-video mask [B*V] broadcast to the leading axes of features [B*V, ...]."""
    return video_mask.reshape((bv,) + (1,) * (feats.ndim - 2))


def _vtg(model: Exo2EgoModel, batch, visual: jax.Array, ex_mask, rng: jax.Array, chunk: int
         ) -> tuple[jax.Array, dict]:
    """VTG (answer cross-entropy); `chunk` > 0 = the chunked LM-head loss (no [B, T, V] logits)."""
    b = batch["input_ids"].shape[0]
    visual = visual.reshape(b, -1, visual.shape[-1])
    out = model.llm_logits(batch["input_ids"], batch["attention_mask"], visual, dropout_rng=rng,
                           hidden_only=chunk > 0)
    vtg, n, acc = train_losses.answer_loss_and_accuracy(
        out, batch["labels"], ex_mask, head_kernel=model.llm.head_kernel() if chunk else None, chunk_size=chunk)
    return vtg, {"tokens": n, "token_accuracy": acc}


def loss(lc: LossConfig, model: Exo2EgoModel, batch: dict[str, jax.Array], rng: jax.Array):
    """Weighted sum of this stage's losses; metrics carry each term unweighted.

    `rng` draws the LoRA dropout masks (a fresh key every step: the trainer folds in the step).
    """
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
            vtg, m = _vtg(model, batch, tok, ex_mask, jax.random.fold_in(rng, len(metrics)),
                           lc.loss_chunk_size)
            total = total + lc.vtg_weight * vtg
            metrics[f"vtg_{name}"] = vtg
            metrics.update({f"{k}_{name}": x for k, x in m.items()})
        return total, metrics

    x, _ = model.space_features(model.ego, batch["ego_pixels"])
    fx = model.apply_map("f", x)
    vtg, m = _vtg(model, batch, model.learner_tokens(x, fx), ex_mask, rng, lc.loss_chunk_size)
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


# --- the method -----------------------------------------------------------------------------
class Exo2Ego:
    """One Exo2Ego stage, built once from the locked config (which it never changes)."""

    def __init__(self, config):
        self.config = config
        self.loss_config = LossConfig.from_config(config.exo2ego, config.hardware.loss_chunk_size)
        self.video_token_id = video_token_id(config)
        self.tokens_per_video = tokens_per_video(config)  # the data recipe's <video> expansion
        self.vocab_size = model_configs(config)[0].vocab_size
        if config.data.get("tokenizer"):  # an id past the embedding table would embed as NaN
            text_lib.check_tokenizer_fits(_tokenizer(config.data.tokenizer), self.vocab_size,
                                          placeholder_ids=(self.video_token_id,))

    def build_model(self, rngs: nnx.Rngs) -> Exo2EgoModel:
        """Every parameter of this stage (trainable and frozen); see model.modules_for_stage."""
        config = self.config
        e = config.exo2ego
        llm, vision, connector, mapping = model_configs(config)
        remat = config.hardware.remat
        if remat != "none" and not vision.remat:
            vision = dataclasses.replace(vision, remat=True)
        model = Exo2EgoModel(
            llm=llm, vision=vision, connector=connector, mapping=mapping,
            modules=modules_for_stage(e.stage, e.mapping_on, e.use_g), mapping_on=e.mapping_on,
            llm_input=e.llm_input, num_frames=config.data.num_frames,
            video_token_id=self.video_token_id, dtype=jnp.dtype(config.hardware.compute_dtype),
            param_dtype=jnp.dtype(config.hardware.param_dtype), remat=remat,
            attention=common.attention_impl(config), unroll_layers=config_lib.unroll_layers(config.hardware),
            rngs=rngs)
        if e.lora_rank > 0:
            add_lora(model, rank=e.lora_rank, alpha=e.lora_alpha, dropout=e.lora_dropout,
                     targets=e.lora_targets, rngs=rngs)
        return model

    def loss(self, model: Exo2EgoModel, batch: dict[str, jax.Array], rng: jax.Array):
        return loss(self.loss_config, model, batch, rng)

    def load_pretrained(self, model: Exo2EgoModel) -> None:
        """HF weights (LLM, CLIP into both towers, VideoLLaMA2 projector into both connectors),
        then `config.exo2ego.init_sources`; the trainer applies `train.init_from` after this."""
        encoders = [enc for enc in (model.ego, model.exo) if enc is not None]
        common.load_hf_weights(self.config, model.llm, towers=[e.tower for e in encoders],
                               connectors=[e.connector for e in encoders])
        for entry in self.config.exo2ego.init_sources:
            pattern, sep, path = entry.partition("=")
            if not sep or not path:
                raise ValueError(f"config.exo2ego.init_sources entry {entry!r}: expected 'regex=checkpoint_path'")
            names = common.load_from_checkpoint(model, path, pattern, field="config.exo2ego.init_sources")
            logging.info("init source %s: loaded %d parameters matching %r", path, len(names), pattern)

    def dataset(self, split: str, process_index: int, process_count: int):
        ds = data_lib.make_dataset(self.config, split, process_index, process_count,
                                   tokens_per_video=self.tokens_per_video)
        return ds.map(text_lib.IdsInVocabulary(self.vocab_size, (self.video_token_id,)))

    def num_train_examples(self) -> int:
        return data_lib.num_examples(self.config, "train")

    tokens_in_batch = staticmethod(common.tokens_in_batch)

    def flops_per_example(self) -> float:
        """Approximate training FLOPs of one example (6 x params x tokens for the LLM + towers)."""
        llm, vision, _, _ = model_configs(self.config)
        towers = 1 if self.config.exo2ego.stage in (1, 3) else 2
        return (6.0 * common.decoder_params(llm) * self.config.data.max_len
                + 6.0 * common.vit_params(vision) * vision.num_patches * self.config.data.num_frames * towers)

    def eval_model(self, workdir: str):
        """MCQ adapter for the eval harness (exo2ego_jax/eval/adapter.py)."""
        return eval_lib.eval_model(self.config, workdir)


