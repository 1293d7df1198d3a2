"""Run benchmarks with a model adapter and write `results.json` + `results.md` to the workdir.

Job "eval": `python -m exo2ego_jax.main --config configs/eval.py --workdir DIR` (`:suite=egobench`
for the whole EgoBench table; docs/evaluation.md). Finished
benchmarks are cached in `DIR/eval/<name>.json` and reused on a rerun with the same settings, so a
preempted evaluation resumes where it stopped (at benchmark granularity).
"""
from __future__ import annotations

import json
import os
import time
from typing import Any, Callable, Sequence, TypeVar

import numpy as np
from absl import logging

from exo2ego_jax import progress
from exo2ego_jax.eval import metrics as metrics_lib
from exo2ego_jax.eval import open_qa
from exo2ego_jax.eval import prompts as prompts_lib
from exo2ego_jax.eval import report
from exo2ego_jax.eval.adapter import build_adapter
from exo2ego_jax.eval.benchmarks import SUITES, get_benchmark, is_configured
from exo2ego_jax.eval.config import with_defaults
from exo2ego_jax.eval.judge import LLMJudge
from exo2ego_jax.eval.parsing import parse_answer
from exo2ego_jax.eval.records import (ClassificationSet, MCQRecord, MultiInstanceRetrievalSet, OpenQARecord,
                                      RetrievalRecord)

Judge = Callable[[list[str]], list[str]]

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


SCORINGS = ("auto", "embedding", "likelihood")


def resolve_scoring(model, scoring: str) -> str:
    """`auto` -> `embedding` when the adapter has `text_video_scores` (a dual encoder scores a whole
    [texts, videos] matrix from one encoding each), else `likelihood` (an MLLM scores a text as the
    video's caption with `option_loglik`: the way both methods' models, which have no text encoder,
    can compare text with video)."""
    if scoring not in SCORINGS:
        raise ValueError(f"eval.retrieval_scoring: expected one of {SCORINGS}, got {scoring!r}")
    if scoring == "auto":
        scoring = "embedding" if hasattr(model, "text_video_scores") else "likelihood"
    need = "text_video_scores" if scoring == "embedding" else "option_loglik"
    if not hasattr(model, need):
        other = "likelihood" if scoring == "embedding" else "embedding"
        raise ValueError(f"eval.retrieval_scoring={scoring!r} needs an adapter with {need}(...); this one has none: "
                         f"use --config.eval.retrieval_scoring={other} (or auto)")
    return scoring


def caption_loglik(model, caption_prompt: str, videos: Sequence, texts: Sequence[Sequence[str]],
                   loglik_normalize: str = "none") -> np.ndarray:
    """[len(videos), T] log-likelihood of each text of video i as its caption after `caption_prompt`."""
    out = model.option_loglik([caption_prompt] * len(videos), list(videos), [list(t) for t in texts])
    scores = np.asarray(out, dtype=np.float64)
    expected = (len(videos), len(texts[0]) if texts else 0)
    if scores.shape != expected:
        raise ValueError(f"model adapter option_loglik: expected shape {expected}, got {scores.shape}")
    if loglik_normalize == "per_char":
        scores = scores / np.array([[max(len(x), 1) for x in t] for t in texts])
    return scores


def evaluate_retrieval(model, records: Sequence[RetrievalRecord], *, batch_size: int = 8, scoring: str = "auto",
                       caption_prompt: str = "", loglik_normalize: str = "none",
                       pad_batches: bool = True) -> dict[str, Any]:
    """EgoMCQ: pick the candidate clip that scores highest against the query text (`pair_scores`
    if the adapter has it, else `text_video_scores` or the query's caption likelihood per clip)."""
    if not hasattr(model, "pair_scores"):
        scoring = resolve_scoring(model, scoring)
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
        elif scoring == "likelihood":
            videos = [v for r in batch for v in r.candidates]
            flat = caption_loglik(model, caption_prompt, videos, [[r.query] for r in batch for _ in r.candidates],
                                  loglik_normalize)[:, 0]
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
                            class_template: str = "{}", scoring: str = "auto", caption_prompt: str = "",
                            loglik_normalize: str = "none", pad_batches: bool = True) -> dict[str, Any]:
    """Charades-Ego: zero-shot multi-label scores of every class name against every video
    (`text_video_scores`, or each name's caption likelihood); mAP."""
    scoring = resolve_scoring(model, scoring)
    texts = [class_template.format(name) for name in dataset.class_names]
    num_classes = len(texts)
    scores, rows = [], []
    for batch, n in batches(dataset.records, batch_size, pad_batches):
        videos = [r.video for r in batch]
        if scoring == "likelihood":
            scores.append(caption_loglik(model, caption_prompt, videos, [texts] * len(videos), loglik_normalize)[:n])
            continue
        sims = np.asarray(model.text_video_scores(texts, videos), dtype=np.float64)
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


def generate_open_answers(model, records: Sequence[OpenQARecord], family: str, *, batch_size: int = 8,
                          first_person: bool = True, task_details: bool = True,
                          first_person_text: str = prompts_lib.FIRST_PERSON_TEXT,
                          pad_batches: bool = True) -> list[dict[str, Any]]:
    """Greedy free-text answers to open-ended questions (scored by `open_qa.score_answers`)."""
    rows = []
    for batch, n in batches(records, batch_size, pad_batches):
        prompts = [prompts_lib.build_open_prompt(r.question, family, first_person=first_person,
                                                 task_details=task_details, first_person_text=first_person_text)
                   for r in batch]
        outputs = _check_len(model.generate(prompts, [r.video for r in batch]), len(batch), "generate")
        for rec, prompt, out in zip(batch[:n], prompts[:n], outputs[:n]):
            rows.append({"uid": rec.uid, "video": rec.video.to_json(), "prompt": prompt, "question": rec.question,
                         "answer": rec.answer, "response": str(out).strip()})
    return rows


def evaluate_open_qa(model, records: Sequence[OpenQARecord], family: str, *, judge: Judge | None = None,
                     judge_template: str = "", judge_batch_size: int = 8, **generate_kw) -> dict[str, Any]:
    """QaEgo4D open: generate, then score with the judge (accuracy + 0-5 score) or judge-free (EM / F1)."""
    rows = generate_open_answers(model, records, family, **generate_kw)
    metrics = open_qa.score_answers(rows, judge, judge_template, judge_batch_size)
    return {"kind": "open_qa", "metrics": metrics, "predictions": rows}


def mir_similarity(model, data: MultiInstanceRetrievalSet, *, scoring: str = "auto", batch_size: int = 8,
                   text_batch_size: int = 256, caption_prompt: str = "", loglik_normalize: str = "none",
                   pad_batches: bool = True) -> np.ndarray:
    """[videos, sentences] scores of every clip against every sentence.

    embedding: `text_video_scores(sentences, clips)` in [text_batch_size x batch_size] tiles (a
    dual encoder scores the whole matrix from V + S encodings). likelihood: `option_loglik` of each
    sentence as the caption of each clip (`caption_prompt`): V x S scored continuations.
    """
    scoring = resolve_scoring(model, scoring)
    num_videos, num_sentences = len(data.videos), len(data.sentences)
    sim = np.zeros((num_videos, num_sentences), np.float64)
    for v0 in range(0, num_videos, batch_size):
        vids, nv = next(batches(data.videos[v0:v0 + batch_size], batch_size, pad_batches))
        for t0 in range(0, num_sentences, text_batch_size):
            texts, nt = next(batches(data.sentences[t0:t0 + text_batch_size], text_batch_size, pad_batches))
            if scoring == "embedding":
                block = np.asarray(model.text_video_scores(texts, vids), dtype=np.float64)  # [T, V]
                if block.shape != (len(texts), len(vids)):
                    raise ValueError(f"model adapter text_video_scores: expected shape {(len(texts), len(vids))}, "
                                     f"got {block.shape}")
                block = block.T
            else:
                block = caption_loglik(model, caption_prompt, vids, [texts] * len(vids), loglik_normalize)  # [V, T]
            sim[v0:v0 + nv, t0:t0 + nt] = block[:nv, :nt]
    return sim


def evaluate_multi_instance_retrieval(model, data: MultiInstanceRetrievalSet, **kw) -> dict[str, Any]:
    """EPIC-KITCHENS-100 MIR: mAP / nDCG (video->text, text->video, average) from the score matrix."""
    sim = mir_similarity(model, data, **kw)
    rows = []
    for i, uid in enumerate(data.video_uids):
        top = np.argsort(-sim[i], kind="stable")[:5]
        rows.append({"uid": uid, "narration": data.meta[i].get("narration") if data.meta else None,
                     "top5_sentences": [data.sentence_uids[j] for j in top]})
    return {"kind": "multi_instance_retrieval", "metrics": metrics_lib.multi_instance_retrieval_metrics(
        sim, data.relevance), "predictions": rows, "scores": sim.tolist()}


def first_person(cfg, family: str) -> bool:
    """The cue is on for EgoBench (`first_person_cue`) and separately set for the exocentric
    Ego-in-Exo / ADL-X benchmarks (`exo_first_person_cue`, off)."""
    return bool(cfg.exo_first_person_cue if family in prompts_lib.EGO2EXO_BENCHMARKS else cfg.first_person_cue)


def _settings(cfg) -> dict[str, Any]:
    """The eval settings that change results (a cached benchmark is reused only if they match)."""
    keys = ["mcq_mode", "prompt_style", "first_person_cue", "exo_first_person_cue", "task_details",
            "first_person_text", "parse_overlap_threshold", "loglik_target", "loglik_normalize", "max_examples",
            "qaego4d_shuffle_seed", "egoschema_labelled_only", "ego_in_exo_views", "egomcq_strip_tags",
            "charades_only_egocentric", "charades_class_template", "retrieval_scoring", "mcq_json"]
    out = {k: cfg.get(k) for k in keys}
    out["judge"] = open_qa.judge_settings(cfg.judge)
    return out


def evaluate_benchmark(model, name: str, cfg, judge: Judge | None = None) -> dict[str, Any]:
    """Load benchmark `name` from `cfg.paths.<name>` and evaluate it."""
    bench = get_benchmark(name)
    data = bench.load(cfg.paths[name] if name in cfg.paths else None, cfg)
    if cfg.max_examples:
        if isinstance(data, ClassificationSet):
            data = ClassificationSet(data.records[:cfg.max_examples], data.class_names)
        elif isinstance(data, MultiInstanceRetrievalSet):
            # Keep the first N clips and the sentences relevant (=1) to any of them, so every query
            # row still has a relevant item.
            n = cfg.max_examples
            keep = np.flatnonzero((data.relevance[:n] == 1).any(axis=0))
            data = MultiInstanceRetrievalSet(data.video_uids[:n], data.videos[:n],
                                             [data.sentence_uids[j] for j in keep],
                                             [data.sentences[j] for j in keep], data.relevance[:n][:, keep],
                                             data.meta[:n])
        else:
            data = data[:cfg.max_examples]
    cue = first_person(cfg, bench.family)
    if bench.kind == "mcq":
        return evaluate_mcq(model, data, bench.family, mode=cfg.mcq_mode, batch_size=cfg.batch_size,
                            prompt_style=cfg.prompt_style, first_person=cue,
                            task_details=cfg.task_details, first_person_text=cfg.first_person_text,
                            overlap_threshold=cfg.parse_overlap_threshold, loglik_target=cfg.loglik_target,
                            loglik_normalize=cfg.loglik_normalize)
    if bench.kind == "open_qa":
        template = open_qa.read_judge_prompt(cfg.judge.prompt_file) if judge is not None else ""
        return evaluate_open_qa(model, data, bench.family, judge=judge, judge_template=template,
                                judge_batch_size=cfg.judge.batch_size, batch_size=cfg.batch_size, first_person=cue,
                                task_details=cfg.task_details, first_person_text=cfg.first_person_text)
    caption = prompts_lib.build_caption_prompt(bench.family, first_person=cue, task_details=cfg.task_details,
                                               first_person_text=cfg.first_person_text)
    scoring = dict(scoring=cfg.retrieval_scoring, caption_prompt=caption, loglik_normalize=cfg.loglik_normalize)
    if bench.kind == "retrieval":
        return evaluate_retrieval(model, data, batch_size=cfg.batch_size, **scoring)
    if bench.kind == "multi_instance_retrieval":
        return evaluate_multi_instance_retrieval(model, data, batch_size=cfg.batch_size,
                                                 text_batch_size=cfg.text_batch_size, **scoring)
    return evaluate_classification(model, data, batch_size=cfg.batch_size,
                                   class_template=cfg.charades_class_template, **scoring)


def benchmark_names(cfg) -> tuple[list[str], list[str]]:
    """(benchmarks to run, suite benchmarks skipped because their files are not set).

    `eval.suite` adds its benchmarks whose files are configured; `eval.benchmarks` are always run
    (a missing file there is an error); `eval.mcq_json` adds the "mcq_json" benchmark.
    """
    names = [n.strip() for n in cfg.benchmarks.split(",") if n.strip()]
    skipped = []
    if cfg.get("suite"):
        if cfg.suite not in SUITES:
            raise ValueError(f"eval.suite={cfg.suite!r}: known suites are {sorted(SUITES)}")
        for n in SUITES[cfg.suite]:
            if n in names:
                continue
            (names if is_configured(n, cfg) else skipped).append(n)
    if cfg.get("mcq_json") and "mcq_json" not in names:
        names.append("mcq_json")
    for n in names:
        get_benchmark(n)
    if not names and skipped:
        raise ValueError(f"eval.suite={cfg.suite}: none of its benchmarks has its files set; set "
                         "--config.eval.paths.<name>.annotation and .video_dir for at least one of "
                         f"{', '.join(skipped)} (docs/evaluation.md lists each one's files)")
    if not names:
        raise ValueError("eval.benchmarks is empty: name at least one, e.g. --config.eval.benchmarks=egoschema, "
                         "or a suite (configs/eval.py:suite=egobench)")
    return names, skipped


def _read_cache(path: str, settings: dict[str, Any]) -> dict[str, Any] | None:
    if not os.path.exists(path):
        return None
    with open(path) as f:
        cached = json.load(f)
    return cached if cached.get("settings") == settings else None


def evaluate(model, cfg, workdir: str, run_name: str = "", is_writer: bool = True,
             log: Callable[[str], None] = logging.info,
             agree: Callable[[bool], bool] | None = None, judge: Judge | None = None) -> dict[str, Any]:
    """Evaluate every benchmark of `cfg` (`benchmark_names`), caching each in
    `workdir/eval/<name>.json`, then write `results.json` and `results.md`.

    Every process must call this (adapters run sharded SPMD computations: each batch of
    `eval.batch_size` is the global batch, split over the data axis by the adapter); only
    `is_writer` writes files. `agree(flag)` returns process 0's flag on every process, so all
    processes skip or run a cached benchmark together even when the workdir is not on a shared file
    system. `judge` scores open-ended answers (None: judge-free exact match / token F1).
    """
    names, skipped = benchmark_names(cfg)
    if skipped:
        log(f"eval: suite {cfg.suite}: skipping {', '.join(skipped)} (files not set: "
            + ", ".join(f"--config.eval.paths.{n}.annotation/video_dir" for n in skipped) + ")")
    settings = _settings(cfg)
    cache_dir = os.path.join(workdir, "eval")
    results: dict[str, Any] = {"run": run_name or os.path.basename(os.path.normpath(workdir)),
                               "settings": settings, "suite": cfg.get("suite", ""), "skipped": skipped,
                               "unparsed_warn_fraction": cfg.get("unparsed_warn_fraction", 0.2), "benchmarks": {}}
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
        log(f"eval: {name}: running")
        t0 = time.perf_counter()
        res = evaluate_benchmark(model, name, cfg, judge=judge)
        res["seconds"] = time.perf_counter() - t0
        res["settings"] = settings
        if not cfg.save_scores:
            res.pop("scores", None)  # [N, classes] / [videos, sentences] floats: large, only to recompute metrics
        results["benchmarks"][name] = res
        log(f"eval: {name}: " + ", ".join(f"{k}={report.fmt(v)}" for k, v in report.headline(res).items())
            + f" ({res['seconds']:.1f}s)")
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
    judge = None
    names, _ = benchmark_names(cfg)
    if cfg.judge.checkpoint and any(get_benchmark(n).kind == "open_qa" for n in names):
        judge = LLMJudge(cfg.judge.checkpoint, tokenizer=cfg.judge.tokenizer, max_new_tokens=cfg.judge.max_new_tokens,
                         attention_impl=config.hardware.attention, batch_size=cfg.judge.batch_size)
    agree = None
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        def agree(flag: bool) -> bool:
            return bool(multihost_utils.broadcast_one_to_all(np.int32(flag)))
    is_writer = jax.process_index() == 0
    results = evaluate(model, cfg, workdir, run_name=cfg.run_name, is_writer=is_writer, agree=agree, judge=judge)
    if is_writer:
        print(report.render_markdown(results))
    return {f"{name}/{k}": v for name, res in results["benchmarks"].items() for k, v in report.headline(res).items()}
