"""The Ego2ExoVLM student on its own base model: VideoLLaMA3 (the authors start from VideoLLaMA3-7B-Image).

``config.model.arch = "videollama3"`` (configs/ego2exo/student.py). Parameter paths (config.train.groups):

- ``vision/...``: VideoLLaMA3's encoder (axial 2-D RoPE, per-frame attention), frozen;
- ``projector/...``: the two-layer GELU projector (the paper's "projector" group);
- ``eavt/probes``, ``eavt/cross_attn/attn/...`` [L, ...], ``eavt/projector/...``: EAVT
  (models/videollama3_probes.py): one cross-attention per encoder layer over the patch tokens of all
  frames of the probes' own video, initialised from that layer's self-attention; the probe
  projector starts as a copy of the projector;
- ``llm/...`` (+ LoRA ``lora_a`` / ``lora_b``): the Qwen2 decoder.

Batches (static shapes per bucket: ``data.num_frames`` frame slots of ``frame_patches(data)`` patch
slots, ``data.max_len`` tokens): ``input_ids`` / ``labels`` / ``attention_mask`` [B, T] (the prompt
carries VideoLLaMA3's ``Time t s:`` text and one video token per kept merged patch, then
``num_probes`` probe ids), ``patches`` [B, F, P, 3*p*p], ``grid_hw`` [B, F, 2], ``keep`` [B, F, P/4],
``example_mask`` [B].
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import grain
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from exo2ego_jax.data import instructions
from exo2ego_jax.data import text as text_lib
from exo2ego_jax.data import video as video_lib
from exo2ego_jax.data import videollama3_processor as vp
from exo2ego_jax.methods.ego2exo.prompts import VIDEO_TOKEN
from exo2ego_jax.models import videollama3 as vl3
from exo2ego_jax.models.llm import LLMConfig
from exo2ego_jax.models.videollama3_probes import VideoLlama3EAVT, VideoLlama3EAVTConfig
from exo2ego_jax.tokenizer import load_tokenizer
from exo2ego_jax.weights import safetensors_io as sio
from exo2ego_jax.weights import videollama3_weights as vw

Array = jax.Array


class Ego2ExoVideoLlama3(vl3.VideoLlama3):
    """VideoLLaMA3 + optional EAVT probes (``eavt`` is None without probes)."""

    def __init__(self, cfg: vl3.VideoLlama3Config, *, num_probes: int, eavt_layers: tuple[int, ...] | None,
                 probe_token_id: int, dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs,
                 remat_policy: str = "none", attention_impl: str = "auto", unroll_layers: bool | None = None):
        super().__init__(cfg, dtype=dtype, param_dtype=param_dtype, rngs=rngs, remat_policy=remat_policy,
                         attention_impl=attention_impl, unroll_layers=unroll_layers)
        self.probe_token_id = int(probe_token_id)
        self.eavt = (VideoLlama3EAVT(VideoLlama3EAVTConfig(num_probes=num_probes, layers=eavt_layers,
                                                           probe_token_id=probe_token_id),
                                     self, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
                     if num_probes > 0 else None)

    def init_probe_modules(self) -> None:
        """EAVT <- the encoder's self-attention and the projector (after loading new weights)."""
        if self.eavt is not None:
            self.eavt.init_from(self)

    def student_embeds(self, input_ids: Array, videos: vl3.VisualInput) -> Array:
        if self.eavt is None:
            return self.embed_inputs(input_ids, videos=videos)
        return self.eavt.embed_inputs(self, input_ids, videos)

    def __call__(self, input_ids: Array, attention_mask: Array | None = None, *, videos: vl3.VisualInput,
                 dropout_rng: Array | None = None, hidden_only: bool = False) -> Array:
        """Logits [B, T, V] (float32), or with ``hidden_only`` the final hidden states [B, T, D] for the
        chunked LM-head loss; ``dropout_rng`` turns on LoRA dropout (training only)."""
        out, _ = self.llm(inputs_embeds=self.student_embeds(input_ids, videos), attention_mask=attention_mask,
                          dropout_rng=dropout_rng, hidden_only=hidden_only)
        return out


# --- config -> model --------------------------------------------------------------------------------
def model_config(config) -> vl3.VideoLlama3Config:
    """From ``config.model.checkpoint``'s config.json when set, else the sizes in config.model."""
    m = config.model
    hw = config.hardware
    if m.checkpoint:
        cfg = vl3.VideoLlama3Config.from_hf(m.checkpoint)
    else:
        cfg = vl3.VideoLlama3Config(vision=vl3.VideoLlama3VisionConfig(**dict(m.vision)), llm=LLMConfig(**dict(m.llm)),
                                    image_token_id=m.image_token_id, video_token_id=m.video_token_id)
    vision = dataclasses.replace(cfg.vision, remat=cfg.vision.remat or hw.remat != "none")
    return dataclasses.replace(cfg, vision=vision)


def build_model(config, rngs: nnx.Rngs, *, dtype, param_dtype, remat_policy: str,
                attention_impl: str, unroll_layers: bool | None = None) -> Ego2ExoVideoLlama3:
    m = config.model
    return Ego2ExoVideoLlama3(model_config(config), num_probes=m.num_probes,
                              eavt_layers=tuple(m.eavt_layers) or None, probe_token_id=m.probe_token_id,
                              dtype=dtype, param_dtype=param_dtype, rngs=rngs, remat_policy=remat_policy,
                              attention_impl=attention_impl, unroll_layers=unroll_layers)


def load_checkpoint(model: Ego2ExoVideoLlama3, checkpoint: str) -> None:
    """The VideoLLaMA3 checkpoint into the encoder / projector / LLM; EAVT and LoRA keep their values
    (EAVT is copied afterwards by ``init_probe_modules``; LoRA B starts at zero)."""
    reader = sio.open_checkpoint(checkpoint)
    layout = vw.detect_layout(reader)
    maps = vw.mappings(model.cfg, layout)
    flat = {**maps[""], **{f"llm/{k}": v for k, v in maps["llm/"].items()}}
    for path, var in sio.param_paths(model).items():
        if path.startswith("eavt/") or "/lora_" in path:
            flat[path] = lambda _reader, v=var: np.asarray(jax.device_get(v.get_value()))
    try:
        sio.load_params(model, reader, flat, ignore_unexpected=[r"^lm_head\.weight$"]
                        if model.cfg.llm.tie_word_embeddings else [])
    except ValueError as e:
        raise ValueError(f"config.model.checkpoint={checkpoint}: {e}\n(read with the {layout.name} layout)") from None


# --- data -------------------------------------------------------------------------------------------
def frame_patches(d) -> int:
    """Patch slots per frame: the most a frame can have under ``data.frame_max_pixels`` (static)."""
    block = d.merge_size ** 2
    return d.frame_max_pixels // (d.patch_size ** 2) // block * block


def processor_config(d, num_frames: int) -> vp.VideoLlama3ProcessorConfig:
    """The processor for a clip of ``num_frames`` frames: its pixel budget is ``num_frames`` times the
    per-frame budget, so every frame fits the static patch slots whatever the clip length."""
    budget = d.frame_max_pixels * num_frames
    return vp.VideoLlama3ProcessorConfig(patch_size=d.patch_size, video_merge_size=d.merge_size,
                                         video_min_pixels=min(d.frame_min_pixels * num_frames, budget),
                                         video_max_pixels=budget, fps=d.sample_fps, max_frames=d.num_frames,
                                         min_frames=1, use_token_compression=d.token_compression)


def load_clip(path: str, start: float | None, end: float | None, d) -> vp.VisualFeatures:
    """The clip at ``data.sample_fps``, at most ``data.num_frames`` frames, processed (times from its start)."""
    info = video_lib.probe(path)
    first = 0 if start is None else max(0, int(math.floor(start * info.fps)))
    last = info.num_frames if end is None else min(info.num_frames, int(math.ceil(end * info.fps)))
    last = max(last, first + 1)
    idx = vp.sample_frame_indices(last - first, info.fps, fps=d.sample_fps, min_frames=1, max_frames=d.num_frames)
    return vp.process_video(video_lib.decode_frames(path, first + idx), idx / info.fps,
                            processor_config(d, len(idx)))


def chat_prompt(tok, question: str, video: vp.VisualFeatures, *, system_prompt: str,
                video_token: str) -> tuple[list[dict[str, str]], str, str]:
    """(chat messages, the templated prompt, the prompt with ``video_token`` expanded to ``Time t s:`` +
    one token per kept merged patch, per frame)."""
    msgs = ([{"role": "system", "content": system_prompt}] if system_prompt else []) + [
        {"role": "user", "content": f"{video_token}\n{question}"}]
    prompt = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    pcfg = vp.VideoLlama3ProcessorConfig(video_token=video_token, video_merge_size=video.merge_size)
    return msgs, prompt, vp.expand_prompt(prompt, videos=[video], cfg=pcfg)


def conversation_ids(tok, question: str, video: vp.VisualFeatures, *, system_prompt: str, video_token: str,
                     video_token_id: int, probe_token_id: int, num_probes: int,
                     answer: str | None = None) -> tuple[list[int], list[int]]:
    """(prompt ids, answer ids) of one question about ``video``: the chat-templated prompt with the video
    token expanded (``Time t s:`` + one token per kept merged patch, per frame), ``num_probes`` probe ids
    after the last video token, and the answer as the template continues the prompt (its end-of-turn
    marker included; [] without ``answer``). Training, generation and option scoring share it."""
    msgs, prompt, expanded = chat_prompt(tok, question, video, system_prompt=system_prompt, video_token=video_token)
    head = tok(expanded, add_special_tokens=False)["input_ids"]
    if num_probes:
        last = max(i for i, t in enumerate(head) if t == video_token_id)
        head = head[:last + 1] + [probe_token_id] * num_probes + head[last + 1:]
    if answer is None:
        return head, []
    full = tok.apply_chat_template(msgs + [{"role": "assistant", "content": answer}], tokenize=False)
    if not full.startswith(prompt):
        raise ValueError(f"{getattr(tok, 'name_or_path', 'the tokenizer')}: the chat template renders the prompt "
                         "differently with an answer; answer-only labels need a prefix-stable template")
    return head, tok(full[len(prompt):], add_special_tokens=False)["input_ids"]


def encode_sample(sample: instructions.Sample, video: vp.VisualFeatures, tok, d, *, video_token: str,
                  video_token_id: int, probe_token_id: int) -> dict[str, np.ndarray]:
    """One (question, answer) sample -> fixed-length ids / labels (answer only) / mask, and its video
    padded to ``num_frames`` x ``frame_patches`` slots."""
    turns = sample.conversations
    if len(turns) != 2:
        raise instructions.BadSample("malformed_json", f"{sample.id}: {len(turns)} turns; an Ego2ExoVLM label is "
                                     "one question and one answer")
    question = turns[0]["value"].replace(VIDEO_TOKEN, "").strip()
    head, answer = conversation_ids(tok, question, video, system_prompt=d.system_prompt, video_token=video_token,
                                    video_token_id=video_token_id, probe_token_id=probe_token_id,
                                    num_probes=d.num_probes, answer=turns[1]["value"])
    ids = head + answer
    if len(ids) > d.max_len:
        raise instructions.BadSample("too_long", f"{sample.id}: {len(ids)} tokens > config.data.max_len={d.max_len}")
    t, p = d.max_len, frame_patches(d)
    out = {"input_ids": np.zeros(t, np.int32), "labels": np.full(t, text_lib.IGNORE_INDEX, np.int32),
           "attention_mask": np.zeros(t, np.int32)}
    out["input_ids"][:len(ids)] = ids
    out["labels"][len(head):len(ids)] = answer
    out["attention_mask"][:len(ids)] = 1
    m2 = video.merge_size ** 2
    out["patches"] = np.zeros((d.num_frames, p, video.pixel_values.shape[-1]), np.float32)
    out["grid_hw"] = np.zeros((d.num_frames, 2), np.int32)
    out["keep"] = np.zeros((d.num_frames, p // m2), bool)
    keep = video.keep_per_frame()
    for j, (patches, (h, w)) in enumerate(video.frames()):
        if h * w > p:
            raise ValueError(f"{sample.path}: frame of {h}x{w} patches exceeds the {p} slots of "
                             "config.data.frame_max_pixels")
        out["patches"][j, :h * w] = patches
        out["grid_hw"][j] = (h, w)
        out["keep"][j, :keep.shape[1]] = keep[j]
    out["example_mask"] = np.ones((), np.int32)
    return out


def batch_spec(d, batch: int) -> dict[str, tuple[tuple[int, ...], Any]]:
    """Shapes / dtypes of one batch of ``batch`` examples."""
    t, f, p = d.max_len, d.num_frames, frame_patches(d)
    return {"input_ids": ((batch, t), np.int32), "labels": ((batch, t), np.int32),
            "attention_mask": ((batch, t), np.int32),
            "patches": ((batch, f, p, 3 * d.patch_size ** 2), np.float32), "grid_hw": ((batch, f, 2), np.int32),
            "keep": ((batch, f, p // d.merge_size ** 2), np.bool_), "example_mask": ((batch,), np.int32)}


class _Encode(grain.transforms.Map):
    def __init__(self, d, **ids):
        self.d, self.ids, self.tok = d, ids, None

    def map(self, sample):
        if self.tok is None:  # loaded where the map runs (worker processes do not share it)
            self.tok = load_tokenizer(self.d.tokenizer, extra_special_tokens=())
        video = load_clip(sample.path, sample.start, sample.end, self.d)
        return encode_sample(sample, video, self.tok, self.d, **self.ids)


def dataset(d, model_cfg: vl3.VideoLlama3Config, *, probe_token_id: int, video_token: str,
            process_index: int, process_count: int) -> grain.IterDataset:
    """The teacher-label LLaVA JSON (``data.instructions``) as VideoLLaMA3 student batches of
    ``d.batch_size`` (this process's share), shuffled per epoch, repeated."""
    samples = [s for path in d.instructions
               for s in instructions.read_llava_json(path, data_folder=d.data_folder or None) if s.media == "video"]
    if len(samples) < process_count:
        raise ValueError(f"config.data.instructions: {len(samples)} video samples cannot feed {process_count} processes")
    ds = grain.MapDataset.source(samples)
    if d.shuffle:
        ds = ds.shuffle(seed=d.seed)
    ds = ds.repeat(None)[process_index::process_count]
    ds = ds.map(_Encode(d, video_token=video_token, video_token_id=model_cfg.video_token_id,
                        probe_token_id=probe_token_id))
    ds = ds.batch(d.batch_size, drop_remainder=True)
    return ds.to_iter_dataset(grain.ReadOptions(num_threads=d.read_threads, prefetch_buffer_size=2))
