"""Plain vs chunked LM-head loss in our train step, interleaved in one process (same shapes).

    python bench/loss_chunk.py [--kind vlm|llm] [--steps 10] [--chunks 0,1024,2048]

Uses bench/train_vs_torch.py's models (VLM: 6-layer SmolLM2 slice, vocab 49152, batch 4,
64 text + 128 visual tokens). Chunk 0 = plain cross-entropy on [B, T, V] logits. Prints the
median (min/max) seconds per step of each; the rounds alternate so machine load hits all alike.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import train_vs_torch as tvt  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kind", default="vlm", choices=("vlm", "llm"))
    p.add_argument("--llm-layers", type=int, default=6)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--chunks", default="0,512,2048")
    args = p.parse_args()
    import jax

    layers = 6 if args.kind == "vlm" else args.llm_layers
    runs = {}
    for c in (int(x) for x in args.chunks.split(",")):
        model, step, state, frozen, other = tvt.build_ours(args.kind, layers, "chunked" if c else "plain", c or 1,
                                                           "none")
        video = model.cfg.video_token_id if args.kind == "vlm" else -1
        del model
        runs[c] = [step, state, frozen, other]
    batches = [{k: jax.device_put(v) for k, v in b.items()} for b in tvt.make_batches(args.kind, 4, video)]
    times = {c: [] for c in runs}
    losses = {c: [] for c in runs}
    for i in range(args.steps + 1):
        for c, r in runs.items():
            t = time.perf_counter()
            r[1], m = r[0](r[1], r[2], r[3], batches[i % len(batches)])
            losses[c].append(float(m["loss"]))
            if i:  # step 0 compiles
                times[c].append(time.perf_counter() - t)
    load = os.getloadavg()[0]
    for c in runs:
        xs = times[c]
        print(f"{args.kind} chunk={c or 'plain':>6}: {statistics.median(xs):.3f} s/step "
              f"(min {min(xs):.3f}, max {max(xs):.3f}; {len(xs)} steps) final loss {losses[c][-1]:.6f} "
              f"[load {load:.1f}]")


if __name__ == "__main__":
    main()
