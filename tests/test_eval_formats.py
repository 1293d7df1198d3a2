"""Benchmark loaders on the literal example records of docs/formats.md section 2 (copied verbatim)."""
import json
import os

import pytest

from exo2ego_jax.eval import loaders_mcq as mcq
from exo2ego_jax.eval import loaders_retrieval as ret

# ---- Literal examples, verbatim from docs/formats.md section 2 ----------------
EGOSCHEMA_QUESTIONS = r"""[{"q_uid": "00000000-0000-4000-8000-00000000f001", "google_drive_id": "synthid",
  "question": "What is the overall goal of c's actions in the video?",
  "option 0": "C cleans the kitchen.", "option 1": "C prepares tea.", "option 2": "C repairs a bike.",
  "option 3": "C plays basketball.", "option 4": "C reads a book."}]"""
EGOSCHEMA_ANSWERS = r"""{"00000000-0000-4000-8000-00000000f001": 1}"""

EGOMCQ = r"""{"0": {"answer": 2, "types": 1,
  "query":   {"video_uid": "00000000-0000-4000-8000-00000000e001", "clip_start": 10.0, "clip_end": 11.0, "narration_time": 10.5,
              "clip_text": "#C C opens the fridge", "tag_verb": "[1]", "tag_noun": "[2]"},
  "choices": {"0": {"video_uid": "00000000-0000-4000-8000-00000000e002", "clip_start": 3.0, "clip_end": 4.0, "narration_time": 3.5,
                    "clip_text": "#C C cuts onion", "tag_verb": "[3]", "tag_noun": "[4]"},
              "1": {"...": "same keys"}, "2": {"video_uid": "00000000-0000-4000-8000-00000000e001", "clip_start": 10.0,
                    "clip_end": 11.0, "narration_time": 10.5, "clip_text": "#C C opens the fridge", "tag_verb": "[1]", "tag_noun": "[2]"},
              "3": {"...": "same keys"}, "4": {"...": "same keys"}}}}"""

CHARADES_EGO_CSV = """id,subject,scene,quality,relevance,verified,script,objects,descriptions,actions,length,egocentric,charades_video
SYN01EGO,P001,Kitchen,6,7,Yes,A person drinks from a cup.,cup;table,A person drinks water.,c106 0.00 5.60;c107 1.00 6.00,8.00,Yes,SYN01
"""
CHARADES_CLASS_LINE = "c000 Holding some clothes"

QAEGO4D_CLOSED = r"""[{"video_id": "00000000-0000-4000-8000-00000000c001", "sample_id": "00000000-0000-4000-8000-00000000a001_0",
  "question": "Where did I put the keys?", "answer": "on the table",
  "moment_start_frame": 300, "moment_end_frame": 390,
  "wrong_answers": ["in the drawer", "on the sofa", "in the bag"]}]"""

EGOTASKQA_MCQ = r"""[{"q": "What is the status of the cup after the person picks it up?", "video_path": "27k-00-00-0|P1|100|400.mp4", "a": "B",
  "option": {"A": "on the table", "B": "in hand", "C": "in the sink", "D": "on the plate", "E": "in the fridge"}}]"""

EGOPLAN = r"""[{"sample_id": 1, "video_source": "Ego4D", "video_id": "00000000-0000-4000-8000-00000000b001", "task_goal": "make tea",
  "question": "Considering the progress shown in the video and my current observation in the last frame, what action should I take next in order to make tea?",
  "choice_a": "pour water", "choice_b": "open fridge", "choice_c": "wash hands", "choice_d": "close door",
  "golden_choice_idx": "A", "answer": "pour water", "current_observation_frame": 300,
  "task_progress_metadata": [{"narration_text": "boil water", "start_frame": 30, "stop_frame": 240}]}]"""

VLNQA = r"""{"text": "...Question: ... What is the next action it should take?\nOption:\nA: Stop\nB: Move forward\nOnly give the best option.", "video_path": "left/1_frame10.mp4", "gt": "B"}"""

EGO_IN_EXO = r"""[{"video_filename": "synth_cooking_01_2_seg0003_exo1", "question": "Which hand does the person use to hold the knife?",
  "answer_choices": {"A": "Left hand", "B": "Right hand", "C": "Both hands", "D": "Neither"},
  "ground_truth_letter": "B", "category_name": "hand_object_interaction"}]"""

ADLX = r"""[{"video_filename": "SYN01.mp4", "question": "What action is the person performing?",
  "answer_choices": {"A": "Drinking from a cup", "B": "Opening a door", "C": "Sitting down", "D": "Reading a book"},
  "ground_truth_letter": "A"}]"""
# -------------------------------------------------------------------------------------------------

# EgoMCQ's literal example elides choices 1, 3, 4 as {"...": "same keys"}; this completes them
# with rows of other videos (types=1: inter-video) so the loader can be checked end to end.
def egomcq_completed() -> dict:
    data = json.loads(EGOMCQ)
    for k, uid in (("1", "e003"), ("3", "e004"), ("4", "e005")):
        data["0"]["choices"][k] = {"video_uid": f"00000000-0000-4000-8000-00000000{uid}", "clip_start": 1234.0,
                                   "clip_end": 1235.5, "narration_time": 1234.7, "clip_text": f"#C C does {uid}",
                                   "tag_verb": "[5]", "tag_noun": "[6]"}
    return data


def charades_classes_text() -> str:
    """157 class lines; the first one is docs/formats.md's literal line."""
    return "\n".join([CHARADES_CLASS_LINE] + [f"c{i:03d} Class number {i}" for i in range(1, 157)]) + "\n"


def write(tmp, name: str, text: str) -> str:
    path = os.path.join(str(tmp), name)
    with open(path, "w") as f:
        f.write(text)
    return path


def write_all_fixtures(tmp) -> dict[str, dict[str, str]]:
    """All literal examples as files; returns {benchmark: {annotation, video_dir, ...}} paths."""
    v = os.path.join(str(tmp), "videos")
    return {
        "egoschema": dict(annotation=write(tmp, "questions.json", EGOSCHEMA_QUESTIONS),
                          answers=write(tmp, "subset_answers.json", EGOSCHEMA_ANSWERS), video_dir=v),
        "egoplan": dict(annotation=write(tmp, "EgoPlan_validation.json", EGOPLAN), video_dir=v),
        "qaego4d_closed": dict(annotation=write(tmp, "qaego4d_close.json", QAEGO4D_CLOSED), video_dir=v),
        "egotaskqa": dict(annotation=write(tmp, "egotaskqa.json", EGOTASKQA_MCQ), video_dir=v),
        "vlnqa": dict(annotation=write(tmp, "vlnqa.json", "[" + VLNQA + "]"), video_dir=v),
        "ego_in_exo": dict(annotation=write(tmp, "egoinexoperception.json", EGO_IN_EXO), video_dir=v),
        "adlx_charades_ar": dict(annotation=write(tmp, "Charades-AR.json", ADLX), video_dir=v),
        "egomcq": dict(annotation=write(tmp, "egomcq.json", json.dumps(egomcq_completed())), video_dir=v),
        "charades_ego": dict(annotation=write(tmp, "CharadesEgo_v1_test_only1st.csv", CHARADES_EGO_CSV),
                             classes=write(tmp, "Charades_v1_classes.txt", charades_classes_text()), video_dir=v),
    }


def test_egoschema(tmp_path):
    q = write(tmp_path, "q.json", EGOSCHEMA_QUESTIONS)
    a = write(tmp_path, "a.json", EGOSCHEMA_ANSWERS)
    (r,) = mcq.load_egoschema(q, "/v", a)
    assert r.uid == "00000000-0000-4000-8000-00000000f001"
    assert r.video.path == "/v/00000000-0000-4000-8000-00000000f001.mp4" and r.video.start is None
    assert r.question == "What is the overall goal of c's actions in the video?"
    assert r.options == ["C cleans the kitchen.", "C prepares tea.", "C repairs a bike.", "C plays basketball.",
                         "C reads a book."]
    assert r.answer_index == 1
    # Without answers the question is kept, unlabelled.
    (u,) = mcq.load_egoschema(q, "/v")
    assert u.answer_index is None


def test_egoplan(tmp_path):
    (r,) = mcq.load_egoplan(write(tmp_path, "e.json", EGOPLAN), "/v")
    assert r.uid == "1" and r.options == ["pour water", "open fridge", "wash hands", "close door"]
    assert r.answer_index == 0 and r.category == "Ego4D"
    assert r.video == mcq.VideoRef("/v/00000000-0000-4000-8000-00000000b001.mp4", 1.0, 10.0)
    assert r.question.endswith("in order to make tea?")


def test_egoplan2_and_epic_paths(tmp_path):
    item = json.loads(EGOPLAN)[0]
    bench2 = {k: v for k, v in item.items() if k not in ("video_source", "video_id", "question")}
    bench2.update(sample_id="00000000-0000-4000-8000-00000000b001_3", domain="kitchen", task_start_frame=60,
                  golden_choice_idx="C")
    epic = dict(item, video_source="EpicKitchens", video_id="P01_01")
    r2, re_ = mcq.load_egoplan(write(tmp_path, "e2.json", json.dumps([bench2, epic])), "/v")
    assert r2.video == mcq.VideoRef("/v/00000000-0000-4000-8000-00000000b001.mp4", 2.0, 10.0)
    assert r2.question == mcq.EGOPLAN_QUESTION.format(goal="make tea") and r2.answer_index == 2
    assert r2.category == "kitchen"
    assert re_.video.path == "/v/P01/rgb_frames/P01_01"


def test_qaego4d_closed_shuffle_is_fixed(tmp_path):
    path = write(tmp_path, "q.json", QAEGO4D_CLOSED)
    (r,) = mcq.load_qaego4d_closed(path, "/v", seed=0)
    assert sorted(r.options) == sorted(["on the table", "in the drawer", "on the sofa", "in the bag"])
    assert r.options[r.answer_index] == "on the table"
    assert r.video.path == "/v/00000000-0000-4000-8000-00000000c001.mp4"
    assert r.meta["moment"] == (10.0, 13.0) and r.category is None
    with_category = [dict(json.loads(QAEGO4D_CLOSED)[0], category="object")]
    assert mcq.load_qaego4d_closed(write(tmp_path, "c.json", json.dumps(with_category)), "/v")[0].category == "object"
    # Same seed -> same order on every load; the order depends on the seed, not on luck.
    assert mcq.load_qaego4d_closed(path, "/v", seed=0)[0].options == r.options
    orders = {tuple(mcq.shuffled_options("a", ["b", "c", "d"], s, "key")[0]) for s in range(20)}
    assert len(orders) > 1
    positions = {mcq.shuffled_options("a", ["b", "c", "d"], 0, f"k{i}")[1] for i in range(40)}
    assert positions == {0, 1, 2, 3}  # the answer is not always (A)


def test_egotaskqa_mcq(tmp_path):
    (r,) = mcq.load_egotaskqa_mcq(write(tmp_path, "t.json", EGOTASKQA_MCQ), "/v")
    assert r.options == ["on the table", "in hand", "in the sink", "on the plate", "in the fridge"]
    assert r.answer_index == 1 and r.video.path == "/v/27k-00-00-0|P1|100|400.mp4"
    assert r.question == "What is the status of the cup after the person picks it up?"


def test_vlnqa(tmp_path):
    (r,) = mcq.load_vlnqa(write(tmp_path, "v.json", "[" + VLNQA + "]"), "/v")
    assert r.options == ["Stop", "Move forward"] and r.answer_index == 1
    assert r.question == "...Question: ... What is the next action it should take?"
    assert r.video.path == "/v/left/1_frame10.mp4"
    assert r.meta["raw_prompt"] == json.loads(VLNQA)["text"]


def test_ego_in_exo_two_views(tmp_path):
    exo, ego = mcq.load_ego_in_exo(write(tmp_path, "e.json", EGO_IN_EXO), "/v")
    assert (exo.view, ego.view) == ("exo", "ego")
    assert exo.video.path == "/v/synth_cooking_01_2_seg0003_exo1.mp4"
    assert ego.video.path == "/v/synth_cooking_01_2_seg0003_ego.mp4"
    for r in (exo, ego):
        assert r.options == ["Left hand", "Right hand", "Both hands", "Neither"]
        assert r.answer_index == 1 and r.category == "hand_object_interaction"
    (only_exo,) = mcq.load_ego_in_exo(write(tmp_path, "e.json", EGO_IN_EXO), "/v", views=("exo",))
    assert only_exo.view == "exo"


def test_adlx(tmp_path):
    (r,) = mcq.load_adlx(write(tmp_path, "a.json", ADLX), "/v")
    assert r.video.path == "/v/SYN01.mp4" and r.answer_index == 0 and r.view is None
    assert r.options[0] == "Drinking from a cup" and r.question == "What action is the person performing?"


def test_egomcq_literal_example_names_elided_rows(tmp_path):
    with pytest.raises(ValueError, match=r"record 0\.choices\.1: missing key\(s\)"):
        ret.load_egomcq(write(tmp_path, "m.json", EGOMCQ), "/v")


def test_egomcq(tmp_path):
    (r,) = ret.load_egomcq(write(tmp_path, "m.json", json.dumps(egomcq_completed())), "/v")
    assert r.query == "C opens the fridge" and r.group == "inter" and r.answer_index == 2
    assert r.candidates[0] == ret.VideoRef("/v/00000000-0000-4000-8000-00000000e002/0.mp4", 3.0, 4.0)
    assert r.candidates[2] == ret.VideoRef("/v/00000000-0000-4000-8000-00000000e001/0.mp4", 10.0, 11.0)
    # 1234 s lies in chunk 2 (600-s chunks), at 34 s into it.
    assert r.candidates[1] == ret.VideoRef("/v/00000000-0000-4000-8000-00000000e003/2.mp4", 34.0, 35.5)
    (raw,) = ret.load_egomcq(write(tmp_path, "m.json", json.dumps(egomcq_completed())), "/v", strip_tags=False)
    assert raw.query == "#C C opens the fridge"


def test_charades_ego(tmp_path):
    data = ret.load_charades_ego(write(tmp_path, "c.csv", CHARADES_EGO_CSV), "/v",
                                 write(tmp_path, "classes.txt", charades_classes_text()))
    assert len(data.class_names) == 157 and data.class_names[0] == "Holding some clothes"
    (r,) = data.records
    assert r.uid == "SYN01EGO" and r.labels == [106, 107] and r.video.path == "/v/SYN01EGO.mp4"
    assert r.meta["charades_video"] == "SYN01"
    third_person = CHARADES_EGO_CSV.replace("8.00,Yes,SYN01", "8.00,No,SYN01")
    assert ret.load_charades_ego(write(tmp_path, "c3.csv", third_person), "/v",
                                 write(tmp_path, "classes.txt", charades_classes_text()),
                                 only_egocentric=True).records == []


def test_errors_name_file_record_and_key(tmp_path):
    bad = json.loads(EGO_IN_EXO)
    del bad[0]["ground_truth_letter"]
    path = write(tmp_path, "bad.json", json.dumps(bad))
    with pytest.raises(ValueError, match=r"bad\.json record 0: missing key\(s\) \['ground_truth_letter'\]"):
        mcq.load_ego_in_exo(path, "/v")
    bad = json.loads(EGOTASKQA_MCQ)
    bad[0]["a"] = "F"
    with pytest.raises(ValueError, match=r"a='F' is not one of the option letters"):
        mcq.load_egotaskqa_mcq(write(tmp_path, "t.json", json.dumps(bad)), "/v")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        mcq.load_vlnqa(str(tmp_path / "missing.json"), "/v")
    with pytest.raises(ValueError, match="'c999 0 1' is not|>= number of classes"):
        ret.parse_charades_actions("c999 0 1", 157, "x.csv line 2")
    with pytest.raises(ValueError, match="no 'Option:' line"):
        mcq.parse_vlnqa_text("What next?")
