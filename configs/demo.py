"""The Exo2Ego demo: synthetic world -> stages 1-3 on a tiny model -> held-out ego MCQ, 2-3 variants.

    python -m exo2ego_jax.main --config configs/demo.py --workdir /tmp/demo

Args (`demo.py:key=value`): seeds=3 (number of seeds), steps=1.0 (scales every stage's steps),
takes=160 (world size), fraction=0.2 (ego-caption fraction), image=64 (frame side), patch=16 (ViT
patch side), exo_focal=2.0 (exo camera zoom), colours=8 (object palette size), ego_look=1.0 (how far
the ego gaze turns to the acting hand), shift=0 (random translation augment, pixels),
s1_steps=600 / s2_steps=200 / s3_steps=120 (per stage, before `steps` scales them),
variants=a_exo2ego+b_ego_only (any of a_exo2ego, b_ego_only, c_no_kl, joined by '+').
See exo2ego_jax/methods/exo2ego_demo.py for what runs and docs/exo2ego.md for the numbers.
"""
from exo2ego_jax import config_lib
from exo2ego_jax.data import synthetic_scene as scene
from exo2ego_jax.methods import exo2ego_config as ec

ConfigDict = config_lib.ConfigDict
# Held-out questions the exo view can inform (object, verb) plus the ego-only 'hand'; 'next' is
# left out: the task scripts fix what follows what, so a text prior answers much of it.
CATEGORIES = ("object", "verb", "hand")
# Wrong answers equally plausible a priori (same shape / verbs of that shape): only the clip answers.
DISTRACTORS = "balanced"


def _stage(stage: int, *, steps: int, lr: float, batch: int, mode: str, fraction: float,
           image_size: int, patch_size: int, num_frames: int, max_len: int, train_llm: bool,
           shift: int) -> ConfigDict:
    c = ec.stage_config(stage)
    # merge_mlp2x_gelu (token merge + MLP) instead of STC: same role, a fraction of the compile
    # time on CPU; the merge pools each frame's patch grid to 2x2: 4 frames = 16 tokens per video.
    c.model = ec.tiny_model(image_size=image_size, patch_size=patch_size, connector="merge_mlp2x_gelu")
    c.model.connector.merge_stride = image_size // patch_size // 2
    c.model.mapping.global_residual = True  # [I] starts F near identity: stable with tiny budgets
    c.exo2ego.lora_rank = 16 if stage == 3 else 0  # tiny LLM: r 16 (paper: r 128 on Mistral-7B)
    c.exo2ego.lora_alpha = 32.0  # keeps the paper's alpha / r = 2
    c.exo2ego.lora_dropout = 0.0  # tiny data: no adapter dropout (paper: 0.1)
    c.train.groups = ec.stage_groups(stage, lr, train_llm=train_llm)
    c.train.epochs = 0.0  # the demo counts steps, not epochs
    c.train.steps = steps  # optimizer steps of this stage
    c.train.global_batch = batch  # clips per step
    c.train.warmup_steps = max(1, steps // 10)  # 10% warmup
    c.train.log_every = 10  # loss curve resolution
    c.train.ckpt_every = 0  # only the final checkpoint
    c.train.ckpt_every_secs = 0.0  # no timed saves in a short run
    c.train.async_ckpt = False  # the next stage reads the checkpoint immediately
    c.train.progress = False  # quiet logs
    c.train.keep = 1  # one checkpoint per stage
    d = c.data
    d.source = "arrays"  # pre-decoded clips
    d.mode = mode  # which examples (exo2ego_data.MODES)
    d.ego_caption_fraction = fraction  # scarce ego captions
    d.num_frames = num_frames  # frames per clip
    d.image_size = image_size  # frame side
    d.max_len = max_len  # tokens per example
    d.qa_categories = CATEGORIES  # stage-3 ego QA: the benchmark's question kinds
    d.qa_distractors = DISTRACTORS  # ... with the benchmark's wrong answers
    d.shift_augment = shift  # random translation (pixels): tiny towers from scratch memorise takes
    return c


def _variant(order, stages, sources=None) -> ConfigDict:
    v = ConfigDict()
    v.order = tuple(order)  # stages in run order
    v.stages = ConfigDict(dict(zip(order, stages)))  # stage name -> trainer config
    v.sources = ConfigDict({k: tuple((sources or {}).get(k, ())) for k in order})  # extra init sources
    return v


def get_config(arg: str | None = None):
    # (c) w/o KL is opt-in: two more stages per seed do not fit the 10-minute CPU budget.
    a = config_lib.parse_arg(arg, seeds=3, steps=1.0, takes=160, fraction=0.2, image=64, patch=16,
                             exo_focal=2.0, shift=0, colours=8, ego_look=1.0,
                             s1_steps=600, s2_steps=200, s3_steps=120, variants="a_exo2ego+b_ego_only")
    image_size, num_frames = a.image, 4
    # Tokens per example: caption rows need up to 54 (16 visual + 16 mapped + prompt + caption), stage-3
    # questions with four options ~100. Short caption rows make stages 1-2 ~1.5x faster per step.
    caption_len, qa_len = 64, 112
    lr = 1e-3  # tiny models from scratch (paper LRs fine-tune pretrained 7B models)
    kw = dict(fraction=a.fraction, image_size=image_size, patch_size=a.patch, num_frames=num_frames,
              shift=a.shift, lr=lr, batch=16)
    cap, qa = dict(kw, max_len=caption_len), dict(kw, max_len=qa_len)
    n = lambda s: max(2, int(round(s * a.steps)))  # noqa: E731

    # Stage 1 is the only stage with abundant labels (every train clip x 4 exo views). 600 steps fit
    # the budget; the clip only starts to matter for colour and verb words at ~1800 (docs/exo2ego.md).
    s1 = _stage(1, steps=n(a.s1_steps), mode="exo_captions", train_llm=True, **cap)
    s2 = _stage(2, steps=n(a.s2_steps), mode="pairs", train_llm=False, **cap)
    s3 = _stage(3, steps=n(a.s3_steps), mode="ego_qa", train_llm=False, **qa)
    s2_nokl = _stage(2, steps=n(a.s2_steps), mode="pairs", train_llm=False, **cap)
    s2_nokl.exo2ego.kl_weight = 0.0  # the paper's "w/o KL" ablation
    # (b) ego only: the same labelled ego captions and ego QA, no exo video; the LLM trains on
    # the ego captions instead of the exo ones (no F: the LLM sees x only).
    b2 = _stage(2, steps=n(a.s2_steps), mode="ego_captions", train_llm=True, **cap)
    b3 = _stage(3, steps=n(a.s3_steps), mode="ego_qa", train_llm=False, **qa)
    for s in (b2, b3):
        s.exo2ego.kl_weight = 0.0  # no exo guidance
        s.exo2ego.cycle_weight = 0.0  # no exo guidance
        s.exo2ego.llm_input = "ego"  # LLM input = x (no mapped tokens)
    b2.train.groups = [(r"^(ego|llm)/", lr), (r".*", None)]  # ego encoder + LLM on ego captions

    c = ConfigDict()
    c.job = "demo"  # exo2ego_jax/methods/exo2ego_demo.py:run
    c.hardware = config_lib.hardware_preset("cpu")  # CPU laptop preset
    # LLVM -O1: a third of the compile time of the default -O3 for these tiny programs, same step
    # speed; compiles dominate a 10-minute CPU demo.
    c.hardware.xla_flags = "--xla_backend_optimization_level=1"
    dm = c.demo = ConfigDict()
    dm.seeds = tuple(range(a.seeds))  # one run of every variant per seed
    dm.variants = tuple(a.variants.split("+"))  # which of a_exo2ego, b_ego_only, c_no_kl run
    dm.num_frames = num_frames  # frames per pre-decoded clip
    dm.image_size = image_size  # side of pre-decoded frames
    dm.eval_batch = 16  # questions per evaluation batch
    dm.categories = CATEGORIES  # synthetic EgoBench question kinds (eval/egobench_synthetic.py)
    dm.distractors = DISTRACTORS  # how wrong answers are drawn
    w = dm.world = ConfigDict()  # overrides of data/synthetic.py world_config()
    w.num_takes = a.takes  # world size (80% train, 20% held-out val takes)
    w.fps = 5  # 5 fps renders 6x faster than 30 and is plenty for 4-frame clips of ~1 s actions
    w.exo_size = (64, 64)  # small square exo videos (squashing 16:9 to square clips blurs objects)
    w.exo_focal = a.exo_focal  # zoomed exo cameras (world default 1.1): the table fills the view
    w.exo_look_height = 0.05  # exo cameras aim at the table top (world default 0.25): table centred
    w.object_scale = 1.6  # bigger objects (world default 1.0): ~4 px wide in 32 px exo clips instead of ~2
    w.colours = tuple(list(scene.COLOURS)[:a.colours])  # object palette (world default: all 8)
    w.min_objects = 2  # 2-3 objects per take (world default 3-5): less clutter for tiny encoders
    w.max_objects = 3
    w.floor_tint_range = (120.0, 120.0)  # one floor for all takes: a per-take tint lets tiny models memorise takes
    w.ego_size = 64  # small square ego videos
    w.ego_look_hand = a.ego_look  # 1 = the ego gaze turns fully to the acting hand (world default)
    w.p_mention_marking = 0.0  # captions name what both views show: object, verb, hand
    w.p_mention_other_hand = 0.0
    w.p_mention_side = 0.0
    w.write_448 = False  # no downscaled copy
    w.num_workers = 2  # render takes on both cores
    c.variants = ConfigDict({
        "a_exo2ego": _variant(("stage1", "stage2", "stage3"), (s1, s2, s3),
                              {"stage3": ("^llm/=stage1",)}),
        "b_ego_only": _variant(("ego_captions", "stage3"), (b2, b3)),
        "c_no_kl": _variant(("stage1", "stage2", "stage3"), (s1, s2_nokl, s3),
                            {"stage3": ("^llm/=stage1",)}),
    })
    return config_lib.finalize(c)
