"""The Exo2Ego demo job end to end at toy scale (world -> stages -> eval -> table + PNG)."""
import importlib.util
import json
import os

import pytest


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def demo_config(arg):
    spec = importlib.util.spec_from_file_location("demo_cfg", os.path.join(ROOT, "configs", "demo.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.get_config(arg)


def test_demo_config_regime():
    c = demo_config(None)
    assert c.job == "demo" and tuple(c.demo.seeds) == (0, 1, 2)
    a = c.variants.a_exo2ego
    assert a.order == ("stage1", "stage2", "stage3")
    assert a.stages.stage1.data.mode == "exo_captions"  # abundant exo captions
    assert a.stages.stage2.data.ego_caption_fraction < 0.5  # scarce ego captions
    assert c.variants.c_no_kl.stages.stage2.exo2ego.kl_weight == 0.0
    b = c.variants.b_ego_only
    assert all(s.exo2ego.kl_weight == 0 and s.exo2ego.cycle_weight == 0 for s in b.stages.values())
    assert b.stages.stage3.data.mode == a.stages.stage3.data.mode == "ego_qa"  # same ego data
    assert b.stages.stage3.train.groups == a.stages.stage3.train.groups  # same stage-3 recipe
    assert c.demo.teacher_stage in a.order and c.demo.teacher_seed == 0  # one shared demonstrator
    assert c.demo.tokenizer_stems  # answers use the narrations' word tokens


# The README's main job at toy scale, in the fast suite: ~2 minutes on 2 cores (8 compiles of tiny steps
# on 2 worker processes, then a resume that trains nothing).
def test_demo_runs_end_to_end_and_resumes(tmp_path, capsys):
    from exo2ego_jax.methods.exo2ego import demo as exo2ego_demo
    c = demo_config("seeds=1,steps=0.01,takes=5,image=32,variants=a_exo2ego+b_ego_only+c_no_kl")
    with c.unlocked():
        c.demo.world.num_workers = 0
        c.demo.world.exo_size = (48, 28)
        c.demo.world.ego_size = 32
        c.demo.world.val_fraction = 0.4  # 2 of the 5 takes held out
    out = exo2ego_demo.run(c, str(tmp_path))
    assert set(out) == {"total_s", *(f"{v}/seed0/accuracy" for v in ("a_exo2ego", "b_ego_only", "c_no_kl"))}
    res = json.load(open(tmp_path / "results.json"))
    for r in res["runs"].values():
        assert 0.0 <= r["accuracy"] <= 100.0 and r["num_questions"] > 0
    assert (tmp_path / "demo.png").stat().st_size > 0
    assert "(a) Exo2Ego" in capsys.readouterr().out
    for v in ("a_exo2ego", "c_no_kl"):
        for stage in ("stage1", "stage2", "stage3"):
            assert os.path.exists(tmp_path / "seed0" / v / stage / "stage_done.json")
    # (c) reuses (a)'s demonstrator: one stage-1 run, linked.
    link = tmp_path / "seed0" / "c_no_kl" / "stage1"
    assert link.is_symlink() and link.resolve() == (tmp_path / "seed0" / "a_exo2ego" / "stage1").resolve()
    # A second run trains nothing and reproduces every number.
    done = {p: p.stat().st_mtime_ns for p in tmp_path.glob("seed0/*/*/stage_done.json")}
    again = exo2ego_demo.run(c, str(tmp_path))
    assert {k: v for k, v in again.items() if k != "total_s"} == {k: v for k, v in out.items() if k != "total_s"}
    assert {p: p.stat().st_mtime_ns for p in tmp_path.glob("seed0/*/*/stage_done.json")} == done
    res2 = json.load(open(tmp_path / "results.json"))  # train seconds survive the resume
    assert set(res2["shared"]) == {"a_exo2ego/seed0/first-stage"}
    assert res2["shared"]["a_exo2ego/seed0/first-stage"]["train_s"] >= res["shared"]["a_exo2ego/seed0/first-stage"]["train_s"] > 0
    assert all(res2["runs"][k]["train_s"] >= r["train_s"] > 0 for k, r in res["runs"].items())
    # The recognition probe reads the finished stages (exo view for stage 1, learner input after).
    from exo2ego_jax.methods.exo2ego import demo_probe as probe
    for stage in ("stage1", "stage2"):
        p = probe.caption_probe(c, str(tmp_path), variant="a_exo2ego", stage=stage, split="train", batch=4)
        assert p["colour"]["tokens"] > 0 and p["shape"]["tokens"] > 0 and p["other"]["tokens"] > 0
        assert all(0.0 <= p[k]["accuracy"] <= 100.0 for k in probe.WORD_CLASSES)


# Two toy-scale runs from scratch, the second with every job on one worker (so in the opposite
# order and sharing a process) beside a busy process: results.json must be the same to the bit.
# Slow: two demos, ~5 minutes on 2 loaded cores.
@pytest.mark.slow
def test_demo_numbers_do_not_depend_on_workers_order_or_load(tmp_path):
    import subprocess
    import sys
    from exo2ego_jax.methods.exo2ego import demo as exo2ego_demo

    def run(workdir, workers):
        c = demo_config(f"seeds=2,steps=0.01,takes=6,image=32,workers={workers}")
        with c.unlocked():
            c.demo.world.num_workers = 0
            c.demo.world.exo_size = (48, 28)
            c.demo.world.ego_size = 32
            c.demo.world.val_fraction = 0.34
        exo2ego_demo.run(c, str(workdir))
        res = json.load(open(workdir / "results.json"))
        # Loss curves too (not the timing columns of the rows).
        return {k: (r["accuracy"], r["by_category"],
                    {s: [(x["step"], x["loss"], x["grad_norm"]) for x in rows] for s, rows in r["curves"].items()})
                for k, r in res["runs"].items()}

    first = run(tmp_path / "a", -1)
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        second = run(tmp_path / "b", 1)
    finally:
        hog.kill()
        hog.wait()
    assert first == second
