"""Lazy safetensors reading, sharded loading into NNX models, and saving back.

Why a small reader of our own instead of ``safetensors.safe_open(framework="numpy")``: the numpy
backend of safetensors cannot return bfloat16 tensors, and HF checkpoints are mostly bf16. The
format is trivial (8-byte header length, JSON header, raw little-endian data), so we memory-map
each file and hand out numpy views; only the pages a caller slices are ever read from disk.

Loading (``load_params``) is driven by a *mapping*: ``{our_param_path: source}`` where a source is
one of

* ``Src(key, transform)``: one checkpoint tensor, optionally transformed (``Transpose``,
  ``Reshape``, ``PermuteQK``, ``Chain`` ...);
* ``Src([key_layer0, key_layer1, ...], transform)``: per-layer tensors stacked on a new leading
  axis (our ``layers`` scan axis); each transform applies to one layer's tensor;
* a plain callable ``fn(reader) -> np.ndarray`` (read fully on the host: for small tensors only).

Each parameter is built with ``jax.make_array_from_callback`` into its target ``NamedSharding``,
so each device reads only the layers/rows of its own shard and no process holds a full host copy
of a large model.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import jax
import ml_dtypes
import numpy as np
from flax import nnx

from exo2ego_jax.parallel import rules as rules_lib

# Sources and transforms live in sources.py; re-exported so mappings only import this module.
from exo2ego_jax.weights.sources import (  # noqa: F401
    Chain, Fn, PermuteQK, Reader, Reshape, Source, Src, StackedShapeError, Transform, Transpose, stacked)

log = logging.getLogger(__name__)

_DTYPES: dict[str, Any] = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
    "BOOL": np.bool_, "F8_E4M3": ml_dtypes.float8_e4m3fn, "F8_E5M2": ml_dtypes.float8_e5m2,
}
_NAMES = {np.dtype(v): k for k, v in _DTYPES.items()}


class CheckpointReader:
    """Lazily reads tensors from one or more safetensors files (memory-mapped)."""

    def __init__(self, path: str, files: Sequence[str]):
        self.path = path
        self._entries: dict[str, tuple[str, dict]] = {}
        self._maps: dict[str, np.memmap] = {}
        self._offsets: dict[str, int] = {}
        self.metadata: dict[str, str] = {}
        for f in files:
            with open(f, "rb") as fh:
                n = int.from_bytes(fh.read(8), "little")
                header = json.loads(fh.read(n))
            self._offsets[f] = 8 + n
            self.metadata.update(header.pop("__metadata__", None) or {})
            for k, info in header.items():
                if info["dtype"] not in _DTYPES:
                    raise ValueError(f"{f}: tensor {k!r} has dtype {info['dtype']}, which we cannot "
                                     f"read (supported: {sorted(_DTYPES)}).")
                self._entries[k] = (f, info)

    def keys(self) -> list[str]:
        return list(self._entries)

    def __contains__(self, key: str) -> bool:
        return key in self._entries

    def _info(self, key: str) -> tuple[str, dict]:
        try:
            return self._entries[key]
        except KeyError:
            raise KeyError(f"{self.path}: no tensor {key!r} in the checkpoint "
                           f"({len(self._entries)} keys, e.g. {list(self._entries)[:5]}).") from None

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self._info(key)[1]["shape"])

    def dtype(self, key: str) -> np.dtype:
        return np.dtype(_DTYPES[self._info(key)[1]["dtype"]])

    def get(self, key: str, index: Any = None) -> np.ndarray:
        """The tensor (a read-only memory-mapped view; ``index`` slices before reading)."""
        f, info = self._info(key)
        if f not in self._maps:
            self._maps[f] = np.memmap(f, dtype=np.uint8, mode="r")
        start, end = info["data_offsets"]
        base = self._offsets[f]
        raw = self._maps[f][base + start: base + end]
        arr = raw.view(_DTYPES[info["dtype"]]).reshape(info["shape"])
        return arr if index is None else arr[index]


def open_checkpoint(path: str) -> CheckpointReader:
    """Opens a HF checkpoint: a directory (model.safetensors or *.safetensors.index.json) or a file."""
    path = os.fspath(path)
    if os.path.isdir(path):
        indexes = sorted(f for f in os.listdir(path) if f.endswith(".safetensors.index.json"))
        if indexes:
            with open(os.path.join(path, indexes[0])) as fh:
                weight_map = json.load(fh)["weight_map"]
            files = sorted({os.path.join(path, f) for f in weight_map.values()})
        else:
            files = sorted(os.path.join(path, f) for f in os.listdir(path) if f.endswith(".safetensors"))
        if not files:
            raise FileNotFoundError(f"{path}: no model.safetensors or *.safetensors.index.json here; "
                                    "pass a HF checkpoint directory or a .safetensors file.")
        return CheckpointReader(path, files)
    if path.endswith(".index.json"):
        return open_checkpoint(os.path.dirname(path) or ".")
    if path.endswith(".gguf"):
        raise ValueError(f"{path} is a GGUF file, not safetensors: open it with "
                         "exo2ego_jax.weights.gguf.open_gguf, or load a decoder with "
                         "exo2ego_jax.weights.llm_weights.load_llm / load_llm_params.")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: checkpoint not found.")
    return CheckpointReader(path, [path])


# ----------------------------------------------------------------------------- loading


def param_paths(model: nnx.Module) -> dict[str, nnx.Variable]:
    """Every ``nnx.Param`` of ``model`` by its '/'-joined path."""
    flat = nnx.to_flat_state(nnx.state(model, nnx.Param))
    return {"/".join(str(p) for p in path): var for path, var in flat}


def logical_axes(var: nnx.Variable) -> tuple | None:
    """A parameter's logical axis names (flax 0.12 calls the metadata ``out_sharding``)."""
    meta = var.get_metadata()
    return meta.get("out_sharding", meta.get("sharding"))


def _target_sharding(var: nnx.Variable, value: Any, mesh, rules) -> jax.sharding.Sharding:
    if mesh is not None:
        spec = rules_lib.logical_to_spec(logical_axes(var), value.shape, mesh, rules or rules_lib.RULES)
        return jax.sharding.NamedSharding(mesh, spec)
    sharding = getattr(value, "sharding", None)
    if isinstance(sharding, jax.sharding.Sharding):
        return sharding
    return jax.sharding.SingleDeviceSharding(jax.local_devices()[0])


class _TrackingReader:
    """Wraps a reader and records which keys a callable source touched."""

    def __init__(self, reader: Reader):
        self._r, self.used, self.path = reader, set(), reader.path

    def keys(self):
        return self._r.keys()

    def shape(self, key):
        self.used.add(key)
        return self._r.shape(key)

    def dtype(self, key):
        return self._r.dtype(key)

    def get(self, key, index=None):
        self.used.add(key)
        return self._r.get(key, index)

    def __contains__(self, key):
        return key in set(self._r.keys())


def load_params(
    model: nnx.Module,
    reader: Reader,
    mapping: Mapping[str, Source],
    *,
    mesh: jax.sharding.Mesh | None = None,
    rules: Sequence[tuple[str, Any]] | None = None,
    strict: bool = True,
    ignore_unexpected: Iterable[str] = (),
    prefix: str = "",
) -> nnx.Module:
    """Fills every ``nnx.Param`` of ``model`` from ``reader`` following ``mapping``, in place.

    Args:
      model: the module (may be abstract, from ``nnx.eval_shape``); its params define target
        shapes and dtypes.
      reader: ``open_checkpoint(...)`` (or a GGUF reader).
      mapping: ``{param_path: Src | fn(reader)}``; paths are relative to ``prefix``.
      mesh: if given, each param goes to ``NamedSharding(mesh, logical axes -> rules)``; otherwise it
        keeps the sharding of its current value (or the first local device).
      rules: logical-axis rules (``[(logical, (mesh_axis, ...)), ...]``); default
        ``exo2ego_jax.parallel.rules.RULES``.
      strict: error on checkpoint keys no source reads (besides ``ignore_unexpected`` regexes).
      prefix: only params under this path prefix are loaded (e.g. ``"llm/"``).

    Raises:
      ValueError: one error listing all missing, unexpected and mis-shaped keys.
    """
    params = {p[len(prefix):]: v for p, v in param_paths(model).items() if p.startswith(prefix)}
    ckpt_keys = set(reader.keys())
    missing, bad_shape, used = [], [], set()
    plan: list[tuple[str, nnx.Variable, Source, tuple]] = []
    tracker = _TrackingReader(reader)
    eager: dict[str, np.ndarray] = {}
    for path, var in params.items():
        src = mapping.get(path)
        if src is None:
            missing.append(f"{prefix}{path}: no entry in the mapping")
            continue
        value = var.get_value() if hasattr(var, "get_value") else var.value
        want = tuple(value.shape)
        if isinstance(src, Src):
            absent = [k for k in src.keys if k not in ckpt_keys]
            used.update(src.keys)
            if absent:
                missing.append(f"{prefix}{path}: checkpoint lacks {absent[:3]}"
                               + (f" (+{len(absent) - 3} more)" if len(absent) > 3 else ""))
                continue
            try:
                got = src.shape(reader)
            except StackedShapeError as e:
                bad_shape.append(f"{prefix}{path}: expected {want}; {e.describe(want[1:])}")
                continue
            except (ValueError, IndexError) as e:  # layers disagree, or a transform does not fit the rank
                bad_shape.append(f"{prefix}{path}: expected {want}; {type(e).__name__}: {e} "
                                 f"(from {_describe(src)})")
                continue
        else:
            try:
                arr = np.asarray(src(tracker))
            except KeyError as e:
                missing.append(f"{prefix}{path}: {e}")
                continue
            eager[path] = arr
            got = arr.shape
        if got != want:
            bad_shape.append(f"{prefix}{path}: expected {want}, checkpoint gives {got} "
                             f"(from {_describe(src)})")
            continue
        plan.append((path, var, src, want))
    used |= tracker.used
    extra = [p for p in mapping if p not in params]
    ignore = [re.compile(r) for r in ignore_unexpected]
    unexpected = sorted(k for k in ckpt_keys - used if not any(r.search(k) for r in ignore)) if strict else []
    if missing or bad_shape or unexpected or extra:
        lines = [f"Cannot load {reader.path} into {type(model).__name__}:"]
        for title, items in (("missing", missing), ("mis-shaped", bad_shape),
                             ("unexpected checkpoint keys (read by no mapping entry)", unexpected),
                             ("mapping entries for params the model lacks", extra)):
            if items:
                lines.append(f"  {title} ({len(items)}):")
                lines += [f"    {s}" for s in items[:50]]
                if len(items) > 50:
                    lines.append(f"    ... and {len(items) - 50} more")
        lines.append("Check that the checkpoint matches the config (layers, sizes, tied embeddings, biases, "
                     "vocabulary). An unexpected key that is a weight of this model means the config does not "
                     "describe the checkpoint: skipping it gives wrong outputs. Use ignore_unexpected=[regex] only "
                     "for tensors of other models stored in the same file (e.g. a vision tower).")
        raise ValueError("\n".join(lines))

    for path, var, src, want in plan:
        value = var.get_value() if hasattr(var, "get_value") else var.value
        dtype = value.dtype
        sharding = _target_sharding(var, value, mesh, rules)
        if path in eager:
            host = eager[path]
            cb = lambda idx, host=host, dtype=dtype: np.asarray(host[idx], dtype=dtype)  # noqa: E731
        else:
            cb = lambda idx, src=src, dtype=dtype: np.asarray(src.read(reader, idx), dtype=dtype)  # noqa: E731
        var.set_value(jax.make_array_from_callback(want, sharding, cb))
    return model


def _describe(src: Source) -> str:
    if isinstance(src, Src):
        k = src.keys
        return k[0] if len(k) == 1 else f"{len(k)} stacked keys {k[0]} ..."
    return getattr(src, "__name__", repr(src))


# ----------------------------------------------------------------------------- saving


def _write_file(path: str, tensors: Mapping[str, np.ndarray], metadata: Mapping[str, str] | None):
    header: dict[str, Any] = {}
    if metadata:
        header["__metadata__"] = dict(metadata)
    offset = 0
    arrays = []
    for k, v in tensors.items():
        v = np.ascontiguousarray(v)
        if v.dtype not in _NAMES:
            raise ValueError(f"{path}: tensor {k!r} has dtype {v.dtype}, not storable in safetensors.")
        header[k] = {"dtype": _NAMES[v.dtype], "shape": list(v.shape),
                     "data_offsets": [offset, offset + v.nbytes]}
        offset += v.nbytes
        arrays.append(v)
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the format pads the header to 8 bytes
    with open(path, "wb") as fh:
        fh.write(len(raw).to_bytes(8, "little"))
        fh.write(raw)
        for v in arrays:
            fh.write(memoryview(v.reshape(-1).view(np.uint8)))


def save_safetensors(
    tensors: Mapping[str, np.ndarray],
    directory: str,
    max_shard_bytes: int = 5 * 2**30,
    metadata: Mapping[str, str] | None = None,
) -> list[str]:
    """Writes ``tensors`` as HF safetensors into ``directory``; returns the files written.

    One ``model.safetensors`` when everything fits in ``max_shard_bytes``, else
    ``model-0000i-of-0000n.safetensors`` shards plus ``model.safetensors.index.json``.
    """
    os.makedirs(directory, exist_ok=True)
    metadata = {"format": "pt", **(metadata or {})}
    shards: list[dict[str, np.ndarray]] = [{}]
    size = 0
    for k, v in tensors.items():
        v = np.asarray(v)
        if shards[-1] and size + v.nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][k] = v
        size += v.nbytes
    if len(shards) == 1:
        out = os.path.join(directory, "model.safetensors")
        _write_file(out, shards[0], metadata)
        return [out]
    n = len(shards)
    files, weight_map = [], {}
    for i, shard in enumerate(shards):
        name = f"model-{i + 1:05d}-of-{n:05d}.safetensors"
        _write_file(os.path.join(directory, name), shard, metadata)
        files.append(os.path.join(directory, name))
        weight_map.update({k: name for k in shard})
    total = sum(np.asarray(v).nbytes for v in tensors.values())
    with open(os.path.join(directory, "model.safetensors.index.json"), "w") as fh:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, fh, indent=2)
    return files
