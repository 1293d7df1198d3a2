"""The Ego2Exo demo world's additive synthetic-world fields: a glove tells the hands apart by colour."""
import types

import numpy as np
import pytest

from exo2ego_jax.synthetic import world as synthetic
from exo2ego_jax.synthetic import render as render_lib
from exo2ego_jax.synthetic import scene


def _cfg(**kw):
    c = synthetic.world_config()
    c.action_seconds, c.pause_seconds, c.lead_seconds = (0.4, 0.5), (0.0, 0.1), 0.2
    c.exo_size, c.ego_size = (64, 64), 64
    for k, v in kw.items():
        c[k] = v
    return types.SimpleNamespace(**c.to_dict())


def test_default_hands_are_skin_and_glove_changes_only_the_hand_pixels():
    plain = scene.simulate_take(np.random.default_rng(5), _cfg())
    glove = scene.simulate_take(np.random.default_rng(5), _cfg(hand_rgb=((), (30, 30, 30))))
    assert plain.hand_rgb == (scene.SKIN, scene.SKIN)
    assert glove.hand_rgb == (scene.SKIN, (30, 30, 30))
    np.testing.assert_array_equal(plain.hand_pos, glove.hand_pos)  # same take, same rng stream
    cfg = _cfg()
    cam = render_lib.exo_cameras(cfg)["cam01"]
    bg = render_lib.background(cam, np.full(3, 120.0, np.float32))
    f = plain.num_frames // 2
    a = render_lib.render(plain, f, cam, bg, ego=False)
    b = render_lib.render(glove, f, cam, bg, ego=False)
    changed = np.any(a != b, axis=-1)
    assert 0 < changed.sum() < 0.05 * changed.size  # a few pixels: the right hand only
    assert (b[changed].astype(int).sum(-1) < a[changed].astype(int).sum(-1)).all()  # darker there


def test_hand_rgb_rejects_more_than_two_colours():
    with pytest.raises(ValueError, match="hand_rgb"):
        scene.hand_colours(types.SimpleNamespace(hand_rgb=((1, 2, 3),) * 3))


def test_hand_probe_labels_and_runs(tmp_path):
    """ego2exo_probe: clip labels come from the right narration; a short probe trains and reports."""
    import json
    from exo2ego_jax.methods.ego2exo import probe as ego2exo_probe
    from exo2ego_jax.methods.exo2ego import data as exo2ego_data
    world, clips = str(tmp_path / "world"), str(tmp_path / "clips.npz")
    ego2exo_probe.build(world, clips, takes=3, image=16, frames=2,
                        overrides={"num_workers": 0, "val_fraction": 0.34})
    arr = exo2ego_data.load_arrays(clips)
    with open(tmp_path / "world" / "synthetic_meta.json") as f:
        meta = json.load(f)
    assert tuple(meta["config"]["exo_size"]) == (64, 64) and meta["config"]["hand_rgb"][1] == [30, 30, 30]
    y, names, best = ego2exo_probe.clip_labels(meta, arr)
    assert names == ["left", "right"] and len(y) == len(arr["text"])
    named = [(label, text) for label, text in zip(y, arr["text"]) if " hand." in text or " hand " in text]
    assert any("with the left hand" in t or "with the right hand" in t for _, t in named)
    for label, text in named:
        if "with the left hand" in text or "with the right hand" in text:
            assert f"with the {names[label]} hand" in text
        elif "while the left hand" in text or "while the right hand" in text:  # the idle hand is named
            assert f"while the {names[1 - label]} hand" in text
    cams = sorted(meta["cameras"]["exo"])
    takes = {t["take_name"]: t for t in meta["takes"].values()}
    assert all(cams[b] == takes[str(t)]["best_exo_cam"] for b, t in zip(best, arr["take"]))
    res = ego2exo_probe.probe(arr, meta, view="exo", train_view="best", steps=3, batch=4, patch=8)
    assert np.isfinite(res["loss"]) and res["train_clips"] + res["val_clips"] == len(y)
    for k in ("val/all", "val/best", "val_balanced/best", "train/best"):
        assert 0.0 <= res[k] <= 100.0
    with pytest.raises(KeyError, match="no field 'nope'"):
        ego2exo_probe.clip_labels(meta, arr, "nope")
