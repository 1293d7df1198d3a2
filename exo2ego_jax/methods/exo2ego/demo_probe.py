"""What a trained demo stage recognises: teacher-forced caption accuracy per word class.

The demo's transfer can only show if the stage-1 demonstrator names, from exo clips, what the
captions name (object colour and shape, verb). This probe feeds held-out captions with their clips
and reports next-token accuracy on colour / shape / verb / hand words (and everything else), for
the exo view (stage-1 models) or the learner's ego input (later stages).

    python -m exo2ego_jax.methods.exo2ego.demo_probe --workdir DIR --variant a_exo2ego --stage stage1 \
        [--config_arg seeds=1] [--split val] [--seed 0]
"""
from __future__ import annotations

import argparse
import json
import os
from typing import Any

import numpy as np
from exo2ego_jax.data import text as text_lib
from exo2ego_jax.methods.exo2ego import data as data_lib
from exo2ego_jax.methods.exo2ego import demo
from exo2ego_jax.methods.exo2ego import pipeline as pipeline_lib
from exo2ego_jax.methods.exo2ego.model import tokens_per_video
from exo2ego_jax.methods.exo2ego.eval import load_learner
from exo2ego_jax import config_lib

WORD_CLASSES = ("colour", "shape", "verb", "hand", "other")
VERBS_3P = ("picks", "puts", "moves", "opens", "closes", "pours", "shakes")
VERB_STEMS = ("pick", "put", "move", "open", "close", "pour", "shake")  # tokenizer stems=True


def word_class(word: str, colours: set[str], shapes: set[str]) -> str:
    w = word.lower()
    if w in colours:
        return "colour"
    if w in shapes:
        return "shape"
    if w in VERBS_3P or w in VERB_STEMS:
        return "verb"
    if w in ("left", "right"):
        return "hand"
    return "other"


def caption_probe(config, workdir: str, *, variant: str, stage: str, seed: int = 0, split: str = "val",
                  exo_view: int = 1, max_clips: int = 256, batch: int = 16) -> dict[str, Any]:
    """Per-word-class caption token accuracy of `workdir/seed<seed>/<variant>/<stage>` on `split`.

    `config` is the demo config (configs/demo.py) the run used. Stage-1 models see exo view
    `exo_view` of each clip; the others see the ego clip as the learner does (concat(x, F(x)) etc.).
    Returns {class: {"accuracy": %, "tokens": n}} plus "chance_colour" (1 / number of colours).
    """
    import jax
    import jax.numpy as jnp

    paths = demo._prepare(config, workdir)
    run_dir = os.path.join(workdir, f"seed{seed}", variant)
    if not pipeline_lib.is_done(os.path.join(run_dir, stage)):
        raise FileNotFoundError(f"{run_dir}/{stage}: no finished stage to probe (run the demo first)")
    cfg = pipeline_lib.resolve_stage(demo._pipeline(config, variant, paths, seed), stage, run_dir)
    model, tok = load_learner(cfg, os.path.join(run_dir, stage))
    arr = data_lib.load_arrays(paths["clips"])
    with open(os.path.join(paths["world"], "synthetic_meta.json")) as f:
        world_cfg = json.load(f)["config"]
    colours, shapes = set(world_cfg["colours"]), set(world_cfg["shapes"])
    sel = np.nonzero(arr["split"] == split)[0][:max_clips]
    sel = sel[: len(sel) - len(sel) % batch]  # one compiled batch shape
    if not len(sel):
        raise ValueError(f"{paths['clips']}: fewer than {batch} {split!r} clips to probe")
    k = tokens_per_video(cfg)
    exo = cfg.exo2ego.stage == 1

    @jax.jit
    def logits_fn(model, ids, mask, pix):
        if exo:
            vis = model.exo.tokens(model.exo.patches(pix))
        else:
            x, _ = model.space_features(model.ego, pix)
            vis = model.learner_tokens(x, model.apply_map("f", x))
        return model.llm_logits(ids, mask, vis.reshape(ids.shape[0], -1, vis.shape[-1]))

    hits = {c: [0, 0] for c in WORD_CLASSES}
    for s in range(0, len(sel), batch):
        idx = sel[s:s + batch]
        enc = text_lib.stack([data_lib.encode(tok, data_lib.CAPTION_PROMPT, str(arr["text"][i]),
                                              max_len=cfg.data.max_len, num_visual_tokens=k) for i in idx])
        frames = arr["exo"][idx, exo_view] if exo else arr["ego"][idx]
        pix = data_lib.normalise(frames, arr["mean"], arr["std"])[:, None]
        logits = logits_fn(model, jnp.asarray(enc["input_ids"]), jnp.asarray(enc["attention_mask"]),
                           jnp.asarray(pix))
        pred = np.asarray(jnp.argmax(logits[:, :-1], -1))
        labels = enc["labels"][:, 1:]
        for r, t in zip(*np.nonzero(labels != text_lib.IGNORE_INDEX)):
            word = tok.convert_ids_to_tokens(int(labels[r, t])).lstrip("Ġ▁")
            h = hits[word_class(word, colours, shapes)]
            h[0] += int(pred[r, t] == labels[r, t])
            h[1] += 1
    out: dict[str, Any] = {c: {"accuracy": 100.0 * a / max(n, 1), "tokens": n} for c, (a, n) in hits.items()}
    out["chance_colour"] = 100.0 / len(colours)
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", required=True, help="the demo's --workdir")
    p.add_argument("--config_arg", default=None, help="the configs/demo.py arg the run used (e.g. seeds=1)")
    p.add_argument("--variant", default="a_exo2ego")
    p.add_argument("--stage", default="stage1")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--split", default="val")
    a = p.parse_args(argv)
    config = config_lib.load(os.path.join(os.path.dirname(__file__), "..", "..", "..", "configs", "demo.py"), a.config_arg)
    res = caption_probe(config, a.workdir, variant=a.variant, stage=a.stage, seed=a.seed, split=a.split)
    print(json.dumps({k: ({"accuracy": round(v["accuracy"], 1), "tokens": v["tokens"]} if isinstance(v, dict)
                          else round(v, 1)) for k, v in res.items()}))


if __name__ == "__main__":
    main()
