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
import dataclasses
import json
import logging
import os
import re
import resource
import time
from typing import Any

import numpy as np

from exo2ego_jax.data.skips import SkipCounter
from exo2ego_jax.eval import report
from exo2ego_jax.methods.exo2ego import config as exo2ego_config
from exo2ego_jax.methods.exo2ego import data as exo2ego_data
from exo2ego_jax.methods.exo2ego import eval as exo2ego_eval
from exo2ego_jax.methods.exo2ego import pipeline as pipeline_lib
from exo2ego_jax.synthetic import egobench as eb
from exo2ego_jax.synthetic import tokenizer as synthetic_tokenizer
from exo2ego_jax.synthetic import world as synthetic

VARIANTS = {
    "a_exo2ego": "(a) Exo2Ego",
    "b_ego_only": "(b) ego-only",
    "c_no_kl": "(c) Exo2Ego w/o KL",
}


def _cpu_s() -> float:
    """User + system CPU seconds of this process and its finished children (world writers)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _prepare(config, workdir: str) -> dict[str, Any]:
    """World, tokenizer, clips and benchmark (each skipped when already there)."""
    d = config.demo
    world = os.path.join(workdir, "world")
    times = {}
    t, c = time.time(), _cpu_s()
    if not os.path.exists(os.path.join(world, "synthetic_meta.json")):
        wc = synthetic.world_config()
        for k, v in d.world.items():
            wc[k] = v
        summary = synthetic.write_world(wc, world)
        logging.info("demo: wrote world %s", summary)
    times["world_s"], times["world_cpu_s"] = time.time() - t, _cpu_s() - c
    t, c = time.time(), _cpu_s()
    tok = os.path.join(workdir, "tokenizer")
    if not os.path.exists(os.path.join(tok, "tokenizer.json")):
        texts = synthetic_tokenizer.world_texts(world, skips=SkipCounter()) + [exo2ego_data.CAPTION_PROMPT]
        for split in ("train", "val"):
            for it in eb.generate(world, split, categories=d.categories, distractors=d.distractors):
                texts += [it["answer"], *it["wrong_answers"],
                          exo2ego_data.qa_prompt(it["question"], [it["answer"], *it["wrong_answers"]])]
        synthetic_tokenizer.build_tokenizer(texts, tok, stems=d.tokenizer_stems)
    clips = os.path.join(workdir, "clips.npz")
    if not os.path.exists(clips):
        exo2ego_data.build_arrays(world, clips, num_frames=d.num_frames, image_size=d.image_size,
                                  mean=d.pixel_mean, std=d.pixel_std, num_workers=d.world.num_workers)
    with np.load(clips) as z:  # only this member is read
        skips = SkipCounter.from_json(str(z["skips"])) if "skips" in z.files else SkipCounter()
    if skips.counts:
        logging.warning("demo: damaged input in %s skipped: %s", world, skips.report())
    bench = os.path.join(workdir, "egobench", "val.json")
    if not os.path.exists(bench):
        eb.write(world, bench, "val", categories=d.categories, distractors=d.distractors)
    times["prepare_s"], times["prepare_cpu_s"] = time.time() - t, _cpu_s() - c
    from transformers import AutoTokenizer
    vocab = len(AutoTokenizer.from_pretrained(tok))
    return {"world": world, "tokenizer": tok, "clips": clips, "bench": bench, "vocab": vocab, **times,
            "skips": skips.report()}


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
    d = config.demo
    stages = {}
    for name in config.variants[variant].order:
        # The shared demonstrator: one stage-1 run (seed teacher_seed) for every seed's learner.
        s = d.teacher_seed if name == d.teacher_stage and d.teacher_seed >= 0 else seed
        stages[name] = _with_paths(config.variants[variant].stages[name], paths, s)
    sources = {k: tuple(v) for k, v in config.variants[variant].sources.items()}
    return exo2ego_config.stages_config(stages, sources=sources)


def _curves(stage_dir: str) -> list[dict[str, Any]]:
    path = os.path.join(stage_dir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [r for r in map(json.loads, f) if "loss" in r]


# --- jobs and their schedule ------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Job:
    """One unit of work: a whole (seed, variant) run with its evaluation, or (``prefix``) only the
    first stage of a run, when other runs share that stage's exact config and wait for it."""
    seed: int
    variant: str
    prefix: bool = False
    after: tuple[str, ...] = ()  # names of the jobs that must finish first
    link: str = ""  # run dir (relative to the workdir) whose first stage this run reuses
    cost: float = 0.0  # scheduling priority: rough compute of its stages

    @property
    def name(self) -> str:
        return f"{self.variant}/seed{self.seed}" + ("/first-stage" if self.prefix else "")


def _run_dir(workdir: str, seed: int, variant: str) -> str:
    return os.path.join(workdir, f"seed{seed}", variant)


def _cost(pcfg, names) -> float:
    """~ compute of stages: steps x batch x tokens, doubled for two towers (ego-exo pairs)."""
    return float(sum(c.train.steps * c.train.global_batch * c.data.max_len * (2 if c.data.mode == "pairs" else 1)
                     for c in (pcfg.stages[n] for n in names)))


def plan(config, paths) -> list[Job]:
    """The demo's jobs. Runs whose first stage has the same config (the demonstrator of (a) and
    (c), and of every seed when ``demo.teacher_seed`` >= 0) get one prefix job that trains it;
    they wait for it and link to its directory."""
    runs, groups = [], {}
    for seed in config.demo.seeds:
        for variant in config.demo.variants:
            pcfg = _pipeline(config, variant, paths, seed)
            key = pipeline_lib.resolve_stage(pcfg, pcfg.order[0], "<run>").to_json(sort_keys=True)
            runs.append((seed, variant, pcfg, key))
            groups.setdefault(key, []).append((seed, variant))
    jobs, prefix_of = [], {}
    for seed, variant, pcfg, key in runs:
        if len(groups[key]) > 1 and groups[key][0] == (seed, variant):
            job = Job(seed, variant, prefix=True, cost=_cost(pcfg, pcfg.order[:1]))
            prefix_of[key] = job.name
            jobs.append(job)
    for seed, variant, pcfg, key in runs:
        owner = groups[key][0]
        shared = key in prefix_of
        link = _run_dir("", *owner) if shared and owner != (seed, variant) else ""
        jobs.append(Job(seed, variant, after=(prefix_of[key],) if shared else (), link=link,
                        cost=_cost(pcfg, pcfg.order[1:] if shared else pcfg.order)))
    return jobs


def _timed_run(pcfg, run_dir: str, name: str) -> float:
    """Runs (or resumes) a pipeline; returns its training seconds summed over every invocation, so
    a resumed demo still reports what its runs cost (``train_s_<name>.json`` in the run dir)."""
    path = os.path.join(run_dir, f"train_s_{name}.json")
    before = 0.0
    if os.path.exists(path):
        with open(path) as f:
            before = json.load(f)["train_s"]
    t = time.time()
    pipeline_lib.run(pcfg, run_dir)
    total = before + time.time() - t
    report.write_json(path, {"train_s": total})
    return total


def run_job(config, workdir: str, paths, job: Job) -> dict[str, Any]:
    """Trains (and, for a whole run, evaluates) one job in this process; returns its result rows."""
    pcfg = _pipeline(config, job.variant, paths, job.seed)
    run_dir = _run_dir(workdir, job.seed, job.variant)
    first = pcfg.order[0]
    cpu = time.process_time()
    if job.prefix:
        train_s = _timed_run(exo2ego_config.stages_config({first: pcfg.stages[first]}), run_dir, first)
        return {job.name: {"variant": job.variant, "seed": job.seed, "stage": first, "train_s": train_s,
                           "train_cpu_s": time.process_time() - cpu}}
    if job.link:
        here = os.path.join(run_dir, first)
        if not os.path.lexists(here):
            os.makedirs(run_dir, exist_ok=True)
            os.symlink(os.path.relpath(os.path.join(workdir, job.link, first), run_dir), here)
    # A run with a shared first stage counts only its own stages (the prefix job counts that one).
    train_s = _timed_run(pcfg, run_dir, "run")
    last = pipeline_lib.resolve_stage(pcfg, pcfg.order[-1], run_dir)
    t, train_cpu = time.time(), time.process_time() - cpu
    acc = exo2ego_eval.evaluate_arrays(last, os.path.join(run_dir, pcfg.order[-1]), paths["bench"],
                                       batch_size=config.demo.eval_batch)
    logging.info("demo: %s: accuracy %.1f", job.name, acc["accuracy"])
    return {job.name: {"variant": job.variant, "seed": job.seed, "train_s": train_s, "eval_s": time.time() - t,
                       "train_cpu_s": train_cpu, "eval_cpu_s": time.process_time() - cpu - train_cpu,
                       **acc, "curves": {n: _curves(os.path.join(run_dir, n)) for n in pcfg.order}}}


def _compile_cache(workdir: str) -> None:
    import jax
    # Seeds and variants share program shapes: the persistent cache compiles each step once.
    jax.config.update("jax_compilation_cache_dir", os.path.join(workdir, "jax_cache"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def _worker_init(cores_queue) -> None:
    """Pins a worker process to one core and XLA to one intra-op thread, before JAX starts.

    XLA:CPU's results depend on its thread count (the mapping F/G convolutions of a full-size
    demo batch give other bits at 2 threads than at 1), and the pool is sized from the affinity,
    or from $PJRT_NPROC / $NPROC when set. Fixing both here makes every job's numbers independent
    of the machine's core count, of which worker runs it and of the load.
    """
    cores = cores_queue.get()
    os.sched_setaffinity(0, cores)
    os.environ["PJRT_NPROC"] = str(len(cores))  # wins over an inherited NPROC (XLA reads it first)
    # One CPU device per worker (XLA's pool has at least one thread per device): drop a forced
    # device count inherited from the parent (tests run it with 8 fake devices).
    os.environ["XLA_FLAGS"] = re.sub(r"--xla_force_host_platform_device_count=\d+", "",
                                     os.environ.get("XLA_FLAGS", "")).strip()
    from absl import flags
    flags.FLAGS.mark_as_parsed()  # grain reads absl flags; a spawned worker never parsed any
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter(f"%(asctime)s worker {os.getpid()} %(filename)s] %(message)s"))
    handler.addFilter(lambda r: r.levelno >= logging.WARNING or f"{os.sep}exo2ego_jax{os.sep}" in r.pathname)
    # Replace, not add: a module-level logging.info() while the worker imported this module already
    # installed logging's default handler, which would print every line a second time.
    logging.getLogger().handlers = [handler]
    logging.getLogger().setLevel(logging.INFO)


class _JobRunner:
    """`fn(job)` for `execute` (picklable, so worker processes can run it)."""

    def __init__(self, config, workdir: str, paths):
        self.config, self.workdir, self.paths = config, workdir, paths

    def __call__(self, job: Job) -> dict[str, Any]:
        _compile_cache(self.workdir)
        return run_job(self.config, self.workdir, self.paths, job)


def worker_cores(workers: int, num_jobs: int, backend: str = "cpu") -> list[list[int]]:
    """One core per worker process ([] = run in this process).

    `workers` -1 = one process per available core (at most one per job); 0 or 1 = one worker.
    On the CPU backend every job runs in a worker pinned to exactly one core (XLA with one thread):
    a job's numbers then do not depend on the core count or on which worker runs it. Cores beyond
    the number of workers stay idle. A GPU or TPU belongs to one process (this one), which runs
    every job. Without sched_getaffinity (not Linux) jobs run in this process.
    """
    if backend != "cpu" or not hasattr(os, "sched_getaffinity"):
        return []
    cores = sorted(os.sched_getaffinity(0))
    n = min(len(cores), num_jobs) if workers < 0 else min(max(workers, 1), len(cores), num_jobs)
    return [[c] for c in cores[:max(n, 1)]]


def _next(pending: list[Job], done: set[str], running: tuple[Job, ...] = ()) -> Job | None:
    """The ready job to start now: jobs others wait for first, then jobs whose programs are in the
    compilation cache already, then the most compute.

    A variant's first run compiles its stages' programs (~10-16 s each on one core) into the shared
    persistent cache; a second run of that variant started meanwhile on another worker would compile
    the same programs again, so while any other job is ready it goes first.
    """
    ready = [j for j in pending if all(a in done for a in j.after)]
    finished = {name.split("/")[0] for name in done if not name.endswith("/first-stage")}
    compiling = {j.variant for j in running if not j.prefix} - finished
    return max(ready, key=lambda j: (j.prefix, j.variant not in compiling, j.cost)) if ready else None


def execute(jobs: list[Job], fn, cores: list[list[int]]) -> dict[str, Any]:
    """Runs `fn(job)` for every job, each after its `after` jobs, in this process (`cores` = [])
    or on one worker process per core set; returns the union of their result rows."""
    pending, done, results = list(jobs), set(), {}
    if not cores:
        while pending:
            job = _next(pending, done)
            if job is None:
                raise ValueError(f"demo: jobs wait for jobs that do not exist: {[j.after for j in pending]}")
            pending.remove(job)
            results.update(fn(job))
            done.add(job.name)
        return results
    import multiprocessing
    import queue as queue_lib
    # spawn: this process already runs JAX threads, which fork would copy in a broken state.
    ctx = multiprocessing.get_context("spawn")
    core_queue = ctx.Queue()
    for c in cores:
        core_queue.put(c)
    finished: queue_lib.Queue = queue_lib.Queue()
    running: list[Job] = []
    with ctx.Pool(len(cores), initializer=_worker_init, initargs=(core_queue,)) as pool:
        while pending or running:
            while len(running) < len(cores) and (job := _next(pending, done, tuple(running))) is not None:
                pending.remove(job)
                pool.apply_async(fn, (job,), callback=lambda r, j=job: finished.put((j, r, None)),
                                 error_callback=lambda e, j=job: finished.put((j, None, e)))
                running.append(job)
            if not running:
                raise ValueError(f"demo: jobs wait for jobs that do not exist: {[j.after for j in pending]}")
            job, rows, error = finished.get()
            running.remove(job)
            if error is not None:
                raise RuntimeError(f"demo: job {job.name} failed in its worker process: {error!r}") from error
            results.update(rows)
            done.add(job.name)
            logging.info("demo: %s done (%d jobs left)", job.name, len(pending) + len(running))
    return results


def run(config, workdir: str) -> dict[str, Any]:
    t0 = time.time()
    _compile_cache(workdir)
    paths = _prepare(config, workdir)
    jobs = plan(config, paths)
    # Small XLA:CPU programs scale poorly over cores (1.3x from 1 to 2 here): one process per core
    # runs two jobs at once for ~1.5x the throughput, and one XLA thread per job keeps the numbers
    # the same on every machine (see _worker_init).
    import jax
    cores = worker_cores(config.demo.workers, len(jobs), jax.default_backend())
    logging.info("demo: %d jobs on %s", len(jobs),
                 f"{len(cores)} worker processes (cores {cores})" if cores else "this process")
    runs = execute(jobs, _JobRunner(config, workdir, paths), cores)
    order = [f"{v}/seed{s}" for s in config.demo.seeds for v in config.demo.variants]
    results: dict[str, Any] = {"paths": paths, "workers": max(1, len(cores)), "runs": {k: runs[k] for k in order},
                               "shared": {j.name: runs[j.name] for j in jobs if j.prefix}}
    results["total_s"] = time.time() - t0
    table = summary_table(results, config)
    results["table"] = table
    report.write_json(os.path.join(workdir, "results.json"), results)
    with open(os.path.join(workdir, "results.md"), "w") as f:
        f.write(table + "\n")
    try:
        plot(results, os.path.join(workdir, "demo.png"))
    except Exception as e:  # a plotting failure must not hide the numbers
        logging.warning("demo: plot failed: %s", e)
    print(table)
    print(phases_line(results))
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
    for name, r in results.get("shared", {}).items():
        lines.append(f"Shared {r['stage']} ({name}, trained once for the runs that start with it): "
                     f"{r['train_s']:.0f} s; 'train s' above counts each run's own stages.")
    return "\n".join(lines)


def phases_line(results: dict[str, Any]) -> str:
    """Where the demo's time went: wall and CPU (user + system) seconds of each phase."""
    p, jobs = results["paths"], [*results["runs"].values(), *results.get("shared", {}).values()]
    cpu = lambda key: sum(r.get(key, 0.0) for r in jobs)  # noqa: E731
    return (f"Phases: world {p.get('world_s', 0):.0f} s wall / {p.get('world_cpu_s', 0):.0f} s CPU; "
            f"clips, tokenizer, benchmark {p.get('prepare_s', 0):.0f} / {p.get('prepare_cpu_s', 0):.0f}; "
            f"{len(jobs)} jobs on {results['workers']} workers: training {cpu('train_cpu_s'):.0f} s CPU, "
            f"evaluation {cpu('eval_cpu_s'):.0f} s CPU; total {results.get('total_s', 0):.0f} s wall.")


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
    from matplotlib.lines import Line2D
    fig, axes = plt.subplots(1, len(stage_names) + 1, figsize=(4 * (len(stage_names) + 1), 3.4))
    colours = {v: c for v, c in zip(VARIANTS, ("tab:blue", "tab:orange", "tab:green"))}
    seeds = sorted({r["seed"] for r in runs})
    styles = {s: ("-", "--", ":", "-.")[i % 4] for i, s in enumerate(seeds)}  # line style = seed
    for ax, s in zip(axes, stage_names):
        # Every panel names its own curves: colour = variant, line style = seed.
        shown_variants, shown_seeds = [], []
        for r in runs:
            rows = r["curves"].get(s, [])
            if rows:
                ax.plot([x["step"] for x in rows], [x["loss"] for x in rows], color=colours.get(r["variant"]),
                        ls=styles[r["seed"]], alpha=0.7)
                shown_variants += [r["variant"]] if r["variant"] not in shown_variants else []
                shown_seeds += [r["seed"]] if r["seed"] not in shown_seeds else []
        handles = ([Line2D([], [], color=colours.get(v), label=VARIANTS.get(v, v)) for v in shown_variants]
                   + [Line2D([], [], color="k", ls=styles[x], label=f"seed {x}") for x in sorted(shown_seeds)])
        ax.legend(handles=handles, fontsize=6)
        ax.set_title(f"{s}: training loss")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("loss (mean over logging window)")
    ax = axes[-1]
    names = [v for v in VARIANTS if any(r["variant"] == v for r in runs)]
    for i, v in enumerate(names):
        accs = [r["accuracy"] for r in runs if r["variant"] == v]
        ax.bar(i, np.mean(accs), color=colours[v], alpha=0.6, label="mean over seeds" if i == 0 else None)
        ax.scatter([i] * len(accs), accs, color="k", s=10, label="one seed" if i == 0 else None)
    ax.axhline(25.0, color="grey", ls="--", lw=0.8, label="chance (4 options)")
    ax.set_xticks(range(len(names)), [VARIANTS[v] for v in names], rotation=20, fontsize=7)
    ax.set_title("held-out synthetic EgoBench")
    ax.set_ylabel("ego MCQ accuracy (%)")
    ax.legend(fontsize=6, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
