"""The training methods the one trainer runs, by `config.method`.

A method is a small object built once from the locked config (`build(config)`); it binds what
the config fixes for the whole run (loss switches, token ids, the data recipe) and never changes
the config. What the trainer calls:

- `build_model(rngs: nnx.Rngs) -> nnx.Module`: every parameter the step touches.
- `loss(model, batch, rng) -> (loss f32 scalar, metrics: dict[str, scalar])`.
- `dataset(split, process_index, process_count)` -> a Grain iterable of per-process batches.
- `tokens_in_batch(batch) -> int` (tokens/s) and `flops_per_example() -> float` (MFU).
- optional `load_pretrained(model)` (HF weights, other stages' checkpoints; before
  `train.init_from`), `num_train_examples()` (needed with `train.epochs > 0`), and
  `eval_model(workdir)` (the adapter behind job "eval").
"""
from __future__ import annotations

import importlib

# name -> "module:class"; modules are imported only when their method is used.
METHODS = {
    "toy": "exo2ego_jax.methods.toy:Toy",
    "exo2ego": "exo2ego_jax.methods.exo2ego.method:Exo2Ego",
    "ego2exo": "exo2ego_jax.methods.ego2exo.method:Ego2Exo",
}


def method_class(name: str):
    if name not in METHODS:
        raise ValueError(f"config.method={name!r}; expected one of {sorted(METHODS)}")
    module, _, cls = METHODS[name].partition(":")
    return getattr(importlib.import_module(module), cls)


def build(config):
    """The method object of `config.method`, bound to `config`."""
    return method_class(config.method)(config)
