"""`--config configs/eval.py:suite=egobench` end to end, as a user runs it: synthetic files in every
EgoBench benchmark's official format (written here), a lookup model whose answers are fixed per
question, and the paper's EgoBench table in results.md with hand-computed cells."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from exo2ego_jax.eval import report
from test_eval_formats import write, write_all_fixtures
from test_eval_formats_official import EPIC_SENTENCE_CSV, QAEGO4D_OPEN, write_epic
from test_eval_runner import LookupModel

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# EgoTaskQA with its direct / indirect `reference`: the direct question is answered right, the
# indirect one wrong.
EGOTASKQA = [{"q": "Where is the cup now?", "video_path": "d.mp4", "a": "B", "reference": "direct",
              "option": {"A": "on the table", "B": "in hand", "C": "in the sink"}},
             {"q": "Why did the person open the tap?", "video_path": "i.mp4", "a": "A", "reference": "indirect",
              "option": {"A": "to wash the cup", "B": "to drink", "C": "to water plants"}}]
OPEN_ANSWERS = {"Where did I put the keys?": "On the table.",          # exact match
                "What did I pour into the bowl after I opened the fridge?": "milk",  # not exact
                "How many cups did I wash?": "2"}                     # exact match
EPIC_NARRATION = {0.14: "take plate", 3.98: "put plate on rack", 61.9: "take plate"}  # clip start -> narration


class SuiteModel(LookupModel):
    """LookupModel plus EgoTaskQA / QaEgo4D-open answers and a perfect EPIC scorer."""

    def generate(self, prompts, videos):
        out = super().generate(prompts, videos)
        for i, (p, v) in enumerate(zip(prompts, videos)):
            name = os.path.basename(v.path)
            if name in ("d.mp4", "i.mp4"):
                out[i] = "(B)"
            for question, answer in OPEN_ANSWERS.items():
                if f"Question: {question}\n" in p:
                    out[i] = answer
        return out

    def text_video_scores(self, texts, videos):
        if "/videos/P" not in videos[0].path:
            return super().text_video_scores(texts, videos)
        return np.array([[float(EPIC_NARRATION[v.start] == t) for v in videos] for t in texts])


def make_adapter(config, workdir):
    return SuiteModel()


def _overrides(tmp_path) -> list[str]:
    paths = write_all_fixtures(tmp_path)
    del paths["vlnqa"]  # not configured: the suite must skip it and say so
    paths["egotaskqa"]["annotation"] = write(tmp_path, "egotaskqa_ref.json", json.dumps(EGOTASKQA))
    paths["qaego4d_open"] = dict(annotation=write(tmp_path, "annotations.test.json", QAEGO4D_OPEN),
                                 video_dir=str(tmp_path / "videos"))
    paths["epic_mir"] = dict(write_epic(tmp_path), video_dir=str(tmp_path / "epic"))
    return [f"--config.eval.paths.{name}.{key}={value}" for name, p in paths.items()
            if name in report.EGOBENCH_BENCHMARKS for key, value in p.items()]


def test_suite_command_writes_the_egobench_table(tmp_path):
    workdir = tmp_path / "egobench"
    cmd = [sys.executable, "-m", "exo2ego_jax.main",
           "--config", "configs/eval.py:suite=egobench,adapter=test_eval_suite:make_adapter,batch=2",
           "--config.eval.run_name=lookup", *_overrides(tmp_path), "--workdir", str(workdir)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.path.join(ROOT, "tests")]), JAX_PLATFORMS="cpu")
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    md = (workdir / "results.md").read_text()
    header, rule, row = md.split("## EgoBench\n\n", 1)[1].splitlines()[:3]
    assert header == ("| run | EgoSchema Acc | QAEgo4D Closed Acc | QAEgo4D Open Acc | QAEgo4D Open Score | "
                      "EgoTaskQA Direct | EgoTaskQA Indirect | Charades-Ego mAP | EPIC-KITCHENS-100 MIR mAP | "
                      "EPIC-KITCHENS-100 MIR nDCG | "
                      "EgoPlan Acc | VLN-QA Acc | EgoMCQ Inter | EgoMCQ Intra | Avg |")
    # Open QA without a judge: exact match 2/3 and no 0-5 score; VLN-QA skipped; EgoMCQ has no
    # intra question. Avg over the 10 percentage cells present:
    # (100 + 100 + 66.67 + 100 + 0 + 100 + 100 + 100 + 100 + 100) / 10 = 86.67.
    assert row == ("| lookup | 100.00 | 100.00 | 66.67 | - | 100.00 | 0.00 | 100.00 | 100.00 | 100.00 | 100.00 | - "
                   "| 100.00 | - | 86.67 (10/12) |")
    assert "qaego4d_open: scored by exact match (no judge set" in md
    assert "Skipped (files not configured): vlnqa" in md
    assert "## Timing" in md and "| epic_mir |" in md.split("## Timing", 1)[1]
    results = json.loads((workdir / "results.json").read_text())
    assert results["skipped"] == ["vlnqa"]
    epic = results["benchmarks"]["epic_mir"]["metrics"]
    assert epic["mAP_v2t"] == epic["mAP_t2v"] == epic["nDCG_v2t"] == epic["nDCG_t2v"] == 100.0
    assert all(res["seconds"] >= 0 for res in results["benchmarks"].values())
    # The first-person cue is in EgoBench prompts.
    assert "your own point of view" in results["benchmarks"]["qaego4d_open"]["predictions"][0]["prompt"]
    assert "skipping vlnqa" in proc.stdout + proc.stderr


def test_unparsed_answers_are_flagged_in_results_md():
    def mcq(unparsed, num, mode):
        return {"kind": "mcq", "settings": {"mcq_mode": mode}, "predictions": [],
                "metrics": {"accuracy": 7.6, "num": num, "unparsed": unparsed, "num_unlabelled": 0}}

    judged = {"kind": "open_qa", "settings": {}, "predictions": [],
              "metrics": {"scorer": "judge", "num": 4, "accuracy": 0.0, "score": 0.0, "exact_match": 25.0,
                          "token_f1": 45.0, "judge_unparsed": 4}}
    results = {"run": "demo", "unparsed_warn_fraction": 0.2,
               "benchmarks": {"egoschema": mcq(353, 446, "generate"), "egoplan": mcq(1, 446, "generate"),
                              "qaego4d_open": judged}}
    md = report.render_markdown(results)
    assert "**qaego4d_open: the judge's reply could not be read for 4 of 4 answers**" in md
    assert "**egoschema: 353 of 446 answers unparsed** (79%" in md and "mode=loglik" in md
    assert "egoplan: 1 of" not in md
    assert "| egoschema | accuracy | 7.60 | 446 | 353 |" in md


def test_suite_without_any_files_names_what_to_set(tmp_path):
    from exo2ego_jax.eval import runner
    from exo2ego_jax.eval.config import eval_config

    cfg = eval_config()
    cfg.suite = "egobench"
    with pytest.raises(ValueError, match=r"none of its benchmarks has its files set.*egoschema, qaego4d_closed"):
        runner.evaluate(SuiteModel(), cfg, str(tmp_path), log=lambda s: None)
    cfg.suite = "egobenchh"
    with pytest.raises(ValueError, match=r"known suites are \['ego2exo', 'egobench'\]"):
        runner.evaluate(SuiteModel(), cfg, str(tmp_path), log=lambda s: None)


def test_mcq_json_and_first_person_cue_are_read(tmp_path):
    from exo2ego_jax.eval import runner
    from exo2ego_jax.eval.config import eval_config

    paths = write_all_fixtures(tmp_path)
    cfg = eval_config("ego_in_exo")
    for k, v in paths["ego_in_exo"].items():
        cfg.paths.ego_in_exo[k] = v
    cfg.mcq_json = paths["qaego4d_closed"]["annotation"]  # synthetic EgoBench files use this format
    cfg.mcq_json_video_dir = paths["qaego4d_closed"]["video_dir"]
    cfg.prompt_style = "egobench"  # so the cue could appear in Ego-in-Exo prompts too
    res = runner.evaluate(SuiteModel(), cfg, str(tmp_path / "a"), log=lambda s: None)
    assert list(res["benchmarks"]) == ["ego_in_exo", "mcq_json"]
    assert res["benchmarks"]["mcq_json"]["metrics"]["accuracy"] == 100.0
    cue = "your own point of view"
    assert cue in res["benchmarks"]["mcq_json"]["predictions"][0]["prompt"]
    assert cue not in res["benchmarks"]["ego_in_exo"]["predictions"][0]["prompt"]  # exocentric: off
    cfg.first_person_cue, cfg.exo_first_person_cue = False, True
    res = runner.evaluate(SuiteModel(), cfg, str(tmp_path / "b"), log=lambda s: None)
    assert cue not in res["benchmarks"]["mcq_json"]["predictions"][0]["prompt"]
    assert cue in res["benchmarks"]["ego_in_exo"]["predictions"][0]["prompt"]


def test_epic_max_examples_keeps_relevant_sentences(tmp_path):
    from exo2ego_jax.eval import runner
    from exo2ego_jax.eval.config import eval_config

    cfg = eval_config("epic_mir")
    for k, v in dict(write_epic(tmp_path), video_dir="/epic").items():
        cfg.paths.epic_mir[k] = v
    cfg.max_examples = 1  # clip 0 ("take plate"): only sentence 0 has relevance 1 to it
    res = runner.evaluate(SuiteModel(), cfg, str(tmp_path / "e"), log=lambda s: None)
    m = res["benchmarks"]["epic_mir"]["metrics"]
    assert (m["num_videos"], m["num_sentences"], m["mAP"], m["nDCG"]) == (1, 1, 100.0, 100.0)
    assert EPIC_SENTENCE_CSV.splitlines()[1].endswith("take plate")

    class NoEmbedding:
        def option_loglik(self, prompts, videos, options):
            return [[0.0 if EPIC_NARRATION[v.start] == t else -1.0 for t in opts] for v, opts in zip(videos, options)]

    cfg.max_examples = 0
    cfg.retrieval_scoring = "embedding"
    with pytest.raises(ValueError, match="needs an adapter with text_video_scores.*retrieval_scoring=likelihood"):
        runner.evaluate(NoEmbedding(), cfg, str(tmp_path / "n"), log=lambda s: None)
    cfg.retrieval_scoring = "auto"  # no text_video_scores: caption likelihood
    res = runner.evaluate(NoEmbedding(), cfg, str(tmp_path / "l"), log=lambda s: None)
    assert res["benchmarks"]["epic_mir"]["metrics"]["mAP"] == 100.0


def test_likelihood_scoring_for_charades_and_egomcq(tmp_path):
    """An MLLM adapter (option_loglik only) scores texts as the clip's caption."""
    from exo2ego_jax.eval import runner
    from exo2ego_jax.eval.config import eval_config
    from test_eval_runner import RELEVANT, _key

    class CaptionModel:
        calls = []

        def option_loglik(self, prompts, videos, options):
            self.calls.append((prompts[0], len(videos), len(options[0])))
            return [[0.0 if o in RELEVANT.get(_key(v), ()) else -1.0 - len(o) / 100 for o in opts]
                    for v, opts in zip(videos, options)]

    cfg = eval_config("charades_ego,egomcq")
    for name, p in write_all_fixtures(tmp_path).items():
        if name in ("charades_ego", "egomcq"):
            for k, v in p.items():
                cfg.paths[name][k] = v
    res = runner.evaluate(CaptionModel(), cfg, str(tmp_path / "c"), log=lambda s: None)
    assert res["benchmarks"]["charades_ego"]["metrics"]["mAP"] == 100.0
    assert res["benchmarks"]["egomcq"]["metrics"]["inter_accuracy"] == 100.0
    # Charades: one call per batch of 8 videos with all 157 class names; EgoMCQ: 8 x 5 clips, one query each.
    assert [c[1:] for c in CaptionModel.calls] == [(8, 157), (40, 1)]
    assert CaptionModel.calls[0][0].endswith("Describe the action in the video in one short sentence.")
    assert "your own point of view" in CaptionModel.calls[0][0]
