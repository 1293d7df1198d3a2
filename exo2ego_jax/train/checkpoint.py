"""Orbax checkpoints: train state + Grain iterator state + config JSON, async, keep-N.

Orbax writes each step into a temporary directory and renames it only once every file is
committed, so an interrupted save never touches the last good checkpoint (the half-written
temporary directory is ignored by `latest_step` and removed on the next start).

Damage after the fact (a deleted or truncated file, a metadata JSON that no longer parses) is
found on restore: each finished step gets a manifest of its files and sizes (``FILES_JSON``,
written once the save is committed), every JSON file of the step must parse, and the state and
data iterator must restore. ``restore_latest`` falls back to the newest step that passes, with a
WARNING naming both steps and the damaged file, and moves the damaged steps aside (never deletes
them). A save that fails (e.g. the disk is full) stops the run with one message naming the
step, the path, the cause and the last good checkpoint.
"""
from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import time
from typing import Any

import grain.checkpoint as grain_ckpt
import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from exo2ego_jax import config_lib
from exo2ego_jax.train import layer_slices
from exo2ego_jax.train.state import flatten, unflatten


FILES_JSON = "exo2ego_files.json"  # {relative path: size in bytes} of a committed step (ours, not Orbax's)
DAMAGED_DIR = "damaged_checkpoints"  # next to the checkpoint directory: damaged steps moved aside


class CheckpointError(RuntimeError):
    """No checkpoint restores, or a save failed; the message says what to do."""


def _is_local(path: Any) -> bool:
    return "://" not in os.fspath(path)


def _walk_files(step_dir: str) -> dict[str, int]:
    out = {}
    for d, _, files in os.walk(step_dir):
        for f in files:
            full = os.path.join(d, f)
            rel = os.path.relpath(full, step_dir)
            if not rel.startswith(FILES_JSON):  # the manifest itself (and its .tmp)
                out[rel] = os.path.getsize(full)
    return out


def find_damage(step_dir: str) -> str | None:
    """Why the committed checkpoint in `step_dir` cannot be trusted, naming the file; None if the
    cheap checks pass (files of the manifest present with their sizes, JSON files parse)."""
    for d, _, files in os.walk(step_dir):
        for f in files:
            path = os.path.join(d, f)
            # Orbax's metadata files are JSON, some without a .json suffix.
            if f.endswith(".json") or f in ("_CHECKPOINT_METADATA", "_METADATA", "metadata", "_sharding"):
                try:
                    with open(path, "rb") as fh:
                        json.loads(fh.read().decode("utf-8"))
                except (UnicodeDecodeError, json.JSONDecodeError) as e:
                    return f"{path}: malformed JSON ({e})"
    manifest = os.path.join(step_dir, FILES_JSON)
    if os.path.exists(manifest):
        try:
            with open(manifest) as f:
                want = json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            return f"{manifest}: unreadable manifest ({e})"
        have = _walk_files(step_dir)
        for rel, size in sorted(want.items()):
            if rel not in have:
                return f"{os.path.join(step_dir, rel)}: file is missing"
            if have[rel] != size:
                return f"{os.path.join(step_dir, rel)}: {have[rel]} bytes, {size} when saved (truncated or changed)"
    return None


def _no_space(error: BaseException) -> bool:
    """Whether `error` (or anything it was raised from) is a full disk."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "No space left on device" in str(error) or "Disk quota exceeded" in str(error):
            return True
        error = error.__cause__ or error.__context__
    return False


def _first_line(error: BaseException, limit: int = 300) -> str:
    text = f"{type(error).__name__}: {error}".strip().splitlines()[0]
    return text[:limit]


class _OneLineThreadErrors(logging.Filter):
    """Orbax logs a failed background write with its whole traceback, once per thread that sees it;
    the cause is in the message, and Checkpointer reports the failure itself (step, path, last good
    checkpoint). Keeps Orbax's error records to their one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and f"{os.sep}orbax{os.sep}" in record.pathname:
            record.exc_info, record.exc_text = None, None
        return True


_THREAD_ERRORS = _OneLineThreadErrors()


class Checkpointer:
    """Decides when to save (step interval, time interval, preemption, last step) and saves."""

    def __init__(self, directory: str, tc):
        self.directory = epath.Path(directory)
        self.every = tc.ckpt_every
        self.every_secs = tc.ckpt_every_secs
        if _THREAD_ERRORS not in logging.getLogger("absl").filters:
            logging.getLogger("absl").addFilter(_THREAD_ERRORS)
        self.async_save = bool(tc.async_ckpt)
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=tc.keep, create=True, cleanup_tmp_directories=True,
                enable_async_checkpointing=tc.async_ckpt),
            item_handlers={"state": ocp.StandardCheckpointHandler(),
                           "frozen": ocp.StandardCheckpointHandler(),
                           "data_iter": grain_ckpt.CheckpointHandler(),
                           "config": ocp.JsonCheckpointHandler(),
                           "metrics_window": ocp.JsonCheckpointHandler()})
        self.metrics_window: list[dict[str, float]] | None = None  # of the last restore (see save)
        self._last_time = time.time()
        self._unlisted: list[int] = []  # saved steps whose FILES_JSON is not written yet
        self._failed: CheckpointError | None = None  # a save that failed: reported once, then stop

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

    def save(self, step: int, state: Any, data_iter: Any, config, frozen: Any = None,
             metrics_window: list[dict[str, float]] | None = None) -> None:
        """Saves `step` (asynchronously when configured). Raises CheckpointError when this or an
        earlier asynchronous save failed (one message: step, path, cause, last good checkpoint).

        metrics_window: per-step metrics of the logging window still open at `step`, so that a
        resumed run logs the same rows as an uninterrupted one (``restore`` sets ``metrics_window``).
        """
        self.check()
        if self._unlisted:  # the previous asynchronous save: a failure is that step's, not this one's
            self.wait()
        last_good = self._last_committed()
        # Checkpoints hold stacked layers whatever the step's layout (train/layer_slices.py), so
        # any layer loop, tool or stage restores them.
        state, frozen = layer_slices.stacked(state), layer_slices.stacked(frozen)
        args = {"state": ocp.args.StandardSave(state),
                "config": ocp.args.JsonSave(config_lib.to_json_dict(config))}
        if frozen:
            # Frozen parameters are not needed to resume (they are rebuilt from init /
            # load_pretrained / init_from), but the next stage's init_from needs the whole model:
            # stage 2 reads the ego encoder trained in stage 0 through stage 1's checkpoint.
            args["frozen"] = ocp.args.StandardSave(frozen)
        if data_iter is not None:
            args["data_iter"] = grain_ckpt.CheckpointSave(data_iter)
        if metrics_window is not None:
            args["metrics_window"] = ocp.args.JsonSave(metrics_window)
        try:
            # An asynchronous save first waits for the previous one: after this call every step in
            # _unlisted is committed.
            self.manager.save(step, args=ocp.args.Composite(**args), force=True)
            if not self.async_save:
                self.manager.wait_until_finished()
        except Exception as e:  # noqa: BLE001 (any failure of a save stops the run with one message)
            raise self._save_failed(step, e, last_good) from None
        self._write_manifests()
        self._unlisted = [step]
        if not self.async_save:
            self._write_manifests()
        self._last_time = time.time()

    def check(self) -> None:
        """Raises CheckpointError if an asynchronous save has failed since the last call."""
        if self._failed is not None:
            raise self._failed
        try:
            self.manager.check_for_errors()
        except Exception as e:  # noqa: BLE001
            step = self._unlisted[-1] if self._unlisted else -1
            raise self._save_failed(step, e, self._last_committed(exclude=step)) from None

    def _last_committed(self, exclude: int | None = None) -> str:
        steps = [s for s in ocp.utils.checkpoint_steps(self.directory) if s != exclude] \
            if self.directory.exists() else []
        return str(self.directory / str(max(steps))) if steps else "none (no checkpoint was written yet)"

    def _save_failed(self, step: int, error: BaseException, last_good: str) -> CheckpointError:
        cause = "No space left on device" if _no_space(error) else _first_line(error)
        hint = ("free disk space or point --workdir at a larger disk" if _no_space(error)
                else "fix the cause above")
        self._failed = CheckpointError(
            f"saving checkpoint step {step} to {self.directory / str(step)} failed: {cause}. Training "
            f"stopped at this save. Last good checkpoint: {last_good} (left as it was). To continue, "
            f"{hint} and re-run the same command: it resumes from the last good checkpoint.")
        logging.error("%s", self._failed)
        return self._failed

    def _write_manifests(self) -> None:
        """FILES_JSON of every committed step not listed yet (process 0, local paths)."""
        todo, self._unlisted = self._unlisted, []
        if jax.process_index() != 0 or not _is_local(self.directory):
            return
        for step in todo:
            step_dir = os.fspath(self.directory / str(step))
            if os.path.isdir(step_dir):
                tmp = os.path.join(step_dir, FILES_JSON + ".tmp")
                with open(tmp, "w") as f:
                    json.dump(_walk_files(step_dir), f, sort_keys=True)
                os.replace(tmp, os.path.join(step_dir, FILES_JSON))

    def restore(self, step: int, abstract_state: Any, data_iter: Any = None) -> Any:
        """Restores `state` onto the shardings carried by `abstract_state` (any mesh shape)."""
        args = {"state": ocp.args.StandardRestore(abstract_state)}
        if data_iter is not None:
            args["data_iter"] = grain_ckpt.CheckpointRestore(data_iter)
        if (self.directory / str(step) / "metrics_window").exists():
            args["metrics_window"] = ocp.args.JsonRestore()
        out = self.manager.restore(step, args=ocp.args.Composite(**args))
        self.metrics_window = out.get("metrics_window") if "metrics_window" in args else None
        return out["state"]

    def restore_latest(self, abstract_state: Any, data_iter: Any = None) -> tuple[int, Any] | None:
        """(step, state) of the newest checkpoint that restores, or None when there is none.

        Each step is validated (find_damage, then a real restore); a damaged newer step is logged
        with the file at fault and moved to DAMAGED_DIR, and the run resumes from the newest step
        that restores, with a WARNING naming both. Raises CheckpointError when none restores.
        """
        steps = sorted(self.manager.all_steps(), reverse=True)
        failures: list[tuple[int, str]] = []
        for step in steps:
            step_dir = os.fspath(self.directory / str(step))
            damage = find_damage(step_dir) if _is_local(self.directory) else None
            if damage is None:
                try:
                    state = self.restore(step, abstract_state, data_iter)
                except Exception as e:  # noqa: BLE001 (whatever the damage, this step cannot be used)
                    damage = f"{step_dir}: cannot be restored ({_first_line(e)})"
            if damage is not None:
                logging.error("checkpoint step %d is damaged: %s", step, damage)
                failures.append((step, damage))
                continue
            if failures:
                moved = self._set_aside([s for s, _ in failures])
                logging.warning(
                    "checkpoint step %d is damaged (%s); resuming from step %d instead, the newest checkpoint "
                    "that restores (damaged step(s) moved to %s)", failures[0][0], failures[0][1], step, moved)
            return step, state
        if failures:
            raise CheckpointError(
                f"no checkpoint in {self.directory} restores: "
                + "; ".join(f"step {s}: {d}" for s, d in failures)
                + ". Restore the damaged files from a backup, or move the checkpoints directory away to "
                  "train from the start (--workdir elsewhere).")
        return None

    def _set_aside(self, steps: list[int]) -> str:
        """Moves damaged steps out of the manager's directory (kept, never deleted): a later save of
        the same step must not collide with them, and they must not be picked up again."""
        dest = self.directory.parent / DAMAGED_DIR
        if jax.process_index() == 0:
            for step in steps:
                target = dest / f"{step}-{time.strftime('%Y%m%d-%H%M%S')}"
                dest.mkdir(parents=True, exist_ok=True)
                shutil.move(os.fspath(self.directory / str(step)), os.fspath(target))
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils
            multihost_utils.sync_global_devices("exo2ego_checkpoint_set_aside")
        self.manager.reload()
        return os.fspath(dest)

    def wait(self) -> None:
        try:
            self.manager.wait_until_finished()
        except Exception as e:  # noqa: BLE001
            if self._failed is None:
                step = self._unlisted[-1] if self._unlisted else -1
                raise self._save_failed(step, e, self._last_committed(exclude=step)) from None
            raise self._failed from None
        self._write_manifests()

    def close(self) -> None:
        """Waits for the last save and closes. After a failed save (already reported), closes
        quietly: the original error is the one that matters."""
        if self._failed is not None:
            try:
                self.manager.close()
            except Exception:  # noqa: BLE001 (secondary errors of the same failed save)
                logging.info("closing the checkpoint manager after the failed save raised again (ignored)")
            return
        try:
            self.wait()
        finally:
            if self._failed is not None:
                try:
                    self.manager.close()
                except Exception:  # noqa: BLE001
                    pass
            else:
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
