"""Synthetic ego-exo world: Ego-Exo4D layout read back, frame alignment, determinism, ground truth."""
import json
import os
import types

import numpy as np
import pytest

from exo2ego_jax.data import egoexo4d, video
from exo2ego_jax.synthetic import world as synthetic
from exo2ego_jax.synthetic import render as synthetic_render
from exo2ego_jax.synthetic import scene as synthetic_scene
from helpers import load_config


def tiny_config(num_takes=3, seed=7):
    cfg = synthetic.world_config()
    cfg.num_takes = num_takes
    cfg.seed = seed
    cfg.num_workers = 0
    cfg.action_seconds = (0.4, 0.5)  # short takes: ~2-4 s
    cfg.pause_seconds = (0.0, 0.1)
    cfg.lead_seconds = 0.2
    cfg.max_relocations = 2
    return cfg


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("world"))
    summary = synthetic.write_world(tiny_config(), root)
    return root, summary


def test_layout_reads_back(world):
    root, summary = world
    assert summary["takes"] == 3 and summary["bytes"] > 0
    for name in ("takes.json", "captures.json", "synthetic_meta.json", "annotations/splits.json",
                 "annotations/atomic_descriptions_train.json", "annotations/keystep_val.json"):
        assert os.path.isfile(os.path.join(root, name)), name
    ds = egoexo4d.EgoExo4D(root)
    meta = json.load(open(os.path.join(root, "synthetic_meta.json")))["takes"]
    assert set(ds.takes) == set(meta)
    assert sorted(ds.split_uids("train") + ds.split_uids("val")) == sorted(meta)
    assert len(ds.split_uids("val")) == 1  # round(0.2 * 3)
    for take in ds.takes.values():
        assert take.ego_cam == "aria01" and take.exo_cams == ("cam01", "cam02", "cam03", "cam04")
        assert set(take.videos_448) == set(take.videos)
        info = video.probe(take.videos["aria01"])
        assert (info.width, info.height, info.fps) == (112, 112, 30.0)
        assert info.num_frames == meta[take.take_uid]["num_frames"]
        assert abs(take.duration_sec - info.num_frames / 30) < 1e-3
        exo = video.probe(take.videos["cam03"])
        assert (exo.width, exo.height, exo.num_frames) == (160, 90, info.num_frames)
    narr = ds.narrations("train") + ds.narrations("val")
    assert len(narr) == summary["narrations"] and ds.skips.counts == {}
    for n in narr:
        truth = meta[n.take_uid]["narrations"][n.index]
        assert truth["text"] == n.text and truth["timestamp"] == n.timestamp
        assert f"{truth['object_colour']} {truth['object_shape']}" in n.text
        assert n.best_exo_cam == truth["best_exo_cam"] and n.text.startswith(("C ", "Standing"))
    steps = ds.keysteps("train") + ds.keysteps("val")
    assert len(steps) == summary["keysteps"]
    assert all(0 <= s.start < s.end <= ds.takes[s.take_uid].duration_sec + 1e-6 for s in steps)


def test_ego_and_exo_frames_are_time_aligned(world):
    root, _ = world
    ds = egoexo4d.EgoExo4D(root)
    take = next(iter(ds.takes.values()))
    n = video.probe(take.videos["aria01"]).num_frames
    idx = [0, 1, n // 2, n - 1]
    for cam in ("aria01",) + take.exo_cams:
        frames = video.decode_frames(take.videos[cam], idx)
        assert [synthetic_render.read_frame_index(f) for f in frames] == idx, cam
    # The counter survives the decoder's own rescaling too (block size scales with the height).
    half = video.decode_frames(take.videos["cam01"], idx, size=(180, 320))
    assert [synthetic_render.read_frame_index(f, base_height=90) for f in half] == idx


def test_same_seed_same_bytes_other_seed_differs(world, tmp_path):
    root, _ = world
    cfg = types.SimpleNamespace(**tiny_config().to_dict())
    again = synthetic.make_take(1, cfg, str(tmp_path))
    ds = egoexo4d.EgoExo4D(root)
    first = [t for t in ds.takes.values() if t.take_name == again["take"]["take_name"]][0]
    assert again["take"]["take_uid"] == first.take_uid
    takes_json = json.load(open(os.path.join(root, "takes.json")))
    assert [t for t in takes_json if t["take_uid"] == first.take_uid][0] == again["take"]
    for cam, rel in (("aria01", "aria01_214-1.mp4"), ("cam02", "cam02.mp4")):
        new = os.path.join(str(tmp_path), "takes", first.take_name, "frame_aligned_videos", rel)
        assert open(new, "rb").read() == open(first.videos[cam], "rb").read()
    other = synthetic.make_take(1, types.SimpleNamespace(**tiny_config(seed=8).to_dict()), str(tmp_path / "b"))
    assert other["take"]["take_uid"] != first.take_uid


def test_ego_sees_held_object_big_exo_sees_the_actor():
    cfg = tiny_config()
    ns = types.SimpleNamespace(**cfg.to_dict())
    state = synthetic_scene.simulate_take(np.random.default_rng([cfg.seed, 0]), ns)
    exo = synthetic_render.exo_cameras(ns)
    for a in state.actions:
        f = a.t_narr
        pos = state.obj_pos[f, a.obj][None]
        ego_cam = synthetic_render.ego_camera(state, f, ns)
        x, y, z_ego = ego_cam.project(pos)
        ego_radius = ego_cam.focal * state.objects[a.obj].radius / z_ego[0]
        exo_radius = max(c.focal * state.objects[a.obj].radius / c.project(pos)[2][0] for c in exo.values())
        assert 0 <= x[0] < ns.ego_size and 0 <= y[0] < ns.ego_size, (a.verb, x, y)  # object in the ego view
        assert ego_radius > 2.5 * exo_radius  # ego markings are resolvable, exo ones are ~1 px
        # The actor's body is in view of every exo camera.
        body = np.array([[*state.body_xy, 0.3]])
        for c in exo.values():
            bx, by, bz = c.project(body)
            assert bz[0] > 0 and 0 <= bx[0] < c.width and 0 <= by[0] < c.height


def test_job_run_and_config(tmp_path):
    config = load_config("configs/data/synthetic.py", "num_takes=1,seed=3")
    assert config.job == "synthetic_world" and config.data.num_takes == 1 and config.data.seed == 3
    with pytest.raises(AttributeError):
        config.data.num_take = 2  # locked: misspelt fields are errors
    from exo2ego_jax.jobs import JOBS
    assert JOBS["synthetic_world"] == "exo2ego_jax.synthetic.world:run"
    config.unlock()
    config.data.num_workers = 0
    config.data.action_seconds = (0.3, 0.4)
    summary = synthetic.run(config, str(tmp_path))
    assert summary["takes"] == 1 and os.path.isfile(tmp_path / "takes.json")


@pytest.mark.slow
def test_default_world_with_two_workers(tmp_path):
    """The default demo world size, with worker processes (prints takes/s)."""
    cfg = synthetic.world_config()
    cfg.num_takes = 8
    summary = synthetic.write_world(cfg, str(tmp_path))
    print(summary)
    assert summary["takes"] == 8 and summary["takes_per_sec"] > 0  # speed depends on machine load
    assert len(egoexo4d.EgoExo4D(str(tmp_path)).narrations("train")) > 0


def test_markings_resolvable_at_ego_scale_only():
    """Object marking pixels at the median ego size (~12 px radius) vs the exo size (~3 px)."""
    for shape in synthetic_scene.SHAPES:
        masks = {}
        for marking in ("stripe", "dot", "cross"):
            o = synthetic_scene.Obj("blue", shape, marking, (0.0, 0.0), 0.07)
            counts = {}
            for rad in (12, 3):
                img = np.zeros((40, 40, 3), np.uint8)
                synthetic_render._draw(img, 20, 20, rad, synthetic_render._object_layers(o, False, False))
                counts[rad] = int((img == 255).all(-1).sum())
                if rad == 12:
                    masks[marking] = (img == 255).all(-1)
            assert counts[12] >= 8 and counts[3] <= 4, (shape, marking, counts)
        assert not np.array_equal(masks["stripe"], masks["dot"]) and not np.array_equal(masks["dot"], masks["cross"])


@pytest.mark.parametrize("square", [False, True])
def test_render_views_equals_frame_by_frame_painter(square):
    """The whole-take painter (all views of one size in one pass) gives the sequential painter's
    bytes: every task (pouring droplets, objects hidden in a box), exo and ego views, and exo and ego
    of different sizes (two passes) or one size (one pass, the demo world)."""
    cfg = tiny_config()
    if square:
        cfg.exo_size, cfg.ego_size, cfg.exo_focal, cfg.object_scale = (64, 64), 64, 3.0, 2.0
    ns = types.SimpleNamespace(**cfg.to_dict())
    by_task = {}
    for i in range(12):
        state = synthetic_scene.simulate_take(np.random.default_rng([cfg.seed, i]), ns)
        by_task.setdefault(state.task, state)
    assert len(by_task) == 3
    tint = np.array([100.0, 130.0, 115.0], np.float32)
    for state in by_task.values():
        T = state.num_frames
        exo = synthetic_render.exo_cameras(ns)
        ego = [synthetic_render.ego_camera(state, f, ns) for f in range(T)]
        views = [(cam, synthetic_render.background(cam, tint), False) for cam in exo.values()]
        views.append((ego, synthetic_render.backgrounds(ego, tint), True))
        for (cams, bgs, is_ego), frames in zip(views, synthetic_render.render_views(state, views)):
            ref = np.stack([synthetic_render.render(state, f, cams[f] if is_ego else cams,
                                                    synthetic_render.background(ego[f], tint) if is_ego else bgs,
                                                    ego=is_ego) for f in range(T)])
            np.testing.assert_array_equal(frames, ref)
    assert (by_task["Making a Drink"].pour[:, 0] >= 0).any()  # droplets drawn
    assert not by_task["Packing a Box"].obj_visible.all()  # an object disappears into the box


def test_camera_basis_and_background_modulo_round_like_numpy():
    rng = np.random.default_rng(0)
    a = np.concatenate([((rng.random(100_000) - 0.5) * 10.0 ** k).astype(np.float32) for k in range(-2, 4)])
    for m in (0.25, 2):
        np.testing.assert_array_equal(synthetic_render._mod_exact(a, m), a % m)
    for _ in range(200):
        a, b = rng.normal(size=3) * 10.0 ** rng.uniform(-3, 3), rng.normal(size=3)
        np.testing.assert_array_equal(np.array(synthetic_render._cross(a, b)), np.cross(a, b))
    cam = synthetic_render.Camera(np.array([2.0, -1.0, 1.5]), np.array([0.1, 0.2, 0.0]), 100.0, 64, 64)
    fwd = (cam.look - cam.pos) / np.linalg.norm(cam.look - cam.pos)
    right = np.cross(fwd, [0.0, 0.0, 1.0])
    right = right / np.linalg.norm(right)
    for got, want in zip(cam.basis(), (right, np.cross(right, fwd), fwd)):
        np.testing.assert_array_equal(got, want)
