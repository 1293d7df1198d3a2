"""The Exo2Ego demo: synthetic world -> stages 1-3 on a tiny model -> held-out ego MCQ, 2-3 variants.

    python -m exo2ego_jax.main --config configs/demo.py --workdir /tmp/demo

Args (`demo.py:key=value`): hardware=cpu (preset of every stage: cpu, gpu_h100x8, tpu_v5e_64,
tpu_v5p_128), seeds=3 (number of seeds), steps=1.0 (scales every stage's steps),
takes=640 (world size), fraction=0.05 (share of train takes with ego captions), image=64 (frame
side), patch=16 (ViT patch side), width=128 (LLM width), exo_focal=3.0 (exo camera zoom),
object_scale=2.0 (object size), colours=8 (object palette size), ego_look=1.0 (how far the ego gaze
turns to the acting hand), shift=0 (random translation augment, pixels), s1_steps=2000 /
s2_steps=300 / s3_steps=160 (per stage, before `steps` scales them), s3_lr=1e-3 (stage-3 LoRA LR),
s3_enc_lr=2e-4 (stage-3 LR of the ego encoder and F; 0 = frozen), teacher_seed=0 (one
stage-1 demonstrator shared by every seed; -1 = one per seed), workers=-1 (processes, -1 = one
per core), variants=a_exo2ego+b_ego_only (any of a_exo2ego, b_ego_only, c_no_kl, joined by '+').
See exo2ego_jax/methods/exo2ego/demo.py for what runs and docs/exo2ego.md for the numbers.
"""
import os

from exo2ego_jax import config_lib
from exo2ego_jax.synthetic import scene
from exo2ego_jax.methods.exo2ego import config as ec

ConfigDict = config_lib.ConfigDict
HERE = os.path.dirname(os.path.abspath(__file__))
# Held-out questions the exo view can inform (object, verb) plus the ego-only 'hand'; 'next' is
# left out: the task scripts fix what follows what, so a text prior answers much of it.
CATEGORIES = ("object", "verb", "hand")
# Wrong answers equally plausible a priori (same shape / verbs of that shape): only the clip answers.
DISTRACTORS = "balanced"
# Pixel normalisation of the from-scratch towers (uint8 clips are normalised by the tower): the
# synthetic frames' grey levels centred on 0.5 with a spread of ~0.25.
PIXEL_MEAN, PIXEL_STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def _stage(stage: int, *, steps: int, lr: float, batch: int, mode: str, fraction: float,
           image_size: int, patch_size: int, num_frames: int, max_len: int, train_llm: bool,
           shift: int, width: int, hardware: str) -> ConfigDict:
    c = config_lib.load(os.path.join(HERE, "exo2ego", f"{ec.STAGE_NAMES[stage]}.py"),
                        f"hardware={hardware}")  # the paper's stage
    c.unlock()
    # merge_mlp2x_gelu (token merge + MLP) instead of STC: same role, a fraction of the compile
    # time on CPU; the merge pools each frame's patch grid to 2x2: 4 frames = 16 tokens per video.
    c.model = ec.tiny_model(image_size=image_size, patch_size=patch_size, connector="merge_mlp2x_gelu",
                            width=width)
    c.model.connector.merge_stride = image_size // patch_size // 2
    c.model.vision.image_mean, c.model.vision.image_std = PIXEL_MEAN, PIXEL_STD  # = the clips' (demo.pixel_*)
    c.model.llm.intermediate_size = width  # MLP as wide as the LLM (tiny_model: 2x): ~20% faster steps
    c.model.mapping.global_residual = True  # [I] starts F near identity: stable with tiny budgets
    c.exo2ego.lora_rank = 16 if stage == 3 else 0  # tiny LLM: r 16 (paper: r 128 on Mistral-7B)
    c.exo2ego.lora_alpha = 32.0  # keeps the paper's alpha / r = 2
    c.exo2ego.lora_dropout = 0.0  # tiny data: no adapter dropout (paper: 0.1)
    c.train.groups = ec.with_lr(c.train.groups, lr, train_llm=train_llm)
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
    d.read_threads = 1  # one thread builds batches ahead: each demo job has one core
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
    a = config_lib.parse_arg(arg, hardware="cpu", seeds=3, steps=1.0, takes=640, fraction=0.05, image=64, patch=16,
                             width=128, exo_focal=3.0, object_scale=2.0, shift=0, colours=8, ego_look=1.0,
                             s1_steps=2000, s2_steps=300, s3_steps=160, s3_lr=1e-3, s3_enc_lr=2e-4, frames=4,
                             teacher_seed=0, workers=-1, variants="a_exo2ego+b_ego_only")
    image_size, num_frames = a.image, a.frames
    # Tokens per example (longest rows in the default world): stage-1 rows 41 (16 visual tokens +
    # prompt + caption), caption rows of the learner 57 (16 visual + 16 mapped), stage-3 questions
    # with four options 90. Tight rows: the LLM is most of the step time.
    exo_len, caption_len, qa_len = 48, 64, 96
    lr = 1e-3  # tiny models from scratch (paper LRs fine-tune pretrained 7B models)
    kw = dict(fraction=a.fraction, image_size=image_size, patch_size=a.patch, num_frames=num_frames,
              shift=a.shift, lr=lr, batch=16, width=a.width, hardware=a.hardware)
    cap, qa = dict(kw, max_len=caption_len), dict(kw, max_len=qa_len, lr=a.s3_lr)
    n = lambda s: max(2, int(round(s * a.steps)))  # noqa: E731

    # Stage 1 is the only stage with abundant labels (every train clip x 4 exo views). At 2000 steps
    # the demonstrator names held-out exo colours ~40% (chance 12.5) and verbs ~68%; at 1200 its
    # colour naming swings between 20 and 45% with the numerics (docs/exo2ego.md).
    s1 = _stage(1, steps=n(a.s1_steps), mode="exo_captions", train_llm=True, **dict(kw, max_len=exo_len))
    s2 = _stage(2, steps=n(a.s2_steps), mode="pairs", train_llm=False, **cap)
    s2_nokl = _stage(2, steps=n(a.s2_steps), mode="pairs", train_llm=False, **cap)
    s2_nokl.exo2ego.kl_weight = 0.0  # the paper's "w/o KL" ablation
    # Stage 3 trains the adapters (LoRA) at s3_lr and, as in the paper, the ego encoder and F, at a
    # lower LR (paper: stage 3 at 1/5 of stage 2's LR): at the adapters' LR the ego encoder overfits
    # the few labelled ego clips and forgets what KL taught it.
    s3 = _stage(3, steps=n(a.s3_steps), mode="ego_qa", train_llm=False, **qa)
    s3.train.groups = [(r"^(ego|mapping_f)/", a.s3_enc_lr or None), (r"/lora_[ab]$", a.s3_lr), (r".*", None)]
    # (b) ego only: the same labelled ego captions and ego QA, no exo video; the LLM trains on
    # the ego captions instead of the exo ones (no F: the LLM sees x only).
    b2 = _stage(2, steps=n(a.s2_steps), mode="ego_captions", train_llm=True, **cap)
    b3 = _stage(3, steps=n(a.s3_steps), mode="ego_qa", train_llm=False, **qa)
    for s in (b2, b3):
        s.exo2ego.kl_weight = 0.0  # no exo guidance
        s.exo2ego.cycle_weight = 0.0  # no exo guidance
        s.exo2ego.llm_input = "ego"  # LLM input = x (no mapped tokens)
    b2.train.groups = [(r"^(ego|llm)/", lr), (r".*", None)]  # ego encoder + LLM on ego captions
    b3.train.groups = s3.train.groups  # same stage-3 recipe

    c = ConfigDict()
    c.job = "demo"  # exo2ego_jax/methods/exo2ego/demo.py:run
    c.hardware = config_lib.hardware_preset(a.hardware)  # main.py sets its XLA / LIBTPU flags
    if a.hardware == "cpu":
        # LLVM -O1: a third of the compile time of the default -O3 for these tiny programs, same
        # step speed; compiles dominate a 10-minute CPU demo.
        c.hardware.xla_flags = "--xla_backend_optimization_level=1"
    dm = c.demo = ConfigDict()
    dm.seeds = tuple(range(a.seeds))  # one run of every variant per seed
    # One demonstrator (stage 1, seed teacher_seed) serves every seed's learner, as the paper's one
    # pretrained demonstrator does; -1 trains one per seed (3x the stage-1 time: over 10 minutes).
    dm.teacher_stage = "stage1"  # the variants' stage that teacher_seed applies to
    dm.teacher_seed = a.teacher_seed
    # Worker processes for the jobs on the CPU backend (-1: one per core; 0: in-process); on a GPU or
    # TPU every job runs in this process, which owns the accelerator.
    dm.workers = a.workers
    dm.variants = tuple(a.variants.split("+"))  # which of a_exo2ego, b_ego_only, c_no_kl run
    dm.num_frames = num_frames  # frames per pre-decoded clip
    dm.image_size = image_size  # side of pre-decoded frames
    dm.pixel_mean, dm.pixel_std = PIXEL_MEAN, PIXEL_STD  # recorded in clips.npz; the towers normalise with them
    dm.eval_batch = 16  # questions per evaluation batch
    # Word-level tokenizer with "picks" = "pick" + "##s" (synthetic_tokenizer stems=True): the answer
    # words ("pick up") are then words the from-scratch LLM learned from the narrations.
    dm.tokenizer_stems = True
    dm.categories = CATEGORIES  # synthetic EgoBench question kinds (eval/egobench_synthetic.py)
    dm.distractors = DISTRACTORS  # how wrong answers are drawn
    w = dm.world = ConfigDict()  # overrides of synthetic/world.py world_config()
    w.num_takes = a.takes  # world size; many takes keep the tiny towers from memorising takes
    w.val_fraction = 0.1  # 64 held-out takes: ~1100 benchmark questions (standard error ~1.5 points)
    w.fps = 5  # 5 fps renders 6x faster than 30 and is plenty for 4-frame clips of ~1 s actions
    w.exo_size = (64, 64)  # small square exo videos (squashing 16:9 to square clips blurs objects)
    w.exo_focal = a.exo_focal  # zoomed exo cameras (world default 1.1): the table fills the view
    w.exo_look_height = 0.05  # exo cameras aim at the table top (world default 0.25): table centred
    w.object_scale = a.object_scale  # bigger objects (world default 1.0): ~8 px wide in 64 px exo clips
    w.colours = tuple(list(scene.COLOURS)[:a.colours])  # object palette (world default: all 8)
    w.min_objects = 2  # 2 objects per take (world default 3-5): the exo view tells the acted-on one
    w.max_objects = 2
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
