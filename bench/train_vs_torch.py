"""Train-step speed: exo2ego_jax vs transformers + torch (eager and torch.compile), same model, same weights.

    python bench/train_vs_torch.py            # VLM and LLM-only, 20 timed steps each (~20 min on 2 cores)
    python bench/train_vs_torch.py --quick    # VLM only, 20 steps, torch.compile skipped (< 3 min)
    python bench/train_vs_torch.py --models llm --steps 30 --loss plain

Models (float32, AdamW + global-norm clipping 1.0, constant LR):
  vlm: CLIP-style ViT (4 layers, width 256, 112 px, patch 28, frozen) on 8 frames -> mlp2x_gelu
       connector -> the first 6 layers of the SmolLM2-135M decoder (vocab 49152, tied head);
       batch 4 x (64 text + 128 visual tokens), loss on the last 32 text tokens.
  llm: the SmolLM2-135M shape (30 layers), batch 4 x 256 tokens, loss on every token.
Ours is built with the project's model code (models/mllm.VideoLLM, models/llm.DecoderLM) and
trained with its step (train/step.make_train_step) and optimizer (train/optim.make_optimizer);
torch side: transformers' CLIPVisionModel + LlamaForCausalLM with our initial weights copied in.
Every implementation starts from the same weights and sees the same batches; the implementations
take turns (rotating the order), so machine load hits all of them alike, and each turn is ``--block``
consecutive steps of which the last is timed: a timed step follows a step of its own, as in a
training loop. (One step per turn timed a step that followed ~10 s of the others' steps: on a VM
whose balloon driver reports free memory to the host, a freed buffer is handed back to the host
after ~2 s, and XLA:CPU's temporaries above 64 MiB, freed after every step, were faulted in from the
host again: 2-5 s of system time in a 30-layer LLM step that takes 0.2 s of it back to back.)
Printed per implementation: median step time with min/max, steps/s, the share of the machine's
measured f32 matmul peak (model matmul FLOPs / step time / peak; the peak is the best 2048^3 GEMM
rate of JAX or torch, measured at the start and again after each model's steps), and the per-step speed ratio ours vs
each torch variant (median and min/max of the paired ratios), and for the LLM the roofline: the ratio
a step would reach if it ran every model FLOP at the measured peak and nothing else (the ceiling of
any implementation's ratio on this machine), the matmul floor: the step's dense matmuls each timed
alone at their shapes and layouts in JAX and in torch (``matmul_bounds.dense_matmul_times``: the bound at
the model's own shapes, with the attention's causal half at the peak), and the kernel floor: those matmuls
plus the attention (forward and backward) and the clipped AdamW update as each library runs them, each
timed alone (``matmul_bounds.kernel_floor``), with the time 1.2x torch eager leaves above ours for the
rest of the step. Losses of the first step must agree (same weights, same batch); the max difference over
all steps is printed.
``--profile DIR`` writes a jax.profiler trace of three of our steps and prints the top XLA ops and the
op time by kind (YNNPACK fusions, XLA loop fusions, Eigen dots: ``op_kind``).

Our settings (each measured in this file's runs or with bench/loss_chunk.py): the decoder layers
run unrolled on CPU (``--layer-loop``, DecoderLM's default there), the chunked LM-head loss skips
chunks without a labelled token, so the VLM (32 labelled of 192 positions per row) uses 128-token
chunks (one of six computed; 1.4x per VLM step vs one 1024-token chunk on a loaded machine) and
the LLM (every position labelled) one 1024-token chunk.
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import re
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # bench/matmul_bounds.py

import numpy as np  # noqa: E402

import matmul_bounds as bounds  # noqa: E402
from exo2ego_jax import config_lib  # noqa: E402

SMOLLM2_135M = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_layers=30, num_heads=9,
                    num_kv_heads=3, head_dim=64, rope_theta=100000.0, rms_norm_eps=1e-5,
                    tie_word_embeddings=True, max_position_embeddings=8192, initializer_range=0.041666)
VIT = dict(hidden_size=256, intermediate_size=1024, num_layers=4, num_heads=4, image_size=112, patch_size=28)
FRAMES, BATCH, VLM_TEXT, VLM_ANSWER, LLM_LEN = 8, 4, 64, 32, 256
LR, B1, B2, EPS, WD, CLIP = 1e-4, 0.9, 0.999, 1e-8, 0.01, 1.0


# --- FLOPs ------------------------------------------------------------------------------------
def vlm_step_flops() -> float:
    """Frozen ViT forward (1x) + trained connector and LLM (3x: forward, input and weight grads)."""
    w, i, p = VIT["hidden_size"], VIT["intermediate_size"], (VIT["image_size"] // VIT["patch_size"]) ** 2
    t = p + 1  # + class token
    frames = BATCH * FRAMES
    vit = frames * (2 * p * 3 * VIT["patch_size"] ** 2 * w
                    + VIT["num_layers"] * t * (4 * 2 * w * w + 2 * 2 * w * i + 2 * 2 * t * w))
    d = SMOLLM2_135M["hidden_size"]
    conn = frames * p * (2 * w * d + 2 * d * d)
    seq = VLM_TEXT + FRAMES * p
    return vit + 3 * (conn + bounds.llm_forward_flops(SMOLLM2_135M, 6, BATCH * seq, seq))


def llm_step_flops(layers: int) -> float:
    return 3 * bounds.llm_forward_flops(SMOLLM2_135M, layers, BATCH * LLM_LEN, LLM_LEN)


# --- data -------------------------------------------------------------------------------------
def make_batches(kind: str, count: int, video_token: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    v = SMOLLM2_135M["vocab_size"]
    out = []
    for _ in range(count):
        if kind == "llm":
            ids = rng.integers(0, v - 1, (BATCH, LLM_LEN)).astype(np.int32)
            out.append({"input_ids": ids, "attention_mask": np.ones_like(ids), "labels": ids.copy()})
            continue
        n_vis = FRAMES * (VIT["image_size"] // VIT["patch_size"]) ** 2
        text = rng.integers(0, v - 1, (BATCH, VLM_TEXT)).astype(np.int32)
        # 4 prompt tokens, the video's placeholders, then the rest of the text (question + answer).
        ids = np.concatenate([text[:, :4], np.full((BATCH, n_vis), video_token, np.int32), text[:, 4:]], 1)
        labels = np.full_like(ids, -100)
        labels[:, -VLM_ANSWER:] = ids[:, -VLM_ANSWER:]
        pixels = rng.integers(0, 256, (BATCH, 1, FRAMES, VIT["image_size"], VIT["image_size"], 3), np.uint8)
        out.append({"input_ids": ids, "attention_mask": np.ones_like(ids), "labels": labels, "pixels": pixels})
    return out


# --- ours -------------------------------------------------------------------------------------
def legacy_answer_cross_entropy(logits, labels, example_mask=None):
    """The loss as it was before issue 21 (sliced logits, take_along_axis, argmax accuracy in the step)."""
    import jax
    import jax.numpy as jnp

    logits = logits[:, :-1].astype(jnp.float32)
    targets = labels[:, 1:]
    valid = targets != -100
    logp = jax.nn.log_softmax(logits, axis=-1)
    nll = -jnp.take_along_axis(logp, jnp.where(valid, targets, 0)[..., None], axis=-1)[..., 0]
    n = jnp.sum(valid).astype(jnp.float32)
    loss = jnp.sum(jnp.where(valid, nll, 0.0)) / jnp.maximum(n, 1.0)
    acc = jnp.sum(jnp.where(valid, jnp.argmax(logits, -1) == targets, False)) / jnp.maximum(n, 1.0)
    return loss, n, acc


def build_ours(kind: str, layers: int, loss: str, chunk: int, remat: str, unroll: bool | None = None):
    """(model, jitted step, state, frozen, other, to_device) with the project's step and optimizer."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from exo2ego_jax import config_lib
    from exo2ego_jax.models.connectors import ConnectorConfig
    from exo2ego_jax.models.llm import DecoderLM, LLMConfig
    from exo2ego_jax.models.mllm import VideoLLM, VideoLLMConfig
    from exo2ego_jax.models.vit import VisionConfig
    from exo2ego_jax.parallel import mesh as mesh_lib
    from exo2ego_jax.train import losses, optim
    from exo2ego_jax.train import state as state_lib
    from exo2ego_jax.train.step import make_train_step

    llm_cfg = LLMConfig(**{**SMOLLM2_135M, "num_layers": layers})
    if kind == "vlm":
        vis = VisionConfig(**VIT, feature_layer=-1)
        cfg = VideoLLMConfig(vision=vis, connector=ConnectorConfig(kind="mlp2x_gelu", in_dim=vis.hidden_size,
                                                                   out_dim=llm_cfg.hidden_size),
                             llm=llm_cfg, num_frames=FRAMES, video_token_id=llm_cfg.vocab_size - 1)
        build = lambda: VideoLLM(cfg, rngs=nnx.Rngs(0), remat_policy=remat, unroll_layers=unroll)
        groups = (("^vision/", None), (".*", LR))
    else:
        build = lambda: DecoderLM(llm_cfg, rngs=nnx.Rngs(0), remat_policy=remat, unroll_layers=unroll)
        groups = ((".*", LR),)

    def loss_fn(model, batch, rng):  # a Method's loss signature (train/step.py)
        del rng
        llm = model.llm if kind == "vlm" else model
        kw = dict(attention_mask=batch["attention_mask"])
        if kind == "vlm":
            kw["inputs_embeds"] = model.embed_inputs(batch["input_ids"], model.encode_video(batch["pixels"]))
        else:
            kw["input_ids"] = batch["input_ids"]
        if loss == "chunked":
            hidden, _ = llm(**kw, hidden_only=True)
            value, n, _ = losses.answer_loss_and_accuracy(hidden, batch["labels"], head_kernel=llm.head_kernel(),
                                                          chunk_size=chunk)
        elif loss == "plain":
            value, n, _ = losses.answer_loss_and_accuracy(llm(**kw)[0], batch["labels"])
        else:
            value, n, _ = legacy_answer_cross_entropy(llm(**kw)[0], batch["labels"])
        return value, {"loss_weight": n}

    mesh = mesh_lib.make_mesh(config_lib.hardware_preset("cpu"), jax.devices()[:1])
    # Unrolled layers: the state keeps each layer's params as its own arrays, as train/setup.py does.
    parts = state_lib.describe(build, groups, mesh,
                               per_layer=jax.default_backend() == "cpu" if unroll is None else unroll)
    model = build()
    params, frozen, other = parts.split(model)
    params, frozen = parts.to_step(params), parts.to_step(frozen)
    tc = bounds.constant_lr_train_config(groups, (B1, B2), EPS, WD, CLIP)
    tx, _ = optim.make_optimizer(tc, parts.labels, 1000)
    step = make_train_step(parts, loss_fn, tx, micro_batches=1, mesh=mesh)
    state = {"step": jnp.zeros((), jnp.int32), "params": params, "opt": tx.init(params)}
    return model, jax.jit(step, donate_argnums=0), state, frozen, other


# --- torch ------------------------------------------------------------------------------------
def build_torch(kind: str, layers: int, ours_model):
    """transformers model with ours_model's weights, its AdamW, and a step(batch) -> loss function."""
    import torch
    import transformers

    from exo2ego_jax.weights import llm_weights, vision_weights

    c = SMOLLM2_135M
    lcfg = transformers.LlamaConfig(
        vocab_size=c["vocab_size"], hidden_size=c["hidden_size"], intermediate_size=c["intermediate_size"],
        num_hidden_layers=layers, num_attention_heads=c["num_heads"], num_key_value_heads=c["num_kv_heads"],
        head_dim=c["head_dim"], rope_theta=c["rope_theta"], rms_norm_eps=c["rms_norm_eps"],
        tie_word_embeddings=True, max_position_embeddings=c["max_position_embeddings"])
    llm = transformers.LlamaForCausalLM(lcfg)
    ours_llm = ours_model.llm if kind == "vlm" else ours_model
    sd = {k: torch.from_numpy(np.array(v)) for k, v in llm_weights.to_hf_tensors(ours_llm).items()}
    missing, unexpected = llm.load_state_dict(sd, strict=False)
    if unexpected or [m for m in missing if m != "lm_head.weight"]:
        raise RuntimeError(f"weight copy into LlamaForCausalLM: missing {missing}, unexpected {unexpected}")
    llm.tie_weights()
    modules = {"llm": llm}
    if kind == "vlm":
        vcfg = transformers.CLIPVisionConfig(**{k: VIT[k] for k in ("hidden_size", "intermediate_size",
                                                                    "image_size", "patch_size")},
                                             num_hidden_layers=VIT["num_layers"],
                                             num_attention_heads=VIT["num_heads"], hidden_act="quick_gelu")
        vision = transformers.CLIPVisionModel(vcfg)
        vt = vision_weights.export_vision_tower(ours_model.vision, key_prefix="")
        vision.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in vt.items()}, strict=True)
        vision.requires_grad_(False).eval()
        d_vit, d = VIT["hidden_size"], c["hidden_size"]
        connector = torch.nn.Sequential(torch.nn.Linear(d_vit, d), torch.nn.GELU(), torch.nn.Linear(d, d))
        ct = vision_weights.export_connector(ours_model.connector, key_prefix="")
        connector.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in ct.items()}, strict=True)
        modules.update(vision=vision, connector=connector)
        mean = torch.tensor(ours_model.cfg.vision.pixel_mean).view(1, 3, 1, 1)
        std = torch.tensor(ours_model.cfg.vision.pixel_std).view(1, 3, 1, 1)
        video_token = ours_model.cfg.video_token_id

    def forward(batch):
        ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
        if kind == "llm":
            return llm(input_ids=ids, attention_mask=mask, labels=labels).loss
        with torch.no_grad():  # frozen tower: no graph
            px = batch["pixels"].flatten(0, 2).permute(0, 3, 1, 2).float().div_(255.0)
            feats = modules["vision"](pixel_values=(px - mean) / std).last_hidden_state[:, 1:]
        vis = modules["connector"](feats).reshape(ids.shape[0], -1, c["hidden_size"])
        is_vid = ids == video_token
        emb = llm.get_input_embeddings()(ids.masked_fill(is_vid, 0))
        emb = emb.masked_scatter(is_vid[..., None], vis.to(emb.dtype))
        return llm(inputs_embeds=emb, attention_mask=mask, labels=labels).loss

    trainable = [p for m in modules.values() for p in m.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=LR, betas=(B1, B2), eps=EPS, weight_decay=WD)
    return forward, trainable, opt


def torch_step_fn(forward, trainable, opt):
    import torch

    def step(batch):
        loss = forward(batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, CLIP)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss.detach())
    return step


# --- profile ----------------------------------------------------------------------------------
def op_kind(hlo_line: str) -> str:
    """What executes an XLA:CPU op, from its line in the compiled HLO text.

    Eigen dots run on the intra-op thread pool, and the trace mostly shows their launch: their time
    lands in the ops that run beside them, so their share reads low.
    """
    if '"__ynn_fusion"' in hlo_line:
        return "YNNPACK fusions (dots, some reductions)"
    if re.search(r"= \S+ dot\(", hlo_line):
        return "Eigen dots (time mostly hidden)"
    found = re.search(r"kind=k(\w+)", hlo_line)
    if found:
        return f"XLA {found.group(1).lower()} fusions"
    opcode = re.search(r"= \S+ ([\w-]+)\(", hlo_line)
    return opcode.group(1) if opcode else "other"


def profile_ours(step, state, frozen, other, batches, out_dir: str, top: int = 15):
    """Traces three steps; prints the top XLA ops by time with the jax function that emitted them."""
    import jax

    compiled = step.lower(state, frozen, other, batches[0]).compile()
    meta, kind = {}, {}
    for line in compiled.as_text().splitlines():
        m = re.match(r"\s*(?:ROOT )?%?([\w.\-]+) = .*?metadata=\{[^}]*op_name=\"([^\"]+)\"", line)
        if m:
            src = re.search(r'source_file="([^"]+)" source_line=(\d+)', line)
            where = f" @ {os.path.basename(src.group(1))}:{src.group(2)}" if src else ""
            meta[m.group(1)] = m.group(2) + where
            kind[m.group(1)] = op_kind(line)
    with jax.profiler.trace(out_dir, create_perfetto_trace=True):
        for b in batches[:3]:
            state, m = step(state, frozen, other, b)
        jax.block_until_ready(m)
    traces = [os.path.join(r, f) for r, _, fs in os.walk(out_dir) for f in fs if f.endswith("perfetto_trace.json.gz")]
    path = max(traces, key=os.path.getmtime)  # this run's trace (the directory may hold older ones)
    with gzip.open(path) as fh:
        events = json.load(fh)
    events = events["traceEvents"] if isinstance(events, dict) else events
    per_op: dict[str, float] = {}
    for e in events:
        name = e.get("name", "")
        if e.get("ph") == "X" and name in meta:
            per_op[name] = per_op.get(name, 0.0) + e.get("dur", 0.0)
    total = sum(per_op.values()) or 1.0
    print(f"profile: {len(per_op)} XLA ops, {total / 3e3:.0f} ms per step in ops (trace in {out_dir})")
    per_kind: dict[str, float] = {}
    for name, us in per_op.items():
        per_kind[kind[name]] = per_kind.get(kind[name], 0.0) + us
    print("  by kind: " + ", ".join(f"{k} {100 * us / total:.1f}%" for k, us in
                                    sorted(per_kind.items(), key=lambda kv: -kv[1])))
    for name, us in sorted(per_op.items(), key=lambda kv: -kv[1])[:top]:
        src = re.sub(r"^jit\(step\)/", "", meta[name])
        print(f"  {100 * us / total:5.1f}%  {us / 3e3:8.1f} ms  {name:28s} {src[-110:]}")
    return state


# --- main -------------------------------------------------------------------------------------
def stats(xs):
    return statistics.median(xs), min(xs), max(xs)


def run(kind: str, args) -> None:
    import jax
    import torch

    layers = 6 if kind == "vlm" else args.llm_layers
    flops = vlm_step_flops() if kind == "vlm" else llm_step_flops(layers)
    t0 = time.perf_counter()
    chunk = args.chunk or (128 if kind == "vlm" else 1024)
    model, step, state, frozen, other = build_ours(kind, layers, args.loss, chunk, args.remat,
                                                   {"auto": None, "scan": False, "unroll": True}[args.layer_loop])
    video_token = model.cfg.video_token_id if kind == "vlm" else -1
    batches = make_batches(kind, 4, video_token)
    dev = [{k: jax.device_put(v) for k, v in b.items()} for b in batches]
    impls = {}
    fwd, params, opt = build_torch(kind, layers, model)
    impls["torch eager"] = torch_step_fn(fwd, params, opt)
    if args.compile:
        fwd_c, params_c, opt_c = build_torch(kind, layers, model)
        impls["torch.compile"] = torch_step_fn(torch.compile(fwd_c), params_c, opt_c)
    del model

    def ours_step(i):
        nonlocal state
        state, m = step(state, frozen, other, dev[i % len(dev)])
        return float(m["loss"])
    # torch wants int64 token ids / labels (what a torch data loader gives it).
    tb = [{k: torch.from_numpy(v.astype(np.int64) if v.dtype == np.int32 else v) for k, v in b.items()}
          for b in batches]
    run_step = {"ours": ours_step, **{n: (lambda i, f=f: f(tb[i % len(tb)])) for n, f in impls.items()}}

    if args.profile:
        state = profile_ours(step, state, frozen, other, dev, os.path.join(args.profile, kind))
    names = list(run_step)
    first, warm = {}, {}
    for n in names:  # warm-up: compiles (ours, torch.compile) and first-call allocations
        t = time.perf_counter()
        first[n] = run_step[n](0)
        warm[n] = time.perf_counter() - t
    times = {n: [] for n in names}
    losses = {n: [first[n]] for n in names}
    for i in range(args.steps):
        order = names[i % len(names):] + names[:i % len(names)]  # rotate who goes first
        for n in order:
            for j in range(args.block):
                t = time.perf_counter()
                losses[n].append(run_step[n](1 + i * args.block + j))
            times[n].append(time.perf_counter() - t)  # the turn's last step

    print(f"\n== {kind}: {'VLM (ViT-4x256 frozen, 8 frames -> mlp2x_gelu -> 6-layer SmolLM2 slice)' if kind == 'vlm' else f'LLM-only (SmolLM2-135M shape, {layers} layers)'}, "
          f"batch {BATCH}, loss={args.loss} (chunk {chunk}), remat={args.remat}, layers={args.layer_loop}; {args.steps} timed steps each "
          f"(turns of {args.block} steps, the last timed), interleaved")
    print(f"   load average before/after: {args.load0} / {os.getloadavg()[0]:.2f} (2 cores; >2 means contended)")
    setup_s = time.perf_counter() - t0
    # The peak is the machine's: one measurement can catch a slow moment (a start-up reading 13%
    # under the decoder's own GEMMs was seen), so it is measured again after each model's steps
    # and the best reading so far is the one every share and the roofline use.
    peak_j, peak_t = bounds.matmul_peak()
    args.peak = max(args.peak, peak_j, peak_t)
    print(f"   model matmul FLOPs per step {flops / 1e9:.1f} GFLOP; measured f32 matmul peak {args.peak / 1e9:.0f} GFLOP/s "
          f"(best so far; after these steps jax {peak_j / 1e9:.0f}, torch {peak_t / 1e9:.0f}); setup + first steps {setup_s:.0f} s")
    ref = times["ours"]
    for n in names:
        med, lo, hi = stats(times[n])
        print(f"   {n:14s} step {1e3 * med:8.1f} ms (min {1e3 * lo:.1f}, max {1e3 * hi:.1f})  "
              f"{1 / med:6.2f} steps/s  {100 * flops / med / args.peak:5.1f}% of matmul peak  "
              f"first call {warm[n]:.1f} s  step-1 loss {first[n]:.5f}")
    if kind == "llm":  # (the VLM's count has the LM head on every position: no floor to read from it)
        # Every model FLOP at the measured peak and nothing else. The count has the full T x T
        # attention square; both sides skip its masked half (~3% of the count), so the floor is ~3% high.
        floor = flops / args.peak
        print(f"   roofline: {flops / 1e9:.1f} GFLOP at the measured peak take {1e3 * floor:.1f} ms; a step that "
              f"fast would be " + ", ".join(f"{statistics.median(times[n]) / floor:.2f}x {n}" for n in names[1:]))
        # The roofline prices every FLOP at one 2048^3 GEMM's rate; the floor times the model's own
        # shapes and layouts (a weight gradient's transposed operand runs up to 15% slower in XLA).
        dense = bounds.dense_matmul_times(SMOLLM2_135M, layers, BATCH, LLM_LEN)
        attn_at_peak = bounds.causal_attention_flops(SMOLLM2_135M, layers, BATCH, LLM_LEN) / args.peak
        floor_j, floor_t = (t + attn_at_peak for t in dense)
        print(f"   matmul floor (each dense matmul of the step timed alone at its shape and layout, best of 3 x 5; "
              f"attention at the peak): jax {1e3 * floor_j:.1f} ms, torch {1e3 * floor_t:.1f} ms; a step of ours "
              f"with nothing but its matmuls would be " + ", ".join(
                  f"{statistics.median(times[n]) / floor_j:.2f}x {n}" for n in names[1:]))
        # The attention and the optimizer as each library runs them, each timed alone: what every
        # step of that library pays on top of its dense matmuls before its norms, SwiGLU and loss.
        parts = bounds.kernel_floor(SMOLLM2_135M, layers, BATCH, LLM_LEN, dense, dict(
            lr=LR, betas=(B1, B2), eps=EPS, weight_decay=WD, clip=CLIP))
        for i, lib in enumerate(("jax", "torch")):
            print(f"   kernel floor {lib}: " + ", ".join(f"{part} {1e3 * t[i]:.1f} ms" for part, t in parts.items()))
        eager = statistics.median(times["torch eager"])
        print(f"   a step of ours at its kernel floor would be {eager / parts['step'][0]:.2f}x torch eager; "
              f"1.2x torch eager needs {1e3 * eager / 1.2:.1f} ms, {1e3 * (eager / 1.2 - parts['step'][0]):.1f} ms "
              f"above the kernel floor for the norms, RoPE, SwiGLU, residual adds and the loss "
              f"(ours spends {1e3 * (statistics.median(ref) - parts['step'][0]):.1f} ms, torch eager "
              f"{1e3 * (eager - parts['step'][1]):.1f} ms above its own)")
        best_parts = sum(min(t) for part, t in parts.items() if part != "step")
        print(f"   the faster library's time for each part: {1e3 * best_parts:.1f} ms, "
              f"{eager / best_parts:.2f}x torch eager for a step that did nothing else")
    for n in names[1:]:
        ratio = [b / a for a, b in zip(ref, times[n])]
        med, lo, hi = stats(ratio)
        diff = max(abs(a - b) for a, b in zip(losses["ours"], losses[n]))
        print(f"   ours vs {n:14s} {med:5.2f}x step rate (paired per-step ratios: min {lo:.2f}, max {hi:.2f}); "
              f"max |loss diff| over {len(losses['ours'])} steps {diff:.1e}")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="VLM only, no torch.compile (< 3 min on 2 cores)")
    p.add_argument("--models", default="vlm,llm", help="comma list of vlm, llm")
    p.add_argument("--steps", type=int, default=20, help="timed steps per implementation (>= 20 for the note)")
    p.add_argument("--block", type=int, default=2,
                   help="consecutive steps per turn, the last one timed (1: every step timed, each after the others' turns)")
    p.add_argument("--llm-layers", type=int, default=30, help="decoder layers of the LLM-only model")
    p.add_argument("--loss", default="chunked", choices=("chunked", "plain", "legacy"),
                   help="ours: chunked LM-head CE (train/losses), plain CE on logits, or the pre-issue-21 loss")
    p.add_argument("--chunk", type=int, default=0,
                   help="tokens per chunk of the chunked loss (0: VLM 128, LLM 1024; see the module docstring)")
    p.add_argument("--remat", default="none", help="ours: remat policy of the decoder")
    p.add_argument("--layer-loop", default="auto", choices=("auto", "scan", "unroll"),
                   help="ours: decoder layers as one lax.scan or unrolled (auto: unrolled on CPU; DecoderLM)")
    p.add_argument("--no-compile", dest="compile", action="store_false", help="skip torch.compile")
    p.add_argument("--profile", default="", help="directory for a jax.profiler trace of our step")
    p.add_argument("--malloc-reuse", type=int, default=config_lib.CPU_MALLOC_REUSE,
                   help="host malloc keeps freed blocks up to this many bytes (the cpu preset's "
                        "hardware.malloc_reuse_bytes), for the whole process: ours and torch alike; 0 = glibc default")
    p.add_argument("--no-huge-pages", dest="huge_pages", action="store_false",
                   help="skip the cpu preset's hardware.host_huge_pages (glibc's transparent huge pages for "
                        "large host blocks, ours and torch alike; restarts the bench to set it)")
    p.add_argument("--async-dispatch", action="store_true",
                   help="ours: JAX's asynchronous CPU dispatch (the cpu preset's hardware.cpu_async_dispatch "
                        "is off: our step runs on the calling thread, its buffers in malloc's heap)")
    args = p.parse_args()
    if args.huge_pages:
        config_lib.restart_with_host_huge_pages(config_lib.hardware_preset("cpu"))
    config_lib.set_malloc_reuse(args.malloc_reuse)
    config_lib.set_cpu_async_dispatch(args.async_dispatch)
    if args.quick:
        args.models, args.compile = "vlm", False

    import jax
    import torch

    args.load0 = f"{os.getloadavg()[0]:.2f}"
    peak_j, peak_t = bounds.matmul_peak()
    args.peak = max(peak_j, peak_t)
    print(f"jax {jax.__version__} ({jax.devices()[0].device_kind}), torch {torch.__version__} "
          f"({torch.get_num_threads()} threads); malloc reuse {args.malloc_reuse >> 20} MiB; "
          f"async dispatch {'on' if args.async_dispatch else 'off'}; "
          f"GLIBC_TUNABLES={os.environ.get('GLIBC_TUNABLES', '')!r}; f32 2048^3 matmul: jax {peak_j / 1e9:.0f}, "
          f"torch {peak_t / 1e9:.0f} GFLOP/s")
    for kind in args.models.split(","):
        run(kind.strip(), args)


if __name__ == "__main__":
    main()
