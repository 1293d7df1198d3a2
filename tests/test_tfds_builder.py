"""tfds builder ``ego_exo_clip``: built from the tiny world, read back with tfds.data_source, equal
to the plain ArrayRecord writer's records (texts, windows, clip bytes, decoded frames), random
access, split sizes, ego_first, raw-shard decoding, and the Grain pipeline on a tfds dataset."""
import os
import pickle

import grain
import numpy as np
import pytest

from exo2ego_jax.data import pipeline, records, video
from test_pipeline_fixtures import make_tokenizer, make_world, records_config

tfds = pytest.importorskip("tensorflow_datasets")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = make_world(str(tmp_path_factory.mktemp("world")))
    plain = str(tmp_path_factory.mktemp("plain"))
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    records.run(records_config(root), plain)
    summary = records.run(records_config(root, writer="tfds"), data_dir)
    return root, plain, data_dir, summary


def read(source):
    return [source[i] for i in range(len(source))]


def assert_same_record(a, b):
    assert a.keys() == b.keys()
    for k in a:
        if k in ("ego", "exo"):
            assert a[k].keys() == b[k].keys(), k
            for f in a[k]:
                if f == "frames":
                    np.testing.assert_array_equal(a[k][f], b[k][f])
                else:
                    assert a[k][f] == b[k][f], (k, f)
        else:
            assert a[k] == b[k] and type(a[k]) is type(b[k]), (k, a[k], b[k])


def test_tfds_dataset_equals_the_plain_records(built):
    root, plain, data_dir, summary = built
    assert summary["records/atomic/train"] == 7 and summary["records/atomic/val"] == 1
    assert summary["records/keystep/train"] == 2 and "records/keystep/val" not in summary  # no val keysteps
    assert summary["skipped/no_exo_views"] == 1 and summary["skipped_views/missing_video"] == 1
    for split in ("train", "val"):
        want = read(records.open_records(plain, split))
        for kind in ("atomic", "keystep"):
            ours = [r for r in want if r["kind"] == kind]
            if not ours:
                continue
            got = read(records.open_records(f"ego_exo_clip/{kind}", split, data_dir=data_dir))
            assert len(got) == len(ours)
            for a, b in zip(ours, got):  # same order: write-time shuffling is off
                assert_same_record(a, b)
    got = read(records.open_records("ego_exo_clip/atomic", "train", data_dir=data_dir))
    assert [r["text"] for r in got[:2]] == ["C picks up the kettle."] * 2
    assert isinstance(got[0]["text"], str) and got[0]["attributes"] == {}  # real-layout world: no ground truth
    clip = got[2]["ego"]["mp4"]
    frames = video.decode_frames(clip, range(got[2]["ego"]["num_frames"]))
    assert frames.shape == (got[2]["ego"]["num_frames"], 64, 64, 3)
    first = int(np.floor(got[2]["start"] * 30))
    assert abs(int(frames[0, 8, 8, 0]) - 8 * first) <= 6  # frame i of the source has red = 8 i


def test_data_source_random_access_split_sizes_and_global_shuffle(built):
    _, _, data_dir, _ = built
    ds = tfds.data_source("ego_exo_clip/atomic", split="train", data_dir=data_dir, download=False)
    src = records.open_records(os.path.join(data_dir, "ego_exo_clip", "atomic", "1.0.0"), "train")
    builder = tfds.builder_from_directory(os.path.join(data_dir, "ego_exo_clip", "atomic", "1.0.0"))
    assert len(ds) == len(src) == builder.info.splits["train"].num_examples == 7
    forward = read(src)
    for i in (6, 0, 3, 3):
        assert_same_record(src[i], forward[i])
    assert ds[4]["text"] == forward[4]["text"].encode()  # tfds gives Text as bytes; open_records as str
    order = [(r["take_name"], r["index"], r["exo_cam"]) for r in grain.MapDataset.source(src).shuffle(seed=3)]
    assert sorted(order) == sorted((r["take_name"], r["index"], r["exo_cam"]) for r in forward)
    assert len(set(order)) == 7
    clone = pickle.loads(pickle.dumps(src))  # Grain worker processes get a pickled source
    assert len(clone) == 7 and clone[5]["text"] == forward[5]["text"]
    meta = records.load_meta(src.dataset_dir)
    assert meta["splits"]["train"]["num_records"] == 7 and meta["kind"] == "atomic"
    assert meta["splits"]["train"]["ego_first"] == [i for i, r in enumerate(forward) if r["pair_index"] == 0]


def test_raw_shards_decode_like_the_plain_format(built):
    _, _, data_dir, _ = built
    tdir = os.path.join(data_dir, "ego_exo_clip", "keystep", "1.0.0")
    files = records.split_files(tdir, "train")
    raw = grain.sources.ArrayRecordDataSource(files)
    assert len(raw) == 2 and all(os.path.exists(f) for f in files)
    for i in range(2):
        assert_same_record(records.decode_record(raw[i]), records.open_records(tdir, "train")[i])
    rec = records.decode_record(raw[0])
    assert rec["text"] == "Fill the kettle and switch it on" and rec["step_unique_id"] == 900
    with pytest.raises(ValueError, match="not an ego_exo_clip tf.Example"):
        records.decode_record(b"\x0a\x05garbage")
    with pytest.raises(KeyError, match="no split 'val'"):
        records.split_files(tdir, "val")


def test_frames_storage_round_trips(built, tmp_path):
    root, _, _, _ = built
    over = dict(storage="frames", kinds=("keystep",), splits=("train",), keystep_store_fps=5.0)
    records.run(records_config(root, **over), str(tmp_path / "plain"))
    records.run(records_config(root, writer="tfds", **over), str(tmp_path / "tfds"))
    want = read(records.open_records(str(tmp_path / "plain"), "train"))
    got = read(records.open_records("ego_exo_clip/keystep_frames", "train", data_dir=str(tmp_path / "tfds")))
    assert len(got) == len(want) == 2
    for a, b in zip(want, got):
        assert_same_record(a, b)
    frames = got[0]["ego"]["frames"]
    assert frames.dtype == np.uint8 and frames.shape == (8, 64, 64, 3) == (got[0]["ego"]["num_frames"], 64, 64, 3)


def test_pipeline_batches_are_identical_from_either_format(built):
    root, plain, data_dir, _ = built
    tok = make_tokenizer(root)
    cfg = pipeline.pipeline_config(num_frames=4, image_size=32, max_len=48, num_visual_tokens=8, batch_size=4,
                                   read_threads=1, num_epochs=1, kinds=("atomic",), max_skip_fraction=0.9)
    tdir = os.path.join(data_dir, "ego_exo_clip", "atomic", "1.0.0")
    # The plain dir also holds keystep pairs; the tfds atomic dataset is the plain one minus those.
    a = [b for b in pipeline.pair_dataset(cfg, tdir, "train", tok)]
    assert sum(int(b["example_mask"].sum()) for b in a) == 7
    again = [b for b in pipeline.pair_dataset(cfg, tdir, "train", tok)]
    for x, y in zip(a, again):
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])
    ego = [b for b in pipeline.single_view_dataset(cfg, tdir, "train", tok, view="ego")]
    assert sum(int(b["example_mask"].sum()) for b in ego) == 4  # each ego clip once (ego_first)
    plain_ex = {(tuple(int(t) for t in b["labels"][i] if t != -100), float(b["exo_pixels"][i, 0, 0, 16, 16, 1]))
                for b in pipeline.pair_dataset(cfg, plain, "train", tok)
                for i in np.flatnonzero(b["example_mask"])}
    tfds_ex = {(tuple(int(t) for t in b["labels"][i] if t != -100), float(b["exo_pixels"][i, 0, 0, 16, 16, 1]))
               for b in a for i in np.flatnonzero(b["example_mask"])}
    assert tfds_ex == plain_ex and len(tfds_ex) == 7


def test_bad_paths_and_configs_are_clear_errors(built, tmp_path):
    root, _, data_dir, _ = built
    with pytest.raises(FileNotFoundError, match="writer=tfds"):
        records.open_records("ego_exo_clip/keystep_frames", "train", data_dir=data_dir)
    with pytest.raises(FileNotFoundError, match="neither a records directory nor a tfds"):
        records.open_records(str(tmp_path), "train")
    from exo2ego_jax.data.tfds_egoexoclip import EgoExoClip

    cfg = records_config(root, writer="tfds", storage="frames").data
    builder = EgoExoClip(config="atomic", data_dir=str(tmp_path), data_config=cfg)
    with pytest.raises(ValueError, match="config.data.storage='frames' but builder config 'atomic'"):
        builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=root))
    shard = records.split_files(os.path.join(data_dir, "ego_exo_clip", "atomic", "1.0.0"), "train")[0]
    before = os.stat(shard).st_mtime_ns
    summary = records.run(records_config(root, writer="tfds", kinds=("atomic",)), data_dir)  # same: reused
    assert summary["records/atomic/train"] == 7 and os.stat(shard).st_mtime_ns == before
    with pytest.raises(ValueError, match=r"built with other settings \(crf: 23 there, 30 now\)"):
        records.run(records_config(root, writer="tfds", kinds=("atomic",), crf=30), data_dir)
    with pytest.raises(ValueError, match="writer must be"):
        records.run(records_config(root, writer="parquet"), str(tmp_path))


def test_synthetic_world_round_trips_ground_truth_attributes(tmp_path):
    from exo2ego_jax.synthetic import world as synthetic

    wc = synthetic.world_config()
    wc.num_takes, wc.fps, wc.exo_size, wc.ego_size = 2, 10, (48, 28), 32
    wc.write_448, wc.num_workers, wc.val_fraction = False, 0, 0.0
    wc.action_seconds, wc.pause_seconds, wc.lead_seconds, wc.max_relocations = (0.4, 0.5), (0.0, 0.1), 0.2, 2
    root = str(tmp_path / "world")
    synthetic.write_world(wc, root)
    over = dict(kinds=("atomic",), splits=("train",), video_variant="auto", max_skip_fraction=0.05)
    records.run(records_config(root, **over), str(tmp_path / "plain"))
    summary = records.run(records_config(root, writer="tfds", **over), str(tmp_path / "tfds"))
    want = read(records.open_records(str(tmp_path / "plain"), "train"))
    got = read(records.open_records(summary["dataset_dir/atomic"], "train"))
    assert len(got) == len(want) == summary["records/atomic/train"] > 0
    for a, b in zip(want, got):
        assert_same_record(a, b)
    clip = got[0]["attributes"]["clip"]  # the narration's ground truth, as the plain writer stores it
    assert got[0]["attributes"]["take_name"] == got[0]["take_name"]
    assert abs(clip["timestamp"] - got[0]["timestamp"]) < 1e-3


def test_tfds_build_stops_past_the_skip_fraction_after_writing(built, tmp_path):
    from exo2ego_jax.data.skips import TooManySkipped

    root, _, _, _ = built
    with pytest.raises(TooManySkipped, match="config.data.max_skip_fraction"):
        records.run(records_config(root, writer="tfds", max_skip_fraction=0.1, kinds=("atomic",)), str(tmp_path))
    meta = records.load_meta(str(tmp_path / "ego_exo_clip" / "atomic" / "1.0.0"))
    assert meta["skips"]["counts"]["no_exo_views"] == 1 and meta["splits"]["train"]["num_records"] == 7
