"""Ego2ExoVLM (METHODS.md part B) as a method for the one trainer.

The student sees an EXO video + a teacher question and learns the ego teacher's answer with
next-token cross-entropy on the answer tokens only (sequence-level distillation across views).
Its vision tower is frozen; LoRA adapters, the projector, the EAVT modules, the probe vectors and
the probe projector train (groups in ego2exo_config.student_groups). The same model without
probes (config.model.num_probes = 0) is the teacher of the labelling job (methods/label.py) and
the demo's baselines.

Hooks: build_model, loss_fn, make_dataset, load_pretrained, num_train_examples, tokens_in_batch,
flops_per_example, and eval_model (the evaluation adapter, methods/ego2exo_infer.py).
"""
from __future__ import annotations

import copy
import logging

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from exo2ego_jax.methods.ego2exo.model import Ego2ExoModel
from exo2ego_jax.models import connectors as conn_lib
from exo2ego_jax.models import lora as lora_lib
from exo2ego_jax.models.llm import LLMConfig
from exo2ego_jax.models.mllm import VideoLLMConfig
from exo2ego_jax.models.vit import VisionConfig

IGNORE_INDEX = -100


# --- model ------------------------------------------------------------------------------------
def model_configs(config) -> tuple[LLMConfig, VisionConfig, conn_lib.ConnectorConfig]:
    """(LLM, vision, connector) configs from config.model (HF config.json files where given)."""
    m = config.model
    llm_kw = dict(m.llm)
    llm = LLMConfig.from_hf(m.llm_hf) if m.llm_hf else LLMConfig(**llm_kw)
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


def build_model(config, rngs: nnx.Rngs) -> Ego2ExoModel:
    """Every parameter the step touches: tower, projector, EAVT + probe projector, LLM (+ LoRA)."""
    llm, vision, connector = model_configs(config)
    hw = config.hardware
    if hw.remat != "none" and not vision.remat:
        import dataclasses
        vision = dataclasses.replace(vision, remat=True)
    attention = {"xla": "xla", "cudnn": "cudnn"}.get(hw.attention, "auto")
    layers = tuple(config.model.eavt_layers) or None
    cfg = VideoLLMConfig(vision=vision, connector=connector, llm=llm, num_frames=config.data.num_frames,
                         video_token_id=config.model.video_token_id)
    model = Ego2ExoModel(cfg, num_probes=config.model.num_probes, eavt_layers=layers,
                         probe_token_id=config.model.probe_token_id, dtype=jnp.dtype(hw.compute_dtype),
                         param_dtype=jnp.dtype(hw.param_dtype), rngs=rngs, remat_policy=hw.remat,
                         attention_impl=attention)
    e = config.ego2exo
    if e.lora_rank > 0:
        lora_lib.apply_lora(model.llm, e.lora_targets, rank=e.lora_rank, alpha=e.lora_alpha,
                            dropout=e.lora_dropout, rngs=rngs)
    return model


def _load_from_checkpoint(model, path: str, pattern: str) -> list[str]:
    """Loads parameters whose path matches `pattern` from a trainer checkpoint, in place."""
    import re
    from exo2ego_jax.train import checkpoint as ckpt_lib
    rx = re.compile(pattern)
    flat = {"/".join(map(str, k)): v for k, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}
    flat = {p: v for p, v in flat.items() if rx.search(p)}
    abstract = {p: jax.ShapeDtypeStruct(v.get_value().shape, v.get_value().dtype,
                                        sharding=getattr(v.get_value(), "sharding", None))
                for p, v in flat.items()}
    loaded, _ = ckpt_lib.load_params(path, abstract)
    for p, value in loaded.items():
        flat[p].set_value(value)
    return sorted(loaded)


def load_pretrained(model: Ego2ExoModel, config) -> None:
    """HF weights of the LLM / tower / projector; then EAVT and the probe projector are copied
    again from the tower and projector actually used (the trainer applies train.init_from after
    this hook, so a tower coming from init_from is read here first for the copy)."""
    m = config.model
    if m.llm_hf:
        from exo2ego_jax.weights.llm_weights import load_hf_llm
        load_hf_llm(model.llm, m.llm_hf, strict=False)
    if m.vision_hf or m.connector_hf:
        from exo2ego_jax.weights import vision_weights
        if m.vision_hf:
            vision_weights.load_vision_tower(model.vision, m.vision_hf)
        if m.connector_hf:
            vision_weights.load_connector(model.connector, m.connector_hf)
    if model.eavt is None:
        return
    if config.train.init_from:
        names = _load_from_checkpoint(model, config.train.init_from, r"^(vision|connector)/")
        logging.info("ego2exo: tower/projector for the EAVT copy read from %s (%d arrays)",
                     config.train.init_from, len(names))
    if m.vision_hf or m.connector_hf or config.train.init_from:
        model.init_probe_modules()
        logging.info("ego2exo: EAVT modules and probe projector copied from the loaded tower / projector")


# --- loss -------------------------------------------------------------------------------------
def answer_cross_entropy(logits: jax.Array, labels: jax.Array, example_mask: jax.Array | None = None
                         ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Mean next-token CE over answer tokens: (loss, number of tokens, token accuracy).

    Position t predicts token t+1; labels[t] = token t or -100 (docs/ARCHITECTURE.md "Batches").
    """
    logits = logits[:, :-1].astype(jnp.float32)
    targets = labels[:, 1:]
    valid = targets != IGNORE_INDEX
    if example_mask is not None:
        valid = valid & (example_mask[:, None] > 0)
    logp = jax.nn.log_softmax(logits, axis=-1)
    nll = -jnp.take_along_axis(logp, jnp.where(valid, targets, 0)[..., None], axis=-1)[..., 0]
    n = jnp.sum(valid).astype(jnp.float32)
    loss = jnp.sum(jnp.where(valid, nll, 0.0)) / jnp.maximum(n, 1.0)
    acc = jnp.sum(jnp.where(valid, jnp.argmax(logits, -1) == targets, False)) / jnp.maximum(n, 1.0)
    return loss, n, acc


def _pixels(batch):
    for key in ("pixels", "exo_pixels", "ego_pixels"):
        if key in batch:
            return batch[key]
    raise KeyError(f"ego2exo: batch has no pixels (expected 'pixels' [B, V, F, H, W, 3]); keys: {sorted(batch)}")


def loss_fn(model: Ego2ExoModel, batch: dict[str, jax.Array], rng: jax.Array, aux=None):
    """Answer-only cross-entropy of the teacher's answer given (exo) video + question."""
    del aux
    if any(getattr(m, "lora_dropout", None) is not None for _, m in nnx.iter_graph(model.llm)):
        nnx.reseed(model.llm, dropout=rng)  # fresh LoRA dropout masks every step
    logits = model(batch["input_ids"], _pixels(batch), batch["attention_mask"], batch.get("video_mask"),
                   frame_mask=batch.get("frame_mask"))
    loss, n, acc = answer_cross_entropy(logits, batch["labels"], batch.get("example_mask"))
    # loss_weight: the step weights accumulated micro-batches by their answer tokens (train/step.py).
    return loss, {"answer_tokens": n, "token_accuracy": acc, "loss_weight": n}


# --- data -------------------------------------------------------------------------------------
def _local_data_cfg(config, process_count: int) -> ml_collections.ConfigDict:
    """config.data with the per-process batch size (global_batch / processes)."""
    g = config.train.global_batch
    if g % process_count:
        raise ValueError(f"config.train.global_batch={g} is not divisible by {process_count} processes")
    cfg = ml_collections.ConfigDict(copy.deepcopy(config.data.to_dict()))
    cfg.batch_size = g // process_count
    return cfg


def make_dataset(config, split: str, process_index: int, process_count: int):
    """The teacher-label LLaVA JSON (config.data.instructions) through the instruction pipeline."""
    from exo2ego_jax.data import pipeline
    del split  # the labels files are the training split; evaluation uses the eval harness
    if not config.data.instructions:
        raise ValueError("config.data.instructions is empty: point it at the labelling job's labels.json "
                         "(python -m exo2ego_jax.main --config configs/ego2exo/label.py ...)")
    cfg = _local_data_cfg(config, process_count)
    tok = pipeline.load_tokenizer(cfg)
    return pipeline.instruction_dataset(cfg, tok, process_index=process_index, process_count=process_count)


def num_train_examples(config) -> int:
    from exo2ego_jax.data import instructions
    return sum(len(instructions.read_llava_json(p, data_folder=config.data.data_folder or None))
               for p in config.data.instructions)


def tokens_in_batch(batch) -> int:
    return int(np.asarray(batch["attention_mask"]).sum())


def flops_per_example(config) -> float:
    """Training FLOPs of one example: 6 x trained-path params x tokens (LLM), 2x for the frozen tower."""
    llm, vision, _ = model_configs(config)
    d, L = llm.hidden_size, llm.num_layers
    llm_params = L * (2 * d * llm.num_heads * llm.head_dim + 2 * d * llm.num_kv_heads * llm.head_dim
                      + 3 * d * llm.intermediate_size)
    vit_params = vision.num_layers * (4 * vision.hidden_size ** 2 + 2 * vision.hidden_size * vision.intermediate_size)
    tower = 2.0 * vit_params * vision.num_positions * config.data.num_frames  # forward only (frozen)
    return 6.0 * llm_params * config.data.max_len + tower


# --- evaluation -------------------------------------------------------------------------------
def eval_model(config, workdir: str):
    """The eval harness's adapter (eval/adapter.py) for a trained Ego2ExoVLM checkpoint."""
    from exo2ego_jax.methods.ego2exo import infer as ego2exo_infer
    return ego2exo_infer.adapter_from_config(config, workdir)
