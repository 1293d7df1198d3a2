"""Run benchmarks with a model adapter and write `results.json` + `results.md` to the workdir.

Job "eval": `python -m exo2ego_jax.main --config configs/eval.py --workdir DIR`. Finished
benchmarks are cached in `DIR/eval/<name>.json` and reused on a rerun with the same settings, so a
preempted evaluation resumes where it stopped (at benchmark granularity).
"""
from __future__ import annotations

import json
import os
from typing import Any, Callable, Sequence, TypeVar

import numpy as np
from absl import logging

from exo2ego_jax import progress
from exo2ego_jax.eval import metrics as metrics_lib
from exo2ego_jax.eval import prompts as prompts_lib
from exo2ego_jax.eval import report
from exo2ego_jax.eval.adapter import build_adapter
from exo2ego_jax.eval.benchmarks import get_benchmark
from exo2ego_jax.eval.config import with_defaults
from exo2ego_jax.eval.parsing import parse_answer
from exo2ego_jax.eval.records import ClassificationSet, MCQRecord, RetrievalRecord

T = TypeVar("T")


def batches(items: Sequence[T], batch_size: int, pad: bool = True):
    """Yield (batch, num_real); with `pad`, a short last batch repeats its last item so every
    call has the same size (static shapes for jitted adapters)."""
    if batch_size < 1:
        raise ValueError(f"eval.batch_size must be >= 1, got {batch_size}")
    for i in progress.bar(range(0, len(items), batch_size), desc="eval", unit="batch"):
        chunk = list(items[i:i + batch_size])
        n = len(chunk)
        if pad and n < batch_size:
            chunk += [chunk[-1]] * (batch_size - n)
        yield chunk, n


def _check_len(out, expected: int, what: str):
    if len(out) != expected:
        raise ValueError(f"model adapter {what} returned {len(out)} results for {expected} inputs")
    return out


def evaluate_mcq(model, records: Sequence[MCQRecord], family: str, *, mode: str = "generate",
                 batch_size: int = 8, prompt_style: str = "auto", first_person: bool = True,
                 task_details: bool = True, first_person_text: str = prompts_lib.FIRST_PERSON_TEXT,
                 overlap_threshold: float = 0.5, loglik_target: str = "text", loglik_normalize: str = "none",
                 pad_batches: bool = True) -> dict[str, Any]:
    """MCQ accuracy by greedy generation + parsing (`generate`) or by option log-likelihood (`loglik`)."""
    if mode not in ("generate", "loglik"):
        raise ValueError(f"eval.mcq_mode: expected 'generate' or 'loglik', got {mode!r}")
    if loglik_normalize not in ("none", "per_char"):
        raise ValueError(f"eval.loglik_normalize: expected 'none' or 'per_char', got {loglik_normalize!r}")
    rows = []
    for batch, n in batches(records, batch_size, pad_batches):
        prompts = [prompts_lib.build_mcq_prompt(r, family, style=prompt_style, first_person=first_person,
                                                task_details=task_details, first_person_text=first_person_text)
                   for r in batch]
        videos = [r.video for r in batch]
        if mode == "generate":
            outputs = _check_len(model.generate(prompts, videos), len(batch), "generate")
        else:
            targets = [prompts_lib.option_targets(r, loglik_target) for r in batch]
            outputs = _check_len(model.option_loglik(prompts, videos, targets), len(batch), "option_loglik")
        for rec, prompt, out in zip(batch[:n], prompts[:n], outputs[:n]):
            row: dict[str, Any] = {"uid": rec.uid, "video": rec.video.to_json(), "prompt": prompt,
                                   "answer_index": rec.answer_index, "category": rec.category, "view": rec.view}
            if mode == "generate":
                parsed = parse_answer(out, rec.options, overlap_threshold)
                row.update(response=out, pred_index=parsed.index, parse_method=parsed.method)
            else:
                scores = np.asarray(out, dtype=np.float64)
                if scores.shape != (len(rec.options),):
                    raise ValueError(f"option_loglik for {rec.uid!r}: expected {len(rec.options)} scores, "
                                     f"got shape {scores.shape}")
                if loglik_normalize == "per_char":
                    scores = scores / np.array([max(len(t), 1) for t in prompts_lib.option_targets(rec, loglik_target)])
                row.update(option_scores=scores.tolist(), pred_index=int(np.argmax(scores)), parse_method="loglik")
            row["correct"] = rec.answer_index is not None and row["pred_index"] == rec.answer_index
            rows.append(row)
    return {"kind": "mcq", "metrics": metrics_lib.mcq_metrics(rows), "predictions": rows}


def evaluate_retrieval(model, records: Sequence[RetrievalRecord], *, batch_size: int = 8,
                       pad_batches: bool = True) -> dict[str, Any]:
    """EgoMCQ: pick the candidate clip that scores highest against the query text."""
    rows = []
    for batch, n in batches(records, batch_size, pad_batches):
        if hasattr(model, "pair_scores"):
            texts = [r.query for r in batch for _ in r.candidates]
            videos = [v for r in batch for v in r.candidates]
            flat = np.asarray(model.pair_scores(texts, videos), dtype=np.float64)
            if flat.shape != (len(texts),):
                raise ValueError(f"model adapter pair_scores: expected shape ({len(texts)},), got {flat.shape}")
            per_record, offset = [], 0
            for r in batch:
                per_record.append(flat[offset:offset + len(r.candidates)])
                offset += len(r.candidates)
        else:
            videos = [v for r in batch for v in r.candidates]
            sims = np.asarray(model.text_video_scores([r.query for r in batch], videos), dtype=np.float64)
            if sims.shape != (len(batch), len(videos)):
                raise ValueError(f"model adapter text_video_scores: expected shape {(len(batch), len(videos))}, "
                                 f"got {sims.shape}")
            per_record, offset = [], 0
            for i, r in enumerate(batch):
                per_record.append(sims[i, offset:offset + len(r.candidates)])
                offset += len(r.candidates)
        for rec, scores in zip(batch[:n], per_record[:n]):
            pred = int(np.argmax(scores))
            rows.append({"uid": rec.uid, "query": rec.query, "group": rec.group, "answer_index": rec.answer_index,
                         "scores": scores.tolist(), "pred_index": pred, "correct": pred == rec.answer_index})
    return {"kind": "retrieval", "metrics": metrics_lib.retrieval_metrics(rows), "predictions": rows}


def evaluate_classification(model, dataset: ClassificationSet, *, batch_size: int = 8,
                            class_template: str = "{}", pad_batches: bool = True) -> dict[str, Any]:
    """Charades-Ego: zero-shot multi-label scores = text_video_scores(class names, videos); mAP."""
    texts = [class_template.format(name) for name in dataset.class_names]
    num_classes = len(texts)
    scores, rows = [], []
    for batch, n in batches(dataset.records, batch_size, pad_batches):
        sims = np.asarray(model.text_video_scores(texts, [r.video for r in batch]), dtype=np.float64)
        if sims.shape != (num_classes, len(batch)):
            raise ValueError(f"model adapter text_video_scores: expected shape {(num_classes, len(batch))}, "
                             f"got {sims.shape}")
        scores.append(sims.T[:n])
    score_matrix = np.concatenate(scores) if scores else np.zeros((0, num_classes))
    labels = np.zeros((len(dataset.records), num_classes), dtype=bool)
    for i, rec in enumerate(dataset.records):
        labels[i, rec.labels] = True
        top = np.argsort(-score_matrix[i], kind="stable")[:5]
        rows.append({"uid": rec.uid, "labels": rec.labels, "top5": top.tolist()})
    result = {"kind": "classification", "metrics": metrics_lib.mean_average_precision(score_matrix, labels),
              "predictions": rows}
    result["scores"] = score_matrix.tolist()
    return result


def _settings(cfg) -> dict[str, Any]:
    """The eval settings that change results (a cached benchmark is reused only if they match)."""
    keys = ["mcq_mode", "prompt_style", "first_person_prompt", "task_details", "first_person_text",
            "parse_overlap_threshold", "loglik_target", "loglik_normalize", "max_examples",
            "qaego4d_shuffle_seed", "egoschema_labelled_only", "ego_in_exo_views", "egomcq_strip_tags",
            "charades_only_egocentric", "charades_class_template"]
    return {k: cfg.get(k) for k in keys}


def evaluate_benchmark(model, name: str, cfg) -> dict[str, Any]:
    """Load benchmark `name` from `cfg.paths.<name>` and evaluate it."""
    bench = get_benchmark(name)
    data = bench.load(cfg.paths[name], cfg)
    if cfg.max_examples:
        if isinstance(data, ClassificationSet):
            data = ClassificationSet(data.records[:cfg.max_examples], data.class_names)
        else:
            data = data[:cfg.max_examples]
    if bench.kind == "mcq":
        return evaluate_mcq(model, data, bench.family, mode=cfg.mcq_mode, batch_size=cfg.batch_size,
                            prompt_style=cfg.prompt_style, first_person=cfg.first_person_prompt,
                            task_details=cfg.task_details, first_person_text=cfg.first_person_text,
                            overlap_threshold=cfg.parse_overlap_threshold, loglik_target=cfg.loglik_target,
                            loglik_normalize=cfg.loglik_normalize)
    if bench.kind == "retrieval":
        return evaluate_retrieval(model, data, batch_size=cfg.batch_size)
    return evaluate_classification(model, data, batch_size=cfg.batch_size,
                                   class_template=cfg.charades_class_template)


def _read_cache(path: str, settings: dict[str, Any]) -> dict[str, Any] | None:
    if not os.path.exists(path):
        return None
    with open(path) as f:
        cached = json.load(f)
    return cached if cached.get("settings") == settings else None


def evaluate(model, cfg, workdir: str, run_name: str = "", is_writer: bool = True,
             log: Callable[[str], None] = logging.info,
             agree: Callable[[bool], bool] | None = None) -> dict[str, Any]:
    """Evaluate every benchmark in `cfg.benchmarks` (comma-separated), caching each in
    `workdir/eval/<name>.json`, then write `results.json` and `results.md`.

    Every process must call this (adapters run sharded SPMD computations); only `is_writer`
    writes files. `agree(flag)` returns process 0's flag on every process, so all processes skip
    or run a cached benchmark together even when the workdir is not on a shared file system.
    """
    names = [n.strip() for n in cfg.benchmarks.split(",") if n.strip()]
    if not names:
        raise ValueError("eval.benchmarks is empty: name at least one, e.g. --config.eval.benchmarks=egoschema")
    for n in names:
        get_benchmark(n)
    settings = _settings(cfg)
    cache_dir = os.path.join(workdir, "eval")
    results: dict[str, Any] = {"run": run_name or os.path.basename(os.path.normpath(workdir)),
                               "settings": settings, "benchmarks": {}}
    for name in names:
        cache = os.path.join(cache_dir, f"{name}.json")
        cached = _read_cache(cache, settings) if cfg.resume else None
        reuse = cached is not None
        if agree is not None:
            reuse = agree(reuse)
        if reuse:
            log(f"eval: {name}: reusing {cache}")
            # A process without the file (non-shared disk) keeps an empty entry; process 0 writes.
            results["benchmarks"][name] = cached or {"kind": get_benchmark(name).kind, "metrics": {},
                                                     "predictions": [], "settings": settings}
            continue
        res = evaluate_benchmark(model, name, cfg)
        res["settings"] = settings
        if not cfg.save_scores:
            res.pop("scores", None)  # [N, 157] floats: large, only needed to recompute mAP
        results["benchmarks"][name] = res
        log(f"eval: {name}: " + ", ".join(f"{k}={report.fmt(v)}" for k, v in report.headline(res).items()))
        if is_writer:
            os.makedirs(cache_dir, exist_ok=True)
            report.write_json(cache, res)
    if is_writer:
        report.write_results(workdir, results)
    return results


def run(config, workdir: str) -> dict[str, Any]:
    """The "eval" job: build the method's adapter, evaluate, write results; returns headline metrics."""
    import jax  # deferred: loaders, parsing and metrics need no JAX

    cfg = with_defaults(config.eval)
    model = build_adapter(config, workdir)
    agree = None
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        def agree(flag: bool) -> bool:
            return bool(multihost_utils.broadcast_one_to_all(np.int32(flag)))
    is_writer = jax.process_index() == 0
    results = evaluate(model, cfg, workdir, run_name=cfg.run_name, is_writer=is_writer, agree=agree)
    if is_writer:
        print(report.render_markdown(results))
    return {f"{name}/{k}": v for name, res in results["benchmarks"].items() for k, v in report.headline(res).items()}
