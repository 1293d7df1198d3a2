"""Grain pipelines: determinism, exact resume, per-process shards, bad input, batch contents."""
import json
import os

import grain
import numpy as np
import pytest
from array_record.python.array_record_module import ArrayRecordWriter, ArrayRecordReader

from exo2ego_jax import config_lib
from exo2ego_jax.data import pipeline, records
from exo2ego_jax.data.pipeline_ops import state_to_json
from exo2ego_jax.data.skips import TooManySkipped
from test_pipeline_fixtures import make_tokenizer, make_world, records_config

SHAPES = dict(num_frames=4, image_size=32, max_len=48, num_visual_tokens=8, batch_size=4, read_threads=1,
              min_seen_for_check=1, max_skip_fraction=0.9)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = make_world(str(tmp_path_factory.mktemp("world")))
    out = os.path.join(root, "records")
    records.run(records_config(root), out)
    return root, out, make_tokenizer(root)


def cfg(**kw):
    return pipeline.pipeline_config(**{**SHAPES, **kw})


def batches(it, n=None):
    out = []
    for b in it:
        out.append(b)
        if n is not None and len(out) == n:
            break
    return out


def same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def rows(bs):
    """Identity of each real example: (answer tokens, exo camera green level); prompts vary by seed."""
    out = []
    for b in bs:
        for i in np.flatnonzero(b["example_mask"]):
            green = b["exo_pixels"][i, 0, 0, 16, 16, 1]
            answer = tuple(int(t) for t in b["labels"][i] if t != -100)
            out.append((answer, round(float(green), 1)))
    return out


def test_pair_batches_have_the_contract_shapes_and_answer_only_labels(world):
    root, out, tok = world
    bs = batches(pipeline.pair_dataset(cfg(num_epochs=1), out, "train", tok))
    assert len(bs) == 3 and [int(b["example_mask"].sum()) for b in bs] == [4, 4, 1]
    b = bs[0]
    assert b["ego_pixels"].shape == b["exo_pixels"].shape == (4, 1, 4, 32, 32, 3)
    assert b["ego_pixels"].dtype == np.uint8 and b["input_ids"].shape == (4, 48)  # normalised on device
    assert b["video_mask"].shape == (4, 1) and b["input_ids"].dtype == np.int32
    video_id = tok.convert_tokens_to_ids("<video>")
    assistant = tok.convert_tokens_to_ids("<|assistant|>")
    for ids, labels in zip(b["input_ids"], b["labels"]):
        assert (ids == video_id).sum() == 8
        start = list(ids).index(assistant)
        assert (labels[: start + 1] == -100).all() and (labels[start + 1:] != -100).any()
        kept = labels != -100
        np.testing.assert_array_equal(labels[kept], ids[kept])
        assert tok.convert_ids_to_tokens([int(labels[kept][-1])]) == ["<|end|>"]
    assert len(set(rows(bs))) == 9  # every record exactly once
    assert (bs[-1]["input_ids"][1:] == 0).all() and (bs[-1]["labels"][1:] == -100).all()  # padding rows


def test_same_seed_same_batches_other_seed_other_order(world):
    _, out, tok = world
    a = batches(pipeline.pair_dataset(cfg(num_epochs=2, seed=1), out, "train", tok))
    b = batches(pipeline.pair_dataset(cfg(num_epochs=2, seed=1), out, "train", tok))
    same(a, b)
    c = batches(pipeline.pair_dataset(cfg(num_epochs=2, seed=2), out, "train", tok))
    assert rows(a) != rows(c) and sorted(rows(a)) == sorted(rows(c))
    assert rows(a)[:9] != rows(a)[9:]  # each epoch is reshuffled


def test_exact_resume_mid_epoch(world):
    _, out, tok = world
    ds = pipeline.pair_dataset(cfg(num_epochs=2), out, "train", tok)
    it = iter(ds)
    head = batches(it, 2)
    state = json.loads(state_to_json(it.get_state()))  # as a checkpoint would store it
    rest = batches(it)
    resumed = iter(ds)
    resumed.set_state(state)
    same(batches(resumed), rest)
    full = batches(iter(ds))
    same(full, head + rest)


def test_per_process_shards_partition_the_data(world):
    _, out, tok = world
    per = [rows(batches(pipeline.pair_dataset(cfg(num_epochs=1), out, "train", tok, process_index=i,
                                              process_count=2))) for i in range(2)]
    assert len(per[0]) == len(per[1]) == 4  # 9 records: equal shards, the odd one out dropped
    assert not set(per[0]) & set(per[1])
    order = pipeline._order(grain.MapDataset.range(10), cfg(num_epochs=2), 0, 1)
    shards = [list(pipeline._order(grain.MapDataset.range(10), cfg(num_epochs=2), i, 3)) for i in range(3)]
    assert [len(s) for s in shards] == [6, 6, 6]
    assert [x for trio in zip(*shards) for x in trio] == list(order)[:18]


def test_single_view_datasets(world):
    _, out, tok = world
    ego = batches(pipeline.single_view_dataset(cfg(num_epochs=1), out, "train", tok, view="ego"))
    exo = batches(pipeline.single_view_dataset(cfg(num_epochs=1), out, "train", tok, view="exo"))
    assert sum(int(b["example_mask"].sum()) for b in ego) == 5  # each ego clip once
    assert sum(int(b["example_mask"].sum()) for b in exo) == 9
    assert ego[0]["pixels"].shape == (4, 1, 4, 32, 32, 3) and "ego_pixels" not in ego[0]
    assert ego[0]["pixels"][0, 0, 0, 16, 16, 1] < 8  # the ego camera has green 0
    exo_f = batches(pipeline.single_view_dataset(cfg(num_epochs=1, pixel_dtype="float32"), out, "train", tok,
                                                 view="exo"))
    # The float32 path normalises on the host; normalising the uint8 batch gives the same numbers.
    assert exo_f[0]["pixels"].dtype == np.float32
    mean, std = np.asarray(pipeline.pipeline_config().image_mean), np.asarray(pipeline.pipeline_config().image_std)
    for bu, bf in zip(exo, exo_f):
        real = bu["example_mask"] == 1  # padding rows are zeros in both formats
        np.testing.assert_allclose((bu["pixels"][real] / 255.0 - mean) / std, bf["pixels"][real], atol=1e-4)
    with pytest.raises(ValueError, match="pixel_dtype='float16'"):
        pipeline.single_view_dataset(cfg(pixel_dtype="float16"), out, "train", tok, view="exo")


@pytest.fixture(scope="module")
def bad_records(world, tmp_path_factory):
    """A split 'bad' with 3 good records and one of each bad kind."""
    _, out, _ = world
    reader = ArrayRecordReader(records.split_files(out, "train")[0])
    good = reader.read([0, 1, 2])
    reader.close()
    rec = records.decode_record(good[0])
    bad_text = dict(rec, text=b"caf\xe9 au lait")
    garbage = dict(rec, ego={"mp4": b"\x00\x00\x00\x18ftypisom" + b"\x13" * 500, "fps": 30.0})
    empty = dict(rec, exo={"mp4": b"", "fps": 30.0})
    cut = dict(rec, ego={"mp4": rec["ego"]["mp4"][: len(rec["ego"]["mp4"]) // 3], "fps": 30.0})
    items = list(good) + [b"\xc1 not a record", records.encode_record(bad_text), records.encode_record(garbage),
                          records.encode_record(empty), records.encode_record(cut)]
    d = str(tmp_path_factory.mktemp("bad"))
    w = ArrayRecordWriter(os.path.join(d, "bad.array_record-00000"), "group_size:1")
    for it in items:
        w.write(it)
    w.close()
    with open(os.path.join(d, records.RECORDS_JSON), "w") as f:
        json.dump({"format": 1, "splits": {"bad": {"files": ["bad.array_record-00000"], "num_records": len(items),
                                                   "ego_first": [0]}}}, f)
    return d


def test_bad_records_are_skipped_counted_and_survive_resume(world, bad_records):
    _, _, tok = world
    ds = pipeline.pair_dataset(cfg(num_epochs=1, shuffle=False, batch_size=2), bad_records, "bad", tok)
    it = iter(ds)
    first = batches(it, 1)
    state = it.get_state()
    bs = first + batches(it)
    assert sum(int(b["example_mask"].sum()) for b in bs) == 3
    for b in bs:  # skipped slots: no pixels, no tokens, nothing to train on
        dead = b["example_mask"] == 0
        assert (b["labels"][dead] == -100).all() and not b["ego_pixels"][dead].any()
    counts = it.skips.counts
    assert counts["corrupt_record"] == 1 and counts["non_utf8_text"] == 1
    assert counts.get("corrupt_video", 0) + counts.get("truncated_video", 0) + counts.get("empty_video", 0) == 3
    assert it.skips.num_seen == 8
    assert any("bad#3" in p for p in it.skips.examples["corrupt_record"])
    metrics = pipeline.skip_metrics(it)
    assert metrics["skipped/total"] == 5 and metrics["skipped/seen"] == 8
    mapped = iter(ds.map(lambda b: b))  # a method's later stage keeps the counter reachable
    batches(mapped)
    assert pipeline.skip_metrics(mapped) == metrics
    resumed = iter(ds)
    resumed.set_state(state)
    batches(resumed)
    assert resumed.skips == it.skips  # counts before the checkpoint come back with the state


def test_too_many_skips_stops_with_a_clear_message(world, bad_records):
    _, _, tok = world
    ds = pipeline.pair_dataset(cfg(num_epochs=1, shuffle=False, batch_size=2, max_skip_fraction=0.2),
                               bad_records, "bad", tok)
    with pytest.raises(TooManySkipped, match="max_skip_fraction"):
        batches(iter(ds))


def test_instruction_dataset(world, tmp_path):
    root, _, tok = world
    video = "takes/synth_t1/frame_aligned_videos/aria01_214-1.mp4"
    conv = [{"from": "human", "value": "<video>\nWhat am I doing?"}, {"from": "gpt", "value": "C picks up the kettle."}]
    samples = [{"id": "a", "video": video, "conversations": conv, "start": 0.5, "end": 1.0},
               {"id": "b", "conversations": [{"from": "human", "value": "What is tea?"},
                                             {"from": "gpt", "value": "C pours water."}]},
               {"id": "c", "video": "takes/none.mp4", "conversations": conv},
               {"id": "d", "conversations": [{"from": "human", "value": "odd"}]}]
    path = tmp_path / "sft.json"
    path.write_text(json.dumps(samples))
    (tmp_path / "bad.json").write_text("{oops")
    ds = pipeline.instruction_dataset(cfg(num_epochs=1, shuffle=False, data_folder=root, sampling="fps",
                                          sample_fps=10.0), tok, files=[str(path), str(tmp_path / "bad.json")])
    it = iter(ds)
    (b,) = batches(it)
    assert b["pixels"].shape == (4, 1, 4, 32, 32, 3) and b["frame_mask"].shape == (4, 1, 4)
    np.testing.assert_array_equal(b["example_mask"], [1, 1, 0, 0])
    np.testing.assert_array_equal(b["video_mask"][:, 0], [1, 0, 0, 0])
    assert b["frame_mask"][0, 0].sum() == 4  # 0.5 s at 10 fps = 5 frames, capped at 4
    assert it.skips.counts == {"malformed_json": 2, "missing_video": 1}
    assert it.skips.num_seen == 5  # 3 samples read by the pipeline + 2 rejected at load time
    # The clip starts at 0.5 s: frame 15 has red 8 * 15 = 120.
    assert abs(int(b["pixels"][0, 0, 0, 16, 16, 0]) - 120) < 8


@pytest.mark.slow
def test_worker_processes_are_deterministic_and_resumable(world):
    """Workers batch their own slices, so the order differs from in-process, but is fixed."""
    from absl import flags
    flags.FLAGS.mark_as_parsed()
    _, out, tok = world
    inproc = batches(pipeline.pair_dataset(cfg(num_epochs=1), out, "train", tok))
    ds = pipeline.pair_dataset(cfg(num_epochs=1, worker_count=2), out, "train", tok)
    a, b = batches(iter(ds)), batches(iter(ds))
    same(a, b)
    assert sorted(rows(a)) == sorted(rows(inproc))
    it = iter(ds)
    head = batches(it, 1)
    state = it.get_state()
    resumed = iter(ds)
    resumed.set_state(state)
    same(head + batches(resumed), a)


@pytest.mark.parametrize("mode,shape", [("center_crop", (3, 40, 70, 3)), ("resize", (3, 40, 40, 3)),
                                        ("pad", (3, 50, 70, 3)), ("center_crop", (3, 50, 70, 3))])
def test_fast_crop_normalise_matches_video_module(mode, shape):
    from exo2ego_jax.data import video
    from exo2ego_jax.data.pipeline_ops import crop_normalise

    frames = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    mean, std = (0.48, 0.46, 0.41), (0.27, 0.26, 0.28)
    np.testing.assert_allclose(crop_normalise(frames, 40, mean, std, mode),
                               video.resize_crop_normalise(frames, 40, mean, std, mode), atol=1e-5)


@pytest.mark.parametrize("mode,shape", [("center_crop", (3, 40, 70, 3)), ("resize", (3, 50, 40, 3)),
                                        ("pad", (3, 50, 70, 3)), ("center_crop", (3, 50, 70, 3))])
def test_uint8_crop_normalised_on_device_matches_video_module(mode, shape):
    """uint8 batches + device normalisation = resize_crop_normalise, up to rounding to grey levels."""
    from exo2ego_jax.data import video
    from exo2ego_jax.data.pipeline_ops import resize_crop_uint8

    frames = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    mean, std = np.asarray((0.48, 0.46, 0.41)), np.asarray((0.27, 0.26, 0.28))
    got = resize_crop_uint8(frames, 40, mean, mode)
    assert got.dtype == np.uint8 and got.shape == (3, 40, 40, 3)
    np.testing.assert_allclose((got / 255.0 - mean) / std, video.resize_crop_normalise(frames, 40, mean, std, mode),
                               atol=0.51 / 255 / std.min())


def test_stage2_reads_only_its_kind_from_default_records_without_skips(world):
    """Records built with the default (both kinds): Exo2Ego stage 2 (kinds=("atomic",)) reads only the
    atomic pairs; the keystep records are filtered out before counting, never reported as skipped."""
    root, out, tok = world
    meta = records.load_meta(out)
    assert set(meta["splits"]["train"]["kinds"]) == {"atomic", "keystep"}  # the default build: both
    config = config_lib.load(os.path.join(os.path.dirname(__file__), "..", "configs", "exo2ego",
                                          "stage2_guidance.py"))
    with config.unlocked():
        config.data.update(SHAPES, records_dir=out, tokenizer=os.path.join(root, "tokenizer"),
                           max_skip_fraction=0.0)  # any skip would stop it
    assert tuple(config.data.kinds) == ("atomic",)
    it = iter(pipeline.make_dataset(config, "train", 0, 1, kind="pair"))
    got = batches(it, 6)
    texts = {tok.decode([t for t in b["labels"][i] if t != -100]) for b in got
             for i in np.flatnonzero(b["example_mask"])}
    assert texts and not any("kettle and switch" in t for t in texts)  # the keystep's text never appears
    assert it.skips.num_skipped == 0 and it.skips.num_seen == 6 * SHAPES["batch_size"]
    # 7 atomic records (t1: 3 clips x 2 views, t2: 1 x 1) of the 9: the filter is an index subset.
    assert records.kind_subset(out, "train", ("atomic",)) == [i for i, r in enumerate(
        records.open_records(out, "train")[j] for j in range(9)) if r["kind"] == "atomic"]
    assert records.kind_subset(out, "train", ("atomic", "keystep")) is None
    with pytest.raises(ValueError, match="no records of kind"):
        records.kind_subset(out, "val", ("keystep",))


def test_kind_filter_on_records_without_a_kind_index(world, tmp_path):
    """Record directories written before the kind index: their kinds are read once from the records."""
    root, out, _ = world
    meta = json.load(open(os.path.join(out, records.RECORDS_JSON)))
    for split in meta["splits"].values():
        del split["kinds"]
    old = tmp_path / "old"
    old.mkdir()
    for name in os.listdir(out):
        if name != records.RECORDS_JSON:
            os.symlink(os.path.join(out, name), old / name)
    json.dump(meta, open(old / records.RECORDS_JSON, "w"))
    assert records.kind_subset(str(old), "train", ("keystep",)) == records.kind_subset(out, "train", ("keystep",))
    assert len(records.kind_subset(out, "train", ("keystep",))) == 2
