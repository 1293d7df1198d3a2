"""The teacher labelling job: valid LLaVA JSON, one question per category, exo pairing, resume."""
import json
import os

import pytest

from exo2ego_jax.methods.ego2exo import method as ego2exo
from exo2ego_jax.methods.ego2exo import prompts as P
from exo2ego_jax.methods.ego2exo import label as label_lib
from helpers import load_config, write_label_world



@pytest.fixture(scope="session")
def world(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("label_world"))
    tok = os.path.join(root, "tok")
    write_label_world(root, tok)
    return root, tok


def _label_config(root, tok, max_segments):
    c = load_config("configs/ego2exo/label.py", "tiny")
    c.unlock()
    c.label.root = root
    c.label.video_variant = "full"
    c.label.max_segments = max_segments
    c.label.max_new_tokens = 6
    c.label.batch_size = 6
    c.data.tokenizer = tok
    return c


def test_label_json_valid_and_restart_skips_finished(world, tmp_path):
    root, tok = world
    work = str(tmp_path / "label")
    first = label_lib.label(_label_config(root, tok, 2), work)
    assert first["labelled"] == 2 and first["skipped_done"] == 0
    data = P.validate_llava_json(os.path.join(work, "labels.json"))
    assert len(data) == 6
    from exo2ego_jax.data.egoexo4d import EgoExo4D
    ds = EgoExo4D(root)
    by_seg = {}
    for rec in data:
        by_seg.setdefault(rec["segment_id"], []).append(rec)
        take = ds.takes[rec["take_uid"]]
        assert rec["exo_cam"] in take.exo_cams  # paired with a synchronised exo view, never the ego one
        assert rec["video"] == f"takes/{take.take_name}/frame_aligned_videos/{rec['exo_cam']}.mp4"
        assert os.path.exists(os.path.join(root, rec["video"]))
        assert rec["ego_video"].endswith("aria01_214-1.mp4") and rec["end"] > rec["start"]
        assert rec["conversations"][1]["from"] == "gpt"
    for seg, recs in by_seg.items():
        assert [r["category"] for r in recs] == list(P.CATEGORIES)
        asked = [r["conversations"][0]["value"].split("\n", 1)[1] for r in recs]
        assert [(r["category"], q) for r, q in zip(recs, asked)] == P.segment_questions(seg, 0)

    total = len(label_lib.segments_to_label(ds, "train"))
    assert total > 2
    second = label_lib.label(_label_config(root, tok, 0), work)
    assert second["skipped_done"] == 2 and second["labelled"] == total - 2
    data2 = P.validate_llava_json(os.path.join(work, "labels.json"))
    assert len(data2) == 3 * total
    assert data2[:6] == data  # finished segments were not labelled again
    third = label_lib.label(_label_config(root, tok, 0), work)
    assert third["labelled"] == 0 and third["skipped_done"] == total


def test_best_exo_pairing_follows_the_narrations(world):
    """exo_view="best": every answer of a segment goes with the camera its narrations name best_exo."""
    root, _ = world
    from exo2ego_jax.data.egoexo4d import EgoExo4D
    with open(os.path.join(root, "synthetic_meta.json")) as f:
        meta = json.load(f)["takes"]
    ds = EgoExo4D(root)
    plain = label_lib.segments_to_label(ds, "train")
    segs = label_lib.segments_to_label(ds, "train", best_exo=True)
    assert [s.segment_id for s in segs] == [s.segment_id for s in plain]
    assert all(s.best_exo is None for s in plain)
    for seg in segs:
        assert seg.best_exo == meta[seg.take_uid]["best_exo_cam"]  # one actor position per take
        recs = label_lib.segment_records(seg, P.segment_questions(seg.segment_id, 0), ["a", "b", "c"],
                                         root=root, seed=0, teacher="t", exo_view="best")
        assert {r["exo_cam"] for r in recs} == {seg.best_exo}
    # "random" keeps the seeded draw, which visits other cameras too
    cams = {label_lib.pick_exo_view(s, f"{s.segment_id}/{c}", 0, "random") for s in segs for c in P.CATEGORIES}
    assert len(cams) > 1
    with pytest.raises(ValueError, match="exo_view='side'"):
        label_lib.pick_exo_view(segs[0], "x", 0, "side")


def _copy_without(root: str, dst: str, *, keep_full: bool) -> str:
    """A copy of the world's metadata; full-size videos linked when keep_full, no downscaled/448 copy."""
    import shutil
    shutil.copytree(root, dst, ignore=lambda d, names: [
        n for n in names if n == "downscaled" or (n.endswith(".mp4") and not keep_full)])
    return dst


def test_label_without_any_video_fails_naming_the_reason(world, tmp_path):
    """Every segment skipped: the job stops (non-zero exit from main) instead of writing zero labels."""
    root, tok = world
    bare = _copy_without(root, str(tmp_path / "bare"), keep_full=False)
    from exo2ego_jax.data.skips import TooManySkipped
    with pytest.raises(TooManySkipped, match=r"(?s)missing_video.*config\.data\.max_skip_fraction"):
        label_lib.label(_label_config(bare, tok, 0), str(tmp_path / "label"))
    assert not os.path.exists(tmp_path / "label" / "labels.json")


def test_label_falls_back_to_full_size_videos(world, tmp_path, caplog):
    """video_variant=448 on a world without downscaled/448 reads the full-size videos and says so."""
    root, _ = world
    full_only = _copy_without(root, str(tmp_path / "full_only"), keep_full=True)
    from exo2ego_jax.data.egoexo4d import EgoExo4D
    from exo2ego_jax.data.skips import SkipCounter
    skips = SkipCounter()
    with caplog.at_level("WARNING"):
        segs = label_lib.segments_to_label(EgoExo4D(full_only, video_variant="448"), "train", skips=skips)
    reference = label_lib.segments_to_label(EgoExo4D(full_only, video_variant="full"), "train")
    assert [s.segment_id for s in segs] == [s.segment_id for s in reference] and segs
    assert [s.ego_path for s in segs] == [s.ego_path for s in reference]
    assert skips.num_skipped == 0 and skips.num_seen == len(segs)
    assert "no 448 videos; reading their full-size videos" in caplog.text
