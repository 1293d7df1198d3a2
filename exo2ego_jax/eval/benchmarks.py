"""The benchmark registry: name -> record kind, prompt family, and how to load it from config.

`config.eval.paths.<name>` holds the files of each benchmark (see configs/eval.py).
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable

from exo2ego_jax.eval import loaders_mcq as mcq
from exo2ego_jax.eval import loaders_retrieval as ret
from exo2ego_jax.eval import open_qa


@dataclasses.dataclass(frozen=True)
class Benchmark:
    name: str
    kind: str  # "mcq" | "open_qa" | "retrieval" | "multi_instance_retrieval" | "classification"
    family: str  # selects task details and the prompt style under "auto"
    load: Callable[[Any, Any], Any]  # (paths ConfigDict, eval ConfigDict) -> records


def _need(paths, name: str, *fields: str) -> None:
    missing = [f for f in fields if not paths.get(f)]
    if missing:
        raise ValueError(f"benchmark {name!r}: set {', '.join(f'--config.eval.paths.{name}.{f}' for f in missing)}")


def _mcq_loader(name: str, fn, *extra: str):
    def load(paths, cfg):
        _need(paths, name, "annotation", "video_dir")
        return fn(paths.annotation, paths.video_dir, **{k: paths[k] for k in extra})
    return load


def _egoschema(paths, cfg):
    _need(paths, "egoschema", "annotation", "video_dir")
    return mcq.load_egoschema(paths.annotation, paths.video_dir, paths.get("answers", ""),
                              labelled_only=cfg.egoschema_labelled_only)


def _qaego4d(paths, cfg):
    _need(paths, "qaego4d_closed", "annotation", "video_dir")
    return mcq.load_qaego4d_closed(paths.annotation, paths.video_dir, seed=cfg.qaego4d_shuffle_seed)


def _qaego4d_open(paths, cfg):
    _need(paths, "qaego4d_open", "annotation", "video_dir")
    return open_qa.load_qaego4d_open(paths.annotation, paths.video_dir)


def _epic_mir(paths, cfg):
    _need(paths, "epic_mir", "annotation", "sentences", "relevance", "video_dir")
    return ret.load_epic_mir(paths.annotation, paths.sentences, paths.relevance, paths.video_dir,
                             video_ext=paths.video_ext, video_subdir=paths.video_subdir)


def _mcq_json(paths, cfg):
    """`eval.mcq_json`: a QaEgo4D-closed-format MCQ file (what the synthetic EgoBench writes)."""
    if not cfg.get("mcq_json"):
        raise ValueError("benchmark 'mcq_json': set --config.eval.mcq_json=<file>")
    video_dir = cfg.get("mcq_json_video_dir") or os.path.dirname(os.path.abspath(cfg.mcq_json))
    return mcq.load_qaego4d_closed(cfg.mcq_json, video_dir, seed=cfg.qaego4d_shuffle_seed)


def _ego_in_exo(paths, cfg):
    _need(paths, "ego_in_exo", "annotation", "video_dir")
    views = tuple(v.strip() for v in cfg.ego_in_exo_views.split(",") if v.strip())
    return mcq.load_ego_in_exo(paths.annotation, paths.video_dir, views=views)


def _egomcq(paths, cfg):
    _need(paths, "egomcq", "annotation", "video_dir")
    return ret.load_egomcq(paths.annotation, paths.video_dir, strip_tags=cfg.egomcq_strip_tags)


def _charades(paths, cfg):
    _need(paths, "charades_ego", "annotation", "video_dir", "classes")
    return ret.load_charades_ego(paths.annotation, paths.video_dir, paths.classes,
                                 only_egocentric=cfg.charades_only_egocentric)


BENCHMARKS: dict[str, Benchmark] = {b.name: b for b in [
    Benchmark("egoschema", "mcq", "egoschema", _egoschema),
    Benchmark("egoplan", "mcq", "egoplan", _mcq_loader("egoplan", mcq.load_egoplan)),
    Benchmark("egoplan2", "mcq", "egoplan", _mcq_loader("egoplan2", mcq.load_egoplan)),
    Benchmark("qaego4d_closed", "mcq", "qaego4d", _qaego4d),
    Benchmark("qaego4d_open", "open_qa", "qaego4d", _qaego4d_open),
    Benchmark("egotaskqa", "mcq", "egotaskqa", _mcq_loader("egotaskqa", mcq.load_egotaskqa_mcq)),
    Benchmark("vlnqa", "mcq", "vlnqa", _mcq_loader("vlnqa", mcq.load_vlnqa)),
    Benchmark("ego_in_exo", "mcq", "ego_in_exo", _ego_in_exo),
    Benchmark("adlx_charades_ar", "mcq", "adlx", _mcq_loader("adlx_charades_ar", mcq.load_adlx)),
    Benchmark("adlx_smarthome_ar", "mcq", "adlx", _mcq_loader("adlx_smarthome_ar", mcq.load_adlx)),
    Benchmark("adlx_lemma_tc", "mcq", "adlx", _mcq_loader("adlx_lemma_tc", mcq.load_adlx)),
    Benchmark("adlx_tsu_tc", "mcq", "adlx", _mcq_loader("adlx_tsu_tc", mcq.load_adlx)),
    Benchmark("egomcq", "retrieval", "egomcq", _egomcq),
    Benchmark("charades_ego", "classification", "charades_ego", _charades),
    Benchmark("epic_mir", "multi_instance_retrieval", "epic_mir", _epic_mir),
    Benchmark("mcq_json", "mcq", "synthetic", _mcq_json),
]}

# `configs/eval.py:suite=<name>`: the benchmarks of a paper's table, run where their files are set.
SUITES = {
    # Exo2Ego's EgoBench (its table's column order).
    "egobench": ("egoschema", "qaego4d_closed", "qaego4d_open", "egotaskqa", "charades_ego", "epic_mir",
                 "egoplan", "vlnqa", "egomcq"),
    # Ego2ExoVLM: Ego-in-Exo Perception and the four ADL-X MCQ sets.
    "ego2exo": ("ego_in_exo", "adlx_charades_ar", "adlx_smarthome_ar", "adlx_lemma_tc", "adlx_tsu_tc"),
}


def is_configured(name: str, cfg) -> bool:
    """Whether benchmark `name` has its files set in `cfg` (suites skip the ones that do not)."""
    if name == "mcq_json":
        return bool(cfg.get("mcq_json"))
    paths = cfg.paths[name]
    return bool(paths.get("annotation")) and bool(paths.get("video_dir"))


def get_benchmark(name: str) -> Benchmark:
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r} in eval.benchmarks; known: {sorted(BENCHMARKS)}")
    return BENCHMARKS[name]
