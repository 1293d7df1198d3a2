"""Orbax checkpoints: train state + Grain iterator state + config JSON, async, keep-N.

Orbax writes each step into a temporary directory and renames it only once every file is
committed, so an interrupted save never touches the last good checkpoint (the half-written
temporary directory is ignored by `latest_step` and removed on the next start).
"""
from __future__ import annotations

import logging
import os
import time
from typing import Any

import grain.checkpoint as grain_ckpt
import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from exo2ego_jax import config_lib


class Checkpointer:
    """Decides when to save (step interval, time interval, preemption, last step) and saves."""

    def __init__(self, directory: str, tc):
        self.directory = epath.Path(directory)
        self.every = tc.ckpt_every
        self.every_secs = tc.ckpt_every_secs
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=tc.keep, create=True, cleanup_tmp_directories=True,
                enable_async_checkpointing=tc.async_ckpt),
            item_handlers={"state": ocp.StandardCheckpointHandler(),
                           "frozen": ocp.StandardCheckpointHandler(),
                           "data_iter": grain_ckpt.CheckpointHandler(),
                           "config": ocp.JsonCheckpointHandler()})
        self._last_time = time.time()

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def should_save(self, step: int, last: bool, check_time: bool) -> bool:
        if last or (self.every and step % self.every == 0):
            return True
        if self.manager.reached_preemption(step):
            logging.warning("preemption notice at step %d: saving", step)
            return True
        if check_time and self.every_secs:
            decision = time.time() - self._last_time >= self.every_secs
            if jax.process_count() > 1:
                # Clocks differ between hosts: every process takes process 0's decision (all of
                # them reach this call at the same logging steps, so the collective matches).
                from jax.experimental import multihost_utils
                decision = bool(multihost_utils.broadcast_one_to_all(np.asarray(decision)))
            return decision
        return False

    def save(self, step: int, state: Any, data_iter: Any, config, frozen: Any = None) -> None:
        args = {"state": ocp.args.StandardSave(state),
                "config": ocp.args.JsonSave(config_lib.to_json_dict(config))}
        if frozen:
            # Frozen parameters are not needed to resume (they are rebuilt from init /
            # load_pretrained / init_from), but the next stage's init_from needs the whole model:
            # stage 2 reads the ego encoder trained in stage 0 through stage 1's checkpoint.
            args["frozen"] = ocp.args.StandardSave(frozen)
        if data_iter is not None:
            args["data_iter"] = grain_ckpt.CheckpointSave(data_iter)
        self.manager.save(step, args=ocp.args.Composite(**args), force=True)
        self._last_time = time.time()

    def restore(self, step: int, abstract_state: Any, data_iter: Any = None) -> Any:
        """Restores `state` onto the shardings carried by `abstract_state` (any mesh shape)."""
        args = {"state": ocp.args.StandardRestore(abstract_state)}
        if data_iter is not None:
            args["data_iter"] = grain_ckpt.CheckpointRestore(data_iter)
        out = self.manager.restore(step, args=ocp.args.Composite(**args))
        return out["state"]

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def resolve_checkpoint_dir(path: str) -> tuple[epath.Path, int]:
    """`path` may be a workdir (uses workdir/checkpoints, latest step), a manager dir, or a step dir."""
    p = epath.Path(path)
    for cand in (p / "checkpoints", p):
        if cand.exists():
            steps = ocp.utils.checkpoint_steps(cand)
            if steps:
                return cand, max(steps)
    if (p / "state").exists() and p.name.isdigit():
        return p.parent, int(p.name)
    raise FileNotFoundError(
        f"config.train.init_from={path!r}: no Orbax checkpoint found there, in {path}/checkpoints, "
        "or as a step directory; point it at a previous stage's workdir or checkpoint step")


def load_params(path: str, abstract_params: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Loads the parameters (trainable and frozen) of another run's checkpoint, matched by path.

    `abstract_params` is a flat {path: ShapeDtypeStruct(sharding=...)} of the parameters this
    stage wants; returns ({path: array} for those found in the checkpoint, missing paths).
    """
    from exo2ego_jax.train.state import flatten, unflatten
    directory, step = resolve_checkpoint_dir(path)
    out: dict[str, Any] = {}
    wanted = dict(abstract_params)
    # Trainable parameters live in `state/params`, frozen ones in `frozen`; a path found in the
    # trainable item wins (it is the newer value when a stage trained it).
    for item_name, prefix in (("state", ("params",)), ("frozen", ())):
        item = directory / str(step) / item_name
        if not wanted or not item.exists():
            continue
        meta = ocp.StandardCheckpointer().metadata(item)
        tree = meta.item_metadata.tree if hasattr(meta, "item_metadata") else meta
        for key in prefix:
            tree = tree.get(key, {})
        saved = flatten(tree)
        found = {k: v for k, v in wanted.items() if k in saved}
        for k, v in found.items():
            if tuple(saved[k].shape) != tuple(v.shape):
                raise ValueError(f"init_from {item}: parameter {k} has shape {tuple(saved[k].shape)} "
                                 f"there but {tuple(v.shape)} in this model")
        if not found:
            continue
        # Partial restore: only the parameters this stage wants, onto this mesh's shardings.
        target = unflatten(found)
        for key in reversed(prefix):
            target = {key: target}
        with ocp.PyTreeCheckpointer() as ckptr:
            restored = ckptr.restore(
                item, args=ocp.args.PyTreeRestore(
                    item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
                    partial_restore=True))
        for key in prefix:
            restored = restored[key]
        out.update(flatten(restored))
        wanted = {k: v for k, v in wanted.items() if k not in found}
    missing = sorted(wanted)
    logging.info("init_from %s step %d: loaded %d parameters, %d not found", directory, step,
                 len(out), len(missing))
    return out, missing


def config_path(workdir: str) -> str:
    return os.path.join(workdir, "config.json")
