"""The Ego2ExoVLM student on VideoLLaMA3 (configs/ego2exo/student.py default): data, loading, loss, and
its evaluation adapter (videollama3_infer: option log-likelihoods, greedy generation, Ego2Exo.eval_model).

A tiny random VideoLLaMA3 is saved as a transformers folder, a LLaVA labels JSON points at a short mp4
with a clip window; the student's batches must carry VideoLLaMA3's inputs (timestamps in the prompt, one
video token per kept merged patch, probes after the video, answer-only labels) in static shapes, the
checkpoint must load under LoRA + EAVT with EAVT copied from the loaded encoder, and the loss must be
the answer cross-entropy of the logits.
"""
import importlib.util
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from exo2ego_jax.data import text as text_lib
from exo2ego_jax.data import video as video_lib
from exo2ego_jax.eval.records import VideoRef
from exo2ego_jax.methods.ego2exo import config as ego2exo_config
from exo2ego_jax.methods.ego2exo import infer
from exo2ego_jax.methods.ego2exo import method as ego2exo
from exo2ego_jax.methods.ego2exo import prompts as P
from exo2ego_jax.methods.ego2exo import videollama3_infer as vi
from exo2ego_jax.methods.ego2exo import videollama3_student as vs
from exo2ego_jax.models import videollama3 as vl3
from exo2ego_jax.synthetic import tokenizer as synthetic_tokenizer
from exo2ego_jax.tokenizer import load_tokenizer
from exo2ego_jax.train import losses
from exo2ego_jax.weights import safetensors_io as sio
from exo2ego_jax.weights import videollama3_weights as vw

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUESTION, ANSWER = "what does the person pick up ?", "the person picks up a red cup ."


def _student_config(arg=None):
    spec = importlib.util.spec_from_file_location("cfg_student", os.path.join(ROOT, "configs/ego2exo/student.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.get_config(arg)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = str(tmp_path_factory.mktemp("vl3_student"))
    tok_dir = os.path.join(tmp, "ckpt")
    synthetic_tokenizer.build_tokenizer([QUESTION, ANSWER, P.SYSTEM_PROMPT, "time s"], tok_dir)
    tok = load_tokenizer(tok_dir, extra_special_tokens=())
    c = _student_config("probes=3,frames=3")
    c.unlock()
    c.model = ego2exo_config.tiny_videollama3_model(vocab_size=len(tok.get_vocab()), width=32, vit_width=32,
                                                    patch_size=4, num_probes=3)
    c.model.checkpoint = tok_dir
    c.ego2exo.lora_rank = 4
    c.data.patch_size = 4
    c.data.frame_max_pixels = 16 * 16  # 4x4 patches per frame at most
    c.data.frame_min_pixels = 8 * 8
    c.data.max_len = 128
    c.data.num_probes = 3
    c.data.tokenizer = tok_dir
    c.data.read_threads = 1
    c.train.global_batch = 2
    # the checkpoint: a tiny random VideoLLaMA3 (no probes) in transformers' layout
    base = vl3.VideoLlama3(vs.model_config(_no_ckpt(c)), rngs=nnx.Rngs(7))
    vw.save_hf(base, tok_dir)
    # 20 frames of 16x24 at 4 fps (5 s); the label's clip is [1.0, 4.0] s -> 3 frames at 1 fps
    frames = np.full((20, 16, 24, 3), 30, np.uint8)
    for i in range(20):
        frames[i, 2:8, i:i + 5] = 250
    video_lib.encode_mp4(frames, os.path.join(tmp, "exo.mp4"), fps=4, crf=0)
    rec = {"id": "s0", "video": "exo.mp4", "start": 1.0, "end": 4.0,
           "conversations": [{"from": "human", "value": "<video>\n" + QUESTION}, {"from": "gpt", "value": ANSWER}]}
    with open(os.path.join(tmp, "labels.json"), "w") as f:
        json.dump([rec, dict(rec, id="s1", start=0.0, end=2.0)], f)
    c.data.instructions = (os.path.join(tmp, "labels.json"),)
    c.data.data_folder = tmp
    c.lock()
    return c, tok, base


def _no_ckpt(c):
    import copy
    d = copy.deepcopy(c)
    d.model.checkpoint = ""
    return d


def test_student_batches_carry_videollama3_inputs(setup):
    c, tok, _ = setup
    batch = next(iter(ego2exo.Ego2Exo(c).dataset("train", 0, 1)))
    spec = vs.batch_spec(c.data, 2)
    assert {k: (v.shape, v.dtype) for k, v in batch.items()} == {k: (s, np.dtype(d)) for k, (s, d) in spec.items()}
    assert spec["patches"][0] == (2, 3, 16, 48)  # 3 frame slots of 16 patch slots (4x4) of 3*4*4 values
    vl3.check_visual_placeholders(batch["input_ids"], 4, batch["grid_hw"], 2, batch["keep"])
    for row in range(2):
        ids = batch["input_ids"][row][batch["attention_mask"][row] > 0].tolist()
        text = tok.decode(ids)
        frames = int((batch["grid_hw"][row, :, 0] > 0).sum())
        assert text.count("time") == frames  # "Time t s:" before each frame (word-level tokenizer)
        last_video = max(i for i, t in enumerate(ids) if t == 4)
        assert ids[last_video + 1:last_video + 4] == [5, 5, 5]  # the probes follow the video
        labels = batch["labels"][row]
        answer = labels[labels != text_lib.IGNORE_INDEX]
        assert tok.decode(answer.tolist()).startswith(ANSWER.replace(" .", "").split()[0])
        assert ANSWER.split()[-2] in tok.decode(answer.tolist())
    assert sorted(int((batch["grid_hw"][r, :, 0] > 0).sum()) for r in range(2)) == [2, 3]  # 1 fps over 2 s / 3 s


def test_student_loads_videollama3_checkpoint_under_lora_and_eavt(setup):
    c, _, base = setup
    m = ego2exo.Ego2Exo(c)
    model = m.build_model(nnx.Rngs(0))
    m.load_pretrained(model)
    want = nnx.state(base.vision, nnx.Param)
    got = nnx.state(model.vision, nnx.Param)
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), got, want)
    np.testing.assert_array_equal(np.asarray(model.eavt.cross_attn.attn.q_proj.kernel.get_value()),
                                  np.asarray(base.vision.layers.attn.q_proj.kernel.get_value()))
    for name in ("fc1", "fc2"):  # probe projector <- the loaded projector
        np.testing.assert_array_equal(np.asarray(getattr(model.eavt.projector, name).kernel.get_value()),
                                      np.asarray(getattr(base.projector, name).kernel.get_value()))
    batch = next(iter(m.dataset("train", 0, 1)))
    jb = {k: jnp.asarray(v) for k, v in batch.items()}
    loss, aux = m.loss(model, jb, jax.random.key(0))
    videos = vl3.VisualInput(jb["patches"], jb["grid_hw"], jb["keep"])
    logits = model(jb["input_ids"], jb["attention_mask"], videos=videos)
    want_loss, n = losses.answer_cross_entropy(logits, jb["labels"], jb["example_mask"])
    assert int(aux["answer_tokens"]) == int(n) > 0
    # dropout (rng given) changes the LoRA path only; with lora_b = 0 at init the loss is the same
    np.testing.assert_allclose(float(loss), float(want_loss), rtol=1e-5)
    assert np.isfinite(float(loss))


@pytest.fixture(scope="module")
def trained_run(setup, tmp_path_factory):
    """Two optimizer steps of the one trainer (checkpoint load, EAVT copy, grain batches, sharded step)."""
    from exo2ego_jax.train import loop

    c, _, _ = setup
    c = c.copy_and_resolve_references()
    c.unlock()
    c.train.steps, c.train.epochs, c.train.warmup_steps = 2, 0.0, 0
    c.train.log_every, c.train.ckpt_every, c.train.async_ckpt, c.train.progress = 1, 1, False, False
    c.train.keep = 2
    c.train.global_batch = 8  # one row per fake device
    c.lock()
    run = str(tmp_path_factory.mktemp("vl3_run") / "run")
    return run, loop.train(c, run), c


def test_trainer_runs_the_videollama3_student(trained_run):
    _, out, _ = trained_run
    assert out["step"] == 2 and np.isfinite(out["loss"])


def test_trainer_resumes_the_per_layer_state_bitwise(trained_run, tmp_path):
    """On CPU the step keeps the stacked layers per layer (train/layer_slices.py) and checkpoints hold
    them stacked: resuming from step 1 ends with the uninterrupted run's step-2 state, bit for bit."""
    import shutil

    import orbax.checkpoint as ocp

    from exo2ego_jax.train import loop
    from exo2ego_jax.train import setup as setup_lib

    run, _, c = trained_run
    assert setup_lib.abstract(c, total_steps=2).parts.per_layer  # the layout under test is in use
    part = tmp_path / "part"
    (part / "checkpoints").mkdir(parents=True)
    shutil.copytree(os.path.join(run, "checkpoints", "1"), part / "checkpoints" / "1")
    assert loop.train(c, str(part))["step"] == 2
    rows = [json.loads(line) for line in open(part / "metrics.jsonl")]
    assert [r["step"] for r in rows if "loss" in r] == [2]  # resumed: only step 2 was trained
    final = [ocp.PyTreeCheckpointer().restore(os.path.join(d, "checkpoints", "2", "state")) for d in (run, str(part))]
    for x, y in zip(jax.tree.leaves(final[0]), jax.tree.leaves(final[1]), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))  # parameters and optimizer, bitwise


# --- evaluation: the eval harness's MCQModel over the student's real forward ------------------------
PROMPTS = (QUESTION, "which cup ?")
OPTIONS = (["red cup", "the person picks up a red cup .", "up"], ["a", "what does the person pick up ?"])


def _refs(c):
    path = os.path.join(c.data.data_folder, "exo.mp4")
    return [VideoRef(path, 1.0, 4.0), VideoRef(path, 0.0, 2.0)]  # 3 and 2 frames at 1 fps


@pytest.fixture(scope="module")
def student(setup):
    """The loaded student (checkpoint + EAVT copy) with non-zero LoRA B, so every trained path counts."""
    c, tok, _ = setup
    m = ego2exo.Ego2Exo(c)
    model = m.build_model(nnx.Rngs(0))
    m.load_pretrained(model)
    rng = np.random.default_rng(0)
    for path, var in sio.param_paths(model).items():
        if path.endswith("lora_b"):
            var.set_value(jnp.asarray(0.05 * rng.standard_normal(var.get_value().shape), var.get_value().dtype))
    runner = vi.VideoLlama3Runner(model, tok, vi.RunClips(c.data), c.data.system_prompt, c.data.max_len)
    return c, tok, model, runner


@nnx.jit
def _forward(model, ids, videos):
    return model(ids, videos=videos)


@nnx.jit
def _student_embeds(model, ids, videos):
    return model.student_embeds(ids, videos)


@nnx.jit
def _llm_logits(model, embeds):
    return model.llm(inputs_embeds=embeds)[0]


def _own_clip(c, ref):
    """One clip at its own size (no frame / patch bucket padding) as the student's training path reads it."""
    feats = vs.load_clip(ref.path, ref.start, ref.end, c.data)
    t, h, w = feats.grid_thw
    patches, grid = vl3.pad_frames(feats.frames(), t, h * w)
    videos = vl3.VisualInput(jnp.asarray(patches[None]), jnp.asarray(grid[None]), jnp.asarray(feats.keep_per_frame()[None]))
    return feats, videos


def test_adapter_option_loglik_equals_the_logits(student):
    """Option scores of a batch (two clips of 3 and 2 frames, 3 + 2 options of different lengths, left padding,
    frame and patch slots padded, each clip encoded once) = log-softmax sums of the student's own forward on
    each (prompt, option) alone, unpadded."""
    c, tok, model, runner = student
    refs = _refs(c)
    got = infer.Ego2ExoAdapter(runner).option_loglik(list(PROMPTS), refs, [list(o) for o in OPTIONS])
    end = tok.convert_tokens_to_ids("<|end|>")
    lengths = set()
    for i, (q, ref, opts) in enumerate(zip(PROMPTS, refs, OPTIONS)):
        feats, videos = _own_clip(c, ref)
        assert feats.grid_thw[0] == (3, 2)[i]
        assert feats.grid_thw[1] * feats.grid_thw[2] < vs.frame_patches(c.data)  # the batch pads patch slots
        rows = []
        for o in opts:
            head, ans = vs.conversation_ids(tok, q, feats, system_prompt=c.data.system_prompt, video_token="<video>",
                                            video_token_id=4, probe_token_id=5, num_probes=3, answer=o)
            last_video = max(k for k, t in enumerate(head) if t == 4)
            assert head[last_video + 1:last_video + 4] == [5, 5, 5]  # probes after the video
            assert ans == tok(o, add_special_tokens=False)["input_ids"] + [end]  # the option, then the end of turn
            lengths.add(len(ans))
            rows.append((head, ans))
        # All options of the clip in one causal forward, right-padded (padding after a row cannot change
        # the logits of its earlier positions).
        width = max(len(h) + len(a) for h, a in rows)
        ids = np.zeros((len(rows), width), np.int32)
        for r, (h, a) in enumerate(rows):
            ids[r, :len(h) + len(a)] = h + a
        tiled = vl3.VisualInput(*(jnp.repeat(x, len(rows), 0) for x in videos))
        logp = jax.nn.log_softmax(_forward(model, jnp.asarray(ids), tiled), -1)
        for j, (h, a) in enumerate(rows):
            want = sum(float(logp[j, len(h) + k - 1, t]) for k, t in enumerate(a))
            np.testing.assert_allclose(got[i][j], want, rtol=1e-5, atol=1e-4, err_msg=f"prompt {i} option {j}")
    assert len(lengths) >= 4  # options of different lengths


def test_adapter_generate_equals_a_greedy_loop(student):
    """Batched KV-cache generation of the student = a greedy loop over full forwards without a cache,
    per prompt alone (prompt embeddings by the training path, then one token at a time)."""
    c, tok, model, runner = student
    refs = _refs(c)
    new = 5
    texts, lengths = runner.generate(list(PROMPTS), refs, max_new_tokens=new)
    assert infer.Ego2ExoAdapter(runner, max_new_tokens=new).generate(list(PROMPTS), refs) == texts
    eos = set(P.eos_ids(tok))
    for i, (q, ref) in enumerate(zip(PROMPTS, refs)):
        feats, videos = _own_clip(c, ref)
        head, _ = vs.conversation_ids(tok, q, feats, system_prompt=c.data.system_prompt, video_token="<video>",
                                      video_token_id=4, probe_token_id=5, num_probes=3)
        # A fixed-size buffer (one compile): causal attention never reads the unused tail.
        embeds = jnp.zeros((1, len(head) + new, model.cfg.llm.hidden_size), jnp.float32)
        embeds = embeds.at[:, :len(head)].set(_student_embeds(model, jnp.asarray([head]), videos))
        out = []
        for step in range(new):
            t = int(jnp.argmax(_llm_logits(model, embeds)[0, len(head) + step - 1]))
            out.append(t)
            if t in eos:
                break
            embeds = embeds.at[:, len(head) + step].set(model.llm.embed(jnp.asarray([[t]]))[:, 0])
        assert int(lengths[i]) == len(out)
        assert texts[i] == tok.decode(out, skip_special_tokens=True).strip()


def test_eval_model_is_the_videollama3_adapter_and_runs_the_harness(setup, trained_run, tmp_path):
    """Ego2Exo.eval_model on a trained VideoLLaMA3 run: its probes, its data rules, both MCQ modes."""
    from exo2ego_jax.eval import runner as eval_runner
    from exo2ego_jax.eval.records import MCQRecord
    from exo2ego_jax.train import checkpoint as ckpt_lib

    c, _, _ = setup
    run, _, _ = trained_run
    cfg = c.copy_and_resolve_references()
    cfg.unlock()
    cfg.train.init_from = run
    adapter = ego2exo.Ego2Exo(cfg).eval_model(str(tmp_path))
    assert isinstance(adapter, infer.Ego2ExoAdapter) and isinstance(adapter.runner, vi.VideoLlama3Runner)
    assert adapter.runner.num_probes == 3 and adapter.runner.clips.patch_slots == vs.frame_patches(c.data)
    trained, _ = ckpt_lib.load_params(run, {"eavt/probes": jax.ShapeDtypeStruct((3, 32), jnp.float32)})
    np.testing.assert_array_equal(np.asarray(adapter.runner.model.eavt.probes.get_value()),
                                  np.asarray(trained["eavt/probes"]))
    refs = _refs(c)
    recs = [MCQRecord(uid=f"q{i}", video=refs[i % 2], question=QUESTION, options=["red cup", "blue box", "up"],
                      answer_index=0, category="object", view="exo") for i in range(3)]
    res = eval_runner.evaluate_mcq(adapter, recs, "ego_in_exo", mode="loglik", batch_size=2)
    assert res["metrics"]["num"] == 3
    for row in res["predictions"]:
        assert len(row["option_scores"]) == 3 and all(np.isfinite(s) and s < 0 for s in row["option_scores"])
    gen = eval_runner.evaluate_mcq(adapter, recs[:2], "ego_in_exo", mode="generate", batch_size=2)
    assert [isinstance(p["response"], str) for p in gen["predictions"]] == [True, True]
