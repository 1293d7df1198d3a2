"""Multi-stage runner (job ``exo2ego_pipeline``): trains the Exo2Ego stages in order.

The pipeline config holds one full trainer config per stage (``config.stages.<name>``) and the
order (``config.order``). Stage ``k`` runs the one trainer (train/loop.py) in ``workdir/<name>``
with ``train.init_from`` = the previous stage's workdir, plus ``exo2ego.init_sources`` for
parameters that an earlier stage trained but the previous one only kept frozen (a checkpoint
holds trainable parameters only): ``config.sources.<name>`` lists ``"regex=<stage name>"``.

Restarting continues where it stopped: a stage whose final checkpoint exists is skipped, a stage
with a partial checkpoint resumes from it (the trainer restores state and data iterator).
"""
from __future__ import annotations

import copy
import json
import logging
import os
from typing import Any

from exo2ego_jax import config_lib
from exo2ego_jax.train import loop

DONE_FILE = "stage_done.json"


def stage_dirs(config, workdir: str) -> dict[str, str]:
    return {name: os.path.join(workdir, name) for name in config.order}


def is_done(stage_dir: str) -> bool:
    """A stage is done when its final checkpoint was written (the runner then drops DONE_FILE)."""
    return os.path.exists(os.path.join(stage_dir, DONE_FILE))


def resolve_stage(config, name: str, workdir: str) -> config_lib.ConfigDict:
    """The trainer config of stage `name` with init_from / init_sources pointing at stage dirs."""
    if name not in config.stages:
        raise KeyError(f"pipeline: stage {name!r} in config.order has no config.stages entry "
                       f"(have {sorted(config.stages)})")
    dirs = stage_dirs(config, workdir)
    order = list(config.order)
    cfg = copy.deepcopy(config.stages[name])
    with cfg.unlocked():
        i = order.index(name)
        cfg.train.init_from = cfg.train.init_from or (dirs[order[i - 1]] if i > 0 else "")
        sources = []
        for entry in config.sources.get(name, ()):
            regex, sep, src = entry.partition("=")
            if not sep or src not in dirs:
                raise ValueError(f"pipeline: config.sources.{name} entry {entry!r}: expected "
                                 f"'regex=<stage name>' with a stage of {order}")
            sources.append(f"{regex}={dirs[src]}")
        if sources:
            cfg.exo2ego.init_sources = tuple(sources)
    return cfg


def run(config, workdir: str) -> dict[str, Any]:
    """Job exo2ego_pipeline: every stage of `config.order`, skipping finished ones."""
    results = {}
    for name, stage_dir in stage_dirs(config, workdir).items():
        if is_done(stage_dir):
            with open(os.path.join(stage_dir, DONE_FILE)) as f:
                results[name] = json.load(f)
            logging.info("pipeline: %s already done (%s), skipping", name, stage_dir)
            continue
        cfg = resolve_stage(config, name, workdir)
        logging.info("pipeline: running %s in %s (init_from=%r, init_sources=%r)", name, stage_dir,
                     cfg.train.init_from, tuple(cfg.exo2ego.init_sources))
        metrics = loop.train(cfg, stage_dir)
        metrics = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
        os.makedirs(stage_dir, exist_ok=True)
        with open(os.path.join(stage_dir, DONE_FILE), "w") as f:
            json.dump(metrics, f, indent=1)
        results[name] = metrics
    return results
