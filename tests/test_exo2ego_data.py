"""Synthetic EgoBench questions, pre-decoded demo clips and the stage datasets (scarce ego labels)."""
import json
import os

import numpy as np
import pytest

from exo2ego_jax import config_lib
from exo2ego_jax.synthetic import egobench as eb
from exo2ego_jax.eval import loaders_mcq
from exo2ego_jax.methods.exo2ego import config as ec
from exo2ego_jax.methods.exo2ego import data as exo2ego_data
from exo2ego_jax.methods.exo2ego.model import tokens_per_video


def stage_config(stage: int, hardware: str = "cpu"):
    """configs/exo2ego/stage<N>_*.py (the paper's stage), unlocked for the test to shrink."""
    c = config_lib.load(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs",
                                     "exo2ego", f"{ec.STAGE_NAMES[stage]}.py"), f"hardware={hardware}")
    c.unlock()
    return c



@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from exo2ego_jax.synthetic import world as synthetic
    from exo2ego_jax.synthetic import tokenizer as synthetic_tokenizer
    root = tmp_path_factory.mktemp("e2e_world")
    wc = synthetic.world_config()
    wc.num_takes, wc.fps, wc.exo_size, wc.ego_size = 5, 10, (48, 28), 32
    wc.write_448, wc.num_workers, wc.val_fraction = False, 0, 0.2
    synthetic.write_world(wc, str(root / "world"))
    texts = synthetic_tokenizer.world_texts(str(root / "world")) + [exo2ego_data.CAPTION_PROMPT]
    for it in eb.generate(str(root / "world"), "train") + eb.generate(str(root / "world"), "val"):
        texts.append(exo2ego_data.qa_prompt(it["question"], [it["answer"], *it["wrong_answers"]]))
        texts += [it["answer"], *it["wrong_answers"]]
    synthetic_tokenizer.build_tokenizer(texts, str(root / "tok"))
    exo2ego_data.build_arrays(str(root / "world"), str(root / "clips.npz"), num_frames=2, image_size=16)
    return root


def test_questions_are_well_formed_and_deterministic(world):
    w = str(world / "world")
    items = eb.generate(w, "val")
    assert items and items == eb.generate(w, "val")
    meta = json.load(open(os.path.join(w, "synthetic_meta.json")))
    val_takes = {t["take_name"] for t in meta["takes"].values() if t["split"] == "val"}
    assert {it["take_name"] for it in items} == val_takes  # held-out takes only
    for it in items:
        opts = [it["answer"], *it["wrong_answers"]]
        assert len(opts) == 4 and len(set(opts)) == 4
        assert it["category"] in eb.CATEGORIES
        take = next(t for t in meta["takes"].values() if t["take_name"] == it["take_name"])
        n = take["narrations"][it["narration_index"]]
        if it["category"] == "hand":
            assert it["answer"] == f"the {n['hand']} hand"
        if it["category"] == "object":
            o = next(o for o in take["objects"] if o["id"] == n["object"])
            assert it["answer"] == f"the {o['colour']} {o['shape']}"


def test_written_benchmark_loads_with_the_qaego4d_closed_loader(world, tmp_path):
    out = eb.write(str(world / "world"), str(tmp_path / "val.json"), "val", video_dir=str(tmp_path / "clips"))
    recs = loaders_mcq.load_qaego4d_closed(str(tmp_path / "val.json"), str(tmp_path / "clips"))
    assert len(recs) == out["questions"] and out["clips"] > 0
    items = {it["sample_id"]: it for it in json.load(open(tmp_path / "val.json"))}
    for r in recs:
        assert r.options[r.answer_index] == items[r.uid]["answer"]
        assert os.path.exists(r.video.path)


def _cfg(world, stage, mode, fraction=0.5):
    c = stage_config(stage)
    c.model = ec.tiny_model(image_size=16, patch_size=8, connector="mlp2x_gelu")
    c.model.vision.image_mean, c.model.vision.image_std = (0.0,) * 3, (1.0,) * 3  # the fixture clips' (build_arrays default)
    c.data.source, c.data.mode = "arrays", mode
    c.data.arrays, c.data.world, c.data.tokenizer = str(world / "clips.npz"), str(world / "world"), str(world / "tok")
    c.data.num_frames, c.data.image_size, c.data.max_len = 2, 16, 96
    c.data.ego_caption_fraction = fraction
    c.train.global_batch = 4
    return c


def test_arrays_hold_every_clip(world):
    arr = exo2ego_data.load_arrays(str(world / "clips.npz"))
    assert arr["ego"].shape[1:] == (2, 16, 16, 3) and arr["exo"].shape[1:] == (4, 2, 16, 16, 3)
    assert arr["ego"].dtype == np.uint8 and len(arr["text"]) == len(arr["ego"])


def test_threaded_arrays_are_identical(world, tmp_path):
    exo2ego_data.build_arrays(str(world / "world"), str(tmp_path / "t.npz"), num_frames=2, image_size=16,
                              num_workers=2)
    with np.load(world / "clips.npz") as a, np.load(tmp_path / "t.npz") as b:
        assert sorted(a.files) == sorted(b.files)
        for k in a.files:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_ego_labels_are_scarce_and_exo_abundant(world):
    arr = exo2ego_data.load_arrays(str(world / "clips.npz"))
    n_train = int(np.sum(arr["split"] == "train"))
    exo = exo2ego_data._examples(_cfg(world, 1, "exo_captions"), "train")
    pairs = exo2ego_data._examples(_cfg(world, 2, "pairs"), "train")
    ego = exo2ego_data._examples(_cfg(world, 2, "ego_captions"), "train")
    qa = exo2ego_data._examples(_cfg(world, 3, "ego_qa"), "train")
    assert len(exo) == 4 * n_train and all(e["train_text"] for e in exo)
    assert len(pairs) == 4 * n_train
    labelled = {e["clip"] for e in pairs if e["train_text"]}
    assert 0 < len(labelled) < n_train  # half the train takes carry ego captions
    assert {e["clip"] for e in ego} == labelled
    assert {e["clip"] for e in qa} <= labelled  # QA only on the labelled ego clips


def _dataset(c):
    return exo2ego_data.make_dataset(c, "train", 0, 1, tokens_per_video=tokens_per_video(c))


def test_stage_batches(world):
    for stage, mode, keys in ((1, "exo_captions", {"exo_pixels"}), (2, "pairs", {"ego_pixels", "exo_pixels"}),
                              (3, "ego_qa", {"ego_pixels"})):
        c = _cfg(world, stage, mode)
        batch = next(iter(_dataset(c)))
        pix = {k for k in batch if k.endswith("pixels")}
        assert pix == keys, (stage, pix)
        assert batch["input_ids"].shape == (4, 96)
        k = tokens_per_video(c)
        assert ((batch["input_ids"] == c.model.video_token_id).sum(1) == k).all()
        assert batch[next(iter(keys))].shape == (4, 1, 2, 16, 16, 3)


def test_batches_carry_the_clips_uint8_frames(world):
    """The arrays source hands the stored uint8 frames through unchanged (the tower normalises)."""
    c = _cfg(world, 3, "ego_qa")
    batch = next(iter(_dataset(c)))
    arr = exo2ego_data.load_arrays(str(world / "clips.npz"))
    assert batch["ego_pixels"].dtype == np.uint8
    stored = {arr["ego"][i].tobytes() for i in range(len(arr["ego"]))}
    assert all(clip[0].tobytes() in stored for clip in batch["ego_pixels"])


def test_clips_normalised_for_another_tower_are_refused(world):
    c = _cfg(world, 1, "exo_captions")
    c.model.vision.image_mean = (0.5,) * 3
    with pytest.raises(ValueError, match=r"clips\.npz: the clips were built for mean \[0\.0, 0\.0, 0\.0\].*image_mean"):
        _dataset(c)


def test_shift_augment_translates_each_clip_by_one_offset(world):
    s = 3
    plain = next(iter(_dataset(_cfg(world, 2, "pairs"))))
    c = _cfg(world, 2, "pairs")
    c.data.shift_augment = s
    shifted = next(iter(_dataset(c)))
    again = next(iter(_dataset(c)))
    np.testing.assert_array_equal(shifted["input_ids"], plain["input_ids"])  # same examples, same order
    moved = 0
    for key in ("ego_pixels", "exo_pixels"):
        np.testing.assert_array_equal(shifted[key], again[key])  # seeded: reproducible
        assert shifted[key].shape == plain[key].shape
        for x, y in zip(plain[key], shifted[key]):  # one clip [videos, frames, H, W, C]
            h, w = x.shape[-3:-1]
            padded = np.pad(x, [(0, 0), (0, 0), (s, s), (s, s), (0, 0)], mode="edge")
            crops = [(dy, dx) for dy in range(2 * s + 1) for dx in range(2 * s + 1)
                     if np.array_equal(padded[..., dy:dy + h, dx:dx + w, :], y)]
            assert crops, "every frame of a clip is the same edge-padded crop"
            moved += (s, s) not in crops
    assert moved > 0  # most clips actually move


def test_damaged_world_is_skipped_and_counted_by_file(world, tmp_path):
    """The demo's clips of a world with a truncated ego mp4, an exo view re-encoded at another frame
    rate and half the length, a non-UTF-8 narration and a blank one: every undamaged clip is kept,
    each damaged input is skipped and counted with its file name, and the tokenizer texts read."""
    import shutil

    from exo2ego_jax.data import video
    from exo2ego_jax.synthetic import tokenizer as synthetic_tokenizer
    from exo2ego_jax.data.skips import SkipCounter

    src = str(world / "world")
    root = str(tmp_path / "world")
    shutil.copytree(src, root)
    meta = json.load(open(os.path.join(src, "synthetic_meta.json")))
    takes = sorted(meta["takes"].values(), key=lambda t: t["take_name"])
    fav = lambda t, f: os.path.join(root, "takes", t["take_name"], "frame_aligned_videos", f)  # noqa: E731
    ego = fav(takes[0], "aria01_214-1.mp4")
    with open(ego, "r+b") as f:  # a cut-off download
        f.truncate(os.path.getsize(ego) // 3)
    exo = fav(takes[1], "cam01.mp4")
    frames = video.decode_frames(exo, list(range(takes[1]["num_frames"] // 2)))
    video.encode_mp4(frames, exo, fps=25)  # re-encoded at 25 fps, half the take: decodes, but misaligned
    ann = os.path.join(root, "annotations", f"atomic_descriptions_{takes[2]['split']}.json")
    raw = open(ann, "rb").read()
    uid2 = next(u for u, t in meta["takes"].items() if t["take_name"] == takes[2]["take_name"])
    first, second = takes[2]["narrations"][:2]
    raw = raw.replace(json.dumps(first["text"]).encode(), b'"C caf\xe9"', 1)  # invalid UTF-8
    raw = raw.replace(json.dumps(second["text"]).encode(), b'"   "', 1)  # blank
    open(ann, "wb").write(raw)

    skips = SkipCounter()
    texts = synthetic_tokenizer.world_texts(root, skips)
    assert "C caf\udce9" not in texts and skips.counts == {"non_utf8_text": 1} and skips.examples["non_utf8_text"] == [ann]
    skips = SkipCounter()
    out = exo2ego_data.build_arrays(root, str(tmp_path / "clips.npz"), num_frames=2, image_size=16, skips=skips,
                                    max_skip_fraction=1.0)
    n0, n1 = len(takes[0]["narrations"]), len(takes[1]["narrations"])
    assert skips.counts == {"truncated_video": n0, "misaligned_video": n1, "non_utf8_text": 1, "empty_text": 1}
    assert skips.examples["truncated_video"] == [ego] and skips.examples["misaligned_video"] == [exo]
    assert "25.000 fps" in skips.details["misaligned_video"][0]
    assert all(p.startswith(ann) for p in skips.examples["non_utf8_text"] + skips.examples["empty_text"])
    arr = exo2ego_data.load_arrays(str(tmp_path / "clips.npz"))
    whole = exo2ego_data.load_arrays(str(world / "clips.npz"))
    total = sum(len(t["narrations"]) for t in takes)
    assert out["clips"] == len(arr["text"]) == total - n0 - n1 - 2
    assert set(arr["take"]) == {t["take_name"] for t in takes[2:]}
    keep = np.isin(whole["take"], [t["take_name"] for t in takes[2:]])
    keep &= ~np.isin(whole["narration"], [first["index"], second["index"]]) | (whole["take"] != takes[2]["take_name"])
    np.testing.assert_array_equal(arr["ego"], whole["ego"][keep])  # the undamaged clips, unchanged
    assert SkipCounter.from_json(str(arr["skips"])) == skips


def test_normalise_table_gives_the_arithmetic_bits():
    """The per-channel lookup table is exactly ((x / 255) - mean) / std in float32, for every byte."""
    frames = np.random.default_rng(0).integers(0, 256, (2, 3, 5, 7, 3)).astype(np.uint8)
    frames[0, 0, 0, :4] = [[0, 0, 0], [255, 255, 255], [1, 128, 254], [77, 3, 200]]
    mean, std = np.array([0.48, 0.5, 0.41], np.float32), np.array([0.26, 0.25, 0.27], np.float32)
    want = ((frames.astype(np.float32) / 255.0) - mean) / std
    got = exo2ego_data.normalise(frames, mean, std)
    assert got.dtype == np.float32 and np.array_equal(got, want)
    # Float input (no table) takes the arithmetic path.
    assert np.array_equal(exo2ego_data.normalise(frames.astype(np.float32), mean, std), want)


def test_cached_encoding_equals_encoding(world):
    """Batches reuse one tokenisation per distinct text: the same ids, labels and mask as encoding anew."""
    tok = exo2ego_data._cached_tokenizer(str(world / "tok"))
    args = (exo2ego_data.CAPTION_PROMPT, "C picks up the red cup")
    fresh = exo2ego_data.encode(tok, *args, max_len=48, num_visual_tokens=4)
    cached = exo2ego_data.cached_encode(str(world / "tok"), *args, max_len=48, num_visual_tokens=4)
    assert cached is exo2ego_data.cached_encode(str(world / "tok"), *args, max_len=48, num_visual_tokens=4)
    for name in ("input_ids", "labels", "attention_mask"):
        np.testing.assert_array_equal(getattr(cached, name), getattr(fresh, name))
        assert not getattr(cached, name).flags.writeable  # shared: a batch can never edit it in place
