"""The student's batches: exo video, <video> + <probe> placeholders, labels on the answer tokens only."""
import json

import numpy as np

from exo2ego_jax.methods.ego2exo import method as ego2exo
from exo2ego_jax.methods.ego2exo import demo as ego2exo_demo
from test_label_job import load_config, world  # noqa: F401  (shared session fixture)


def test_student_batch_labels_only_answers(world, tmp_path):  # noqa: F811
    root, tok_dir = world
    caps = ego2exo_demo.caption_datasets(root, str(tmp_path), seed=0)
    config = load_config("configs/ego2exo/demo.py", "small,arch=llava_video")  # the SigLIP stack's pipeline
    c = ego2exo_demo.phase_config(config, root=root, tok_dir=tok_dir, instructions=caps["exo_captions"],
                                  num_probes=3, steps=1, lr=1e-3)
    c.train.global_batch = 4
    c.data.shuffle = False
    batch = next(iter(ego2exo.Ego2Exo(c).dataset("train", 0, 1)))
    from exo2ego_jax.data import pipeline
    tok = pipeline.load_tokenizer(c.data)
    samples = json.load(open(caps["exo_captions"]))
    k, n = c.data.num_visual_tokens, c.model.num_probes
    assert batch["pixels"].shape == (4, 1, c.data.num_frames, 32, 32, 3)
    for row in range(4):
        ids, labels = batch["input_ids"][row], batch["labels"][row]
        vid = np.nonzero(ids == c.model.video_token_id)[0]
        probe = np.nonzero(ids == c.model.probe_token_id)[0]
        assert len(vid) == k and len(probe) == n
        assert probe[0] == vid[-1] + 1 and np.all(np.diff(probe) == 1)  # probes right after the video
        trained = ids[labels != -100]
        np.testing.assert_array_equal(trained, labels[labels != -100])
        text = tok.decode(trained, skip_special_tokens=False)
        answer = samples[row]["conversations"][1]["value"]  # no shuffle: row i is sample i
        want = tok.decode(tok(answer, add_special_tokens=False)["input_ids"])
        assert text == want + " <|end|>"  # the answer and the end-of-turn token (the model learns to stop)
        question_pos = np.nonzero(labels != -100)[0][0]
        assert question_pos > probe[-1]  # nothing before the answer is trained


def test_demo_world_fields_make_the_acting_hand_visible():
    """The Ego2ExoVLM demo's world fields: p_hand_near_object=1 reaches with the hand on the object's
    side of the actor; ego_look_hand < 1 keeps the ego gaze between straight ahead and the hand; the
    defaults (0 / 1) leave every script and trajectory exactly as before."""
    import types
    from exo2ego_jax.synthetic import world as synthetic
    from exo2ego_jax.synthetic import scene

    def sim(seed, **over):
        cfg = synthetic.world_config().to_dict()
        cfg.update(over)
        return scene.simulate_take(np.random.default_rng([0, seed]), types.SimpleNamespace(**cfg))

    base, legacy = sim(1), sim(1, p_hand_near_object=0.0, ego_look_hand=1.0)
    np.testing.assert_array_equal(base.gaze, legacy.gaze)
    assert [a.hand for a in base.actions] == [a.hand for a in legacy.actions]
    hands_random, checked = [], 0
    for seed in range(6):
        near = sim(seed, p_hand_near_object=1.0)
        hands_random += [a.hand for a in sim(seed).actions]
        for a in near.actions:
            # The hand is chosen at the object's position when the script is written (its start).
            o = near.objects[a.obj]
            side = float((np.asarray(o.xy) - near.body_xy) @ near.right)
            if a.verb in ("pick_up", "open") and abs(side) > 0.02:
                assert a.hand == ("right" if side > 0 else "left"), (seed, a.verb, side)
                checked += 1
    assert checked >= 6 and {"left", "right"} <= set(hands_random)
    st = sim(2, ego_look_hand=0.5)
    front = np.array([*(st.body_xy + 0.55 * st.facing), 0.0])
    acting = np.array([st.hand_pos[f, 0 if a.hand == "left" else 1] for a in st.actions for f in range(a.t0, a.t1)])
    gaze = np.array([st.gaze[f] for a in st.actions for f in range(a.t0, a.t1)])
    # Half-way gaze stays nearer the front point than the hand it follows.
    assert np.mean(np.linalg.norm(gaze - front, axis=1)) < np.mean(np.linalg.norm(acting - front, axis=1))
