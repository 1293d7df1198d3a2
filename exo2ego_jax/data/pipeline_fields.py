"""The fields of `config.data` that the Grain pipelines (data/pipeline.py) read, with defaults.

Kept apart from the pipelines so that building a config imports neither Grain nor video decoding.
"""
from __future__ import annotations

import ml_collections

from exo2ego_jax.data import instructions
from exo2ego_jax.data.preprocess_config import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD


def pipeline_config(**overrides) -> ml_collections.ConfigDict:
    """Default pipeline fields of ``config.data`` (method configs start from this)."""
    d = ml_collections.ConfigDict()
    d.records_dir = ""  # output of the build_records job (shards + records.json)
    d.instructions = ()  # LLaVA/VideoLLaMA2 JSON files (instruction_dataset)
    d.data_folder = ""  # media paths of instruction JSON are relative to this ('' = JSON's dir)
    d.tokenizer = ""  # HF tokenizer dir (or .gguf file) for chat-template tokenisation
    d.num_frames = 16  # Exo2Ego / VideoLLaMA2: 16 frames per clip (cap when sampling="fps")
    d.sampling = "uniform"  # "uniform": num_frames evenly spaced; "fps": sample_fps up to num_frames
    d.sample_fps = 1.0  # Ego2ExoVLM: 1 fps (with num_frames=180 as the cap)
    d.image_size = 336  # CLIP ViT-L/14-336 input size (SigLIP-so400m: 384)
    d.image_mean = OPENAI_CLIP_MEAN  # tower normalisation mean (from its preprocessor_config.json)
    d.image_std = OPENAI_CLIP_STD  # tower normalisation std
    d.resize_mode = "center_crop"  # CLIP: shorter side + centre crop; SigLIP: "resize" (squash)
    # Not normalised on the host: the tower normalises uint8 on the device (4x fewer bytes to build and copy).
    d.pixel_dtype = "uint8"  # "uint8" (resized/cropped RGB) or "float32" (normalised here with image_mean/std)
    d.max_len = 2048  # tokens per example after placeholder expansion (longer ones are skipped)
    d.num_visual_tokens = 1152  # Exo2Ego STC: 16 frames -> 8x12x12 visual tokens per <video>
    d.num_probes = 0  # Ego2ExoVLM EAVT: 16 <probe> tokens (0: no probes)
    d.system_prompt = ""  # optional system turn ('' = the template's default)
    d.caption_prompts = instructions.CAPTION_TEMPLATES  # user turn of atomic-narration pairs
    d.keystep_prompts = instructions.KEYSTEP_TEMPLATES  # user turn of keystep pairs
    d.kinds = ("atomic", "keystep")  # record kinds to train on
    d.batch_size = 8  # examples per batch of this process
    d.drop_remainder = False  # drop the last partial batch instead of padding it (example_mask=0)
    d.shuffle = True  # seeded global shuffle, different every epoch
    d.seed = 0  # data order and prompt choice
    d.num_epochs = 0  # passes over the data (0: repeat forever)
    d.worker_count = 0  # grain worker processes (0: in-process; tests use 0)
    d.worker_buffer_size = 2  # batches each worker prefetches
    d.read_threads = 4  # threads building batches in-process (each builds whole batches)
    d.max_skip_fraction = 0.05  # stop when more than this fraction of inputs was skipped
    d.min_seen_for_check = 200  # check the fraction only after this many inputs (not on example 1)
    d.update(overrides)
    return d
