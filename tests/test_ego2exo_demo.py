"""Ego2ExoVLM through the one trainer: student steps train the probes; the whole demo (slow)."""
import json
import os

import numpy as np
import pytest

from exo2ego_jax.methods.ego2exo import demo as ego2exo_demo
from test_label_job import load_config, world  # noqa: F401  (shared session fixture)


@pytest.mark.slow  # ~50 s of CPU: two trainer runs (teacher, student) plus a reload
def test_student_trains_probes_with_the_trainer(world, tmp_path):  # noqa: F811
    """Two trainer steps of an EAVT student (the SigLIP stack) from a teacher checkpoint: the probe vectors,
    EAVT and the projector move, the frozen tower does not, and a reloaded model carries the trained probes."""
    import jax
    from exo2ego_jax.methods.ego2exo import infer as ego2exo_infer
    from exo2ego_jax.train import checkpoint as ckpt_lib
    root, tok = world
    config = load_config("configs/ego2exo/demo.py", "small,arch=llava_video")
    caps = ego2exo_demo.caption_datasets(root, str(tmp_path), seed=0)
    kw = dict(root=root, tok_dir=tok, instructions=caps["ego_captions"], lr=1e-2)
    teacher = ego2exo_demo.phase_config(config, num_probes=0, steps=1, **kw)
    teacher.train.global_batch = 8
    ego2exo_demo._train(teacher, str(tmp_path / "teacher"))
    student = ego2exo_demo.phase_config(config, num_probes=2, steps=2, init_from=str(tmp_path / "teacher"), **kw)
    student.train.global_batch = 8
    student.train.warmup_steps = 0
    student.train.schedule = "constant"
    ego2exo_demo._train(student, str(tmp_path / "student"))

    params = ["eavt/probes", "eavt/cross_attn/attn/q_proj/kernel", "eavt/projector/fc/0/kernel",
              "vision/layers/attn/q_proj/kernel", "connector/readout/fc/0/kernel"]
    abstract = {p: jax.ShapeDtypeStruct(s.shape, s.dtype) for p, s in _shapes(student, params).items()}
    trained, missing = ckpt_lib.load_params(str(tmp_path / "student"), abstract)
    assert missing == []  # frozen parameters are saved too (the next stage / eval needs them)
    teacher_params, _ = ckpt_lib.load_params(str(tmp_path / "teacher"), abstract)
    np.testing.assert_array_equal(np.asarray(trained["vision/layers/attn/q_proj/kernel"]),
                                  np.asarray(teacher_params["vision/layers/attn/q_proj/kernel"]))  # frozen
    # EAVT starts as a copy of the (teacher's) tower attention, then trains.
    q = np.asarray(teacher_params["vision/layers/attn/q_proj/kernel"])
    assert not np.allclose(np.asarray(trained["eavt/cross_attn/attn/q_proj/kernel"]), q[: q.shape[0]])
    assert np.abs(np.asarray(trained["connector/readout/fc/0/kernel"])
                  - np.asarray(teacher_params["connector/readout/fc/0/kernel"])).max() > 0
    runner, cfg = ego2exo_infer.runner_from_run(str(tmp_path / "student"))
    np.testing.assert_allclose(np.asarray(runner.model.eavt.probes.value), np.asarray(trained["eavt/probes"]))
    assert np.abs(np.asarray(runner.model.eavt.probes.value)).max() > 0
    frozen_q = np.asarray(runner.model.vision.layers.attn.q_proj.kernel.value)
    np.testing.assert_array_equal(frozen_q, q)  # the tower is the teacher's, untouched
    lines = [json.loads(x) for x in open(tmp_path / "student" / "metrics.jsonl")]
    assert any("loss" in x and np.isfinite(x["loss"]) for x in lines)


def _shapes(config, names):
    from flax import nnx
    from exo2ego_jax.methods.ego2exo import method as ego2exo
    with nnx.use_eager_sharding(False):
        model = nnx.eval_shape(lambda: ego2exo.Ego2Exo(config).build_model(nnx.Rngs(0)))
    flat = {"/".join(map(str, k)): v.get_value() for k, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}
    return {n: flat[n] for n in names}


def test_small_demo_end_to_end(tmp_path):
    """configs/ego2exo/demo.py:small - every phase on the VideoLLaMA3 architecture (the default), the table and
    the PNG (~4 minutes on 2 loaded cores); then one teacher step of the SigLIP variant (arch=llava_video) on the same
    world."""
    config = load_config("configs/ego2exo/demo.py", "small")
    assert config.model.arch == "videollama3" and config.label.sampling == "fps"
    out = ego2exo_demo.run(config, str(tmp_path))
    assert set(out) >= {f"exo_accuracy/{m}" for m in ego2exo_demo.MODELS}
    assert os.path.getsize(tmp_path / "results.png") > 1000
    res = json.load(open(tmp_path / "results.json"))
    assert res["questions"] > 0 and set(res["results"]) == set(ego2exo_demo.MODELS) and res["arch"] == "videollama3"
    labels = json.load(open(tmp_path / "label" / "labels.json"))
    assert len(labels) == 3 * 12 and all(r["video"].endswith(".mp4") and "aria" not in r["video"] for r in labels)
    student = json.load(open(tmp_path / "student_eavt" / "config.json"))
    assert student["model"]["arch"] == "videollama3" and student["model"]["num_probes"] == 4
    assert student["train"]["init_from"] == str(tmp_path / "teacher")

    siglip = load_config("configs/ego2exo/demo.py", "small,arch=llava_video")
    assert siglip.model.arch == "llava_video" and siglip.data.sampling == "uniform"
    teacher = ego2exo_demo.phase_config(siglip, root=str(tmp_path / "world"), tok_dir=str(tmp_path / "tokenizer"),
                                        instructions=str(tmp_path / "ego_captions.json"), num_probes=0, steps=1,
                                        lr=1e-2)
    assert np.isfinite(ego2exo_demo._train(teacher, str(tmp_path / "siglip_teacher"))["loss"])
