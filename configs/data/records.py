"""Job build_records: Ego-Exo4D (real or synthetic) -> Ego-ExoClip pair records (ArrayRecord shards).

python -m exo2ego_jax.main --config configs/data/records.py --config.data.root=DIR --workdir OUT
Args (`records.py:key=value`): storage=mp4|frames, kinds=atomic|keystep|both, writer=array_record|tfds.
With writer=tfds, --workdir (or data.out_dir) is the tfds data_dir and each kind becomes the dataset
`ego_exo_clip/<kind>[_frames]`; point the pipeline's data.records_dir at its version directory
(printed as dataset_dir/...) or at "ego_exo_clip/<config>" with $TFDS_DATA_DIR set.
"""
from exo2ego_jax import config_lib


def data_config(storage: str = "mp4", kinds: tuple[str, ...] = ("atomic", "keystep"),
                writer: str = "array_record"):
    """The `config.data` block of build_records (also used by tests and the benchmark)."""
    d = config_lib.ConfigDict()
    d.writer = writer  # "array_record": msgpack shards + records.json; "tfds": ego_exo_clip tfds builder
    d.root = ""  # Ego-Exo4D download (or synthetic world) directory: takes.json, annotations/, takes/
    d.out_dir = ""  # where shards + records.json go ('' = --workdir)
    d.video_variant = "auto"  # "448" (downscaled/448), "full", or "auto" (448 where present)
    d.splits = ("train", "val")  # splits to write (annotations exist for train/val only)
    d.kinds = tuple(kinds)  # "atomic" (narration clips, Exo2Ego) and/or "keystep" (segments, Ego2ExoVLM)
    d.clip_rule = "egoclip"  # "egoclip": length ~ take's mean narration gap; "fixed": clip_sec
    d.clip_mean_sec = 0.68  # Exo2Ego Sec. 3 (Ego-ExoClip): mean clip length 0.68 s
    d.clip_sec = 0.68  # window length of the "fixed" rule (seconds)
    # Every view is checked against its take before clips are cut from it: a view at another frame
    # rate or of another length is skipped as misaligned_video (a synthetic world's own fps, from
    # synthetic_meta.json, replaces video_fps).
    d.video_fps = 30.0  # frame rate of Ego-Exo4D frame-aligned videos
    d.fps_tolerance = 0.5  # |view fps - video_fps| allowed
    d.length_tolerance_sec = 1.0  # |view frames - duration_sec * fps| allowed, in seconds of frames
    d.min_clip_frames = 16  # pad windows to at least this many frames (Exo2Ego: 16 frames per clip)
    d.atomic_store_fps = 30.0  # stored frame rate of atomic clips (30 = every frame of 30 fps video)
    d.keystep_store_fps = 2.0  # stored frame rate of keystep clips (Ego2ExoVLM samples 1 fps)
    d.store_max_frames = 180  # cap on stored frames per clip (Ego2ExoVLM: at most 180 frames)
    d.store_short_side = 256  # downscale stored clips to this shorter side (0 = keep)
    d.storage = storage  # "mp4": re-encoded H.264 bytes (small); "frames": uint8 arrays (no decode)
    d.crf = 23  # x264 quality of re-encoded clips (Ego-Exo4D itself uses 24)
    d.gop = 16  # keyframe interval of re-encoded clips (short: cheap seeks)
    d.records_per_shard = 4096  # records per ArrayRecord shard (writer="array_record"; tfds sizes its own)
    d.num_workers = 0  # processes decoding/encoding takes in parallel (0 = in-process)
    d.max_skip_fraction = 0.05  # stop with an error when more than this fraction was skipped
    return d


def get_config(arg: str | None = None):
    args = config_lib.parse_arg(arg, storage="mp4", kinds="both", writer="array_record")
    kinds = ("atomic", "keystep") if args.kinds == "both" else (args.kinds,)
    config = config_lib.base_config(method="none", job="build_records")
    config.data = data_config(args.storage, kinds, args.writer)
    return config_lib.finalize(config)
