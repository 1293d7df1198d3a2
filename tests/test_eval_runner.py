"""The evaluation runner end to end on the literal examples with a lookup adapter.

The adapter is honest: it answers each video from a fixed table (some right, some wrong, one
unparseable), so every metric below is computed by hand from that table.
"""
import json
import os

import numpy as np
import pytest

from exo2ego_jax.eval import report, runner
from exo2ego_jax.eval.adapter import resolve
from exo2ego_jax.eval.config import eval_config
from exo2ego_jax.eval.records import MCQRecord, VideoRef
from exo2ego_jax.jobs import JOBS
from helpers import config_module, load_config
from test_eval_formats import write_all_fixtures

V = "videos/"
RESPONSES = {  # video file -> generated text
    "00000000-0000-4000-8000-00000000f001.mp4": "The answer is (B).",       # EgoSchema, right
    "00000000-0000-4000-8000-00000000b001.mp4": "pour water",               # EgoPlan, right (text)
    "00000000-0000-4000-8000-00000000c001.mp4": "They are on the table.",   # QaEgo4D, right (text)
    "27k-00-00-0|P1|100|400.mp4": "C",                                      # EgoTaskQA, wrong (B)
    "left/1_frame10.mp4": "B",                                              # VLN-QA, right
    "synth_cooking_01_2_seg0003_exo1.mp4": "(B) Right hand",                # Ego-in-Exo exo, right
    "synth_cooking_01_2_seg0003_ego.mp4": "Left hand",                      # Ego-in-Exo ego, wrong
    "SYN01.mp4": "hmm, hard to say",                                        # ADL-X, unparseable
}
TRUE_OPTION = {"00000000-0000-4000-8000-00000000f001.mp4": "C prepares tea.",
               "synth_cooking_01_2_seg0003_exo1.mp4": "Right hand",
               "synth_cooking_01_2_seg0003_ego.mp4": "Both hands"}
RELEVANT = {  # video file -> texts it matches
    "00000000-0000-4000-8000-00000000e001/0.mp4": {"C opens the fridge"},
    "SYN01EGO.mp4": {"Class number 106", "Class number 107"},
}


def _key(video: VideoRef) -> str:
    return video.path.split(V, 1)[1]


class LookupModel:
    """Answers from the tables above; records the batch size of every call."""

    def __init__(self):
        self.calls = []

    def generate(self, prompts, videos):
        self.calls.append(("generate", len(prompts)))
        return [RESPONSES.get(_key(v), "") for v in videos]

    def option_loglik(self, prompts, videos, options):
        self.calls.append(("option_loglik", len(prompts)))
        return [[0.0 if o == TRUE_OPTION.get(_key(v)) else -3.0 - i for i, o in enumerate(opts)]
                for v, opts in zip(videos, options)]

    def text_video_scores(self, texts, videos):
        self.calls.append(("text_video_scores", len(texts), len(videos)))
        return np.array([[float(t in RELEVANT.get(_key(v), ())) for v in videos] for t in texts])


class FailingModel:
    def __getattr__(self, name):
        raise AssertionError(f"the model was called ({name}) although results were cached")


def make_adapter(config, workdir):
    """Factory for --config.eval.adapter=test_eval_runner:make_adapter."""
    return LookupModel()


ALL = "egoschema,egoplan,qaego4d_closed,egotaskqa,vlnqa,ego_in_exo,adlx_charades_ar,egomcq,charades_ego"


def _cfg(tmp_path, benchmarks=ALL, **overrides):
    cfg = eval_config(benchmarks)
    for name, paths in write_all_fixtures(tmp_path).items():
        for k, v in paths.items():
            cfg.paths[name][k] = v
    cfg.batch_size = 2
    for k, v in overrides.items():
        cfg[k] = v
    return cfg


def test_all_benchmarks_end_to_end(tmp_path):
    model = LookupModel()
    workdir = str(tmp_path / "run")
    res = runner.evaluate(model, _cfg(tmp_path), workdir, run_name="lookup", log=lambda s: None)
    b = res["benchmarks"]
    acc = {n: b[n]["metrics"]["accuracy"] for n in b if n != "charades_ego"}
    assert acc == {"egoschema": 100.0, "egoplan": 100.0, "qaego4d_closed": 100.0, "egotaskqa": 0.0,
                   "vlnqa": 100.0, "ego_in_exo": 50.0, "adlx_charades_ar": 0.0, "egomcq": 100.0}
    assert b["charades_ego"]["metrics"]["mAP"] == 100.0
    assert b["charades_ego"]["metrics"]["num_classes_with_positives"] == 2
    ego_in_exo = b["ego_in_exo"]["metrics"]
    assert ego_in_exo["per_view"] == {"ego": {"accuracy": 0.0, "num": 1}, "exo": {"accuracy": 100.0, "num": 1}}
    assert ego_in_exo["per_view_category"]["exo/hand_object_interaction"]["accuracy"] == 100.0
    assert b["adlx_charades_ar"]["metrics"]["unparsed"] == 1
    assert b["egomcq"]["metrics"]["inter_accuracy"] == 100.0
    # Per-question predictions with how each answer was parsed.
    methods = {n: [p["parse_method"] for p in b[n]["predictions"]] for n in ("egoschema", "egoplan", "ego_in_exo")}
    assert methods == {"egoschema": ["paren"], "egoplan": ["exact"], "ego_in_exo": ["paren", "exact"]}
    # Ego-in-Exo and ADL-X use Ego2ExoVLM's prompt; the Exo2Ego benchmarks the first-person cue.
    assert "Choices are (A) Left hand (B) Right hand" in b["ego_in_exo"]["predictions"][0]["prompt"]
    assert "your own point of view" in b["egoschema"]["predictions"][0]["prompt"]
    # Files: results.json (metrics + predictions) and results.md.
    on_disk = json.load(open(os.path.join(workdir, "results.json")))
    assert on_disk["benchmarks"]["vlnqa"]["predictions"][0]["response"] == "B"
    md = open(os.path.join(workdir, "results.md")).read()
    assert "| egotaskqa | accuracy | 0.00 | 1 | 0 |" in md
    assert "| ego_in_exo | exo_accuracy | 100.00 | 1 | 0 |" in md
    assert "| egomcq | inter_accuracy | 100.00 | 1 | - |" in md
    assert "## ego_in_exo: per view category" in md
    # Batches are padded to the configured size (static shapes): 2 for every call.
    assert {c[1] for c in model.calls if c[0] == "generate"} == {2}


def test_resume_reuses_finished_benchmarks(tmp_path):
    workdir = str(tmp_path / "run")
    cfg = _cfg(tmp_path, benchmarks="egoschema,vlnqa")
    first = runner.evaluate(LookupModel(), cfg, workdir, log=lambda s: None)
    again = runner.evaluate(FailingModel(), cfg, workdir, log=lambda s: None)
    assert again["benchmarks"] == first["benchmarks"]
    # Different settings invalidate the cache.
    cfg.first_person_cue = False
    model = LookupModel()
    runner.evaluate(model, cfg, workdir, log=lambda s: None)
    assert len(model.calls) == 2


def test_loglik_mode_and_batching(tmp_path):
    cfg = _cfg(tmp_path, benchmarks="egoschema,ego_in_exo", mcq_mode="loglik", batch_size=3)
    model = LookupModel()
    res = runner.evaluate(model, cfg, str(tmp_path / "ll"), log=lambda s: None)
    assert res["benchmarks"]["egoschema"]["metrics"]["accuracy"] == 100.0
    assert res["benchmarks"]["ego_in_exo"]["metrics"]["per_view"]["exo"]["accuracy"] == 100.0
    assert res["benchmarks"]["ego_in_exo"]["metrics"]["per_view"]["ego"]["accuracy"] == 0.0
    assert res["benchmarks"]["egoschema"]["predictions"][0]["parse_method"] == "loglik"
    assert [c for c in model.calls] == [("option_loglik", 3), ("option_loglik", 3)]
    # 7 records, batch 3 -> calls of 3, 3, 3 (last padded); 7 rows come back.
    recs = [MCQRecord(str(i), VideoRef(f"/x/{i}.mp4"), "q?", ["a", "b"], i % 2) for i in range(7)]

    class Echo:
        sizes = []

        def generate(self, prompts, videos):
            self.sizes.append(len(prompts))
            return ["(B)" if v.path.endswith(("1.mp4", "3.mp4", "5.mp4")) else "(A)" for v in videos]

    out = runner.evaluate_mcq(Echo(), recs, "egoschema", batch_size=3)
    assert Echo.sizes == [3, 3, 3] and len(out["predictions"]) == 7 and out["metrics"]["accuracy"] == 100.0


def test_adapter_output_length_is_checked():
    class Short:
        def generate(self, prompts, videos):
            return ["A"]

    recs = [MCQRecord(str(i), VideoRef("/v.mp4"), "q?", ["a", "b"], 0) for i in range(2)]
    with pytest.raises(ValueError, match="generate returned 1 results for 2 inputs"):
        runner.evaluate_mcq(Short(), recs, "egoschema", batch_size=2)


def test_pair_scores_used_for_retrieval(tmp_path):
    class Pairs(LookupModel):
        def pair_scores(self, texts, videos):
            self.calls.append(("pair_scores", len(texts)))
            return np.array([float(t in RELEVANT.get(_key(v), ())) for t, v in zip(texts, videos)])

    model = Pairs()
    res = runner.evaluate(model, _cfg(tmp_path, benchmarks="egomcq"), str(tmp_path / "p"), log=lambda s: None)
    assert res["benchmarks"]["egomcq"]["metrics"]["accuracy"] == 100.0
    assert model.calls == [("pair_scores", 10)]  # 2 records (1 real + 1 pad) x 5 candidates


def test_eval_job_from_config_file(tmp_path):
    config = load_config("configs/eval.py", "benchmarks=vlnqa;egotaskqa,adapter=test_eval_runner:make_adapter,batch=4")
    assert config.job == "eval" and config.eval.benchmarks == "vlnqa,egotaskqa"
    with pytest.raises(AttributeError):
        config.eval.not_a_field = 1  # locked
    paths = write_all_fixtures(tmp_path)
    for name in ("vlnqa", "egotaskqa"):
        config.eval.paths[name].annotation = paths[name]["annotation"]
        config.eval.paths[name].video_dir = paths[name]["video_dir"]
    out = resolve(JOBS[config.job])(config, str(tmp_path / "job"))
    assert out == {"vlnqa/accuracy": 100.0, "egotaskqa/accuracy": 0.0}
    assert os.path.exists(tmp_path / "job" / "results.md")


def test_missing_paths_and_unknown_benchmark(tmp_path):
    cfg = eval_config("egoschema")
    with pytest.raises(ValueError, match=r"--config.eval.paths.egoschema.annotation"):
        runner.evaluate(LookupModel(), cfg, str(tmp_path), log=lambda s: None)
    with pytest.raises(ValueError, match="unknown benchmark 'egoscheme'"):
        runner.evaluate(LookupModel(), eval_config("egoscheme"), str(tmp_path), log=lambda s: None)


def test_compare_runs_table(tmp_path):
    a = runner.evaluate(LookupModel(), _cfg(tmp_path, benchmarks="egotaskqa,ego_in_exo"), str(tmp_path / "a"),
                        run_name="gen", log=lambda s: None)
    b = runner.evaluate(LookupModel(), _cfg(tmp_path, benchmarks="ego_in_exo", mcq_mode="loglik"),
                        str(tmp_path / "b"), run_name="loglik", log=lambda s: None)
    table = report.compare_runs({"gen": a, "loglik": b})
    lines = table.splitlines()
    assert lines[0] == "| benchmark | metric | gen | loglik |"
    assert "| egotaskqa | accuracy | 0.00 | - |" in lines
    assert "| ego_in_exo | accuracy | 50.00 | 50.00 |" in lines
    assert report.compare_runs([str(tmp_path / "a"), str(tmp_path / "b")]) == table


def test_eval_config_on_top_of_a_training_config():
    module = config_module("configs/eval.py")
    base = os.path.join(os.path.dirname(__file__), "..", "configs", "exo2ego", "stage3_practice.py")
    if not os.path.exists(base):
        pytest.skip("configs/exo2ego/stage3_practice.py not in this tree")
    c = module.get_config("base=exo2ego/stage3_practice,base_arg=size=tiny,benchmarks=egoschema;vlnqa,batch=2")
    assert c.job == "eval" and c.method == "exo2ego" and c.eval.benchmarks == "egoschema,vlnqa"
    assert c.eval.batch_size == 2 and c.eval.mcq_mode == "generate"
    with pytest.raises(FileNotFoundError, match="base='nope'"):
        module.get_config("base=nope")


def test_job_fills_missing_eval_fields(tmp_path):
    """A method config whose eval block has only its own fields still runs the eval job."""
    import ml_collections

    paths = write_all_fixtures(tmp_path)["vlnqa"]
    config = ml_collections.ConfigDict({"method": "toy", "eval": {
        "method_only_field": 1, "benchmarks": "vlnqa", "adapter": "test_eval_runner:make_adapter",
        "paths": {"vlnqa": {"annotation": paths["annotation"], "video_dir": paths["video_dir"]}}}})
    out = runner.run(config, str(tmp_path / "w"))
    assert out == {"vlnqa/accuracy": 100.0}


def test_resume_follows_process_zero(tmp_path):
    """A process without the cache file still skips when process 0 reuses (no SPMD divergence)."""
    cfg = _cfg(tmp_path, benchmarks="vlnqa")
    res = runner.evaluate(FailingModel(), cfg, str(tmp_path / "other"), is_writer=False,
                          log=lambda s: None, agree=lambda flag: True)
    assert res["benchmarks"]["vlnqa"]["metrics"] == {} and report.headline(res["benchmarks"]["vlnqa"]) == {}
    assert not os.path.exists(tmp_path / "other" / "results.json")
    model = LookupModel()
    runner.evaluate(model, cfg, str(tmp_path / "w"), log=lambda s: None)
    runner.evaluate(model, cfg, str(tmp_path / "w"), log=lambda s: None, agree=lambda flag: False)
    assert len(model.calls) == 2  # process 0 said "recompute": this process recomputes too


def test_unlabelled_benchmark_writes_standard_json(tmp_path):
    """EgoSchema without subset_answers.json: predictions only, accuracy null (not NaN) on disk."""
    cfg = _cfg(tmp_path, benchmarks="egoschema")
    cfg.paths.egoschema.answers = ""
    res = runner.evaluate(LookupModel(), cfg, str(tmp_path / "u"), log=lambda s: None)
    m = res["benchmarks"]["egoschema"]["metrics"]
    assert m["num"] == 0 and m["num_unlabelled"] == 1
    on_disk = json.loads(open(tmp_path / "u" / "results.json").read())  # strict JSON: no NaN
    assert on_disk["benchmarks"]["egoschema"]["metrics"]["accuracy"] is None
    assert on_disk["benchmarks"]["egoschema"]["predictions"][0]["pred_index"] == 1
    assert "| egoschema | accuracy | - | 0 | 0 |" in open(tmp_path / "u" / "results.md").read()
