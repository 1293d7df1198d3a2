"""Synthetic EgoBench with balanced distractors: every option equally plausible without the clip."""
import json
import os

import numpy as np
import pytest

from exo2ego_jax.synthetic import egobench as eb


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from exo2ego_jax.synthetic import world as synthetic
    root = tmp_path_factory.mktemp("egobench_world")
    wc = synthetic.world_config()
    wc.num_takes, wc.fps, wc.exo_size, wc.ego_size = 6, 5, (32, 18), 16
    wc.write_448, wc.num_workers, wc.val_fraction = False, 0, 0.5
    synthetic.write_world(wc, str(root))
    with open(os.path.join(root, "synthetic_meta.json")) as f:
        return str(root), json.load(f)


def _narration(meta, item):
    take = next(t for t in meta["takes"].values() if t["take_name"] == item["take_name"])
    n = take["narrations"][item["narration_index"]]
    return n, {o["id"]: o for o in take["objects"]}[n["object"]]


def test_shape_verbs_lists_what_the_world_does_with_each_shape(world):
    _, meta = world
    sv = eb.shape_verbs(meta)
    for take in meta["takes"].values():
        shape = {o["id"]: o["shape"] for o in take["objects"]}
        for n in take["narrations"]:
            assert eb._verb(n["verb"]) in sv[shape[n["object"]]]
    assert "open" not in sv.get("cup", [])  # cups have no lid in the task scripts
    assert all(v == sorted(set(v)) for v in sv.values())


def test_balanced_options_differ_only_in_what_the_clip_shows(world):
    root, meta = world
    items = eb.generate(root, "val", distractors="balanced", categories=("object", "verb", "hand"))
    assert items and items == eb.generate(root, "val", distractors="balanced", categories=("object", "verb", "hand"))
    assert {it["category"] for it in items} <= {"object", "verb", "hand"}
    sv = eb.shape_verbs(meta)
    colours = set(meta["config"]["colours"])
    for it in items:
        opts = [it["answer"], *it["wrong_answers"]]
        assert len(opts) == eb.NUM_OPTIONS and len(set(opts)) == eb.NUM_OPTIONS
        n, obj = _narration(meta, it)
        if it["category"] == "object":
            # Same shape, four different colours: the answer's shape (and the verb) tells nothing.
            assert it["answer"] == f"the {obj['colour']} {obj['shape']}"
            assert {o.split()[-1] for o in opts} == {obj["shape"]}
            assert {o.split()[1] for o in opts} <= colours
        elif it["category"] == "verb":
            assert it["answer"] == eb._verb(n["verb"])
            assert set(opts) <= set(sv[obj["shape"]])  # only verbs that happen to this shape
        else:
            assert it["answer"] == f"the {n['hand']} hand"


def test_take_distractors_keep_the_original_benchmark(world):
    root, meta = world
    items = eb.generate(root, "val")  # default: distractors="take", all four categories
    for it in items:
        if it["category"] != "object":
            continue
        take = next(t for t in meta["takes"].values() if t["take_name"] == it["take_name"])
        take_objs = {f"the {o['colour']} {o['shape']}" for o in take["objects"]}
        # Same-take objects come first: with >= 4 objects every option is on the table.
        if len(take_objs) >= eb.NUM_OPTIONS:
            assert set(it["wrong_answers"]) <= take_objs


def test_bad_distractor_mode_names_the_choices(world):
    root, _ = world
    with pytest.raises(ValueError, match="balanced"):
        eb.generate(root, "val", distractors="hard")


def test_balanced_object_answers_cover_the_colours(world):
    # Colours are drawn uniformly per object, so no colour dominates the answers a priori.
    root, meta = world
    items = eb.generate(root, "train", distractors="balanced", categories=("object",))
    wrong = np.array([c for it in items for c in (o.split()[1] for o in it["wrong_answers"])])
    assert len(set(wrong)) >= 4  # wrong colours are drawn from the whole palette
