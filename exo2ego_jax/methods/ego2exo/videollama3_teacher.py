"""The Ego2ExoVLM teacher as the authors ran it: a VideoLLaMA3 checkpoint answering about EGO segments.

``VideoLlama3Teacher`` has the runner interface the labelling job uses (``with_frames`` /
``generate``): each segment is decoded at ``fps`` with at most ``max_frames`` frames
(Ego2ExoVLM [C]: 1 fps, 180 frames for VideoLLaMA3-7B), processed by VideoLLaMA3's processor rules
(``data/videollama3_processor.py``: resize within the pixel budget, token compression, ``Time t s:``
before each frame's tokens), collated into static buckets (frames, patches per frame, prompt length:
one compile per bucket) and answered greedily with the KV-cache decoder from the spliced embeddings
(``videollama3_chat.batch_embeddings`` + ``generate.generate``).
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from exo2ego_jax import generate as gen_lib
from exo2ego_jax import videollama3_chat
from exo2ego_jax.data import video as video_lib
from exo2ego_jax.data import videollama3_processor as vp
from exo2ego_jax.eval.records import VideoRef
from exo2ego_jax.methods.ego2exo.infer import eos_ids
from exo2ego_jax.models import videollama3 as vl3
from exo2ego_jax.parallel import rules as rules_lib
from exo2ego_jax.tokenizer import load_tokenizer
from exo2ego_jax.weights import videollama3_weights

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


def clip_frames(ref: VideoRef, pcfg: vp.VideoLlama3ProcessorConfig) -> vp.VisualFeatures:
    """The [start, end] seconds of ``ref.path`` sampled at ``pcfg.fps`` (capped) and processed;
    timestamps count from the segment's start (the teacher sees the segment as its own clip)."""
    info = video_lib.probe(ref.path)
    first = 0 if ref.start is None else max(0, int(math.floor(ref.start * info.fps)))
    last = info.num_frames if ref.end is None else min(info.num_frames, int(math.ceil(ref.end * info.fps)))
    last = max(last, first + 1)
    idx = vp.sample_frame_indices(last - first, info.fps, fps=pcfg.fps, min_frames=pcfg.min_frames,
                                  max_frames=pcfg.max_frames)
    frames = video_lib.decode_frames(ref.path, first + idx)
    return vp.process_video(frames, idx / info.fps, pcfg)


@dataclasses.dataclass
class VideoLlama3Teacher:
    """A loaded VideoLLaMA3 checkpoint + tokenizer + processor settings, bound to a frame bucket."""

    model: vl3.VideoLlama3
    tok: object
    pcfg: vp.VideoLlama3ProcessorConfig
    system_prompt: str
    max_len: int  # longest prompt (tokens); generation adds max_new_tokens on top
    mesh: jax.sharding.Mesh | None = None

    @classmethod
    def load(cls, checkpoint: str, *, tokenizer: str = "", fps: float, max_frames: int, system_prompt: str,
             max_new_tokens: int, dtype: str = "float32", param_dtype: str = "float32", mesh=None,
             attention_impl: str = "auto") -> "VideoLlama3Teacher":
        """Reads ``checkpoint`` (transformers' or DAMO-NLP-SG's layout) into its target sharding on ``mesh``."""
        import jax.numpy as jnp

        dt = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
        for name, value in (("compute_dtype", dtype), ("param_dtype", param_dtype)):
            if value not in dt:
                raise ValueError(f"config.hardware.{name}={value!r}: the VideoLLaMA3 teacher runs in {sorted(dt)}")
        model = videollama3_weights.load_videollama3_dir(
            checkpoint, dtype=dt[dtype], param_dtype=dt[param_dtype], mesh=mesh,
            rules=rules_lib.RULES if mesh is not None else None, attention_impl=attention_impl)
        tok = load_tokenizer(tokenizer or checkpoint, extra_special_tokens=())
        token = tok.convert_ids_to_tokens(model.cfg.video_token_id)
        if not token or tok.convert_tokens_to_ids(token) != model.cfg.video_token_id:
            raise ValueError(f"{checkpoint}: the tokenizer has no token with the video token id "
                             f"{model.cfg.video_token_id} of config.json; set config.data.tokenizer to the "
                             "checkpoint's own tokenizer.")
        pcfg = vp.VideoLlama3ProcessorConfig.from_dir(checkpoint, fps=fps, max_frames=max_frames,
                                                      patch_size=model.cfg.vision.patch_size,
                                                      video_merge_size=model.cfg.video_merge_size,
                                                      video_token=token)
        max_len = model.cfg.llm.max_position_embeddings - max_new_tokens
        if max_len <= 0:
            raise ValueError(f"config.label.max_new_tokens={max_new_tokens} leaves no room for a prompt in the "
                             f"teacher's {model.cfg.llm.max_position_embeddings}-token context.")
        return cls(model, tok, pcfg, system_prompt, max_len, mesh)

    @classmethod
    def from_model(cls, model: vl3.VideoLlama3, tokenizer: str, *, fps: float, max_frames: int,
                   frame_max_pixels: int, system_prompt: str, max_new_tokens: int, mesh=None) -> "VideoLlama3Teacher":
        """A VideoLLaMA3 trained with this repository (its run's data fields: per-frame pixel budget)."""
        tok = load_tokenizer(tokenizer, extra_special_tokens=())
        pcfg = vp.VideoLlama3ProcessorConfig(
            patch_size=model.cfg.vision.patch_size, video_merge_size=model.cfg.video_merge_size, fps=fps,
            max_frames=max_frames, video_max_pixels=frame_max_pixels * max_frames,
            video_min_pixels=min(vp.VideoLlama3ProcessorConfig.video_min_pixels, frame_max_pixels * max_frames),
            video_token=tok.convert_ids_to_tokens(model.cfg.video_token_id))
        return cls(model, tok, pcfg, system_prompt, model.cfg.llm.max_position_embeddings - max_new_tokens, mesh)

    def with_frames(self, num_frames: int) -> "VideoLlama3Teacher":
        """The same teacher sampling at most ``num_frames`` frames (one frame bucket, one compile)."""
        return dataclasses.replace(self, pcfg=dataclasses.replace(self.pcfg, max_frames=int(num_frames)))

    def prompt_text(self, question: str, video: vp.VisualFeatures) -> str:
        """The chat-templated prompt, the video token expanded to ``Time t s:`` + kept tokens per frame."""
        msgs = ([{"role": "system", "content": self.system_prompt}] if self.system_prompt else []) + [
            {"role": "user", "content": f"{self.pcfg.video_token}\n{question}"}]
        text = self.tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        return vp.expand_prompt(text, videos=[video], cfg=self.pcfg)

    def prompt_ids(self, question: str, video: vp.VisualFeatures) -> list[int]:
        ids = self.tok(self.prompt_text(question, video), add_special_tokens=False)["input_ids"]
        if len(ids) > self.max_len:
            raise ValueError(f"teacher prompt of {len(ids)} tokens ({int(video.keep.sum())} visual) exceeds the "
                             f"{self.max_len} the context leaves; lower config.label.max_frames or max_new_tokens.")
        return ids

    def batch(self, prompts: Sequence[str], refs: Sequence[VideoRef]) -> vp.VideoBatch:
        clips: dict[tuple, vp.VisualFeatures] = {}  # the 3 questions of a segment share its clip
        for r in refs:
            if (r.path, r.start, r.end) not in clips:
                clips[(r.path, r.start, r.end)] = clip_frames(r, self.pcfg)
        videos = [clips[(r.path, r.start, r.end)] for r in refs]
        ids = [self.prompt_ids(p, v) for p, v in zip(prompts, videos)]
        pad = self.tok.pad_token_id if self.tok.pad_token_id is not None else eos_ids(self.tok)[0]
        return vp.collate(ids, videos, pad_id=pad, length_buckets=length_buckets(self.max_len),
                          frame_buckets=(self.pcfg.max_frames,),
                          patch_buckets=patch_buckets(self.pcfg.video_merge_size,
                                                      max(v.grid_thw[1] * v.grid_thw[2] for v in videos)))

    def _shard(self, batch: vp.VideoBatch) -> vp.VideoBatch:
        if self.mesh is None:
            return batch
        dp = self.mesh.shape["data"] * self.mesh.shape["fsdp"]
        spec = P(("data", "fsdp")) if len(batch.input_ids) % dp == 0 else P()
        sh = NamedSharding(self.mesh, spec)
        return vp.VideoBatch(*(jax.device_put(np.asarray(getattr(batch, f.name)), sh)
                               for f in dataclasses.fields(batch)))

    def generate(self, prompts: Sequence[str], refs: Sequence[VideoRef], *, max_new_tokens: int,
                 stop_strings: Sequence[str] = ()) -> tuple[list[str], np.ndarray]:
        """Greedy answers (one per prompt, about its ``VideoRef``) and their new-token counts."""
        # batch_embeddings checks the placeholder counts on the host (its error names the sample).
        embeds, mask = videollama3_chat.batch_embeddings(self.model, self._shard(self.batch(prompts, refs)))
        eos = eos_ids(self.tok)
        if isinstance(self.model.cfg.llm.eos_token_id, int):
            eos = sorted({*eos, self.model.cfg.llm.eos_token_id})
        out = gen_lib.generate(self.model.llm, inputs_embeds=embeds, attention_mask=mask,
                               max_new_tokens=max_new_tokens, eos_token_id=eos, pad_token_id=self.tok.pad_token_id or 0,
                               tokenizer=self.tok, stop_strings=tuple(stop_strings))
        return [t.strip() for t in out.texts], np.asarray(out.lengths)
