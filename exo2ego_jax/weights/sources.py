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


class StackedShapeError(ValueError):
    """Per-layer tensors of one stacked ``Src`` have different shapes (some layers mis-shaped).

    ``shapes`` maps each per-layer key to its (transformed) shape; ``describe(want)`` names the
    layers that differ from the wanted per-layer shape (default: the most common one).
    """

    def __init__(self, shapes: dict[str, tuple[int, ...]]):
        self.shapes = shapes
        super().__init__(self.describe())

    def describe(self, want: tuple[int, ...] | None = None) -> str:
        values = list(self.shapes.values())
        ref = tuple(want) if want is not None else max(values, key=values.count)
        odd = [f"{k} -> {s}" for k, s in self.shapes.items() if s != ref]
        return (f"{len(odd)} of {len(values)} stacked layers differ from {ref}: " + ", ".join(odd[:5])
                + (f" (+{len(odd) - 5} more)" if len(odd) > 5 else ""))


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
        shapes = [self._one_shape(reader, k) for k in self.key]
        if len(set(shapes)) != 1:
            # load_params names the odd layers against the wanted shape, so one bad layer is easy to find.
            raise StackedShapeError(dict(zip(self.key, shapes)))
        return (len(self.key), *shapes[0])

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
