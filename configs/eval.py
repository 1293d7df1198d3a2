"""Evaluate a trained model on the egocentric / Ego-in-Exo benchmarks (job "eval").

    python -m exo2ego_jax.main --config configs/eval.py:base=exo2ego/stage3_practice,benchmarks=egoschema;vlnqa \
        --config.train.init_from=/ckpt/stage3 \
        --config.eval.paths.egoschema.annotation=/data/egoschema/questions.json \
        --config.eval.paths.egoschema.answers=/data/egoschema/subset_answers.json \
        --config.eval.paths.egoschema.video_dir=/data/egoschema/videos \
        --config.eval.paths.vlnqa.annotation=/data/vlnqa/vlnqa.json \
        --config.eval.paths.vlnqa.video_dir=/data/vlnqa/videos --workdir /tmp/eval

The whole EgoBench table in one job (every EgoBench benchmark whose files are set runs; the others
are listed as skipped; results.md starts with the paper's table):

    python -m exo2ego_jax.main --config configs/eval.py:base=exo2ego/stage3_practice,suite=egobench \
        --config.train.init_from=/ckpt/stage3 --config.eval.paths.egoschema.annotation=... --workdir /tmp/egobench

`mode=generate` (default, the papers' protocol) parses a letter from greedy answers; `mode=loglik`
picks the option with the highest log-likelihood, for models that do not answer with a letter
(results.md warns when many answers are unparsed). See docs/evaluation.md.

`base` names the training config (configs/<base>.py; its own args go in `base_arg`, with ';'
between them) whose model and method fields the evaluation reuses; without it, a bare config for
`method` is built. The model comes from the method's `eval_model(workdir)` (exo2ego_jax/methods/__init__.py)
(or `adapter=module:function`). Results: `results.json` and `results.md` in the workdir.
Benchmarks (';'-separated here, ','-separated in --config.eval.benchmarks): egoschema, egoplan,
egoplan2, qaego4d_closed, egotaskqa, vlnqa, ego_in_exo, adlx_charades_ar, adlx_smarthome_ar,
adlx_lemma_tc, adlx_tsu_tc, egomcq, charades_ego, qaego4d_open, epic_mir (exo2ego_jax/eval/benchmarks.py);
suites (`suite=`): egobench, ego2exo.
"""
import importlib.util
import os

from exo2ego_jax import config_lib
from exo2ego_jax.eval.config import eval_config

_HERE = os.path.dirname(os.path.abspath(__file__))


def _base_config(base: str, base_arg: str):
    path = os.path.join(_HERE, f"{base}.py")
    if not os.path.exists(path):
        raise FileNotFoundError(f"configs/eval.py: base={base!r} -> {path} does not exist; name a file "
                                "under configs/ without '.py', e.g. base=exo2ego/stage3_practice")
    spec = importlib.util.spec_from_file_location(f"configs_{base.replace('/', '_')}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config(base_arg.replace(";", ",") or None)
    config.unlock()
    return config


def get_config(arg: str | None = None):
    a = config_lib.parse_arg(arg, base="", base_arg="", method="exo2ego", hardware="cpu", benchmarks="",
                             mode="generate", adapter="", batch=8, max_examples=0, suite="")
    if a.base:
        c = _base_config(a.base, a.base_arg)
    else:
        c = config_lib.base_config(method=a.method, job="eval", hardware=a.hardware)
    c.job = "eval"
    ours = eval_config(benchmarks=a.benchmarks.replace(";", ","))
    ours.suite = a.suite
    ours.mcq_mode = a.mode
    ours.adapter = a.adapter
    ours.batch_size = a.batch
    ours.max_examples = a.max_examples
    # Keep the method's own eval fields next to the harness fields; the two a method sets for the
    # harness (its synthetic MCQ file, its first-person cue) override the harness defaults.
    for key, value in c.get("eval", {}).items():
        if key not in ours or key in ("mcq_json", "first_person_cue"):
            ours[key] = value
    c.eval = ours
    return config_lib.finalize(c)
