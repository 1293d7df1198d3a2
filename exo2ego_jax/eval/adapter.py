"""The interface between the evaluation harness and a model.

Methods implement these with their real models (greedy KV-cache generation, log-likelihood of
option continuations, text-video similarity) and expose a factory
`eval_model(workdir) -> adapter` of the method object (exo2ego_jax/methods/__init__.py; or any
"module:function" named by `config.eval.adapter`). Prompts are plain user-turn text: the adapter
applies its chat template and inserts its video placeholder. Calls are batched by the runner
(`config.eval.batch_size`; the last batch is padded to full size so jitted shapes stay static).
"""
from __future__ import annotations

import importlib
from typing import Any, Protocol, runtime_checkable

import numpy as np

from exo2ego_jax import methods as methods_lib
from exo2ego_jax.eval.records import VideoRef


@runtime_checkable
class MCQModel(Protocol):
    """Answers multiple-choice questions about videos."""

    def generate(self, prompts: list[str], videos: list[VideoRef]) -> list[str]:
        """Greedy-decoded answer text, one per prompt."""

    def option_loglik(self, prompts: list[str], videos: list[VideoRef], options: list[list[str]]) -> list[list[float]]:
        """Sum of log-probabilities of each option continuation given prompt + video."""


@runtime_checkable
class VideoTextModel(Protocol):
    """Scores texts against videos (EgoMCQ retrieval, Charades-Ego zero-shot classification).

    An adapter may also define `pair_scores(texts, videos) -> np.ndarray [N]` (text i with video
    i only); the runner then uses it for EgoMCQ instead of the full [texts, videos] matrix, which
    matters for models that score each pair with a forward pass (an MLLM's caption likelihood).
    """

    def text_video_scores(self, texts: list[str], videos: list[VideoRef]) -> np.ndarray:
        """[len(texts), len(videos)] similarity scores (higher = more similar)."""


def resolve(spec: str) -> Any:
    """'package.module:attr' -> the attribute, with an error naming what failed."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"expected 'package.module:function', got {spec!r}")
    module = importlib.import_module(module_name)
    try:
        return getattr(module, attr)
    except AttributeError:
        raise AttributeError(f"module {module_name!r} has no {attr!r} (from {spec!r})") from None


def build_adapter(config, workdir: str) -> Any:
    """The adapter named by `config.eval.adapter`, else the method's `eval_model(workdir)`."""
    spec = config.eval.get("adapter")
    if not spec:  # the method's own adapter
        return methods_lib.build(config).eval_model(workdir)
    try:
        factory = resolve(spec)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"cannot build the evaluation model from {spec!r} ({e}); set --config.eval.adapter="
                         "'module:function' returning an MCQModel / VideoTextModel, or --config.method") from e
    return factory(config, workdir)
