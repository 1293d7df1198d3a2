"""Ego2ExoVLM evaluation: Ego-in-Exo / ADL-X literal examples, synthetic questions, model adapter."""
import json
import os

import numpy as np
import pytest

from exo2ego_jax.synthetic import egoinexo as eie
from exo2ego_jax.eval import loaders_mcq, prompts, runner
from exo2ego_jax.eval.parsing import parse_answer
from test_label_job import load_config, world  # noqa: F401  (shared session fixture)

EGO_IN_EXO = [{"video_filename": "synth_cooking_01_2_seg0003_exo1",
               "question": "Which hand does the person use to hold the knife?",
               "answer_choices": {"A": "Left hand", "B": "Right hand", "C": "Both hands", "D": "Neither"},
               "ground_truth_letter": "B", "category_name": "hand_object_interaction"}]
ADLX = [{"video_filename": "SYN01.mp4", "question": "What action is the person performing?",
         "answer_choices": {"A": "Drinking from a cup", "B": "Opening a door", "C": "Sitting down",
                            "D": "Reading a book"}, "ground_truth_letter": "A"}]


def test_ego_in_exo_literal_example(tmp_path):
    path = tmp_path / "egoinexoperception.json"
    path.write_text(json.dumps(EGO_IN_EXO))
    recs = loaders_mcq.load_ego_in_exo(str(path), "/v", views=("exo", "ego"))
    assert [r.view for r in recs] == ["exo", "ego"]
    assert recs[0].video.path == "/v/synth_cooking_01_2_seg0003_exo1.mp4"
    assert recs[1].video.path == "/v/synth_cooking_01_2_seg0003_ego.mp4"
    assert recs[0].answer_index == 1 and recs[0].category == "hand_object_interaction"
    assert prompts.build_mcq_prompt(recs[0], "ego_in_exo") == (
        "Which hand does the person use to hold the knife? The output should be the choice among one of the "
        "following choices. Choices are (A) Left hand (B) Right hand (C) Both hands (D) Neither")
    for response, want in [("(B) Right hand", 1), ("B", 1), ("The answer is B.", 1), ("Right hand.", 1),
                           ("both hands", 2), ("I cannot tell", None)]:
        assert parse_answer(response, recs[0].options).index == want, response


def test_adlx_literal_example(tmp_path):
    path = tmp_path / "Charades-AR.json"
    path.write_text(json.dumps(ADLX))
    (rec,) = loaders_mcq.load_adlx(str(path), "/adlx/videos")
    assert rec.video.path == "/adlx/videos/SYN01.mp4" and rec.answer_index == 0 and rec.view is None
    assert prompts.build_mcq_prompt(rec, "adlx").endswith(
        "Choices are (A) Drinking from a cup (B) Opening a door (C) Sitting down (D) Reading a book")
    assert parse_answer("A) Drinking from a cup", rec.options).index == 0
    assert parse_answer("The person is opening a door", rec.options).index == 1


def test_exo_caption_drops_ego_details():
    n = {"verb": "pick_up", "object_colour": "red", "object_shape": "cup", "target_colour": None,
         "hand": "left", "other_hand_activity": "waves", "actor_side": "south", "into_box": False}
    cap = eie.exo_caption(n, [])
    assert cap == "C picks up the red cup while the other hand waves, standing at the south side of the table."
    assert "left" not in cap and "marking" not in cap


@pytest.fixture(scope="module")
def bench(world, tmp_path_factory):  # noqa: F811
    root, _ = world
    out = str(tmp_path_factory.mktemp("eie"))
    return root, eie.write_questions(root, out, split="train", seed=0, max_segments=3)


def test_synthetic_questions_format_and_truth(bench):
    root, b = bench
    assert b["segments"] == 3 and b["questions"] >= 9
    items = json.load(open(b["annotation"]))
    meta = json.load(open(os.path.join(root, "synthetic_meta.json")))["takes"]
    by_name = {t["take_name"]: t for t in meta.values()}
    for it in items:
        assert set(it) == {"video_filename", "question", "answer_choices", "ground_truth_letter", "category_name"}
        assert it["video_filename"].endswith("_exo1")
        take_name, seg = it["video_filename"][: -len("_exo1")].rsplit("_seg", 1)
        take = by_name[take_name]
        first = eie.segment_narrations(take, take["keysteps"][int(seg)])[0]
        answer = it["answer_choices"][it["ground_truth_letter"]]
        if it["category_name"] == "hand":
            assert answer.endswith(f"with the {first['hand']} hand.")
        if it["category_name"] in ("object", "action"):
            assert f"the {first['object_colour']} {first['object_shape']}" in answer
        assert len(set(it["answer_choices"].values())) == len(it["answer_choices"]) >= 2
    recs = loaders_mcq.load_ego_in_exo(b["annotation"], b["video_dir"], views=("exo", "ego"))
    from exo2ego_jax.data import video
    for r in recs[:2]:
        assert os.path.exists(r.video.path) and video.probe(r.video.path).num_frames >= 5


def test_adapter_answers_synthetic_benchmark(bench, world):  # noqa: F811
    """The eval harness drives the Ego2ExoVLM adapter (a random tiny model) in both MCQ modes."""
    from flax import nnx

    from exo2ego_jax.data import pipeline
    from exo2ego_jax.methods.ego2exo import method as ego2exo
    from exo2ego_jax.methods.ego2exo import infer as ego2exo_infer
    root, b = bench
    c = load_config("configs/ego2exo/label.py", "tiny")
    c.unlock()
    c.data.tokenizer = world[1]
    c.data.sampling = "uniform"
    with nnx.use_eager_sharding(False):
        model = ego2exo.Ego2Exo(c).build_model(nnx.Rngs(0))
    r = ego2exo_infer.VideoLLMRunner(model, pipeline.load_tokenizer(c.data), c.data, text_budget=96)
    adapter = ego2exo_infer.Ego2ExoAdapter(r, max_new_tokens=4)
    recs = loaders_mcq.load_ego_in_exo(b["annotation"], b["video_dir"], views=("exo",))[:4]
    res = runner.evaluate_mcq(adapter, recs, "ego_in_exo", mode="loglik", batch_size=4)
    assert res["metrics"]["num"] == 4
    for row in res["predictions"]:
        assert len(row["option_scores"]) >= 2 and all(np.isfinite(row["option_scores"]))
        assert all(s < 0 for s in row["option_scores"])
    gen = runner.evaluate_mcq(adapter, recs[:2], "ego_in_exo", mode="generate", batch_size=2)
    assert len(gen["predictions"]) == 2 and all(isinstance(p["response"], str) for p in gen["predictions"])


def test_hand_balanced_accuracy_scores_one_hand_answers_at_fifty():
    """3 left / 1 right hand questions: always 'left' is 75% plain but 50% balanced; other views and
    categories do not count."""
    from exo2ego_jax.eval.records import MCQRecord, VideoRef
    from exo2ego_jax.methods.ego2exo.demo import hand_balanced_accuracy
    opts = ("C opens the red box with the left hand.", "C opens the red box with the right hand.")

    def rec(i, truth, view="exo", cat="hand"):
        return MCQRecord(uid=f"q{i}", video=VideoRef("/v.mp4"), question="Which hand?", options=opts,
                         answer_index=truth, category=cat, view=view, meta={})

    records = [rec(0, 0), rec(1, 0), rec(2, 0), rec(3, 1), rec(4, 1, "ego"), rec(5, 1, cat="object")]
    always_left = [{"correct": r.answer_index == 0} for r in records]
    assert hand_balanced_accuracy(records, always_left, "exo") == 50.0
    perfect = [{"correct": True} for _ in records]
    assert hand_balanced_accuracy(records, perfect, "exo") == 100.0
    assert hand_balanced_accuracy(records, always_left, "ego") == 0.0  # the one ego question is 'right'
