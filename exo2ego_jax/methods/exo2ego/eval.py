"""Evaluation of an Exo2Ego learner (ego video only): the eval harness adapter and the demo's
fast path over pre-decoded clips.

The learner sees concat(x, F(x)) (stage 3's model). Multiple choice is answered by option
log-likelihood: each option is scored as the assistant answer after the prompt, exactly the
format stage 3 trains on (answer tokens + end-of-turn).
"""
from __future__ import annotations

import copy
import functools
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from exo2ego_jax import generate as generate_lib
from exo2ego_jax import tokenizer as tokenizer_lib
from exo2ego_jax.data import text as text_lib
from exo2ego_jax.data.video import resize_crop_normalise
from exo2ego_jax.eval import loaders_mcq, runner
from exo2ego_jax.eval.records import MCQRecord, VideoRef, per_question
from exo2ego_jax.eval.video_io import load_video
from exo2ego_jax.methods.exo2ego import data as exo2ego_data
from exo2ego_jax.methods.exo2ego.model import tokens_per_video
from exo2ego_jax.train import losses
from exo2ego_jax.train import setup as setup_lib


def load_learner(config, stage_dir: str):
    """(model, tokenizer) of a finished stage: its config, parameters from its checkpoint."""
    cfg = copy.deepcopy(config)
    with cfg.unlocked():
        cfg.train.init_from = stage_dir
        cfg.train.steps = 1
        cfg.train.epochs = 0.0
        cfg.train.global_batch = max(cfg.train.global_batch, 1)
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]).reshape(1, 1, 1), ("data", "fsdp", "tensor"))
    s = setup_lib.build(cfg, mesh)
    model = s.parts.merge(s.trainable_init, s.frozen, s.other)
    model.eval()
    return model, tokenizer_lib.load_tokenizer(cfg.data.tokenizer)


class Learner:
    """MCQModel adapter (eval/adapter.py) around a loaded Exo2Ego learner."""

    def __init__(self, config, model, tokenizer, *, pixels_fn=None, encode_fn=None, max_new_tokens: int = 16):
        """`encode_fn(prompt, answer)` -> text_lib.Encoded of one (prompt, option) row (default:
        exo2ego_data.encode with this tokenizer, the format stage 3 trains on)."""
        self.config, self.model, self.tok = config, model, tokenizer
        self.k = tokens_per_video(config)
        self.max_len = config.data.max_len
        self.pixels_fn = pixels_fn or self._load_pixels
        self.encode_fn = encode_fn or functools.partial(exo2ego_data.encode, tokenizer, max_len=self.max_len,
                                                        num_visual_tokens=self.k)
        self.max_new_tokens = max_new_tokens
        self._score = jax.jit(_score_fn)
        self._score_shared = jax.jit(_score_shared_prefix_fn)
        self._logits = jax.jit(_logits_fn)

    def _load_pixels(self, ref: VideoRef) -> np.ndarray:
        d = self.config.data
        frames = ref.frames if ref.frames is not None else load_video(ref, num_frames=d.num_frames)
        return resize_crop_normalise(np.asarray(frames), d.image_size, d.image_mean, d.image_std,
                                     d.resize_mode)

    def _batch(self, rows: list[tuple[str, str]], pixels: list[np.ndarray], video_row: list[int]):
        """Rows as one prompt per question + option tokens (text_lib.split_shared_prefix), or as
        whole (prompt + option) rows where the options' prompts differ."""
        enc = [self.encode_fn(prompt, option) for prompt, option in rows]
        b = text_lib.split_shared_prefix(enc, video_row, prefix_len=self.max_len) or text_lib.stack(enc)
        b["ego_pixels"] = np.stack(pixels)[:, None]  # [Q, 1, F, H, W, 3]: one clip per question
        b["video_row"] = np.asarray(video_row, np.int32)  # [R]: the clip of each (question, option) row
        return b

    def option_loglik(self, prompts: list[str], videos: list[VideoRef], options: list[list[str]]) -> list[list[float]]:
        texts, pix, rows = [], [], []
        for q, (p, v, opts) in enumerate(zip(prompts, videos, options)):
            pix.append(self.pixels_fn(v))
            for o in opts:
                texts.append((p, o))
                rows.append(q)
        b = self._batch(texts, pix, rows)
        score = self._score_shared if "prefix_ids" in b else self._score
        scores = score(self.model, {k: jnp.asarray(v) for k, v in b.items()})
        return per_question(np.asarray(scores), options)

    def generate(self, prompts: list[str], videos: list[VideoRef]) -> list[str]:
        """Greedy decoding by full re-encoding per token (short answers; no KV cache needed)."""
        outs = []
        end_ids = {self.tok.convert_tokens_to_ids(t) for t in ("<|end|>", self.tok.eos_token) if t}
        for p, v in zip(prompts, videos):
            px = jnp.asarray(self.pixels_fn(v))[None, None]
            msgs = [{"role": "user", "content": "<video>\n" + p}]
            enc = text_lib.encode_prompt(self.tok, msgs, max_len=self.max_len, num_visual_tokens=self.k)
            ids = [int(t) for t, m in zip(enc.input_ids, enc.attention_mask) if m]
            new: list[int] = []
            for _ in range(self.max_new_tokens):
                seq = ids + new
                arr = np.full((1, self.max_len), self.tok.pad_token_id or 0, np.int32)
                arr[0, :len(seq)] = seq
                mask = (np.arange(self.max_len) < len(seq)).astype(np.int32)[None]
                logits = self._logits(self.model, jnp.asarray(arr), jnp.asarray(mask), px)
                nxt = int(np.argmax(np.asarray(logits[0, len(seq) - 1])))
                if nxt in end_ids or len(seq) + 1 >= self.max_len:
                    break
                new.append(nxt)
            outs.append(self.tok.decode(new, skip_special_tokens=True).strip())
        return outs


def _visual(model, pixels):
    x, _ = model.space_features(model.ego, pixels)
    return model.learner_tokens(x, model.apply_map("f", x))


def _logits_fn(model, ids, mask, pixels):
    vis = _visual(model, pixels)
    return model.llm_logits(ids, mask, vis.reshape(ids.shape[0], -1, vis.shape[-1]))


def _score_fn(model, batch):
    """Sum of log-probabilities of the label tokens of each row.

    The options of one question share its clip: the ego tower and F run once per clip
    (``ego_pixels`` [Q, 1, ...]) and ``video_row`` [R] hands each row its clip's tokens, instead
    of encoding the same clip once per option.
    """
    ids = batch["input_ids"]
    vis = _visual(model, batch["ego_pixels"])
    vis = vis.reshape(batch["ego_pixels"].shape[0], -1, vis.shape[-1])[batch["video_row"]]  # [R, K, D]
    logits = model.llm_logits(ids, batch["attention_mask"], vis)
    return losses.label_log_likelihood(logits, batch["labels"])


def _score_shared_prefix_fn(model, batch):
    """`_score_fn` with each question's prompt (clip tokens + question + options) run once through
    the LLM and its options continuing from that KV cache (generate.option_log_likelihood): with
    4 options the LLM reads ~1/4 of the tokens."""
    vis = _visual(model, batch["ego_pixels"])
    vis = vis.reshape(batch["ego_pixels"].shape[0], -1, vis.shape[-1])  # [Q, K, D]
    embeds = model.llm_embeds(batch["prefix_ids"], vis)
    return generate_lib.option_log_likelihood(model.llm, embeds, batch["prefix_mask"], batch["option_ids"],
                                              batch["option_mask"], batch["option_labels"], batch["video_row"])


def eval_model(config, workdir: str) -> Learner:
    """Factory for eval/adapter.py: the learner saved in `workdir` (a stage 3 run)."""
    model, tok = load_learner(config, workdir)
    return Learner(config, model, tok)


def evaluate_arrays(config, stage_dir: str, bench_json: str, *, batch_size: int = 16) -> dict[str, Any]:
    """Synthetic EgoBench accuracy of a finished learner, on the pre-decoded ego clips."""
    arr = exo2ego_data.load_arrays(config.data.arrays)
    where = {(str(t), int(n)): i for i, (t, n) in enumerate(zip(arr["take"], arr["narration"]))}
    with open(bench_json) as f:
        items = {it["sample_id"]: it for it in json.load(f)}
    records = loaders_mcq.load_qaego4d_closed(bench_json, os.path.dirname(bench_json))
    model, tok = load_learner(config, stage_dir)

    exo2ego_data.check_pixel_stats(config, arr)

    def pixels(ref: VideoRef) -> np.ndarray:
        return ref.frames  # uint8 [F, H, W, 3]: the tower normalises (check_pixel_stats)

    recs: list[MCQRecord] = []
    for r in records:
        it = items[r.uid]
        clip = where.get((it["take_name"], it["narration_index"]))
        if clip is None:
            continue  # its clip was skipped by build_arrays (damaged input)
        recs.append(MCQRecord(uid=r.uid, video=VideoRef(r.video.path, frames=arr["ego"][clip]),
                              question=r.question, options=r.options, answer_index=r.answer_index,
                              category=it["category"], meta=r.meta))
    # Every run of the demo scores the same benchmark texts: tokenised once per process.
    encode_fn = functools.partial(exo2ego_data.cached_encode, config.data.tokenizer, max_len=config.data.max_len,
                                  num_visual_tokens=tokens_per_video(config))
    learner = Learner(config, model, tok, pixels_fn=pixels, encode_fn=encode_fn)
    # Stage 3 trains on exactly this prompt (exo2ego_data.qa_prompt): EgoBench style, no task detail.
    out = runner.evaluate_mcq(learner, recs, "synthetic", mode="loglik", batch_size=batch_size,
                              prompt_style="egobench", first_person=False, task_details=False)
    rows = out["predictions"]
    acc = 100.0 * float(np.mean([r["correct"] for r in rows]))
    cats = sorted({r["category"] for r in rows})
    by_cat = {c: 100.0 * float(np.mean([r["correct"] for r in rows if r["category"] == c])) for c in cats}
    return {"accuracy": acc, "by_category": by_cat, "num_questions": len(rows)}
