"""Ego-Exo4D reader on the literal docs/formats.md section 1 examples and on their tolerated variants."""
import copy
import json
import os
import shutil

import numpy as np
import pytest

from exo2ego_jax.data import egoexo4d, video
from exo2ego_jax.data.skips import SkipCounter

# Literal examples of docs/formats.md 1.2, 1.5, 1.6, 1.7 (values invented there).
UID = "00000000-0000-4000-8000-000000000001"
TAKES = json.loads("""
[{"take_uid": "00000000-0000-4000-8000-000000000001", "take_name": "synth_cooking_01_2",
  "root_dir": "takes/synth_cooking_01_2", "task_id": 1001, "task_name": "Making Tea",
  "parent_task_id": 1000, "parent_task_name": "Cooking", "university_name": "synthu",
  "duration_sec": 12.0, "task_start_sec": 0.5, "task_end_sec": 11.5, "best_exo": "cam02",
  "is_narrated": false, "is_dropped": false, "validated": true, "take_idx": 2,
  "timesync_start_idx": 100, "timesync_end_idx": 460, "participant_uid": 1, "physical_setting_uid": 1, "objects": [],
  "capture_uid": "00000000-0000-4000-8000-0000000000c1",
  "capture": {"capture_uid": "00000000-0000-4000-8000-0000000000c1", "capture_name": "synth_cooking_01",
              "root_dir": "captures/synth_cooking_01", "university_name": "synthu", "has_trajectory": false,
              "cameras": [{"cam_id": "aria01", "is_ego": true, "device_type": "aria", "relative_path": "videos/aria01.vrs"},
                          {"cam_id": "cam01", "is_ego": false, "device_type": "hero10", "relative_path": "videos/cam01.mp4"},
                          {"cam_id": "cam02", "is_ego": false, "device_type": "hero10", "relative_path": "videos/cam02.mp4"}]},
  "frame_aligned_videos": {
    "aria01": {"rgb": {"cam_id": "aria01", "stream_id": "214-1", "readable_stream_id": "rgb",
                       "clip_uid": "00000000-0000-4000-8000-0000000000a1", "relative_path": "frame_aligned_videos/aria01_214-1.mp4"}},
    "cam01": {"0": {"cam_id": "cam01", "stream_id": "0", "readable_stream_id": "0", "clip_uid": "00000000-0000-4000-8000-0000000000b1",
                    "relative_path": "frame_aligned_videos/cam01.mp4"}},
    "cam02": {"0": {"cam_id": "cam02", "stream_id": "0", "readable_stream_id": "0", "clip_uid": "00000000-0000-4000-8000-0000000000b2",
                    "relative_path": "frame_aligned_videos/cam02.mp4"}},
    "collage": {"0": {"clip_uid": null, "stream_id": "0", "readable_stream_id": "0", "relative_path": "ego_preview.mp4"}},
    "best_exo": {"0": {"clip_uid": null, "stream_id": "0", "readable_stream_id": "0", "relative_path": null}}}}]
""")
SPLITS = json.loads("""
{"take_uid_to_split": {"00000000-0000-4000-8000-000000000001": "train"},
 "split_to_take_uids": {"train": ["00000000-0000-4000-8000-000000000001"], "val": [], "test": []},
 "take_uid_to_benchmark": {"00000000-0000-4000-8000-000000000001": ["atomic_action_descriptions", "keystep"]}}
""")
ATOMIC = json.loads("""
{"annotations": {"00000000-0000-4000-8000-000000000001": [
  {"annotation_uid": "00000000-0000-4000-8000-0000000000d1", "annotator_id": "111", "rejected": false, "reject_reason": null,
   "descriptions": [
     {"text": "C picks up the kettle with his right hand.", "timestamp": 1.25, "narration_subject": "C",
      "ego_visible": true, "unsure": false, "best_exo": {"raw_cam_id": "2", "cam_id": "cam02"}},
     {"text": "C pours water into the cup.", "timestamp": 4.8, "narration_subject": "C",
      "ego_visible": true, "unsure": false, "best_exo": {"raw_cam_id": "1", "cam_id": "cam01"}}]}]}}
""")
KEYSTEP = json.loads("""
{"annotations": {"00000000-0000-4000-8000-000000000001": {
   "take_uid": "00000000-0000-4000-8000-000000000001", "take_name": "synth_cooking_01_2", "scenario": "Making Tea",
   "annotation_meta": {"annotation_uid": "00000000-0000-4000-8000-0000000000e1", "annotator_id": 1, "response_time": 1700000000},
   "segments": [{"start_time": 0.5, "end_time": 4.0, "step_id": 2, "step_unique_id": 900, "step_name": "Boil water",
                 "step_description": "Fill kettle and switch it on", "is_essential": true}]}},
 "taxonomy": {"Making Tea": {"0": {"id": 0, "is_leafnode": false, "name": "Making Tea", "parent_id": null, "parent_name": null},
                             "2": {"id": 2, "is_leafnode": true, "name": "Boil water", "parent_id": 0,
                                   "parent_name": "Making Tea", "unique_id": 900}}},
 "vocabulary": {"900": "Boil water"}}
""")


@pytest.fixture(scope="module")
def tiny_mp4(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("mp4") / "tiny.mp4")
    video.encode_mp4(np.full((4, 16, 16, 3), 128, np.uint8), path)
    return path


def write_root(root, tiny_mp4, takes=TAKES, splits=SPLITS, atomic=ATOMIC, keystep=KEYSTEP,
               videos=("aria01_214-1.mp4", "cam01.mp4", "cam02.mp4"), small=("aria01_214-1.mp4", "cam01.mp4")):
    root = str(root)
    os.makedirs(os.path.join(root, "annotations"), exist_ok=True)
    for name, obj in [("takes.json", takes), ("annotations/splits.json", splits),
                      ("annotations/atomic_descriptions_train.json", atomic), ("annotations/keystep_train.json", keystep)]:
        with open(os.path.join(root, name), "w" if not isinstance(obj, bytes) else "wb") as f:
            f.write(obj if isinstance(obj, bytes) else json.dumps(obj))
    for t in (takes if isinstance(takes, list) else []):
        d = os.path.join(root, "takes", t["take_name"], "frame_aligned_videos")
        os.makedirs(os.path.join(d, "downscaled", "448"), exist_ok=True)
        for v in videos:
            shutil.copy(tiny_mp4, os.path.join(d, v))
        for v in small:
            shutil.copy(tiny_mp4, os.path.join(d, "downscaled", "448", v))
    return root


def test_literal_formats_examples(tmp_path, tiny_mp4):
    root = write_root(tmp_path, tiny_mp4)
    ds = egoexo4d.EgoExo4D(root)
    take = ds.takes[UID]
    assert take.ego_cam == "aria01" and take.exo_cams == ("cam01", "cam02")  # collage / best_exo are not cameras
    assert take.split == "train" and take.duration_sec == 12.0 and take.parent_task_name == "Cooking"
    assert take.root == os.path.join(root, "takes", "synth_cooking_01_2")
    assert take.videos["aria01"].endswith("takes/synth_cooking_01_2/frame_aligned_videos/aria01_214-1.mp4")
    assert set(take.videos_448) == {"aria01", "cam01"}
    assert ds.split_uids("TRAIN") == [UID] and ds.split_uids("val") == []
    narr = ds.narrations("train")
    assert [n.text for n in narr] == ["C picks up the kettle with his right hand.", "C pours water into the cup."]
    assert narr[0] == egoexo4d.Narration(UID, 0, "C picks up the kettle with his right hand.", 1.25, "C", True, False,
                                         "cam02", "00000000-0000-4000-8000-0000000000d1")
    (seg,) = ds.keysteps("train")
    assert (seg.start, seg.end, seg.step_name, seg.step_unique_id, seg.is_essential) == (0.5, 4.0, "Boil water", 900, True)
    assert ds.video_path(UID, "cam02").endswith("cam02.mp4")
    small = egoexo4d.EgoExo4D(root, video_variant="448")
    assert small.video_path(UID, "aria01").endswith("downscaled/448/aria01_214-1.mp4")
    with pytest.raises(KeyError, match="cam02"):
        small.video_path(UID, "cam02")
    assert ds.skips.counts == {}
    with pytest.raises(FileNotFoundError, match="atomic_descriptions_test.json"):
        ds.narrations("test")


def test_tolerated_variants(tmp_path, tiny_mp4):
    takes = copy.deepcopy(TAKES)
    t = takes[0]
    t["root_dir"] = "synth_cooking_01_2"  # without "takes/"
    cams = t["capture"]["cameras"]
    cams[0]["is_ego"] = "True"  # string
    cams.append({"cam_id": "aria02", "is_ego": "true"})  # second ego candidate not in frame_aligned_videos
    cams.append({"cam_id": "mobile", "is_ego": True})  # ego GoPro-like cam without "aria" ...
    t["frame_aligned_videos"]["mobile"] = {"0": {"relative_path": "frame_aligned_videos/mobile.mp4"}}
    t["frame_aligned_videos"]["gp01"] = t["frame_aligned_videos"].pop("cam01")
    t["frame_aligned_videos"]["gp01"]["0"]["relative_path"] = "frame_aligned_videos/gp01.mp4"
    splits = {"take_uid_to_split": {UID: "Train"}}
    atomic = copy.deepcopy(ATOMIC)
    d = atomic["annotations"][UID][0]["descriptions"]
    d[0].update(ego_visible="0", unsure="1")
    d[1].update(ego_visible=1, unsure="false")
    atomic["annotations"][UID].append({"annotation_uid": "rej", "rejected": "true",
                                       "descriptions": [{"text": "C rejected.", "timestamp": 2.0}]})
    root = write_root(tmp_path, tiny_mp4, takes=takes, splits=splits, atomic=atomic,
                      videos=("aria01_214-1.mp4", "gp01.mp4", "cam02.mp4", "mobile.mp4"))
    ds = egoexo4d.EgoExo4D(root)
    take = ds.takes[UID]
    # aria01 and mobile are both in frame_aligned_videos; the "aria" tie-break picks aria01, mobile is exo.
    assert take.ego_cam == "aria01" and take.exo_cams == ("cam02", "gp01", "mobile")
    assert take.split == "train"
    narr = ds.narrations("train")
    assert [(n.ego_visible, n.unsure) for n in narr] == [(False, True), (True, False)]
    assert all("rejected" not in n.text for n in narr)


def test_ego_rule_fallback_without_capture():
    t = copy.deepcopy(TAKES[0])
    del t["capture"]
    assert egoexo4d.ego_camera(t) == "aria01"
    assert egoexo4d.to_bool("1") and not egoexo4d.to_bool("0") and egoexo4d.to_bool("TRUE") and not egoexo4d.to_bool(None)


def test_malformed_top_level_json_names_file(tmp_path, tiny_mp4):
    root = write_root(tmp_path, tiny_mp4, takes=b'[{"take_uid": "x",')
    with pytest.raises(ValueError, match=r"takes\.json: malformed JSON at line 1"):
        egoexo4d.EgoExo4D(root)
    with pytest.raises(FileNotFoundError, match="takes.json"):
        egoexo4d.EgoExo4D(str(tmp_path / "nowhere"))


def test_bad_records_are_skipped_and_counted(tmp_path, tiny_mp4):
    ok = TAKES[0]
    no_exo = copy.deepcopy(ok)
    no_exo.update(take_uid="no-exo", take_name="no_exo", root_dir="takes/no_exo")
    no_exo["frame_aligned_videos"] = {"aria01": ok["frame_aligned_videos"]["aria01"]}
    no_ego_file = copy.deepcopy(ok)
    no_ego_file.update(take_uid="no-ego", take_name="no_ego", root_dir="takes/no_ego")
    takes = [ok, {"take_name": "missing uid"}, no_exo, no_ego_file]
    atomic = copy.deepcopy(ATOMIC)
    descs = atomic["annotations"][UID][0]["descriptions"]
    descs.append({"text": "C waits.", "timestamp": 99.0})  # outside the 12 s take
    descs.append({"text": "C caf\udce9.", "timestamp": 3.0})  # invalid UTF-8 byte (as surrogateescape)
    descs.append({"timestamp": 3.0})  # no text
    atomic["annotations"]["no-exo"] = [{"annotation_uid": "a", "descriptions": [{"text": "C x.", "timestamp": 1.0}]}]
    atomic["annotations"]["no-ego"] = [{"annotation_uid": "b", "descriptions": [{"text": "C y.", "timestamp": 1.0}] * 2}]
    raw = json.dumps(atomic).replace("\\udce9", "\\u00e9").encode()
    raw = raw.replace("caf\\u00e9".encode(), b"caf\xe9")  # a real non-UTF-8 byte in the file
    root = write_root(tmp_path, tiny_mp4, takes=takes, atomic=raw)
    os.remove(os.path.join(root, "takes", "no_ego", "frame_aligned_videos", "aria01_214-1.mp4"))
    skips = SkipCounter()
    ds = egoexo4d.EgoExo4D(root, skips=skips)
    assert set(ds.takes) == {UID, "no-exo", "no-ego"}
    narr = ds.narrations("train")
    assert [n.text for n in narr] == ["C picks up the kettle with his right hand.", "C pours water into the cup."]
    assert skips.counts == {"malformed_take": 1, "malformed_json": 1, "narration_outside_video": 1,
                            "non_utf8_text": 1, "no_exo_views": 1, "missing_video": 2}
    assert skips.examples["malformed_take"][0].endswith("takes.json[1]")
    assert "take_uid" in skips.details["malformed_take"][0]
    # One file failing for two narrations is one example line (distinct paths).
    assert skips.examples["missing_video"] == [os.path.join(root, "takes", "no_ego", "frame_aligned_videos",
                                                            "aria01_214-1.mp4")]
    assert skips.num_seen == 2 + 3 + 1 + 2


def test_duration_from_video_when_metadata_lacks_it_and_parse_once(tmp_path, tiny_mp4):
    takes = copy.deepcopy(TAKES)
    del takes[0]["duration_sec"]  # the tiny video lasts 4 frames = 0.133 s: both narrations are outside
    root = write_root(tmp_path, tiny_mp4, takes=takes)
    ds = egoexo4d.EgoExo4D(root)
    assert ds.narrations("train") == [] and ds.skips.counts == {"narration_outside_video": 2}
    ds.narrations("train")
    assert ds.skips.counts == {"narration_outside_video": 2} and ds.skips.num_seen == 2  # not counted twice


def test_bad_keystep_segments_are_skipped(tmp_path, tiny_mp4):
    keystep = copy.deepcopy(KEYSTEP)
    segs = keystep["annotations"][UID]["segments"]
    segs.append({"start_time": 5.0, "end_time": 3.0, "step_name": "Backwards"})  # end before start
    segs.append({"start_time": 30.0, "end_time": 31.0, "step_name": "After the take"})  # take lasts 12 s
    segs.append({"end_time": 3.0, "step_name": "No start"})
    segs.append({"start_time": 10.0, "end_time": 14.0, "step_name": "Runs over", "step_unique_id": "7",
                 "is_essential": "0"})  # clipped to the take's end
    keystep["annotations"]["unknown-take"] = {"segments": [{"start_time": 0.0, "end_time": 1.0}]}
    ds = egoexo4d.EgoExo4D(write_root(tmp_path, tiny_mp4, keystep=keystep))
    steps = ds.keysteps("train")
    assert [(s.step_name, s.end, s.step_unique_id, s.is_essential) for s in steps] == [
        ("Boil water", 4.0, 900, True), ("Runs over", 12.0, 7, False)]
    assert ds.skips.counts == {"narration_outside_video": 2, "malformed_json": 1, "unknown_take": 1}
