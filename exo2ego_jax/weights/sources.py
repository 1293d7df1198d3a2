"""Checkpoint sources for ``safetensors_io.load_params``: which tensor(s) feed a parameter, and how.

A source is ``Src(key_or_per_layer_keys, transform)``; transforms know their output shape so
shapes are checked before anything is read, and ``Src.read(reader, index)`` reads only the
layers / rows of one device's shard.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np


class Reader(Protocol):
    """What ``load_params`` needs from a checkpoint (safetensors or GGUF)."""

    path: str

    def keys(self) -> list[str]: ...
    def shape(self, key: str) -> tuple[int, ...]: ...
    def dtype(self, key: str) -> np.dtype: ...
    def get(self, key: str, index: Any = None) -> np.ndarray: ...



# ----------------------------------------------------------------------------- transforms


class Transform:
    """A per-tensor transform that also knows its output shape (so shapes check without reading)."""

    def shape(self, s: tuple[int, ...]) -> tuple[int, ...]:
        raise NotImplementedError

    def __call__(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError


@dataclasses.dataclass(frozen=True)
class Transpose(Transform):
    """``np.transpose(x, axes)``; default reverses the axes (HF Linear [out, in] -> our [in, out])."""

    axes: tuple[int, ...] | None = None

    def shape(self, s):
        axes = self.axes or tuple(reversed(range(len(s))))
        return tuple(s[a] for a in axes)

    def __call__(self, x):
        return np.transpose(x, self.axes)


@dataclasses.dataclass(frozen=True)
class Reshape(Transform):
    """``x.reshape(shape)``."""

    new_shape: tuple[int, ...]

    def shape(self, s):
        return _resolve_reshape(s, self.new_shape)

    def __call__(self, x):
        return x.reshape(self.new_shape)


def _resolve_reshape(s, new):
    n = math.prod(s)
    if -1 in new:
        known = math.prod(d for d in new if d != -1)
        new = tuple(n // known if d == -1 else d for d in new)
    if math.prod(new) != n:
        raise ValueError(f"cannot reshape {s} to {new}")
    return tuple(new)


@dataclasses.dataclass(frozen=True)
class PermuteQK(Transform):
    """Undoes llama.cpp's Q/K row permutation (its convert script interleaves the rotary halves).

    llama.cpp stores ``w.reshape(h, 2, d/2, ...).swapaxes(1, 2)``; this applies the inverse.
    """

    n_heads: int

    def shape(self, s):
        return tuple(s)

    def __call__(self, x):
        h = self.n_heads
        return x.reshape(h, x.shape[0] // h // 2, 2, *x.shape[1:]).swapaxes(1, 2).reshape(x.shape)


@dataclasses.dataclass(frozen=True)
class Fn(Transform):
    """Any numpy function with an explicit output-shape rule."""

    fn: Callable[[np.ndarray], np.ndarray]
    shape_fn: Callable[[tuple[int, ...]], tuple[int, ...]] = tuple

    def shape(self, s):
        return tuple(self.shape_fn(s))

    def __call__(self, x):
        return self.fn(x)


@dataclasses.dataclass(frozen=True)
class Chain(Transform):
    """Applies transforms left to right."""

    parts: tuple[Transform, ...]

    def shape(self, s):
        for p in self.parts:
            s = p.shape(s)
        return s

    def __call__(self, x):
        for p in self.parts:
            x = p(x)
        return x


@dataclasses.dataclass(frozen=True)
class Src:
    """A checkpoint source: one key, or a list of per-layer keys stacked on a new axis 0."""

    key: str | tuple[str, ...]
    transform: Transform | None = None

    def __post_init__(self):
        if not isinstance(self.key, str):
            object.__setattr__(self, "key", tuple(self.key))

    @property
    def keys(self) -> tuple[str, ...]:
        return (self.key,) if isinstance(self.key, str) else self.key

    def _one_shape(self, reader: Reader, key: str) -> tuple[int, ...]:
        s = tuple(reader.shape(key))
        return self.transform.shape(s) if self.transform else s

    def shape(self, reader: Reader) -> tuple[int, ...]:
        if isinstance(self.key, str):
            return self._one_shape(reader, self.key)
        shapes = {self._one_shape(reader, k) for k in self.key}
        if len(shapes) != 1:
            raise ValueError(f"{reader.path}: stacked keys {self.key[0]}... have different shapes {shapes}")
        return (len(self.key), *shapes.pop())

    def _one(self, reader: Reader, key: str, index: tuple) -> np.ndarray:
        if self.transform is None:
            return np.asarray(reader.get(key, index))
        return np.asarray(self.transform(reader.get(key)))[index]

    def read(self, reader: Reader, index: tuple = ()) -> np.ndarray:
        """The (transformed, stacked) tensor restricted to ``index`` (a tuple of slices)."""
        index = tuple(index)
        if isinstance(self.key, str):
            return self._one(reader, self.key, index)
        first = index[0] if index else slice(None)
        rest = index[1:]
        keys = self.key[first] if isinstance(first, slice) else [self.key[first]]
        out = np.stack([self._one(reader, k, rest) for k in keys])
        return out if isinstance(first, slice) else out[0]


def stacked(template: str, n: int, transform: Transform | None = None) -> Src:
    """``Src`` stacking ``template.format(i=i)`` for i in range(n) (HF per-layer keys)."""
    return Src(tuple(template.format(i=i) for i in range(n)), transform)


Source = Src | Callable[[Reader], np.ndarray]
