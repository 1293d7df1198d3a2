"""Clip-pair records: the build_records job on a tiny world, record round-trip, clip windows."""
import json
import os

import numpy as np
import pytest
from array_record.python.array_record_module import ArrayRecordReader

from exo2ego_jax.data import records, video
from test_pipeline_fixtures import make_world, records_config


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = make_world(str(tmp_path_factory.mktemp("world")))
    out = str(tmp_path_factory.mktemp("records"))
    summary = records.run(records_config(root), out)
    return root, out, summary


def read_all(out, split):
    recs = []
    for path in records.split_files(out, split):
        reader = ArrayRecordReader(path)
        recs += [records.decode_record(b) for b in reader.read(list(range(reader.num_records())))]
        reader.close()
    return recs


def test_record_bytes_round_trip():
    rec = {"text": "C opens the fridge.", "start": 1.5, "n": 3, "ego": {"frames": np.arange(24, dtype=np.uint8)
           .reshape(2, 2, 2, 3), "fps": 30.0}, "attributes": {"colour": "red"}, "raw": b"\x00\xff"}
    back = records.decode_record(records.encode_record(rec))
    np.testing.assert_array_equal(back["ego"]["frames"], rec["ego"]["frames"])
    assert back["ego"]["frames"].dtype == np.uint8
    assert {k: v for k, v in back.items() if k != "ego"} == {k: v for k, v in rec.items() if k != "ego"}
    with pytest.raises(ValueError, match="not a msgpack record|expected a dict"):
        records.decode_record(b"\xc1garbage")


def test_build_writes_every_pair_and_counts_skips(built):
    root, out, summary = built
    train = read_all(out, "train")
    # t1: 3 narrations in the video x 2 exo views + 1 keystep x 2; t2: 1 narration x 1 readable exo view.
    assert summary["records/train"] == len(train) == 9 and summary["records/val"] == 1
    pairs = {(r["take_name"], r["kind"], r["index"], r["exo_cam"]) for r in train}
    assert len(pairs) == 9 and ("synth_t2", "atomic", 0, "cam02") not in pairs
    assert summary["skipped/narration_outside_video"] == 1  # t1 at 9.0 s in a 2 s video
    assert summary["skipped/no_exo_views"] == 1  # t3
    # t2/cam02.mp4 is missing but t2's clip still pairs with cam01: a dropped view, not a lost example.
    assert summary["skipped_views/missing_video"] == 1 and "skipped/missing_video" not in summary
    assert summary["skipped/total"] == 2 and summary["skipped/seen"] == 8  # clips, the fraction's unit
    meta = json.load(open(os.path.join(out, records.RECORDS_JSON)))
    assert meta["splits"]["train"]["ego_first"] == [i for i, r in enumerate(train) if r["pair_index"] == 0]
    assert meta["skips"]["view_examples"]["missing_video"][0].endswith("synth_t2/frame_aligned_videos/cam02.mp4")


def test_clip_content_is_the_right_window_and_camera(built):
    _, out, _ = built
    rec = next(r for r in read_all(out, "train") if r["kind"] == "atomic" and r["index"] == 1
               and r["exo_cam"] == "cam02")
    assert rec["text"] == "C pours water into the cup." and rec["timestamp"] == 0.9
    ego = video.decode_frames(rec["ego"]["mp4"], range(video.probe(rec["ego"]["mp4"]).num_frames))
    exo = video.decode_frames(rec["exo"]["mp4"], [0])
    # Window of >= 16 frames around frame 27 (0.9 s at 30 fps); frame i has red = 8 i.
    assert ego.shape[0] >= 16
    first = int(np.floor(rec["start"] * 30))  # records.frame_span floors the start
    assert abs(int(ego[0, 8, 8, 0]) - 8 * first) <= 6 and abs(int(ego[-1, 8, 8, 0]) - (8 * (first + len(ego) - 1)) % 256) <= 6
    assert abs(int(ego[0, 8, 8, 1]) - 0) <= 6 and abs(int(exo[0, 8, 8, 1]) - 80) <= 6  # green = 40 * cam


def test_frames_storage_and_clip_rules(tmp_path, built):
    root, _, _ = built
    cfg = records_config(root, storage="frames", kinds=("keystep",), splits=("train",), keystep_store_fps=5.0)
    records.run(cfg, str(tmp_path))
    recs = read_all(str(tmp_path), "train")
    assert len(recs) == 2 and all(r["kind"] == "keystep" for r in recs)
    frames = recs[0]["ego"]["frames"]
    assert frames.dtype == np.uint8 and frames.shape[1:] == (64, 64, 3) and frames.shape[0] == 8  # 1.6 s x 5 fps
    assert (recs[0]["ego"]["num_frames"], recs[0]["ego"]["height"], recs[0]["ego"]["width"]) == (8, 64, 64)
    source = records.open_records(str(tmp_path), "train")  # random access, decoded dicts
    assert len(source) == 2 and source[1]["exo_cam"] == recs[1]["exo_cam"]
    np.testing.assert_array_equal(source[0]["ego"]["frames"], frames)
    assert recs[0]["text"] == "Fill the kettle and switch it on" and recs[0]["step_name"] == "Boil water"

    c = records_config(root).data
    windows = records.clip_windows({"a": [0.0, 1.0, 2.0], "b": [0.0, 3.0]}, c)
    lengths = [e - s for w in windows.values() for s, e in w]
    assert np.isclose(np.mean([lengths[0], lengths[3]]), c.clip_mean_sec)  # mean over takes = 0.68 s
    assert lengths[3] > lengths[0]  # sparser narrations -> longer clips (EgoClip rule)
    assert records.frame_span(0.9, 0.95, 60, 30.0, 16) == (20, 36)
    assert records.frame_span(1.95, 2.0, 60, 30.0, 16) == (44, 60)


def test_missing_records_dir_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="configs/data/records.py"):
        records.load_meta(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="configs/data/records.py"):
        records.open_records(str(tmp_path), "train")


def test_build_stops_past_the_skip_fraction(tmp_path, built):
    from exo2ego_jax.data.skips import TooManySkipped

    root, _, _ = built
    with pytest.raises(TooManySkipped, match="config.data.max_skip_fraction"):
        records.run(records_config(root, max_skip_fraction=0.1, kinds=("atomic",)), str(tmp_path))
    assert os.path.exists(tmp_path / records.RECORDS_JSON)  # the report is written before stopping


def test_misaligned_and_blank_inputs_are_skipped_by_reason(tmp_path):
    """A view that decodes but is not frame-aligned (re-encoded at 25 fps, half the take) is skipped
    as misaligned_video with its path (an exo view: a dropped view; the ego view: lost clips), and a
    blank narration as empty_text; the rest is written."""
    from test_pipeline_fixtures import cam_frames

    root = make_world(str(tmp_path / "world"))
    t1 = os.path.join(root, "takes", "synth_t1", "frame_aligned_videos")
    video.encode_mp4(cam_frames(2, 30), os.path.join(t1, "cam02.mp4"), fps=25)  # 1.2 s of a 2 s take
    t4_ego = os.path.join(root, "takes", "synth_t4", "frame_aligned_videos", "aria01_214-1.mp4")
    video.encode_mp4(cam_frames(0, 24), t4_ego, fps=30)  # 0.8 s of a 2 s take
    ann = os.path.join(root, "annotations", "atomic_descriptions_train.json")
    data = json.load(open(ann))
    data["annotations"][next(iter(data["annotations"]))][0]["descriptions"][1]["text"] = "  "
    json.dump(data, open(ann, "w"))
    out = str(tmp_path / "records")
    summary = records.run(records_config(root, kinds=("atomic",)), out)
    meta = json.load(open(os.path.join(out, records.RECORDS_JSON)))
    skips = meta["skips"]
    assert skips["counts"] == {"empty_text": 1, "narration_outside_video": 1, "no_exo_views": 1,
                               "misaligned_video": 1}  # t4's one clip: its ego view is misaligned
    assert skips["examples"]["misaligned_video"] == [t4_ego] and "24 frames" in skips["details"]["misaligned_video"][0]
    assert skips["view_counts"] == {"missing_video": 1, "misaligned_video": 2}  # t2/cam02; t1/cam02 x 2 clips
    assert skips["view_examples"]["misaligned_video"] == [os.path.join(t1, "cam02.mp4")]
    assert "25.000 fps" in skips["view_details"]["misaligned_video"][0]
    train = read_all(out, "train")
    assert summary["records/train"] == len(train) == 3 and {r["exo_cam"] for r in train} == {"cam01"}
    assert "records/val" not in summary or summary["records/val"] == 0
