"""Input-pipeline benchmark: clip pairs/s through the whole Grain pipeline vs plain PyAV decoding.

    python bench/input_pipeline.py [--world DIR | --records DIR] [--image_size 336] [--num_frames 16]
        [--threads 0] [--rounds 3] [--pixel_dtype uint8|float32]

Builds (or reuses) a world in the Ego-Exo4D layout with real H.264 files at the downscaled/448
resolution (ego 448x448, exo 796x448, 30 fps), writes pair records with the build_records job,
then in the same process measures, on the same records:

- ``plain``: PyAV decodes the same frames (``num_frames`` uniform per clip, ego + exo) of every
  pair from the in-memory mp4 bytes to RGB arrays, one pair after the other. No resize, no text.
- ``pipeline``: ``pair_dataset`` end to end: ArrayRecord read, global shuffle, decode, resize +
  centre crop to the tower size (+ normalise with ``--pixel_dtype float32``), chat-template
  tokenisation, padding, batching.

The two are measured ``--rounds`` times, alternately (other jobs on a shared machine then slow
both alike); it prints every rate, the per-round ratios and their median (target: pipeline >= 80%
of plain), and for context the rate of plain decoding followed by data/video.py's float numpy
resize/crop/normalise (8 pairs). ``--pixel_dtype`` picks the batch format: uint8 (default; the
tower normalises on the device) or float32 (normalised on the host). ``--threads`` sets the
pipeline's read threads (0 = one per CPU core); the plain loop is single-threaded, which is what
a hand-written loader does.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import av
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from exo2ego_jax.data import pipeline, records, video  # noqa: E402
from exo2ego_jax.data.preprocess_config import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD  # noqa: E402
from exo2ego_jax.synthetic import tokenizer as synthetic_tokenizer  # noqa: E402


def make_world(root: str, num_takes: int, seconds: float, seed: int = 0) -> str:
    """Takes with a moving-gradient ego video (448x448) and 3 exo videos (796x448), narrations every ~0.7 s."""
    rng = np.random.default_rng(seed)
    n = int(seconds * 30)
    takes, split, atomic = [], {}, {}
    os.makedirs(os.path.join(root, "annotations"), exist_ok=True)
    yy, xx = np.mgrid[0:448, 0:796]
    for t in range(num_takes):
        uid, name = f"00000000-0000-4000-8000-{t:012d}", f"bench_t{t}"
        vdir = os.path.join(root, "takes", name, "frame_aligned_videos")
        os.makedirs(vdir, exist_ok=True)
        fav = {"aria01": {"rgb": {"stream_id": "214-1", "readable_stream_id": "rgb",
                                  "relative_path": "frame_aligned_videos/aria01_214-1.mp4"}}}
        for c, (cam, w) in enumerate([("aria01", 448), ("cam01", 796), ("cam02", 796), ("cam03", 796)]):
            frames = np.empty((n, 448, w, 3), np.uint8)
            for i in range(n):  # textured, moving content so H.264 has real work to do
                frames[i, ..., 0] = (xx[:, :w] + 3 * i) % 256
                frames[i, ..., 1] = (yy[:, :w] * (c + 1) + 2 * i) % 256
                frames[i, ..., 2] = ((xx[:, :w] ^ yy[:, :w]) + i) % 256
            fname = "aria01_214-1.mp4" if cam == "aria01" else f"{cam}.mp4"
            video.encode_mp4(frames, os.path.join(vdir, fname), fps=30, gop=30)
            if cam != "aria01":
                fav[cam] = {"0": {"stream_id": "0", "relative_path": f"frame_aligned_videos/{fname}"}}
        takes.append({"take_uid": uid, "take_name": name, "root_dir": f"takes/{name}", "task_name": "Bench",
                      "duration_sec": seconds, "frame_aligned_videos": fav,
                      "capture": {"cameras": [{"cam_id": "aria01", "is_ego": True}]}})
        split[uid] = "train"
        stamps = np.cumsum(rng.uniform(0.5, 0.9, size=int(seconds / 0.5)))
        atomic[uid] = [{"annotation_uid": f"a{t}", "rejected": False, "descriptions": [
            {"text": f"C moves the object number {k}.", "timestamp": float(ts)}
            for k, ts in enumerate(stamps) if ts < seconds - 0.3]}]
    for rel, obj in {"takes.json": takes, "annotations/splits.json": {"take_uid_to_split": split},
                     "annotations/atomic_descriptions_train.json": {"annotations": atomic}}.items():
        with open(os.path.join(root, rel), "w") as f:
            json.dump(obj, f)
    return root


def plain_decode(mp4s: list[tuple[bytes, bytes]], num_frames: int, normalise_to: int = 0) -> float:
    """Pairs/s of PyAV decoding the same uniform frames of ego + exo, sequentially.

    normalise_to > 0: also resize/crop/normalise the frames with data/video.py (a hand-written
    loader doing the pipeline's pixel work, for context).
    """
    t0 = time.perf_counter()
    for pair in mp4s:
        for data in pair:
            import io
            with av.open(io.BytesIO(data)) as container:
                stream = container.streams.video[0]
                total = stream.frames
                want = set(video.sample_frame_indices(0, total, num_frames=num_frames).tolist())
                got = []
                for i, frame in enumerate(container.decode(stream)):
                    if i in want:
                        got.append(frame.to_ndarray(format="rgb24"))
                    if i >= max(want):
                        break
                if normalise_to:
                    video.resize_crop_normalise(np.stack(got), normalise_to, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)
    return len(mp4s) / (time.perf_counter() - t0)


def pipeline_rate(ds) -> float:
    """Pairs/s of one pass over ``ds`` (the first batch, thread-pool start-up, is not timed)."""
    it = iter(ds)
    next(it)
    t0, n = time.perf_counter(), 0
    for batch in it:
        n += int(batch["example_mask"].sum())
    return n / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--world", default="", help="existing Ego-Exo4D-layout dir (default: make one)")
    p.add_argument("--takes", type=int, default=4)
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--image_size", type=int, default=336)
    p.add_argument("--num_frames", type=int, default=16)
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--rounds", type=int, default=3, help="alternating plain / pipeline measurements")
    p.add_argument("--pixel_dtype", default="uint8", help="uint8 (normalised on device) or float32")
    p.add_argument("--records", default="", help="reuse a records dir built by an earlier run")
    args = p.parse_args()

    work = tempfile.mkdtemp(prefix="bench_input_")
    root = args.world or (json.load(open(os.path.join(args.records, records.RECORDS_JSON)))["config"]["root"]
                          if args.records else make_world(os.path.join(work, "world"), args.takes, args.seconds))
    cfg_mod = {}
    exec(open(os.path.join(os.path.dirname(__file__), "..", "configs", "data", "records.py")).read(), cfg_mod)
    config = cfg_mod["get_config"]("kinds=atomic")
    config.data.root, config.data.splits, config.data.store_short_side = root, ("train",), 0
    t0 = time.perf_counter()
    out = args.records or os.path.join(work, "records")
    if not args.records:
        records.run(config, out)
        print(f"records built in {time.perf_counter() - t0:.1f} s")
    tok_dir = synthetic_tokenizer.build_tokenizer(synthetic_tokenizer.world_texts(root), os.path.join(work, "tok"))
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(tok_dir)

    from array_record.python.array_record_module import ArrayRecordReader
    mp4s = []
    for path in records.split_files(out, "train"):
        r = ArrayRecordReader(path)
        for b in r.read(list(range(r.num_records()))):
            rec = records.decode_record(b)
            mp4s.append((rec["ego"]["mp4"], rec["exo"]["mp4"]))
        r.close()
    threads = args.threads or os.cpu_count()
    cfg = pipeline.pipeline_config(num_frames=args.num_frames, image_size=args.image_size, max_len=512,
                                   num_visual_tokens=64, batch_size=args.batch_size, num_epochs=1,
                                   read_threads=threads, max_skip_fraction=0.0, pixel_dtype=args.pixel_dtype)
    ds = pipeline.pair_dataset(cfg, out, "train", tok)
    plain_decode(mp4s[:4], args.num_frames)  # warm up codec libraries
    # Alternate the two measurements so load from other jobs on a shared machine hits both alike.
    plain, piped = [], []
    for _ in range(args.rounds):
        plain.append(plain_decode(mp4s, args.num_frames))
        piped.append(pipeline_rate(ds))
    ratios = [q / p for p, q in zip(plain, piped)]
    naive = plain_decode(mp4s[:8], args.num_frames, normalise_to=args.image_size)  # slow: 8 pairs only
    print(json.dumps({"pairs": len(mp4s), "cpus": os.cpu_count(), "load_avg_1min": round(os.getloadavg()[0], 1),
                      "pipeline_threads": threads, "pixel_dtype": args.pixel_dtype,
                      "image_size": args.image_size, "num_frames": args.num_frames,
                      "plain_pyav_pairs_per_s": [round(x, 2) for x in plain],
                      "pipeline_pairs_per_s": [round(x, 2) for x in piped],
                      "ratios": [round(x, 3) for x in ratios], "median_ratio": round(float(np.median(ratios)), 3),
                      "plain_pyav_plus_numpy_normalise_pairs_per_s": round(naive, 2)}, indent=1))


if __name__ == "__main__":
    main()
