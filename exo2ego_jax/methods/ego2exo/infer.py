"""Inference with an Ego2ExoVLM model: batched greedy generation and option log-likelihoods.

`VideoLLMRunner` turns (prompt text, video) pairs into static, left-padded batches (chat template,
system prompt, `<video>` / `<probe>` placeholders expanded), runs the vision side and splices the
visual tokens in one jitted call, and decodes with the KV-cache generator (exo2ego_jax.generate).
With a mesh, the batch is sharded over the data axes and the parameters stay where the trainer's
rule table put them, so the same code labels on one CPU or on a pod.

It serves the teacher labelling job (methods/ego2exo/label.py) and the evaluation adapter
(`Ego2ExoAdapter`, the eval harness's MCQModel). `runner_from_run` gives a run of either stack its
runner: this one for the SigLIP stack, `videollama3_infer.VideoLlama3Runner` for VideoLLaMA3.
"""
from __future__ import annotations

import copy
import json
import logging
import os
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from exo2ego_jax import generate as gen_lib
from exo2ego_jax.data import pipeline, pipeline_ops
from exo2ego_jax.data import text as text_lib
from exo2ego_jax.eval.records import VideoRef, per_question
from exo2ego_jax.methods.ego2exo import videollama3_infer
from exo2ego_jax.methods.ego2exo.model import sync_data_fields
from exo2ego_jax.methods.ego2exo.prompts import VIDEO_TOKEN, eos_ids
from exo2ego_jax.models import connectors as conn_lib
from exo2ego_jax.train import checkpoint as ckpt_lib
from exo2ego_jax.tokenizer import load_tokenizer
from exo2ego_jax.train import losses
from exo2ego_jax.train import setup as setup_lib

@nnx.jit
def _embed(model, input_ids, pixels, frame_mask):
    return model.embed_all(input_ids, pixels, frame_mask=frame_mask)


@nnx.jit
def _option_logprob(model, input_ids, attention_mask, labels, pixels, frame_mask, video_index):
    """Sum of log p(label tokens) per row; rows share videos through `video_index`."""
    tokens, ptoks = model.visual(pixels, frame_mask)
    embeds = model.splice(input_ids, tokens[video_index], None if ptoks is None else ptoks[video_index])
    logits, _ = model.llm(inputs_embeds=embeds, attention_mask=attention_mask)
    return losses.label_log_likelihood(logits, labels)


class VideoLLMRunner:
    """Batched inference for an `Ego2ExoModel` with a tokenizer and the data pipeline's video fields."""

    def __init__(self, model, tokenizer, data_cfg, *, system_prompt: str = "", prompt_len: int = 0,
                 text_budget: int = 128, mesh: jax.sharding.Mesh | None = None):
        self.model, self.tok, self.cfg = model, tokenizer, data_cfg
        self.system_prompt = system_prompt
        self.num_visual = int(data_cfg.num_visual_tokens)
        self.num_probes = int(data_cfg.num_probes)
        self._fixed_len = prompt_len
        self.prompt_len = prompt_len or (self.num_visual + self.num_probes + text_budget)
        self.text_budget = text_budget
        self.mesh = mesh
        self.eos = eos_ids(tokenizer)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos[0]

    def with_frames(self, num_frames: int) -> "VideoLLMRunner":
        """A runner sharing model and tokenizer that feeds `num_frames` evenly spaced frames per clip."""
        cfg = ml_collections.ConfigDict(copy.deepcopy(self.cfg.to_dict()))
        cfg.sampling, cfg.num_frames = "uniform", int(num_frames)
        mc = self.model.cfg
        cfg.num_visual_tokens = conn_lib.num_visual_tokens(mc.connector, mc.vision, int(num_frames))
        return VideoLLMRunner(self.model, self.tok, cfg, system_prompt=self.system_prompt,
                              prompt_len=self._fixed_len, text_budget=self.text_budget, mesh=self.mesh)

    # -- inputs -----------------------------------------------------------------------------------
    def messages(self, prompt: str, answer: str | None = None) -> list[dict[str, str]]:
        msgs = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        msgs.append({"role": "user", "content": f"{VIDEO_TOKEN}\n{prompt}"})
        if answer is not None:
            msgs.append({"role": "assistant", "content": answer})
        return msgs

    def load_video(self, ref: VideoRef) -> tuple[np.ndarray, np.ndarray]:
        """Tower-ready frames [F, S, S, 3] and frame mask [F] (raises VideoError)."""
        if ref.frames is not None:
            return pipeline_ops.load_clip(ref.path, self.cfg, stored={"frames": ref.frames})
        return pipeline_ops.load_clip(ref.path, self.cfg, start=ref.start, end=ref.end)

    def videos(self, refs: Sequence[VideoRef]) -> tuple[np.ndarray, np.ndarray]:
        pix, fm = zip(*(self.load_video(r) for r in refs))
        return np.stack(pix)[:, None], np.stack(fm)[:, None]  # [B, 1, F, S, S, 3], [B, 1, F]

    def _shard(self, *arrays):
        if self.mesh is None:
            return tuple(jnp.asarray(a) for a in arrays)
        sh = NamedSharding(self.mesh, P(("data", "fsdp")))
        dp = self.mesh.shape["data"] * self.mesh.shape["fsdp"]
        if arrays[0].shape[0] % dp:
            sh = NamedSharding(self.mesh, P())
        return tuple(jax.device_put(np.asarray(a), sh) for a in arrays)

    # -- generation -------------------------------------------------------------------------------
    def generate(self, prompts: Sequence[str], refs: Sequence[VideoRef], *, max_new_tokens: int,
                 stop_strings: Sequence[str] = (), pixels=None) -> tuple[list[str], np.ndarray]:
        """Greedy answers and the number of generated tokens per row."""
        enc = [text_lib.encode_prompt(self.tok, self.messages(p), max_len=self.prompt_len,
                                      num_visual_tokens=self.num_visual, num_probes=self.num_probes)
               for p in prompts]
        ids = np.stack([e.input_ids for e in enc])
        mask = np.stack([e.attention_mask for e in enc])
        if pixels is None:
            pix, fmask = self.videos(refs)
        else:  # caller-provided clips: every frame real
            pix, fmask = pixels, np.ones(np.shape(pixels)[:3], np.int32)
        ids_d, mask_d, pix_d, fmask_d = self._shard(ids, mask, pix, fmask)
        embeds = _embed(self.model, ids_d, pix_d, fmask_d)
        out = gen_lib.generate(self.model.llm, inputs_embeds=embeds, attention_mask=mask_d,
                               max_new_tokens=max_new_tokens, eos_token_id=self.eos, pad_token_id=self.pad_id,
                               tokenizer=self.tok, stop_strings=tuple(stop_strings))
        return [t.strip() for t in out.texts], np.asarray(out.lengths)

    # -- scoring ----------------------------------------------------------------------------------
    def option_loglik(self, prompts: Sequence[str], refs: Sequence[VideoRef],
                      options: Sequence[Sequence[str]]) -> list[list[float]]:
        """Sum of log-probabilities of each option as the assistant's answer (end-of-turn included)."""
        pix, fmask = self.videos(refs)
        rows, owner = [], []
        for i, (p, opts) in enumerate(zip(prompts, options)):
            for o in opts:
                rows.append(text_lib.tokenize_conversation(
                    self.tok, self.messages(p, o), max_len=self.prompt_len, num_visual_tokens=self.num_visual,
                    num_probes=self.num_probes))
                owner.append(i)
        batch = text_lib.stack(rows)
        scores = _option_logprob(self.model, jnp.asarray(batch["input_ids"]), jnp.asarray(batch["attention_mask"]),
                                 jnp.asarray(batch["labels"]), jnp.asarray(pix), jnp.asarray(fmask),
                                 jnp.asarray(owner, jnp.int32))
        return per_question(np.asarray(scores), options)


class Ego2ExoAdapter:
    """The eval harness's MCQModel (eval/adapter.py) over a `VideoLLMRunner` or a
    `videollama3_infer.VideoLlama3Runner`."""

    def __init__(self, runner: VideoLLMRunner, max_new_tokens: int = 32):
        self.runner, self.max_new_tokens = runner, max_new_tokens

    def generate(self, prompts: list[str], videos: list[VideoRef]) -> list[str]:
        return self.runner.generate(prompts, videos, max_new_tokens=self.max_new_tokens)[0]

    def option_loglik(self, prompts: list[str], videos: list[VideoRef], options: list[list[str]]) -> list[list[float]]:
        return self.runner.option_loglik(prompts, videos, options)


# --- building from a trained workdir ------------------------------------------------------------
def load_run_config(path: str) -> ml_collections.ConfigDict:
    """The config a training run saved (workdir/config.json), unlocked."""
    cfg_file = ckpt_lib.config_path(path)
    if not os.path.exists(cfg_file):
        raise FileNotFoundError(f"{cfg_file}: no config.json of a training run; point config.train.init_from "
                                "(eval) or config.label.teacher_workdir (label) at a trainer workdir")
    with open(cfg_file) as f:
        return ml_collections.ConfigDict(json.load(f))


def tupleize_groups(cfg: ml_collections.ConfigDict) -> None:
    """JSON turned tuples into lists; groups must be (regex, lr) pairs again."""
    cfg.train.groups = [tuple(g) for g in cfg.train.groups]


def build_inference_model(config, *, mesh=None):
    """(model, setup) for `config` with config.train.init_from loaded; parameters sharded on `mesh`."""
    cfg = ml_collections.ConfigDict(copy.deepcopy(config.to_dict()))
    cfg.train.epochs = 0.0  # no data needed to count steps
    cfg.train.steps = 1
    s = setup_lib.build(cfg, mesh)
    model = s.parts.merge(s.trainable_init, s.frozen, s.other)
    return model, s


def runner_from_run(run_dir: str, *, hardware=None, data_overrides: dict | None = None, system_prompt=None,
                    text_budget: int = 128, max_new_tokens: int = 32, mesh=None):
    """(runner, its config) for the model trained in `run_dir` (its saved config + latest checkpoint):
    a `VideoLLMRunner` for the SigLIP stack, a `videollama3_infer.VideoLlama3Runner` for
    model.arch = "videollama3" (prompts up to its data.max_len, leaving `max_new_tokens` of context)."""
    cfg = load_run_config(run_dir)
    tupleize_groups(cfg)
    if hardware is not None:
        cfg.hardware = ml_collections.ConfigDict(hardware.to_dict())
    for k, v in (data_overrides or {}).items():
        cfg.data[k] = v
    if "num_frames" in (data_overrides or {}) and cfg.model.get("arch", "llava_video") != "videollama3":
        sync_data_fields(cfg)
    cfg.train.init_from = run_dir
    t0 = time.time()
    model, s = build_inference_model(cfg, mesh=mesh)
    logging.info("loaded %s in %.1f s", run_dir, time.time() - t0)
    sp = cfg.data.system_prompt if system_prompt is None else system_prompt
    if cfg.model.get("arch", "llava_video") == "videollama3":  # the run's own VideoLLaMA3 processor rules
        tok = load_tokenizer(cfg.data.tokenizer or cfg.model.checkpoint, extra_special_tokens=())
        return videollama3_infer.from_run(model, cfg, tok, system_prompt=sp, max_new_tokens=max_new_tokens,
                                          mesh=s.mesh), cfg
    tok = pipeline.load_tokenizer(cfg.data)
    return VideoLLMRunner(model, tok, cfg.data, system_prompt=sp, text_budget=text_budget, mesh=s.mesh), cfg


def adapter_from_config(config, workdir: str) -> Ego2ExoAdapter:
    """eval job: the student trained in config.train.init_from, answering with its own data fields."""
    del workdir
    if not config.train.init_from:
        raise ValueError("ego2exo eval: set --config.train.init_from=<student training workdir>")
    runner, _ = runner_from_run(config.train.init_from, hardware=config.hardware)
    return Ego2ExoAdapter(runner)
