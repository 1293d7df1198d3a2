"""The multi-stage runner: order, init_from / init_sources wiring, skip-and-resume; stage configs."""
import importlib.util
import json
import os

import pytest

from exo2ego_jax import config_lib
from exo2ego_jax.methods.exo2ego import config as ec
from exo2ego_jax.methods.exo2ego import pipeline as pipeline_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def stage_config(stage: int, hardware: str = "cpu"):
    """configs/exo2ego/stage<N>_*.py (the paper's stage), unlocked for the test to shrink."""
    c = config_lib.load(os.path.join(ROOT, "configs", "exo2ego", f"{ec.STAGE_NAMES[stage]}.py"), f"hardware={hardware}")
    c.unlock()
    return c


def _cfg(stage):
    c = stage_config(stage)
    c.train.steps = 1
    return c


def make_pipeline():
    return ec.stages_config({"s1": _cfg(1), "s2": _cfg(2), "s3": _cfg(3)},
                                        sources={"s3": ("^llm/=s1",)})


def test_resolve_stage_wires_previous_and_sources(tmp_path):
    p = make_pipeline()
    c1 = pipeline_lib.resolve_stage(p, "s1", str(tmp_path))
    c3 = pipeline_lib.resolve_stage(p, "s3", str(tmp_path))
    assert c1.train.init_from == ""
    assert c3.train.init_from == os.path.join(tmp_path, "s2")
    assert tuple(c3.exo2ego.init_sources) == (f"^llm/={os.path.join(tmp_path, 's1')}",)
    assert p.stages.s3.train.init_from == ""  # the pipeline config itself is not modified


def test_bad_source_is_named(tmp_path):
    p = ec.stages_config({"s1": _cfg(1), "s2": _cfg(2)}, sources={"s2": ("^ego/=nope",)})
    with pytest.raises(ValueError, match="nope"):
        pipeline_lib.resolve_stage(p, "s2", str(tmp_path))


def test_run_skips_finished_stages_and_continues(tmp_path, monkeypatch):
    from exo2ego_jax.train import loop
    calls = []

    def fake_train(cfg, workdir):
        calls.append((os.path.basename(workdir), cfg.train.init_from, tuple(cfg.exo2ego.init_sources)))
        if os.path.basename(workdir) == "s2" and len(calls) == 2:
            raise KeyboardInterrupt  # killed in the middle of stage 2
        return {"loss": 1.0, "step": 1}

    monkeypatch.setattr(loop, "train", fake_train)
    p = make_pipeline()
    with pytest.raises(KeyboardInterrupt):
        pipeline_lib.run(p, str(tmp_path))
    assert pipeline_lib.is_done(str(tmp_path / "s1")) and not pipeline_lib.is_done(str(tmp_path / "s2"))
    out = pipeline_lib.run(p, str(tmp_path))  # restart: s1 skipped, s2 and s3 run
    assert [c[0] for c in calls] == ["s1", "s2", "s2", "s3"]
    assert calls[2][1] == str(tmp_path / "s1")
    assert calls[3][2] == (f"^llm/={tmp_path / 's1'}",)
    assert set(out) == {"s1", "s2", "s3"}
    calls.clear()
    pipeline_lib.run(p, str(tmp_path))
    assert calls == []  # everything done


def _load(path):
    spec = importlib.util.spec_from_file_location("cfg", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("name,stage,batch,lr,warmup,epochs", [
    ("stage0_init", 0, 512, 1e-3, 0.1, 5.0),
    ("stage1_demonstrator", 1, 256, 1e-4, 0.03, 2.0),
    ("stage2_guidance", 2, 256, 1e-4, 0.03, 2.0),
    ("stage3_practice", 3, 64, 2e-5, 0.03, 1.0),
])
def test_stage_configs_carry_paper_hparams(name, stage, batch, lr, warmup, epochs):
    c = _load(os.path.join(ROOT, "configs", "exo2ego", f"{name}.py")).get_config("hardware=tpu_v5p_128")
    assert c.exo2ego.stage == stage and c.method == "exo2ego"
    assert (c.train.global_batch, c.train.warmup_ratio, c.train.epochs) == (batch, warmup, epochs)
    assert [g[1] for g in c.train.groups if g[1] is not None] and all(
        g[1] == lr for g in c.train.groups if g[1] is not None)
    assert c.train.groups[-1] == (".*", None)
    if stage == 3:
        assert (c.exo2ego.lora_rank, c.exo2ego.lora_alpha, c.exo2ego.lora_dropout) == (128, 256.0, 0.1)
    with pytest.raises(AttributeError):
        c.exo2ego.kl_wieght = 2.0  # locked: typos are errors


def test_full_size_tokens():
    from exo2ego_jax.methods.exo2ego.model import tokens_per_video
    c2, c1 = stage_config(2), stage_config(1)
    assert tokens_per_video(c1) == 1152  # 16 x 24 x 24 -> 8 x 12 x 12 (STC)
    assert tokens_per_video(c2) == 2304  # concat(x, F(x))


@pytest.mark.parametrize("name", ["stage0_init", "stage1_demonstrator", "stage2_guidance", "stage3_practice"])
def test_tiny_stage_is_coherent(name):
    """size=tiny: the data fields fit the tiny tower (frames resized to its input side)."""
    c = _load(os.path.join(ROOT, "configs", "exo2ego", f"{name}.py")).get_config("size=tiny")
    assert c.data.image_size == c.model.vision.image_size == 32
    assert (c.train.epochs, c.train.steps, c.train.global_batch) == (0.0, 2, 8)
    assert c.exo2ego.lora_rank == (4 if name == "stage3_practice" else 0)


def test_pipeline_config_loads_the_stage_files():
    p = _load(os.path.join(ROOT, "configs", "exo2ego", "pipeline.py")).get_config(
        "size=tiny,records_dir=/r,tokenizer=/t")
    assert p.order == ("stage1_demonstrator", "stage2_guidance", "stage3_practice")
    for name in p.order:
        full = _load(os.path.join(ROOT, "configs", "exo2ego", f"{name}.py")).get_config("size=tiny")
        assert p.stages[name].train.groups == full.train.groups
        assert (p.stages[name].data.records_dir, p.stages[name].data.tokenizer) == ("/r", "/t")
