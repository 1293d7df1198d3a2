"""Preprocessing numbers of a vision tower, read from a HF ``preprocessor_config.json``.

CLIP (openai/clip-vit-large-patch14-336): resize shortest edge to 336 (bicubic), centre-crop
336x336, rescale by 1/255, normalise with the OpenAI CLIP mean/std.
SigLIP (google/siglip-so400m-patch14-384): resize to 384x384 (bicubic), no crop, rescale 1/255,
mean = std = 0.5. The numbers are only read here; ``data/video.py`` applies them in numpy.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

from exo2ego_jax.hf_json import read_json_config

# OpenAI CLIP normalisation constants (CLIPImageProcessor defaults).
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# PIL resampling ids as HF stores them.
RESAMPLE_NAMES = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}


@dataclasses.dataclass(frozen=True)
class PreprocessConfig:
    """How frames become tower input: resize -> (centre crop) -> rescale -> normalise."""

    # Resize target: ("shortest_edge", n) keeps the aspect ratio; ("exact", (h, w)) squashes.
    resize_mode: str = "shortest_edge"
    resize: int | tuple[int, int] = 336  # CLIP ViT-L/14-336 shortest edge
    crop: tuple[int, int] | None = (336, 336)  # centre crop (h, w), None = no crop
    resample: str = "bicubic"  # CLIPImageProcessor resample=3
    rescale_factor: float = 1 / 255
    image_mean: tuple[float, float, float] = OPENAI_CLIP_MEAN
    image_std: tuple[float, float, float] = OPENAI_CLIP_STD

    @property
    def output_size(self) -> tuple[int, int]:
        """(h, w) of the frames the tower receives."""
        if self.crop is not None:
            return tuple(self.crop)
        if self.resize_mode == "exact":
            return tuple(self.resize)  # type: ignore[arg-type]
        raise ValueError("PreprocessConfig: shortest-edge resize without a crop has no fixed output size; "
                         "set crop or use resize_mode='exact'.")

    @classmethod
    def from_hf(cls, dir_or_dict: str | os.PathLike | Mapping[str, Any]) -> "PreprocessConfig":
        """Reads ``preprocessor_config.json`` from a directory, a file or a dict."""
        hf, where = read_json_config(dir_or_dict, "preprocessor_config.json")
        size = hf.get("size", 224)
        if isinstance(size, int):  # old processors: an int means shortest edge
            mode, resize = "shortest_edge", size
        elif "shortest_edge" in size:
            mode, resize = "shortest_edge", int(size["shortest_edge"])
        elif "height" in size and "width" in size:
            mode, resize = "exact", (int(size["height"]), int(size["width"]))
        else:
            raise ValueError(f"{where}: 'size'={size!r}; expected an int, {{'shortest_edge': n}} or "
                             "{'height': h, 'width': w}.")
        crop = None
        if hf.get("do_center_crop", False):
            c = hf.get("crop_size", resize)
            crop = (c, c) if isinstance(c, int) else (int(c["height"]), int(c["width"]))
        elif mode == "shortest_edge":
            raise ValueError(f"{where}: shortest-edge resize without do_center_crop gives frames of varying "
                             "size; video towers need a fixed size.")
        mean = tuple(float(v) for v in hf.get("image_mean", OPENAI_CLIP_MEAN))
        std = tuple(float(v) for v in hf.get("image_std", OPENAI_CLIP_STD))
        if len(mean) != 3 or len(std) != 3:
            raise ValueError(f"{where}: image_mean/image_std need 3 values, got {mean} / {std}.")
        resample = hf.get("resample", 3)
        return cls(
            resize_mode=mode, resize=resize, crop=crop,
            resample=RESAMPLE_NAMES.get(resample, str(resample)) if isinstance(resample, int) else str(resample),
            rescale_factor=float(hf.get("rescale_factor", 1 / 255)) if hf.get("do_rescale", True) else 1.0,
            image_mean=mean if hf.get("do_normalize", True) else (0.0, 0.0, 0.0),
            image_std=std if hf.get("do_normalize", True) else (1.0, 1.0, 1.0),
        )
