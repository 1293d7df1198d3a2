"""Job "ego2exo_demo": Ego2ExoVLM end to end on the synthetic world, on a CPU in minutes.

    python -m exo2ego_jax.main --config configs/ego2exo/demo.py --workdir /tmp/ego2exo_demo

Phases (each a real job of this package, run in-process; a rerun reuses finished phases):
1. world: a synthetic Ego-Exo4D world (synthetic/world.py) and its word-level tokenizer.
2. teacher: a tiny video LLM trained on EGO keystep clips -> ego captions (the atomic narrations,
   which name the acting hand and sometimes the object's marking), asked the 12 teacher questions.
   By default it has VideoLLaMA3's architecture (config.model.arch = "videollama3", the paper's base:
   its encoder, merge, projector and Qwen2 decoder, random init at demo scale, clips sampled at
   data.sample_fps with the data.num_frames cap, "Time t s:" before each frame); configs/ego2exo/demo.py:arch=llava_video
   runs the SigLIP + mlp2x_gelu stack instead.
3. label: the "label" job - the frozen teacher answers 3 questions per EGO train segment; each
   answer is paired with one EXO view (LLaVA JSON): the take's best exo camera with the demo's
   `label.exo_view="best"`, a random one with "random" (the paper).
4. students (initialised from the teacher, tower frozen): EXO video + question -> teacher answer,
   with EAVT probes ("student_eavt") and without ("student"); and the baseline: EXO video ->
   exo-only captions ("baseline_exo_captions": what an annotator of the exo view writes - where
   the actor stands, what the other hand does - without the acting hand or the marking).
5. eval: synthetic Ego-in-Exo questions (synthetic/egoinexo.py) on held-out (val) takes,
   each asked on the exo and the ego clip, scored by option log-likelihood through the eval
   harness and the method's adapter (infer.runner_from_run: the VideoLLaMA3 runner or the SigLIP
   one); a table (results.md) and a bar chart (results.png).
"""
from __future__ import annotations

import copy
import json
import os
import time
from typing import Any

import ml_collections
import numpy as np

from exo2ego_jax.methods.ego2exo import prompts as prompts_lib
from exo2ego_jax.data.egoexo4d import EgoExo4D
from exo2ego_jax.synthetic import egoinexo as eie
from exo2ego_jax.methods.ego2exo import label as label_lib
from exo2ego_jax.synthetic import world as synthetic
from exo2ego_jax.synthetic import tokenizer as synthetic_tokenizer
from exo2ego_jax.methods.ego2exo import model as ego2exo_model
from exo2ego_jax.methods.ego2exo import config as ego2exo_config
from exo2ego_jax.train import loop
from exo2ego_jax.eval import loaders_mcq, runner
from exo2ego_jax.methods.ego2exo import infer as ego2exo_infer

MODELS = ("teacher", "student_eavt", "student", "baseline_exo_captions")


def _cfg_copy(config) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(copy.deepcopy(config.to_dict()))


# --- data -------------------------------------------------------------------------------------
def caption_datasets(root: str, out_dir: str, *, seed: int, exo_view: str = "random") -> dict[str, str]:
    """Writes the teacher's ego-caption JSON and the baseline's exo-caption JSON (train split)."""
    with open(os.path.join(root, "synthetic_meta.json"), encoding="utf-8") as f:
        meta = json.load(f)["takes"]
    ds = EgoExo4D(root)
    ego, exo = [], []
    for seg in label_lib.segments_to_label(ds, "train", best_exo=exo_view == "best"):
        take = meta[seg.take_uid]
        step = take["keysteps"][int(seg.segment_id.rsplit("seg", 1)[1])]
        narrs = eie.segment_narrations(take, step)
        if not narrs:
            continue
        ego_text = " ".join(n["text"] for n in narrs)
        exo_text = " ".join(eie.exo_caption(n, take["objects"]) for n in narrs)
        for cat, q in prompts_lib.segment_questions(seg.segment_id, seed):
            extra = {"start": seg.start, "end": seg.end, "segment_id": seg.segment_id, "category": cat}
            ego.append(prompts_lib.llava_record(record_id=f"{seg.segment_id}_{cat}",
                                                video=os.path.relpath(seg.ego_path, root), question=q,
                                                answer=ego_text, extra=extra))
            cam = label_lib.pick_exo_view(seg, f"{seg.segment_id}/{cat}", seed, exo_view)
            exo.append(prompts_lib.llava_record(record_id=f"{seg.segment_id}_{cat}",
                                                video=os.path.relpath(seg.exo_paths[cam], root), question=q,
                                                answer=exo_text, extra={**extra, "exo_cam": cam}))
    paths = {"ego_captions": os.path.join(out_dir, "ego_captions.json"),
             "exo_captions": os.path.join(out_dir, "exo_captions.json")}
    for key, recs in (("ego_captions", ego), ("exo_captions", exo)):
        with open(paths[key], "w", encoding="utf-8") as f:
            json.dump(recs, f, indent=1)
    return paths


def build_world(config, workdir: str) -> tuple[str, str]:
    """(world root, tokenizer dir), written once."""
    d = config.demo
    root = d.world_dir or os.path.join(workdir, "world")
    if not os.path.exists(os.path.join(root, synthetic.META_FILE)):
        summary = synthetic.write_world(config.demo.world, root)
        print(f"ego2exo_demo: world with {summary['takes']} takes ({summary['train_takes']} train / "
              f"{summary['val_takes']} val), {summary['keysteps']} keysteps in {summary['seconds']:.1f} s", flush=True)
    tok_dir = os.path.join(workdir, "tokenizer")
    if not os.path.exists(os.path.join(tok_dir, "tokenizer.json")):
        texts = synthetic_tokenizer.world_texts(root) + eie.all_texts()
        with open(os.path.join(root, "synthetic_meta.json"), encoding="utf-8") as f:
            meta = json.load(f)["takes"]
        texts += [eie.exo_caption(n, t["objects"]) for t in meta.values() for n in t["narrations"]]
        texts += [prompts_lib.SYSTEM_PROMPT]
        if _arch(config) == "videollama3":
            texts += timestamp_texts()
        synthetic_tokenizer.build_tokenizer(texts, tok_dir)
    return root, tok_dir


def label_accuracy(labels_path: str, root: str) -> dict[str, float]:
    """How often the teacher's answers state the ground truth of a segment's first action (%):
    the acting hand (for verbs whose narration names it), the verb, the object (colour + shape)."""
    with open(os.path.join(root, "synthetic_meta.json"), encoding="utf-8") as f:
        meta = json.load(f)["takes"]
    with open(labels_path, encoding="utf-8") as f:
        records = json.load(f)
    hits = {"hand": [0, 0], "verb": [0, 0], "object": [0, 0]}
    for r in records:
        take = meta[r["take_uid"]]
        first = eie.segment_narrations(take, take["keysteps"][int(r["segment_id"].rsplit("seg", 1)[1])])[0]
        said = r["conversations"][1]["value"].lower().split(".")[0]
        if first["verb"] in eie.HAND_VERBS:
            hits["hand"][0] += f"with the {first['hand']} hand" in said
            hits["hand"][1] += 1
        hits["verb"][0] += said.startswith("c " + eie.VERB_PHRASES[first["verb"]])
        hits["verb"][1] += 1
        hits["object"][0] += f"{first['object_colour']} {first['object_shape']}" in said
        hits["object"][1] += 1
    return {k: 100.0 * a / max(b, 1) for k, (a, b) in hits.items()}


# --- phases -----------------------------------------------------------------------------------
def phase_config(config, *, root: str, tok_dir: str, instructions: str, num_probes: int, steps: int,
                 lr: float, init_from: str = "", groups=None) -> ml_collections.ConfigDict:
    """A train config of method ego2exo for one demo phase (unlocked copy of the demo config)."""
    c = _cfg_copy(config)
    c.job, c.method = "train", "ego2exo"
    c.data.instructions = (instructions,)
    c.data.data_folder = root
    c.data.tokenizer = tok_dir
    c.model.num_probes = num_probes
    c.model.llm.vocab_size = _vocab_size(tok_dir)
    if _arch(c) == "videollama3":
        c.data.num_probes = num_probes  # <probe> ids after each clip's video tokens
    else:
        ego2exo_model.sync_data_fields(c)
    c.train.epochs = 0.0  # phases run a fixed number of steps
    c.train.steps = steps
    c.train.init_from = init_from
    c.train.groups = groups or [(".*", lr)]
    if init_from:  # students: tower frozen (Ego2ExoVLM) unless demo.train_tower, the rest at the demo's LR
        c.train.groups = ego2exo_config.student_groups(
            lr, lr, train_llm=True, train_tower=bool(config.demo.get("train_tower", False)),
            projector="projector" if _arch(c) == "videollama3" else "connector")
    return c


def _arch(config) -> str:
    return config.model.get("arch", "llava_video")  # demo configs saved before the field: the SigLIP stack


def timestamp_texts(max_seconds: float = 30.0) -> list[str]:
    """VideoLLaMA3's per-frame ``Time t s:`` text for t = 0.0 ... ``max_seconds`` (tokenizer vocabulary)."""
    return [f"Time {i / 10:.1f}s:," for i in range(int(max_seconds * 10))]


def _vocab_size(tok_dir: str) -> int:
    with open(os.path.join(tok_dir, "tokenizer.json"), encoding="utf-8") as f:
        vocab = json.load(f)["model"]["vocab"]
    return int(np.ceil(len(vocab) / 8) * 8)


def _train(cfg, workdir: str) -> dict[str, Any]:
    t0 = time.time()
    out = loop.train(cfg, workdir)
    out["seconds"] = time.time() - t0
    print(f"ego2exo_demo: trained {os.path.basename(workdir)}: {cfg.train.steps} steps, loss "
          f"{out.get('loss', float('nan')):.3f}, {out['seconds']:.0f} s", flush=True)
    return out


def _label(config, root: str, teacher_dir: str, workdir: str) -> str:
    c = _cfg_copy(config)
    c.job = "label"
    c.label.root = root
    c.label.video_variant = "full"
    c.label.teacher_workdir = teacher_dir
    t0 = time.time()
    stats = label_lib.label(c, workdir)
    print(f"ego2exo_demo: labelled {stats['segments']} segments in {time.time() - t0:.0f} s "
          f"({stats['tokens_per_sec']:.0f} new tokens/s)", flush=True)
    return os.path.join(workdir, c.label.output)


def _evaluate(config, run_dir: str, bench: dict[str, Any]) -> dict[str, Any]:
    r, _ = ego2exo_infer.runner_from_run(run_dir, hardware=config.hardware)
    adapter = ego2exo_infer.Ego2ExoAdapter(r)
    records = loaders_mcq.load_ego_in_exo(bench["annotation"], bench["video_dir"], views=("exo", "ego"))
    res = runner.evaluate_mcq(adapter, records, "ego_in_exo", mode=config.eval.mcq_mode,
                              batch_size=config.eval.batch_size)
    m = dict(res["metrics"])
    m["hand_balanced"] = {v: hand_balanced_accuracy(records, res["predictions"], v) for v in ("exo", "ego")}
    m["predictions"] = [{k: row[k] for k in ("uid", "view", "category", "answer_index", "pred_index", "correct")}
                        for row in res["predictions"]]
    return m


def hand_balanced_accuracy(records, rows, view: str) -> float:
    """Mean over the true hand (left, right) of the accuracy on `view`'s hand questions (%).

    Held-out segments rarely split 50/50 between hands, so always naming one hand scores the
    majority share in plain accuracy; here it scores 50."""
    hits: dict[str, list[bool]] = {"left": [], "right": []}
    for rec, row in zip(records, rows):  # the runner returns one row per record, in order
        if rec.category != "hand" or rec.view != view:
            continue
        hits["left" if "left hand" in rec.options[rec.answer_index] else "right"].append(bool(row["correct"]))
    per_hand = [np.mean(h) for h in hits.values() if h]
    return 100.0 * float(np.mean(per_hand)) if per_hand else float("nan")


def _table(results: dict[str, dict[str, Any]], categories: tuple[str, ...]) -> str:
    head = ["model", "exo all"] + [f"exo {c}" for c in categories] + ["exo hand (bal.)", "ego all", "ego hand (bal.)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, m in results.items():
        pv = m.get("per_view", {})
        pvc = m.get("per_view_category", {})
        bal = m.get("hand_balanced", {})
        row = [name, f"{pv.get('exo', {}).get('accuracy', float('nan')):.1f}"]
        row += [f"{pvc.get(f'exo/{c}', {}).get('accuracy', float('nan')):.1f}" for c in categories]
        row.append(f"{bal.get('exo', float('nan')):.1f}")
        row.append(f"{pv.get('ego', {}).get('accuracy', float('nan')):.1f}")
        row.append(f"{bal.get('ego', float('nan')):.1f}")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def _plot(results: dict[str, dict[str, Any]], categories: tuple[str, ...], path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    groups = ["exo all"] + [f"exo {c}" for c in categories]
    x = np.arange(len(groups))
    w = 0.8 / max(len(results), 1)
    fig, ax = plt.subplots(figsize=(9, 3.8))
    for i, (name, m) in enumerate(results.items()):
        pv, pvc = m.get("per_view", {}), m.get("per_view_category", {})
        vals = [pv.get("exo", {}).get("accuracy", np.nan)] + [pvc.get(f"exo/{c}", {}).get("accuracy", np.nan)
                                                              for c in categories]
        ax.bar(x + i * w, vals, w, label=name)
    ax.set_xticks(x + w * (len(results) - 1) / 2, groups)
    ax.set_ylabel("accuracy (%)")
    ax.set_title("Synthetic Ego-in-Exo (held-out takes, exo view, option log-likelihood)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(config, workdir: str) -> dict[str, Any]:
    """Runs every phase (skipping finished ones) and prints the table."""
    import jax
    d = config.demo
    t_start = time.time()
    os.makedirs(workdir, exist_ok=True)
    # The students, the baseline and their evaluations share program shapes: with the persistent
    # cache each distinct program compiles once per run (and a rerun compiles nothing).
    jax.config.update("jax_compilation_cache_dir", os.path.join(workdir, "jax_cache"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    root, tok_dir = build_world(config, workdir)
    caps = caption_datasets(root, workdir, seed=config.label.seed, exo_view=config.label.exo_view)
    timings = {"world": time.time() - t_start}

    runs = {name: os.path.join(workdir, name) for name in MODELS}
    train_metrics = {}
    t0 = time.time()
    if not _finished(runs["teacher"], d.teacher_steps):
        train_metrics["teacher"] = _train(phase_config(config, root=root, tok_dir=tok_dir,
                                                       instructions=caps["ego_captions"], num_probes=0,
                                                       steps=d.teacher_steps, lr=d.lr), runs["teacher"])
    timings["teacher"] = time.time() - t0
    t0 = time.time()
    labels = _label(config, root, runs["teacher"], os.path.join(workdir, "label"))
    timings["label"] = time.time() - t0
    label_acc = label_accuracy(labels, root)
    print("ego2exo_demo: teacher labels state the first action's " +
          ", ".join(f"{k} {v:.1f}%" for k, v in label_acc.items()) + " correctly", flush=True)
    phases = {"student_eavt": (labels, d.num_probes), "student": (labels, 0),
              "baseline_exo_captions": (caps["exo_captions"], 0)}
    for name, (data, probes) in phases.items():
        t0 = time.time()
        if not _finished(runs[name], d.student_steps):
            train_metrics[name] = _train(phase_config(config, root=root, tok_dir=tok_dir, instructions=data,
                                                      num_probes=probes, steps=d.student_steps, lr=d.lr,
                                                      init_from=runs["teacher"]), runs[name])
        timings[name] = time.time() - t0

    t0 = time.time()
    bench_dir = os.path.join(workdir, "egoinexo_synthetic")
    bench = eie.write_questions(root, bench_dir, split="val", seed=config.seed, max_segments=d.eval_segments)
    results = {name: _evaluate(config, runs[name], bench) for name in MODELS}
    timings["eval"] = time.time() - t0
    timings["total"] = time.time() - t_start

    table = _table(results, eie.CATEGORIES)
    png = os.path.join(workdir, "results.png")
    _plot(results, eie.CATEGORIES, png)
    summary = {"arch": _arch(config), "results": results, "teacher_label_accuracy": label_acc, "timings_sec": timings,
               "questions": bench["questions"],
               "per_category": bench["per_category"], "train": train_metrics}
    with open(os.path.join(workdir, "results.json"), "w") as f:
        json.dump(summary, f, indent=1, default=float)
    text = (f"Synthetic Ego-in-Exo ({_arch(config)} models): {bench['questions']} questions on {bench['segments']} held-out segments "
            f"({bench['per_category']}), each on the exo and the ego clip; accuracy (%) by option "
            f"log-likelihood. Chance: hand 50, others 25; the hand questions' answers are "
            f"{bench['hand_split']['left']} left / {bench['hand_split']['right']} right, so always naming one "
            f"hand scores up to {100 * max(bench['hand_split'].values()) / max(sum(bench['hand_split'].values()), 1):.0f} "
            f"in 'exo hand' and 50 in 'hand (bal.)' (mean of the per-hand accuracies).\n\n{table}\n\n"
            f"teacher labels on its training segments, first action correct (%): "
            + ", ".join(f"{k} {v:.1f}" for k, v in label_acc.items()) + "\n"
            f"timings (s): " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()))
    with open(os.path.join(workdir, "results.md"), "w") as f:
        f.write(text + "\n")
    print(text, flush=True)
    print(f"ego2exo_demo: wrote {png} and {os.path.join(workdir, 'results.md')}", flush=True)
    exo = {name: m.get("per_view", {}).get("exo", {}).get("accuracy", float("nan")) for name, m in results.items()}
    return {f"exo_accuracy/{k}": v for k, v in exo.items()} | {"seconds": timings["total"]}


def _finished(run_dir: str, steps: int) -> bool:
    """True when `run_dir` holds a checkpoint of step `steps` (the phase is done)."""
    ckpt = os.path.join(run_dir, "checkpoints", str(steps))
    return os.path.isdir(ckpt)
