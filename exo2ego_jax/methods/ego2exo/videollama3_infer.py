"""Inference with a VideoLLaMA3 model, the Ego2ExoVLM teacher's and student's base: batched greedy
KV-cache generation and option log-likelihoods.

``VideoLlama3Runner`` serves the labelling job (its teacher: a VideoLLaMA3 checkpoint or a run trained
here, methods/ego2exo/videollama3_teacher.py) and the eval harness (``infer.Ego2ExoAdapter`` over it:
the MCQModel of eval/adapter.py). Each clip is sampled at the processor's fps with its frame cap,
resized by its rules and prefixed by ``Time t s:`` text per frame (data/videollama3_processor.py);
prompts get the model's EAVT ``<probe>`` ids after the video when it has probes (the student), as in
training (``videollama3_student.conversation_ids``). Batches are collated into static buckets
(prompt length, frame slots, patch slots per frame): one compile per bucket.

Where clips come from (``ClipSource``):

- ``CheckpointClips``: a released checkpoint's processor settings (its clip pixel budget shared by
  all frames, at least ``min_frames``); patch slots bucketed per batch;
- ``RunClips``: a run trained with this repository, read with its own data rules
  (``videollama3_student.load_clip``: a per-frame pixel budget, hence fixed patch slots per frame).
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Protocol

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from exo2ego_jax import generate as gen_lib
from exo2ego_jax.data import text as text_lib
from exo2ego_jax.data import video as video_lib
from exo2ego_jax.data import videollama3_processor as vp
from exo2ego_jax.eval.records import VideoRef, per_question
from exo2ego_jax.methods.ego2exo import videollama3_student as vl3_student
from exo2ego_jax.methods.ego2exo.prompts import eos_ids
from exo2ego_jax.models import videollama3 as vl3
from exo2ego_jax.models.mllm import scatter_tokens
from exo2ego_jax.train import losses

Array = jax.Array


# --- static buckets ---------------------------------------------------------------------------------
def patch_buckets(merge_size: int, most: int) -> tuple[int, ...]:
    """Patches-per-frame buckets up to ``most``: merge blocks x powers of two (padding a frame to its
    bucket at most doubles its encoder work; clips of one resolution share one bucket per frame count).

    The bound comes from the batch, not the pixel budget: the processor's upscaling of small frames
    rounds up and can pass the budget by a few patch rows."""
    block = merge_size ** 2
    out = [block]
    while out[-1] < most:
        out.append(out[-1] * 2)
    return tuple(out)


def length_buckets(max_len: int, smallest: int = 128) -> tuple[int, ...]:
    """Prompt-length buckets: powers of two from ``smallest`` up to ``max_len`` (included)."""
    out, b = [], smallest
    while b < max_len:
        out.append(b)
        b *= 2
    return tuple(out) + (max_len,)


# --- clips ------------------------------------------------------------------------------------------
def _no_preloaded_frames(ref: VideoRef) -> None:
    if ref.frames is not None:
        raise ValueError(f"VideoRef({ref.path!r}) carries preloaded frames; the VideoLLaMA3 runner samples at "
                         "an fps and writes each frame's timestamp, so it reads the video file itself (pass a path).")


def _window(ref: VideoRef) -> tuple[int, int, float]:
    """(first frame, end frame, video fps) of ``ref``'s [start, end] seconds."""
    info = video_lib.probe(ref.path)
    first = 0 if ref.start is None else max(0, int(math.floor(ref.start * info.fps)))
    last = info.num_frames if ref.end is None else min(info.num_frames, int(math.ceil(ref.end * info.fps)))
    return first, max(last, first + 1), info.fps


def clip_frames(ref: VideoRef, pcfg: vp.VideoLlama3ProcessorConfig) -> vp.VisualFeatures:
    """The [start, end] seconds of ``ref.path`` sampled at ``pcfg.fps`` (capped) and processed;
    timestamps count from the segment's start (the model sees the segment as its own clip)."""
    _no_preloaded_frames(ref)
    first, last, fps = _window(ref)
    idx = vp.sample_frame_indices(last - first, fps, fps=pcfg.fps, min_frames=pcfg.min_frames,
                                  max_frames=pcfg.max_frames)
    frames = video_lib.decode_frames(ref.path, first + idx)
    return vp.process_video(frames, idx / fps, pcfg)


class ClipSource(Protocol):
    """How a runner turns a ``VideoRef`` into processed frames."""

    max_frames: int  # frame cap = the frame slots of a batch
    patch_slots: int  # patch slots per frame (0: bucketed per batch with ``patch_buckets``)

    def load(self, ref: VideoRef) -> vp.VisualFeatures: ...

    def with_frames(self, num_frames: int) -> "ClipSource": ...


@dataclasses.dataclass(frozen=True)
class CheckpointClips:
    """A released checkpoint's processor settings (``VideoLlama3ProcessorConfig.from_dir`` + fps / cap)."""

    pcfg: vp.VideoLlama3ProcessorConfig
    patch_slots: int = 0

    @property
    def max_frames(self) -> int:
        return self.pcfg.max_frames

    def load(self, ref: VideoRef) -> vp.VisualFeatures:
        return clip_frames(ref, self.pcfg)

    def with_frames(self, num_frames: int) -> "CheckpointClips":
        return dataclasses.replace(self, pcfg=dataclasses.replace(self.pcfg, max_frames=int(num_frames)))


@dataclasses.dataclass(frozen=True)
class RunClips:
    """A run's data rules (``config.data`` of a VideoLLaMA3 run: sample_fps, num_frames cap, per-frame budget)."""

    data: ml_collections.ConfigDict

    @property
    def max_frames(self) -> int:
        return int(self.data.num_frames)

    @property
    def patch_slots(self) -> int:
        return vl3_student.frame_patches(self.data)

    def load(self, ref: VideoRef) -> vp.VisualFeatures:
        _no_preloaded_frames(ref)
        return vl3_student.load_clip(ref.path, ref.start, ref.end, self.data)

    def with_frames(self, num_frames: int) -> "RunClips":
        d = ml_collections.ConfigDict(self.data.to_dict())
        d.num_frames = int(num_frames)
        return RunClips(d)


# --- model side (jitted) ----------------------------------------------------------------------------
def encode_videos(model: vl3.VideoLlama3, videos: vl3.VisualInput) -> tuple[Array, Array, Array | None]:
    """Video tokens [B, F, N, D], their mask [B, F, N] and EAVT probe tokens [B, Q, D] (None without probes)."""
    eavt = getattr(model, "eavt", None)  # Ego2ExoVideoLlama3 (the student) may carry EAVT probes
    if eavt is None:
        tokens, valid = model.encode(videos, model.cfg.video_merge_size)
        return tokens, valid, None
    return eavt.encode(model, videos)


def splice_videos(model: vl3.VideoLlama3, input_ids: Array, tokens: Array, valid: Array,
                  probe_tokens: Array | None) -> Array:
    """Text embeddings [B, T, D] with each row's video tokens (and probe tokens) at its placeholders."""
    encoded = {model.cfg.video_token_id: (tokens, valid)}
    if probe_tokens is None:
        return model.splice(input_ids, encoded)
    probe_id = model.eavt.cfg.probe_token_id
    embeds = model.splice(input_ids, encoded, extra_ids=(probe_id,))
    return scatter_tokens(embeds, input_ids, probe_id, probe_tokens)


@nnx.jit
def _embeds(model, input_ids, videos):
    return splice_videos(model, input_ids, *encode_videos(model, videos))


@nnx.jit
def _option_logprob(model, input_ids, attention_mask, labels, videos, video_index):
    """Sum of log p(label tokens) per row [R]; row r reads clip ``video_index[r]`` of ``videos`` [B, ...],
    so each clip's encoder (and probe) pass runs once however many options share it."""
    tokens, valid, probes = encode_videos(model, videos)
    embeds = splice_videos(model, input_ids, tokens[video_index], valid[video_index],
                           None if probes is None else probes[video_index])
    logits, _ = model.llm(inputs_embeds=embeds, attention_mask=attention_mask)
    return losses.label_log_likelihood(logits, labels)


# --- the runner -------------------------------------------------------------------------------------
@dataclasses.dataclass
class VideoLlama3Runner:
    """A VideoLLaMA3 model (+ EAVT probes when it has them) with its tokenizer and clip rules."""

    model: vl3.VideoLlama3
    tok: object
    clips: ClipSource
    system_prompt: str
    max_len: int  # longest prompt (+ option) in tokens; generation adds max_new_tokens on top
    mesh: jax.sharding.Mesh | None = None

    @property
    def video_token(self) -> str:
        return self.tok.convert_ids_to_tokens(self.model.cfg.video_token_id)

    @property
    def num_probes(self) -> int:
        eavt = getattr(self.model, "eavt", None)
        return 0 if eavt is None else int(eavt.cfg.num_probes)

    @property
    def pad_id(self) -> int:
        return self.tok.pad_token_id if self.tok.pad_token_id is not None else eos_ids(self.tok)[0]

    def with_frames(self, num_frames: int) -> "VideoLlama3Runner":
        """The same model sampling at most ``num_frames`` frames (one frame bucket, one compile)."""
        return dataclasses.replace(self, clips=self.clips.with_frames(num_frames))

    def conversation_ids(self, question: str, video: vp.VisualFeatures,
                         answer: str | None = None) -> tuple[list[int], list[int]]:
        """(prompt ids, answer ids) as the model was trained on them; the prompt must fit ``max_len``."""
        eavt = getattr(self.model, "eavt", None)
        head, ans = vl3_student.conversation_ids(
            self.tok, question, video, system_prompt=self.system_prompt, video_token=self.video_token,
            video_token_id=self.model.cfg.video_token_id,
            probe_token_id=-1 if eavt is None else eavt.cfg.probe_token_id, num_probes=self.num_probes,
            answer=answer)
        if len(head) + len(ans) > self.max_len:
            raise ValueError(f"a prompt of {len(head)} tokens ({int(video.keep.sum())} visual) "
                             f"{f'and an answer of {len(ans)} ' if ans else ''}exceeds the {self.max_len} tokens "
                             "the runner allows; lower the frame cap (label.max_frames / data.num_frames), "
                             "max_new_tokens, or raise data.max_len.")
        return head, ans

    def prompt_text(self, question: str, video: vp.VisualFeatures) -> str:
        """The chat-templated prompt with the video expanded (before the probe ids are inserted)."""
        return vl3_student.chat_prompt(self.tok, question, video, system_prompt=self.system_prompt,
                                       video_token=self.video_token)[2]

    def prompt_ids(self, question: str, video: vp.VisualFeatures) -> list[int]:
        return self.conversation_ids(question, video)[0]

    def load_clips(self, refs: Sequence[VideoRef]) -> list[vp.VisualFeatures]:
        """Each distinct (path, start, end) decoded once (a segment's questions / options share it)."""
        clips: dict[tuple, vp.VisualFeatures] = {}
        for r in refs:
            if (r.path, r.start, r.end) not in clips:
                clips[(r.path, r.start, r.end)] = self.clips.load(r)
        return [clips[(r.path, r.start, r.end)] for r in refs]

    def collate(self, ids: Sequence[Sequence[int]], videos: Sequence[vp.VisualFeatures]) -> vp.VideoBatch:
        slots = self.clips.patch_slots
        patches = (slots,) if slots else patch_buckets(videos[0].merge_size,
                                                       max(v.grid_thw[1] * v.grid_thw[2] for v in videos))
        return vp.collate(ids, videos, pad_id=self.pad_id, length_buckets=length_buckets(self.max_len),
                          frame_buckets=(self.clips.max_frames,), patch_buckets=patches)

    def batch(self, prompts: Sequence[str], refs: Sequence[VideoRef]) -> vp.VideoBatch:
        videos = self.load_clips(refs)
        return self.collate([self.prompt_ids(p, v) for p, v in zip(prompts, videos)], videos)

    def _device(self, *arrays):
        """Host arrays on the mesh's data axes (replicated when the batch does not divide them)."""
        if self.mesh is None:
            return tuple(jnp.asarray(a) for a in arrays)
        dp = self.mesh.shape["data"] * self.mesh.shape["fsdp"]
        sh = NamedSharding(self.mesh, P(("data", "fsdp")) if len(arrays[0]) % dp == 0 else P())
        return tuple(jax.device_put(np.asarray(a), sh) for a in arrays)

    def _videos(self, batch: vp.VideoBatch) -> vl3.VisualInput:
        return vl3.VisualInput(*self._device(batch.patches, batch.grid_hw, batch.keep))

    def embeddings(self, batch: vp.VideoBatch) -> tuple[Array, Array]:
        """(inputs_embeds [B, T, D], attention_mask [B, T]); placeholder counts checked on the host first."""
        vl3.check_visual_placeholders(batch.input_ids, self.model.cfg.video_token_id, batch.grid_hw,
                                      self.model.cfg.video_merge_size, batch.keep)
        ids, mask = self._device(batch.input_ids, batch.attention_mask)
        return _embeds(self.model, ids, self._videos(batch)), mask

    def generate(self, prompts: Sequence[str], refs: Sequence[VideoRef], *, max_new_tokens: int,
                 stop_strings: Sequence[str] = ()) -> tuple[list[str], np.ndarray]:
        """Greedy answers (one per prompt, about its ``VideoRef``) and their new-token counts."""
        embeds, mask = self.embeddings(self.batch(prompts, refs))
        eos = eos_ids(self.tok)
        if isinstance(self.model.cfg.llm.eos_token_id, int):
            eos = sorted({*eos, self.model.cfg.llm.eos_token_id})
        out = gen_lib.generate(self.model.llm, inputs_embeds=embeds, attention_mask=mask,
                               max_new_tokens=max_new_tokens, eos_token_id=eos, pad_token_id=self.pad_id,
                               tokenizer=self.tok, stop_strings=tuple(stop_strings))
        return [t.strip() for t in out.texts], np.asarray(out.lengths)

    def option_loglik(self, prompts: Sequence[str], refs: Sequence[VideoRef],
                      options: Sequence[Sequence[str]]) -> list[list[float]]:
        """Sum of log-probabilities of each option as the assistant's answer (end of turn included).

        The batch's clips are processed and encoded once ([len(prompts)] clips); each option row
        points at its prompt's clip."""
        if not (len(prompts) == len(refs) == len(options)):
            raise ValueError(f"option_loglik: {len(prompts)} prompts, {len(refs)} videos, {len(options)} option lists")
        videos = self.load_clips(refs)
        rows, answers, owner = [], [], []
        for i, (p, v, opts) in enumerate(zip(prompts, videos, options)):
            for o in opts:
                head, ans = self.conversation_ids(p, v, answer=o)
                rows.append(head + ans)
                answers.append(len(ans))
                owner.append(i)
        clip_batch = self.collate([()] * len(videos), videos)  # the clips alone: [len(prompts), F, P, ...]
        t = next(b for b in length_buckets(self.max_len) if b >= max(map(len, rows)))
        ids = np.full((len(rows), t), self.pad_id, np.int32)  # left-padded, as for generation
        mask = np.zeros((len(rows), t), np.int32)
        labels = np.full((len(rows), t), text_lib.IGNORE_INDEX, np.int32)
        for r, (row, n) in enumerate(zip(rows, answers)):
            ids[r, t - len(row):] = row
            mask[r, t - len(row):] = 1
            labels[r, t - n:] = row[len(row) - n:]
        vl3.check_visual_placeholders(ids, self.model.cfg.video_token_id, clip_batch.grid_hw[owner],
                                      self.model.cfg.video_merge_size, clip_batch.keep[owner])
        scores = _option_logprob(self.model, *self._device(ids, mask, labels),
                                 self._videos(clip_batch), jnp.asarray(owner, jnp.int32))
        return per_question(np.asarray(scores), options)


def from_run(model: vl3.VideoLlama3, cfg: ml_collections.ConfigDict, tok, *, system_prompt: str,
             max_new_tokens: int = 0, mesh=None) -> VideoLlama3Runner:
    """A runner for a VideoLLaMA3 run trained here (``cfg``: its saved config): its data rules, its
    ``data.max_len`` (capped by the context minus ``max_new_tokens``)."""
    max_len = min(int(cfg.data.max_len), model.cfg.llm.max_position_embeddings - max_new_tokens)
    return VideoLlama3Runner(model, tok, RunClips(ml_collections.ConfigDict(cfg.data.to_dict())), system_prompt,
                             max_len, mesh)
