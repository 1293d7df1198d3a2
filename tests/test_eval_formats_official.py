"""Loaders on literal records in the official formats that issue 19 adds: EPIC-KITCHENS-100 MIR
(retrieval_annotations/), QaEgo4D open-ended (annotations.<split>.json), ADL-X legacy files, and the
Charades-Ego v0 CSV check. Records are written as the published files lay them out."""
import json
import os
import pickle

import numpy as np
import pytest

from exo2ego_jax.eval import loaders_mcq as mcq
from exo2ego_jax.eval import loaders_retrieval as ret
from exo2ego_jax.eval import open_qa
from exo2ego_jax.eval.records import VideoRef
from test_eval_formats import CHARADES_EGO_CSV, charades_classes_text, write

# EPIC_100_retrieval_test.csv: the columns of the EPIC-KITCHENS-100 action CSVs; the second row
# names two nouns (all_nouns / all_noun_classes are quoted lists).
EPIC_TEST_CSV = """narration_id,participant_id,video_id,narration_timestamp,start_timestamp,stop_timestamp,start_frame,stop_frame,narration,verb,verb_class,noun,noun_class,all_nouns,all_noun_classes
P01_11_0,P01,P01_11,00:00:00.560,00:00:00.14,00:00:03.37,8,202,take plate,take,0,plate,2,['plate'],[2]
P01_11_1,P01,P01_11,00:00:04.000,00:00:03.98,00:00:05.31,239,318,put plate on rack,put,1,plate,2,"['plate', 'rack']","[2, 45]"
P22_07_3,P22,P22_07,00:01:02.350,00:01:01.90,00:01:04.00,3714,3840,take plate,take,0,plate,2,['plate'],[2]
"""
EPIC_SENTENCE_CSV = """narration_id,narration
P01_11_0,take plate
P01_11_1,put plate on rack
"""
# [videos, sentences]: 1 for the same verb and nouns; 0.25 = verb differs, noun IoU 1/2 (averaged).
EPIC_RELEVANCE = np.array([[1.0, 0.25], [0.25, 1.0], [1.0, 0.25]])

QAEGO4D_OPEN = r"""[
 {"video_id": "00000000-0000-4000-8000-00000000c001", "sample_id": "00000000-0000-4000-8000-00000000a001_0",
  "question": "Where did I put the keys?", "answer": "on the table", "moment_start_frame": 300, "moment_end_frame": 390},
 {"video_id": "00000000-0000-4000-8000-00000000c002", "sample_id": "00000000-0000-4000-8000-00000000a002_3",
  "question": "What did I pour into the bowl after I opened the fridge?",
  "answer": "I poured the milk from the white carton into the blue bowl on the counter next to the sink",
  "moment_start_frame": 1234.5, "moment_end_frame": 1300.2},
 {"video_id": "00000000-0000-4000-8000-00000000c001", "sample_id": "00000000-0000-4000-8000-00000000a001_1",
  "question": "How many cups did I wash?", "answer": "2", "moment_start_frame": 0, "moment_end_frame": 30}]"""

LEGACY_CHARADES_AR = r"""[
    {"id": "YSKX3", "Q": "What is the sequence of actions being performed in the video?",
     "Options": "1. ['Holding a pillow', 'Taking a pillow from somewhere'] 2. ['Putting a cup/glass/bottle somewhere', 'Tidying some clothes'] 3. ['Sitting on a table'] 4. ['Holding a cup/glass/bottle of something', 'Holding a pillow']",
     "Ground Truth": ["Holding a pillow", "Taking a pillow from somewhere"]},
    {"id": "015XE", "Q": "What is the sequence of actions being performed in the video?",
     "Options": "1. ['Holding some clothes'] 2. ['Working on paper/notebook'] 3. ['Taking a picture of something', 'Holding a phone/camera'] 4. ['Putting some food somewhere']",
     "Ground Truth": ["Taking a picture of something", "Holding a phone/camera"]}]"""
LEGACY_TSU_TC = r"""[
{"video_path": "P17/P17T11C06/clips/clip_1.mp4",
 "question": "What action does the person do after the action 'Walk' and before the action 'Use_cupboard'?",
 "options": {"A": "Insert_tea_bag", "B": "Pour.From_kettle", "C": "Make_coffee.Pour_water", "D": "Leave"},
 "correct_answer": "C"},
{"video_path": "P17/P17T11C06/clips/clip_2.mp4",
 "question": "What action does the person do after the action 'Put_something_on_table' and before the action 'Take_something_off_table'?",
 "options": {"A": "Make_coffee.Pour_grains", "B": "Pour.From_can", "C": "Leave", "D": "Make_coffee.Get_water"},
 "correct_answer": "A"}]"""
LEGACY_SMARTHOME_AR = r"""{
 "0": {"video_id": "/data/smarthome/cropped224x224_better/mp4/Makecoffee.Pourgrains_p18_r01_v13_c03.mp4",
       "question": "Pick the correct action that is being performed in the video among the options: ",
       "choices": {"1": "pouring coffee grains", "2": "drinking from bottle", "3": "cleaning dishes", "4": "using tablet"},
       "output": "3. Cleaning dishes</s>", "ground_truth": "pouring coffee grains", "prediction": "cleaning dishes"},
 "1": {"video_id": "/data/smarthome/cropped224x224_better/mp4/Sitdown_p10_r06_v10_c01.mp4",
       "question": "Pick the correct action that is being performed in the video among the options: ",
       "choices": {"1": "drinking from cup", "2": "sit down", "3": "drinking from bottle", "4": "using tablet"},
       "output": "2. sit down</s>", "ground_truth": "sit down", "prediction": "sit down"}}"""
LEGACY_LEMMA_TC = r"""{
 "0": {"video_id": "28l-12-1-2", "person_id": "P1",
       "question": "What action is most likely to be performed given \"put cup on table with hand\" and \"drink water with cup\" were just performed?",
       "choices": {"A": "put watermelon on other person with hand", "B": "put tomato on cutting-board with hand",
                   "C": "work-on plant", "D": "wash juicer", "E": "get water-pot from other person with hand",
                   "F": "blend coffee with knife"},
       "answer": "C", "start_frame": 0, "end_frame": 552, "start_timestamp": 0.0, "end_timestamp": 18.4, "duration": 18.4},
 "1": {"video_id": "28l-12-1-2", "person_id": "P1",
       "question": "What action is most likely to be performed given \"sit on sofa\" and \"put water-pot on floor with hand\" were just performed?",
       "choices": {"A": "open drawer", "B": "get power-plug from table with hand", "C": "point to cup",
                   "D": "put fish in tank with fishing-net", "E": "work on lettuce", "F": "watch TV"},
       "answer": "F", "start_frame": 622, "end_frame": 1262, "start_timestamp": 20.73, "end_timestamp": 42.07,
       "duration": 21.33}}"""


def write_epic(tmp, relevance=EPIC_RELEVANCE) -> dict[str, str]:
    rel = os.path.join(str(tmp), "caption_relevancy_EPIC_100_retrieval_test.pkl")
    with open(rel, "wb") as f:
        pickle.dump(relevance, f)
    return dict(annotation=write(tmp, "EPIC_100_retrieval_test.csv", EPIC_TEST_CSV),
                sentences=write(tmp, "EPIC_100_retrieval_test_sentence.csv", EPIC_SENTENCE_CSV), relevance=rel)


def test_epic_mir_official_files(tmp_path):
    p = write_epic(tmp_path)
    data = ret.load_epic_mir(p["annotation"], p["sentences"], p["relevance"], "/epic")
    assert data.video_uids == ["P01_11_0", "P01_11_1", "P22_07_3"]
    assert data.sentence_uids == ["P01_11_0", "P01_11_1"] and data.sentences == ["take plate", "put plate on rack"]
    assert data.videos[0] == VideoRef("/epic/P01/videos/P01_11.MP4", 0.14, 3.37)
    assert data.videos[2] == VideoRef("/epic/P22/videos/P22_07.MP4", 61.9, 64.0)  # 00:01:01.90
    # The row with two nouns keeps both classes.
    assert data.meta[1]["all_noun_classes"] == [2, 45] and data.meta[1]["verb_class"] == [1]
    assert data.meta[0]["all_noun_classes"] == [2] and data.meta[2]["start_frame"] == 3714
    flat = ret.load_epic_mir(p["annotation"], p["sentences"], p["relevance"], "/epic", video_ext="mp4",
                             video_subdir="")
    assert flat.videos[0].path == "/epic/P01/P01_11.mp4"
    np.testing.assert_array_equal(data.relevance, EPIC_RELEVANCE)


def test_epic_mir_errors_name_the_file(tmp_path):
    p = write_epic(tmp_path, relevance=EPIC_RELEVANCE[:2])
    with pytest.raises(ValueError, match=r"relevance shape \(2, 2\) != .*\(3, 2\)"):
        ret.load_epic_mir(p["annotation"], p["sentences"], p["relevance"], "/epic")
    bad = write(tmp_path, "bad.csv", EPIC_TEST_CSV.replace("00:00:03.37", "3.37"))
    with pytest.raises(ValueError, match=r"bad\.csv line 2: timestamp '3.37' is not HH:MM:SS"):
        ret.load_epic_mir(bad, p["sentences"], p["relevance"], "/epic")
    v0 = write(tmp_path, "v0.csv", "id,narration\n1,take plate\n")
    with pytest.raises(ValueError, match=r"header lacks \['narration_id', 'participant_id'"):
        ret.load_epic_mir(v0, p["sentences"], p["relevance"], "/epic")


def test_qaego4d_open_official_records(tmp_path):
    path = write(tmp_path, "annotations.test.json", QAEGO4D_OPEN)
    short, long_, count = open_qa.load_qaego4d_open(path, "/v")
    assert short.uid == "00000000-0000-4000-8000-00000000a001_0" and short.answer == "on the table"
    assert short.video == VideoRef("/v/00000000-0000-4000-8000-00000000c001.mp4")  # whole clip
    assert short.meta["moment"] == (10.0, 13.0)
    assert long_.answer.startswith("I poured the milk") and len(long_.answer.split()) == 19
    assert long_.meta["moment"] == pytest.approx((41.15, 43.34))  # float frames / 30
    assert count.answer == "2" and count.meta["moment"] == (0.0, 1.0)
    # The closed loader names what the open release lacks; the open loader reads the closed file too.
    with pytest.raises(ValueError, match=r"missing key\(s\) \['wrong_answers'\]"):
        mcq.load_qaego4d_closed(path, "/v")
    closed = [dict(json.loads(QAEGO4D_OPEN)[0], wrong_answers=["a", "b", "c"])]
    (r,) = open_qa.load_qaego4d_open(write(tmp_path, "closed.json", json.dumps(closed)), "/v")
    assert r.answer == "on the table"


def test_adlx_legacy_charades_ar(tmp_path):
    a, b = mcq.load_adlx(write(tmp_path, "LEGACY-Charades-AR.json", LEGACY_CHARADES_AR), "/v")
    assert a.uid == "YSKX3" and a.video.path == "/v/YSKX3.mp4"
    assert a.options == ["Holding a pillow, Taking a pillow from somewhere",
                         "Putting a cup/glass/bottle somewhere, Tidying some clothes", "Sitting on a table",
                         "Holding a cup/glass/bottle of something, Holding a pillow"]
    assert a.answer_index == 0 and b.answer_index == 2
    bad = json.loads(LEGACY_CHARADES_AR)
    bad[0]["Ground Truth"] = ["Sleeping"]
    with pytest.raises(ValueError, match=r"record 0: `Ground Truth` \['Sleeping'\] is none of the option lists"):
        mcq.load_adlx(write(tmp_path, "bad.json", json.dumps(bad)), "/v")


def test_adlx_legacy_tsu_smarthome_lemma(tmp_path):
    tsu = mcq.load_adlx(write(tmp_path, "LEGACY-TSU-TC.json", LEGACY_TSU_TC), "/v")
    assert [r.answer_index for r in tsu] == [2, 0]
    assert tsu[0].video.path == "/v/P17/P17T11C06/clips/clip_1.mp4" and tsu[0].options[1] == "Pour.From_kettle"
    home = mcq.load_adlx(write(tmp_path, "LEGACY-Smarthome-AR.json", LEGACY_SMARTHOME_AR), "/v")
    assert [r.answer_index for r in home] == [0, 1]  # ground_truth is the choice's text
    assert home[0].video.path == "/v/Makecoffee.Pourgrains_p18_r01_v13_c03.mp4"
    assert home[1].options == ["drinking from cup", "sit down", "drinking from bottle", "using tablet"]
    assert home[0].question.endswith("among the options:")
    lemma = mcq.load_adlx(write(tmp_path, "LEGACY-LEMMA-TC.json", LEGACY_LEMMA_TC), "/v")
    assert [r.answer_index for r in lemma] == [2, 5] and len(lemma[0].options) == 6
    assert lemma[1].video == VideoRef("/v/28l-12-1-2.mp4", 20.73, 42.07)


def test_charades_v0_csv_with_only_egocentric_fails_clearly(tmp_path):
    classes = write(tmp_path, "classes.txt", charades_classes_text())
    header, row = CHARADES_EGO_CSV.splitlines()
    v0 = write(tmp_path, "CharadesEgo_v0_test.csv",
               ",".join(header.split(",")[:11]) + "\n" + ",".join(row.split(",")[:11]) + "\n")
    assert len(ret.load_charades_ego(v0, "/v", classes).records) == 1  # no filter asked: read as is
    with pytest.raises(ValueError, match=r"CharadesEgo_v0_test\.csv: eval\.charades_only_egocentric=True needs "
                                         r"the v1 `egocentric` column"):
        ret.load_charades_ego(v0, "/v", classes, only_egocentric=True)
