"""Job ``demo``: the Exo2Ego demo on a synthetic world (configs/demo.py).

1. Writes a small synthetic ego-exo world (if ``workdir/world`` has none), a word-level tokenizer,
   pre-decoded clips (``clips.npz``) and the synthetic EgoBench (held-out val takes, QaEgo4D-closed
   JSON).
2. For each seed, runs three pipelines with the one trainer:
   (a) Exo2Ego: stage 1 (exo captions) -> stage 2 (ego-exo pairs, VTG on the few labelled ego
       clips + KL + cycle) -> stage 3 (ego QA on the labelled ego clips, LoRA);
   (b) ego only: the same labelled ego captions and ego QA, no exo video at all;
   (c) Exo2Ego without KL.
3. Evaluates each on the held-out ego MCQ by option log-likelihood and writes ``results.json``,
   ``results.md`` (table) and ``demo.png`` (loss curves and accuracies), and prints the table.
"""
from __future__ import annotations

import copy
import json
import logging
import os
import time
from typing import Any

import numpy as np

from exo2ego_jax.methods import pipeline as pipeline_lib

VARIANTS = {
    "a_exo2ego": "(a) Exo2Ego",
    "b_ego_only": "(b) ego-only",
    "c_no_kl": "(c) Exo2Ego w/o KL",
}


def _prepare(config, workdir: str) -> dict[str, Any]:
    """World, tokenizer, clips and benchmark (each skipped when already there)."""
    from exo2ego_jax.data import synthetic, synthetic_tokenizer
    from exo2ego_jax.eval import egobench_synthetic as eb
    from exo2ego_jax.methods import exo2ego_data
    d = config.demo
    world = os.path.join(workdir, "world")
    times = {}
    t = time.time()
    if not os.path.exists(os.path.join(world, "synthetic_meta.json")):
        wc = synthetic.world_config()
        for k, v in d.world.items():
            wc[k] = v
        summary = synthetic.write_world(wc, world)
        logging.info("demo: wrote world %s", summary)
    times["world_s"] = time.time() - t
    t = time.time()
    tok = os.path.join(workdir, "tokenizer")
    if not os.path.exists(os.path.join(tok, "tokenizer.json")):
        texts = synthetic_tokenizer.world_texts(world) + [exo2ego_data.CAPTION_PROMPT]
        for split in ("train", "val"):
            for it in eb.generate(world, split, categories=d.categories, distractors=d.distractors):
                texts += [it["answer"], *it["wrong_answers"],
                          exo2ego_data.qa_prompt(it["question"], [it["answer"], *it["wrong_answers"]])]
        synthetic_tokenizer.build_tokenizer(texts, tok)
    clips = os.path.join(workdir, "clips.npz")
    if not os.path.exists(clips):
        exo2ego_data.build_arrays(world, clips, num_frames=d.num_frames, image_size=d.image_size,
                                  mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    bench = os.path.join(workdir, "egobench", "val.json")
    if not os.path.exists(bench):
        eb.write(world, bench, "val", categories=d.categories, distractors=d.distractors)
    times["prepare_s"] = time.time() - t
    from transformers import AutoTokenizer
    vocab = len(AutoTokenizer.from_pretrained(tok))
    return {"world": world, "tokenizer": tok, "clips": clips, "bench": bench, "vocab": vocab, **times}


def _with_paths(cfg, paths: dict[str, Any], seed: int):
    cfg = copy.deepcopy(cfg)
    with cfg.unlocked():
        cfg.seed = seed
        cfg.data.tokenizer = paths["tokenizer"]
        cfg.data.arrays = paths["clips"]
        cfg.data.world = paths["world"]
        cfg.model.llm.vocab_size = paths["vocab"]
        cfg.model.tokenizer = paths["tokenizer"]
    return cfg


def _pipeline(config, variant: str, paths, seed: int):
    stages = {name: _with_paths(config.variants[variant].stages[name], paths, seed)
              for name in config.variants[variant].order}
    sources = {k: tuple(v) for k, v in config.variants[variant].sources.items()}
    return pipeline_lib.pipeline_config(stages, sources=sources)


def _share_stages(pcfg, run_dir: str, done: dict[str, str]) -> None:
    """Links stages whose whole config chain equals one already trained ((a) and (c) share stage 1)."""
    chain = []
    for name in pcfg.order:
        resolved = pipeline_lib.resolve_stage(pcfg, name, "<run>")
        chain.append(resolved.to_json(sort_keys=True))
        key = "\n".join(chain)
        here = os.path.join(run_dir, name)
        if key in done and not os.path.exists(here):
            os.makedirs(run_dir, exist_ok=True)
            os.symlink(done[key], here)
        done.setdefault(key, here)


def _curves(stage_dir: str) -> list[dict[str, Any]]:
    path = os.path.join(stage_dir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [r for r in map(json.loads, f) if "loss" in r]


def run(config, workdir: str) -> dict[str, Any]:
    from exo2ego_jax.methods import exo2ego_eval
    import jax
    t0 = time.time()
    # Seeds and variants share program shapes: the persistent cache compiles each step once.
    jax.config.update("jax_compilation_cache_dir", os.path.join(workdir, "jax_cache"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    paths = _prepare(config, workdir)
    results: dict[str, Any] = {"paths": paths, "runs": {}}
    for seed in config.demo.seeds:
        done: dict[str, str] = {}  # config chain of a stage -> the run dir that trained it
        for variant in config.demo.variants:
            run_dir = os.path.join(workdir, f"seed{seed}", variant)
            pcfg = _pipeline(config, variant, paths, seed)
            _share_stages(pcfg, run_dir, done)
            t = time.time()
            pipeline_lib.run(pcfg, run_dir)
            train_s = time.time() - t
            last = pipeline_lib.resolve_stage(pcfg, pcfg.order[-1], run_dir)
            t = time.time()
            acc = exo2ego_eval.evaluate_arrays(last, os.path.join(run_dir, pcfg.order[-1]), paths["bench"],
                                               batch_size=config.demo.eval_batch)
            results["runs"][f"{variant}/seed{seed}"] = {
                "variant": variant, "seed": seed, "train_s": train_s, "eval_s": time.time() - t, **acc,
                "curves": {name: _curves(os.path.join(run_dir, name)) for name in pcfg.order}}
            logging.info("demo: %s seed %d: accuracy %.1f", variant, seed, acc["accuracy"])
    results["total_s"] = time.time() - t0
    table = summary_table(results, config)
    results["table"] = table
    with open(os.path.join(workdir, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    with open(os.path.join(workdir, "results.md"), "w") as f:
        f.write(table + "\n")
    try:
        plot(results, os.path.join(workdir, "demo.png"))
    except Exception as e:  # a plotting failure must not hide the numbers
        logging.warning("demo: plot failed: %s", e)
    print(table)
    return {"total_s": results["total_s"],
            **{f"{k}/accuracy": v["accuracy"] for k, v in results["runs"].items()}}


def summary_table(results: dict[str, Any], config) -> str:
    runs = results["runs"].values()
    cats = sorted({c for r in runs for c in r.get("by_category", {})})
    head = "| variant | seeds | accuracy (mean ± std) | " + " | ".join(cats) + " | train s |"
    lines = [head, "|" + "---|" * (4 + len(cats))]
    for variant in config.demo.variants:
        rs = [r for r in runs if r["variant"] == variant]
        if not rs:
            continue
        accs = np.array([r["accuracy"] for r in rs])
        per = [np.mean([r["by_category"].get(c, np.nan) for r in rs]) for c in cats]
        lines.append(f"| {VARIANTS.get(variant, variant)} | {len(rs)} | {accs.mean():.1f} ± {accs.std():.1f} | "
                     + " | ".join(f"{p:.1f}" for p in per) + f" | {np.mean([r['train_s'] for r in rs]):.0f} |")
    n = next(iter(runs))["num_questions"] if runs else 0
    d = config.demo
    lines.append(f"\nHeld-out synthetic EgoBench: {n} ego-view questions ({'/'.join(d.categories)}; "
                 f"{d.distractors} distractors; 4 options, chance 25%, 'hand' effectively 50%). "
                 f"Total {results.get('total_s', 0):.0f} s.")
    return "\n".join(lines)


def plot(results: dict[str, Any], path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    runs = list(results["runs"].values())
    stage_names = []
    for r in runs:
        for s in r["curves"]:
            if s not in stage_names:
                stage_names.append(s)
    fig, axes = plt.subplots(1, len(stage_names) + 1, figsize=(4 * (len(stage_names) + 1), 3.2))
    colours = {v: c for v, c in zip(VARIANTS, ("tab:blue", "tab:orange", "tab:green"))}
    for ax, s in zip(axes, stage_names):
        for r in runs:
            rows = r["curves"].get(s, [])
            if rows:
                ax.plot([x["step"] for x in rows], [x["loss"] for x in rows], color=colours.get(r["variant"]),
                        alpha=0.7, label=f"{r['variant']} s{r['seed']}")
        ax.set_title(s)
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
    axes[0].legend(fontsize=6)
    ax = axes[-1]
    names = [v for v in VARIANTS if any(r["variant"] == v for r in runs)]
    for i, v in enumerate(names):
        accs = [r["accuracy"] for r in runs if r["variant"] == v]
        ax.bar(i, np.mean(accs), color=colours[v], alpha=0.6)
        ax.scatter([i] * len(accs), accs, color="k", s=10)
    ax.axhline(25.0, color="grey", ls="--", lw=0.8)
    ax.set_xticks(range(len(names)), [VARIANTS[v] for v in names], rotation=20, fontsize=7)
    ax.set_ylabel("held-out ego MCQ accuracy (%)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
