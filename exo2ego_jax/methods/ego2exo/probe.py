"""Direct probe: can the Ego2Exo demo's tiny vision tower read a narration attribute (default: which
hand acts) from ego or exo clips of a synthetic world, on held-out takes?

The probe is the demo tower (ViT + 2x2-merge connector, sizes from configs/ego2exo/demo.py) with a
mean-pool + linear head, trained with cross-entropy on one clip per atomic action. It bounds what the
demo's teacher (ego) and students (exo) can learn from video: if the probe is at chance held out, no
amount of labelling transfers the attribute. Numbers measured with it are in docs/ego2exo.md section 3.

    python -m exo2ego_jax.methods.ego2exo.probe --world DIR/world --clips DIR/clips32.npz \
        --view exo --train_view best [--build] [--steps 600]

`--build` writes the world (demo config, `--world_override key=value`) and the clip arrays first.
"""
from __future__ import annotations

import ast
import json
import os
import time
from typing import Any

import numpy as np
from exo2ego_jax.methods.exo2ego import data as exo2ego_data
from exo2ego_jax.methods.exo2ego.model import Encoder
from exo2ego_jax.models import connectors
from exo2ego_jax.models.vit import VisionConfig
from exo2ego_jax import config_lib
from exo2ego_jax.synthetic import world as synthetic


def clip_labels(meta: dict[str, Any], arr: dict[str, np.ndarray], label: str = "hand"
                ) -> tuple[np.ndarray, list[str], np.ndarray]:
    """(class index per clip, class names, best exo view index per clip) for the clip arrays `arr`
    (exo2ego_data.build_arrays order) from the world's synthetic_meta.json."""
    cams = sorted(meta["cameras"]["exo"])
    by_key = {}
    for t in meta["takes"].values():
        for n in t["narrations"]:
            if label not in n:
                raise KeyError(f"synthetic_meta.json: narration {n['index']} of {t['take_name']} has no "
                               f"field {label!r}; fields: {sorted(n)}")
            by_key[(t["take_name"], int(n["index"]))] = (str(n[label]), cams.index(n["best_exo_cam"]))
    keys = list(zip(arr["take"].tolist(), arr["narration"].tolist()))
    y = [by_key[(str(k), int(i))][0] for k, i in keys]
    names = sorted(set(y))
    return (np.array([names.index(v) for v in y], np.int32), names,
            np.array([by_key[(str(k), int(i))][1] for k, i in keys], np.int32))


def probe(arr: dict[str, np.ndarray], meta: dict[str, Any], *, view: str = "exo", train_view: str = "all",
          label: str = "hand", steps: int = 600, batch: int = 16, lr: float = 1e-3, width: int = 32,
          layers: int = 2, patch: int = 8, seed: int = 0) -> dict[str, float]:
    """Trains the probe on train-split clips; returns held-out accuracies (%), plain and class-balanced.

    view: "ego" or "exo"; train_view (exo): "all" = a random one of the exo cameras per example,
    "best" = the camera facing the actor. Exo results are reported on all cameras and on the best one."""
    import jax.numpy as jnp
    import optax
    from flax import nnx
    if view not in ("ego", "exo") or train_view not in ("all", "best"):
        raise ValueError(f"probe: view must be ego|exo and train_view all|best, got {view!r}, {train_view!r}")
    y, names, best = clip_labels(meta, arr, label)
    tr, va = np.where(arr["split"] == "train")[0], np.where(arr["split"] == "val")[0]
    if not len(tr) or not len(va):
        raise ValueError(f"probe: need train and val clips, got {len(tr)} train / {len(va)} val")
    img = arr["ego"].shape[-2]
    vis = VisionConfig(hidden_size=width, intermediate_size=2 * width, num_layers=layers, num_heads=4,
                       image_size=img, patch_size=patch, feature_layer=-1)
    con = connectors.ConnectorConfig(kind="merge_mlp2x_gelu", in_dim=width, out_dim=64, merge_stride=2,
                                     merge_mode="bilinear")

    class Probe(nnx.Module):
        def __init__(self, rngs):
            self.enc = Encoder(vis, con, dtype=jnp.float32, param_dtype=jnp.float32, rngs=rngs)
            self.head = nnx.Linear(64, len(names), rngs=rngs)

        def __call__(self, pixels):
            return self.head(self.enc.tokens(self.enc.patches(pixels)).mean(1))

    model = Probe(nnx.Rngs(seed))
    sched = optax.warmup_cosine_decay_schedule(0.0, lr, max(1, steps // 10), steps)
    opt = nnx.Optimizer(model, optax.adamw(sched), wrt=nnx.Param)

    def pixels(idx, views):
        x = arr["ego"][idx] if view == "ego" else arr["exo"][idx, views]
        return jnp.asarray(exo2ego_data.normalise(x, arr["mean"], arr["std"])[:, None])

    @nnx.jit
    def step(m, o, x, yb):
        def loss_fn(m):
            return optax.softmax_cross_entropy_with_integer_labels(m(x), yb).mean()
        loss, g = nnx.value_and_grad(loss_fn)(m)
        o.update(m, g)
        return loss

    @nnx.jit
    def predict(m, x):
        return m(x).argmax(-1)

    def accuracy(idx, cams) -> tuple[float, float]:
        hits, ys = [], []
        for cam in cams:
            for s in range(0, len(idx), 64):
                b = idx[s:s + 64]
                v = None if cam is None else (best[b] if cam == "best" else np.full(len(b), cam))
                hits.append(np.asarray(predict(model, pixels(b, v))) == y[b])
                ys.append(y[b])
        h, ys = np.concatenate(hits), np.concatenate(ys)
        per_class = [h[ys == k].mean() for k in range(len(names)) if (ys == k).any()]
        return 100.0 * float(h.mean()), 100.0 * float(np.mean(per_class))

    rng = np.random.default_rng(seed)
    n_exo = arr["exo"].shape[1]
    t0 = time.time()
    loss = float("nan")
    for _ in range(steps):
        idx = rng.choice(tr, batch)
        v = None if view == "ego" else (best[idx] if train_view == "best" else rng.integers(0, n_exo, batch))
        loss = float(step(model, opt, pixels(idx, v), jnp.asarray(y[idx])))
    out = {"loss": loss, "seconds": time.time() - t0, "train_clips": len(tr), "val_clips": len(va),
           "val_majority": 100.0 * np.bincount(y[va]).max() / len(va)}
    modes = {"ego": [None]} if view == "ego" else {"all": list(range(n_exo)), "best": ["best"]}
    for name, cams in modes.items():
        out[f"train/{name}"], _ = accuracy(tr[:200], cams)
        out[f"val/{name}"], out[f"val_balanced/{name}"] = accuracy(va, cams)
    return out


def build(world: str, clips: str, *, takes: int, image: int, frames: int, overrides: dict[str, Any]) -> None:
    """Writes the demo config's world (plus `overrides`) at `world` and its action clips at `clips`."""
    # exo2ego_jax/methods/ego2exo/probe.py -> the repository root, three packages up.
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    cfg_path = os.path.join(repo, "configs", "ego2exo", "demo.py")
    wc = config_lib.load(cfg_path, f"takes={takes}").demo.world  # a full world_config()
    with wc.unlocked():
        wc.update(overrides)
    if not os.path.exists(os.path.join(world, synthetic.META_FILE)):
        synthetic.write_world(wc, world)
    exo2ego_data.build_arrays(world, clips, num_frames=frames, image_size=image, mean=(0.5,) * 3, std=(0.5,) * 3)


def main(argv=None) -> None:
    import argparse
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--world", required=True, help="synthetic world directory (with synthetic_meta.json)")
    p.add_argument("--clips", required=True, help=".npz of action clips (exo2ego_data.build_arrays)")
    p.add_argument("--build", action="store_true", help="write the world and the clips first")
    p.add_argument("--takes", type=int, default=64)
    p.add_argument("--image", type=int, default=32)
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--world_override", action="append", default=[], help="key=python-literal")
    p.add_argument("--view", default="exo")
    p.add_argument("--train_view", default="all")
    p.add_argument("--label", default="hand")
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--patch", type=int, default=8)
    a = p.parse_args(argv)
    if a.build:
        build(a.world, a.clips, takes=a.takes, image=a.image, frames=a.frames,
              overrides={k: ast.literal_eval(v) for k, v in (kv.split("=", 1) for kv in a.world_override)})
    with open(os.path.join(a.world, "synthetic_meta.json"), encoding="utf-8") as f:
        meta = json.load(f)
    res = probe(exo2ego_data.load_arrays(a.clips), meta, view=a.view, train_view=a.train_view, label=a.label,
                steps=a.steps, width=a.width, patch=a.patch)
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
