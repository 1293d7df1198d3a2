"""What both methods share: parameters from another stage's checkpoint, pretrained HF weights,
the attention kernel name, and the accounting the trainer logs (tokens, FLOPs)."""
from __future__ import annotations

import copy
import logging
import re

import jax
import ml_collections
import numpy as np
from flax import nnx

from exo2ego_jax import config_lib
from exo2ego_jax.models import attention as attention_lib
from exo2ego_jax.models.llm import LLMConfig
from exo2ego_jax.models.vit import VisionConfig
from exo2ego_jax.train import checkpoint as ckpt_lib
from exo2ego_jax.weights import vision_weights
from exo2ego_jax.weights import llm_weights


def attention_impl(config) -> str:
    """`config.hardware.attention` as the models' `attention_impl`; an unknown name is an error
    (never silently another kernel)."""
    name = config.hardware.attention
    if name not in attention_lib.IMPLEMENTATIONS:
        raise ValueError(f"config.hardware.attention={name!r}; expected one of {attention_lib.IMPLEMENTATIONS}")
    return name


def param_variables(model: nnx.Module) -> dict[str, nnx.Variable]:
    """{'/'-joined path: nnx.Param} of every parameter of `model`."""
    return {"/".join(map(str, k)): v for k, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def load_from_checkpoint(model: nnx.Module, path: str, pattern: str, *, field: str,
                         require: bool = True) -> list[str]:
    """Loads, in place, the parameters whose path `re.search`es `pattern` from the trainer
    checkpoint at `path` (a run's workdir, its `checkpoints/` or one step dir); returns their paths.

    `field` names the config field that asked for it (for the error messages). With `require`,
    finding none of them is an error (a checkpoint holds its run's trainable parameters only).
    """
    rx = re.compile(pattern)
    flat = {p: v for p, v in param_variables(model).items() if rx.search(p)}
    abstract = {p: jax.ShapeDtypeStruct(v.get_value().shape, v.get_value().dtype,
                                        sharding=getattr(v.get_value(), "sharding", None))
                for p, v in flat.items()}
    loaded, missing = ckpt_lib.load_params(path, abstract)
    if require and not loaded:
        raise ValueError(f"{field}: nothing matching {pattern!r} in the checkpoint {path!r} (it holds "
                         "the trainable parameters of its run only)")
    for p, value in loaded.items():
        flat[p].set_value(value)
    if missing:
        logging.warning("%s %s: %d parameters matching %r not found: %s", field, path, len(missing),
                        pattern, missing[:8])
    return sorted(loaded)


def load_hf_weights(config, llm, towers=(), connectors=()) -> None:
    """`config.model.llm_hf` into `llm`, `vision_hf` into every tower, `connector_hf` (VideoLLaMA
    `model.mm_projector.*` keys) into every connector; '' skips a part."""
    m = config.model
    if m.llm_hf:
        llm_weights.load_llm_params(llm, m.llm_hf, strict=False)
    for tower in towers:
        if m.vision_hf:
            vision_weights.load_vision_tower(tower, m.vision_hf)
    for connector in connectors:
        if m.connector_hf:
            vision_weights.load_connector(connector, m.connector_hf)


def tokens_in_batch(batch: dict[str, np.ndarray]) -> int:
    """Real (unpadded) tokens of a host batch, for tokens/s."""
    return int(np.asarray(batch["attention_mask"]).sum())


def decoder_params(llm: LLMConfig) -> int:
    """Weights one token multiplies through in the decoder (attention + MLP projections)."""
    d = llm.hidden_size
    return llm.num_layers * (2 * d * llm.num_heads * llm.head_dim + 2 * d * llm.num_kv_heads * llm.head_dim
                             + 3 * d * llm.intermediate_size)


def vit_params(vision: VisionConfig) -> int:
    """Weights one patch multiplies through in the vision tower."""
    return vision.num_layers * (4 * vision.hidden_size ** 2 + 2 * vision.hidden_size * vision.intermediate_size)


def local_data_config(config, process_count: int, **derived) -> ml_collections.ConfigDict:
    """A copy of `config.data` with this process's `batch_size` and the `derived` fields (sizes the
    method computes, e.g. `num_visual_tokens`); `config` itself is never changed."""
    g = config.train.global_batch
    if g % process_count:
        raise ValueError(f"config.train.global_batch={g} is not divisible by {process_count} processes")
    cfg = ml_collections.ConfigDict(copy.deepcopy(config.data.to_dict()))
    cfg.batch_size = g // process_count
    for key, value in derived.items():
        cfg[key] = value
    return cfg


def add_memory_tool_args(ap, *, config: str, hardware: str) -> None:
    """The flags both memory tools (methods/*/memory.py) share."""
    ap.add_argument("--config", default=config, help="config file[:args]")
    ap.add_argument("--hardware", default=hardware)
    ap.add_argument("--layers", type=int, default=0, help="override LLM/ViT depth (0 = full size)")
    ap.add_argument("--tensor", type=int, default=0, help="override hardware.ici_tensor (0 = preset)")
    ap.add_argument("--per-device-batch", type=int, default=0, help="override hardware.per_device_batch")
    ap.add_argument("--global-batch", type=int, default=0, help="override train.global_batch")
    ap.add_argument("--remat", default="", help="override hardware.remat (none|full|dots|dots_no_batch)")


def memory_tool_config(args) -> ml_collections.ConfigDict:
    """The config a memory tool analyses: `--config` with `--hardware` and the overrides above
    (a new config, built and locked here; nothing is changed after)."""
    path, _, arg = args.config.partition(":")
    c = config_lib.load(path, ",".join(a for a in (arg, f"hardware={args.hardware}") if a))
    c.unlock()
    if args.tensor:
        c.hardware.ici_tensor = args.tensor
    if args.per_device_batch:
        c.hardware.per_device_batch = args.per_device_batch
    if args.global_batch:
        c.train.global_batch = args.global_batch
    if args.remat:
        c.hardware.remat = args.remat
    if args.layers:
        c.model.llm.num_layers = args.layers
        c.model.vision.num_layers = args.layers
    return config_lib.finalize(c)
