"""Ego2ExoVLM as a method for the one trainer: `Ego2Exo(config)`.

The student sees an EXO video + a teacher question and learns the ego teacher's answer with
next-token cross-entropy on the answer tokens only (sequence-level distillation across views).
Its vision tower is frozen; LoRA adapters, the projector, the EAVT modules, the probe vectors and
the probe projector train (groups in config.student_groups). The same model without probes
(config.model.num_probes = 0) is the teacher of the labelling job (label.py) and the demo's
baselines.
"""
from __future__ import annotations

import dataclasses
import logging

import jax
import jax.numpy as jnp
from flax import nnx

from exo2ego_jax import config_lib
from exo2ego_jax.data import instructions, pipeline
from exo2ego_jax.data import text as text_lib
from exo2ego_jax.methods import common
from exo2ego_jax.methods.ego2exo import infer
from exo2ego_jax.methods.ego2exo import videollama3_student as vl3_student
from exo2ego_jax.methods.ego2exo.model import Ego2ExoModel, model_configs
from exo2ego_jax.models import lora as lora_lib
from exo2ego_jax.models.mllm import VideoLLMConfig
from exo2ego_jax.models.videollama3 import VisualInput
from exo2ego_jax.tokenizer import load_tokenizer
from exo2ego_jax.train import losses


def _pixels(batch):
    for key in ("pixels", "exo_pixels", "ego_pixels"):
        if key in batch:
            return batch[key]
    raise KeyError(f"ego2exo: batch has no pixels (expected 'pixels' [B, V, F, H, W, 3]); keys: {sorted(batch)}")


ARCHS = ("videollama3", "llava_video")


class Ego2Exo:
    """The Ego2ExoVLM student (or, with num_probes = 0, the teacher), bound to its config.

    config.model.arch: "videollama3" (the paper's base, methods/ego2exo/videollama3_student.py) or
    "llava_video" (SigLIP + merge + mlp2x_gelu + Qwen2, model.py; configs without the field)."""

    def __init__(self, config):
        self.config = config
        self.arch = config.model.get("arch", "llava_video")
        if self.arch not in ARCHS:
            raise ValueError(f"config.model.arch={self.arch!r}: the Ego2ExoVLM student is one of {ARCHS}")

    def build_model(self, rngs: nnx.Rngs):
        """Every parameter the step touches: tower, projector, EAVT + probe projector, LLM (+ LoRA)."""
        config = self.config
        hw = config.hardware
        e = config.ego2exo
        if self.arch == "videollama3":
            model = vl3_student.build_model(config, rngs, dtype=jnp.dtype(hw.compute_dtype),
                                            param_dtype=jnp.dtype(hw.param_dtype), remat_policy=hw.remat,
                                            attention_impl=common.attention_impl(config),
                                            unroll_layers=config_lib.unroll_layers(hw))
            if e.lora_rank > 0:
                lora_lib.apply_lora(model.llm, e.lora_targets, rank=e.lora_rank, alpha=e.lora_alpha,
                                    dropout=e.lora_dropout, rngs=rngs)
            return model
        llm, vision, connector = model_configs(config)
        if hw.remat != "none" and not vision.remat:
            vision = dataclasses.replace(vision, remat=True)
        layers = tuple(config.model.eavt_layers) or None
        cfg = VideoLLMConfig(vision=vision, connector=connector, llm=llm, num_frames=config.data.num_frames,
                             video_token_id=config.model.video_token_id)
        model = Ego2ExoModel(cfg, num_probes=config.model.num_probes, eavt_layers=layers,
                             probe_token_id=config.model.probe_token_id, dtype=jnp.dtype(hw.compute_dtype),
                             param_dtype=jnp.dtype(hw.param_dtype), rngs=rngs, remat_policy=hw.remat,
                             attention_impl=common.attention_impl(config),
                             unroll_layers=config_lib.unroll_layers(hw))
        e = config.ego2exo
        if e.lora_rank > 0:
            lora_lib.apply_lora(model.llm, e.lora_targets, rank=e.lora_rank, alpha=e.lora_alpha,
                                dropout=e.lora_dropout, rngs=rngs)
        return model

    def load_pretrained(self, model: Ego2ExoModel) -> None:
        """HF weights of the LLM / tower / projector; then EAVT and the probe projector are copied
        again from the tower and projector actually used (the trainer applies train.init_from after
        this hook, so a tower coming from init_from is read here first for the copy)."""
        config, m = self.config, self.config.model
        if self.arch == "videollama3":
            if m.checkpoint:
                vl3_student.load_checkpoint(model, m.checkpoint)
                logging.info("ego2exo: VideoLLaMA3 weights read from %s", m.checkpoint)
        else:
            common.load_hf_weights(config, model.llm, towers=[model.vision], connectors=[model.connector])
        if model.eavt is None:
            return
        base = "projector" if self.arch == "videollama3" else "connector"
        if config.train.init_from:
            names = common.load_from_checkpoint(model, config.train.init_from, rf"^(vision|{base})/",
                                                field="config.train.init_from", require=False)
            logging.info("ego2exo: tower/projector for the EAVT copy read from %s (%d arrays)",
                         config.train.init_from, len(names))
        if m.get("checkpoint") or m.get("vision_hf") or m.get("connector_hf") or config.train.init_from:
            model.init_probe_modules()
            logging.info("ego2exo: EAVT modules and probe projector copied from the loaded tower / projector")

    def loss(self, model: Ego2ExoModel, batch: dict[str, jax.Array], rng: jax.Array):
        """Answer-only cross-entropy of the teacher's answer given (exo) video + question."""
        # `rng` draws the LoRA dropout masks (a fresh key every step).
        chunk = self.config.hardware.loss_chunk_size  # 0: plain loss on logits; N: chunked LM head
        if self.arch == "videollama3":
            videos = VisualInput(batch["patches"], batch["grid_hw"], batch["keep"])
            out = model(batch["input_ids"], batch["attention_mask"], videos=videos, dropout_rng=rng,
                        hidden_only=chunk > 0)
        else:
            out = model(batch["input_ids"], _pixels(batch), batch["attention_mask"], batch.get("video_mask"),
                        frame_mask=batch.get("frame_mask"), dropout_rng=rng, hidden_only=chunk > 0)
        loss, n, acc = losses.answer_loss_and_accuracy(
            out, batch["labels"], batch.get("example_mask"),
            head_kernel=model.llm.head_kernel() if chunk else None, chunk_size=chunk)
        # loss_weight: the step weights accumulated micro-batches by their answer tokens (train/step.py).
        return loss, {"answer_tokens": n, "token_accuracy": acc, "loss_weight": n}

    def dataset(self, split: str, process_index: int, process_count: int):
        """The teacher-label LLaVA JSON (config.data.instructions) through the instruction pipeline."""
        del split  # the labels files are the training split; evaluation uses the eval harness
        if not self.config.data.instructions:
            raise ValueError("config.data.instructions is empty: point it at the labelling job's labels.json "
                             "(python -m exo2ego_jax.main --config configs/ego2exo/label.py ...)")
        cfg = common.local_data_config(self.config, process_count)
        if self.arch == "videollama3":
            mcfg = vl3_student.model_config(self.config)
            tok = load_tokenizer(cfg.tokenizer or self.config.model.checkpoint, extra_special_tokens=())
            return vl3_student.dataset(cfg, mcfg, probe_token_id=self.config.model.probe_token_id,
                                       video_token=tok.convert_ids_to_tokens(mcfg.video_token_id),
                                       process_index=process_index, process_count=process_count)
        tok = pipeline.load_tokenizer(cfg)
        vocab_size = model_configs(self.config)[0].vocab_size
        placeholders = (self.config.model.video_token_id, self.config.model.probe_token_id)
        text_lib.check_tokenizer_fits(tok, vocab_size, placeholder_ids=placeholders)
        ds = pipeline.instruction_dataset(cfg, tok, process_index=process_index, process_count=process_count)
        return ds.map(text_lib.IdsInVocabulary(vocab_size, placeholders))

    def num_train_examples(self) -> int:
        d = self.config.data
        return sum(len(instructions.read_llava_json(p, data_folder=d.data_folder or None)) for p in d.instructions)

    tokens_in_batch = staticmethod(common.tokens_in_batch)

    def flops_per_example(self) -> float:
        """Training FLOPs of one example: 6 x trained-path params x tokens (LLM), 2x for the frozen tower."""
        if self.arch == "videollama3":
            mcfg, d = vl3_student.model_config(self.config), self.config.data
            tower = 2.0 * common.vit_params(mcfg.vision) * vl3_student.frame_patches(d) * d.num_frames
            return 6.0 * common.decoder_params(mcfg.llm) * d.max_len + tower
        llm, vision, _ = model_configs(self.config)
        tower = 2.0 * common.vit_params(vision) * vision.num_positions * self.config.data.num_frames
        return 6.0 * common.decoder_params(llm) * self.config.data.max_len + tower

    def eval_model(self, workdir: str):
        """The eval harness's adapter (eval/adapter.py) for the run in config.train.init_from, either
        stack (its saved config says which: infer.runner_from_run)."""
        return infer.adapter_from_config(self.config, workdir)
