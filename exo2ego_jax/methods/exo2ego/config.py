"""Building blocks of the Exo2Ego stage configs: the model, the method's switches, the data fields.

The stage files (configs/exo2ego/stage*.py) hold each stage's own values (batch, learning rate,
warmup, epochs, trainable groups, LoRA) with the paper's numbers; this module holds what every
stage shares. Paper numbers are fields with the paper's value and a comment naming where it
comes from (Exo2Ego, arXiv 2503.09143; docs/papers.md summarises it); [I] marks choices the
paper leaves open, whose defaults are our inference.
"""
from __future__ import annotations

from exo2ego_jax import config_lib
from exo2ego_jax.data.pipeline_fields import pipeline_config
from exo2ego_jax.methods import tiny_config

ConfigDict = config_lib.ConfigDict

STAGE_NAMES = {0: "stage0_init", 1: "stage1_demonstrator", 2: "stage2_guidance", 3: "stage3_practice"}


def with_lr(groups, lr: float, *, train_llm: bool = False) -> list[tuple[str, float | None]]:
    """A stage's groups with every trainable group at `lr` (demos and tests rescale the paper's).

    `train_llm` also trains the LLM where the paper keeps a pretrained one frozen (stages 0-2): the
    demo's tiny LLM starts from scratch and must learn the language somewhere.
    """
    out = [(rx, None if rate is None else lr) for rx, rate in groups]
    if train_llm and not any(rx == r"^llm/" for rx, _ in out):
        out.insert(len(out) - 1, (r"^llm/", lr))  # before the frozen catch-all
    return out


def full_size_model() -> ConfigDict:
    """2 x CLIP ViT-L/14-336 + STC connector + Mistral-7B-Instruct (VideoLLaMA2-7B-16F layout)."""
    m = ConfigDict()
    m.llm_hf = ""  # HF dir / .safetensors / .gguf of the LLM ('' = random init from model.llm)
    m.vision_hf = ""  # HF CLIP(Vision)Model dir loaded into BOTH towers ('' = random init)
    m.connector_hf = ""  # checkpoint with VideoLLaMA2 'model.mm_projector.*' keys for BOTH connectors
    m.tokenizer = ""  # HF tokenizer dir (Mistral-7B-Instruct or the synthetic word-level one)
    m.video_token_id = 32000  # id of '<video>' in the tokenizer (added after Mistral's 32000 tokens)
    llm = m.llm = ConfigDict()  # Mistral-7B-Instruct-v0.2 config.json (VideoLLaMA2's LLM)
    llm.vocab_size = 32000  # Mistral vocabulary (the <video> id lies outside: it is never embedded)
    llm.hidden_size = 4096  # Mistral-7B width
    llm.intermediate_size = 14336  # Mistral-7B MLP width
    llm.num_layers = 32  # Mistral-7B layers
    llm.num_heads = 32  # query heads
    llm.num_kv_heads = 8  # grouped-query KV heads
    llm.head_dim = 128  # per-head width
    llm.rope_theta = 1e6  # Mistral-7B-Instruct-v0.2
    llm.rms_norm_eps = 1e-5  # Mistral RMSNorm eps
    llm.tie_word_embeddings = False  # Mistral has a separate lm_head
    llm.max_position_embeddings = 32768  # Mistral-7B-v0.2 context
    v = m.vision = ConfigDict()  # CLIP ViT-L/14-336 (Exo2Ego backbone)
    v.model_type = "clip"  # CLIP tower (class token, pre-LN)
    v.hidden_size = 1024  # ViT-L width
    v.intermediate_size = 4096  # ViT-L MLP width
    v.num_layers = 24  # ViT-L depth
    v.num_heads = 16  # ViT-L heads
    v.image_size = 336  # Exo2Ego: CLIP ViT-L/14 at 336 px
    v.patch_size = 14  # /14 patches -> 24x24 grid
    v.feature_layer = -2  # VideoLLaMA2 mm_vision_select_layer=-2
    v.remat = False  # rematerialise ViT layers (hardware presets with remat turn it on)
    c = m.connector = ConfigDict()  # Exo2Ego: STC connector
    c.kind = "stc"  # RegStage -> Conv3d (2,2,2) -> RegStage -> 2-layer GELU MLP
    c.in_dim = 1024  # = vision.hidden_size
    c.out_dim = 4096  # = llm.hidden_size
    c.stc_padding = 0  # Exo2Ego: 16x24x24 -> 8x12x12 = 1152 tokens with padding 0
    c.stc_depth = 4  # VideoLLaMA2 STCConnector: 4 RegStage blocks per stage
    mp = m.mapping = ConfigDict()  # F and G (Exo2Ego: ResNet generators)
    mp.kind = "resnet"  # "resnet" (paper) or "fc" (paper's ablation: -0.9 avg)
    mp.width = 64  # [I] first-conv width (CycleGAN ngf=64); the paper does not state it
    mp.n_downsample = 2  # [I] CycleGAN: 2 stride-2 downsamplings (12x12 -> 3x3 maps on STC tokens)
    mp.n_blocks = 9  # Exo2Ego: 9 residual blocks
    mp.norm = "instance"  # [I] CycleGAN instance norm
    mp.groups = 32  # groups when norm="group"
    mp.stem_kernel = 7  # [I] CycleGAN 7x7 stem / head
    mp.global_residual = False  # [I] F(x) = x + net(x); off = plain CycleGAN generator
    mp.fc_hidden = 0  # hidden width of the "fc" ablation (0 = feature width)
    mp.fc_layers = 2  # [I] Dense layers of the "fc" ablation
    return m


def method_block(stage: int) -> ConfigDict:
    """`config.exo2ego`: the method's switches and loss weights."""
    e = ConfigDict()
    e.stage = stage  # 0 init, 1 demonstrator, 2 guidance, 3 self-practice (Exo2Ego)
    e.mapping_on = "connector"  # [I] F/G act on connector tokens (as t x h x w maps) or "patch" (ViT patches)
    e.llm_input = "concat"  # Exo2Ego: concat(x, F(x)) along tokens; "mapped" | "ego" alternatives
    e.vtg_weight = 1.0  # weight of the answer-token cross-entropy
    e.kl_weight = 1.0  # [I] KL weight (paper: not stated); 0 = the "w/o KL" ablation
    e.kl_temperature = 1.0  # [I] softmax temperature of the KL (paper: not stated)
    e.kl_direction = "exo_to_mapped"  # [I] KL(softmax(y/t) || softmax(F(x)/t)); or "mapped_to_exo"
    e.cycle_weight = 1.0  # [I] weight of the L1 cycle loss (paper: not stated)
    e.cycle_forward_only = False  # Exo2Ego ablation: forward cycle only (54.9 avg)
    e.use_g = True  # False = "w/o G and cycle" ablation (54.4 avg)
    e.lora_rank = 0  # LoRA rank on the LLM (0 = none; stage 3 sets the paper's r 128)
    e.lora_alpha = 256.0  # LoRA alpha (stage 3: the paper's 256)
    e.lora_dropout = 0.0  # dropout on the LoRA input in training (stage 3: the paper's 0.1)
    e.lora_targets = r"(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)$"  # [I] all linear layers
    # Parameters this stage takes from checkpoints other than train.init_from (applied first;
    # init_from then overrides): "regex=path" entries. The pipeline fills them per stage.
    e.init_sources = ()
    return e


def data_block() -> ConfigDict:
    """`config.data` for Exo2Ego: data/pipeline.py's fields plus the method's own."""
    d = pipeline_config()
    d.kinds = ("atomic",)  # Exo2Ego trains on atomic-narration clips (Ego-ExoClip)
    d.max_len = 2560  # tokens per example after <video> expansion (2 x 1152 visual + text)
    d.source = "records"  # "records" (build_records shards / instruction JSON) or "arrays" (demo npz)
    d.arrays = ""  # pre-decoded clips (.npz from exo2ego_data.build_arrays) when source="arrays"
    d.world = ""  # synthetic world root (source="arrays", mode="ego_qa" reads its synthetic_meta.json)
    d.mode = "pairs"  # arrays source: exo_captions | pairs | ego_captions | ego_qa (exo2ego_data.py)
    d.ego_caption_fraction = 1.0  # fraction of train takes whose ego clips carry text (demo: scarce)
    d.label_seed = 0  # picks the labelled ego takes (fixed across variants and stages)
    d.shuffle_seed = 0  # added to config.seed for the arrays source's shuffle
    # Arrays source: random translation of each clip by up to this many pixels (edge-padded crop,
    # same offset for every frame of a clip; 0 = off, the paper uses none). The demo's tiny towers
    # from scratch memorise takes without it.
    d.shift_augment = 0
    return d


def stage_base(stage: int, arg: str | None) -> tuple[ConfigDict, ConfigDict]:
    """(config, args): what every stage shares (unlocked: paper-size model, switches, data fields,
    optimizer defaults) and the stage file's parsed argument `hardware=...,init_from=...,size=full|tiny`.

    The stage file sets its own values on the config, then calls `finish_stage(config, args)`.
    """
    args = config_lib.parse_arg(arg, hardware="cpu", init_from="", size="full")
    if args.size not in ("full", "tiny"):
        raise ValueError(f"size={args.size!r}; expected full | tiny")
    c = config_lib.base_config(method="exo2ego", job="train", hardware=args.hardware)
    c.model = full_size_model()
    c.exo2ego = method_block(stage)
    c.data = data_block()
    c.train.schedule = "cosine"  # [I] cosine decay (the paper does not state its optimizer)
    c.train.weight_decay = 0.0  # [I] no weight decay
    c.eval = ConfigDict()
    c.eval.batch_size = 8  # questions per evaluation batch
    c.eval.mcq_json = ""  # synthetic EgoBench / MCQ JSON evaluated after training ('' = none)
    c.eval.first_person_cue = True  # Exo2Ego evaluation prompt: first-person cue (+1.1 avg)
    c.train.init_from = args.init_from  # previous stage's workdir (its parameters are loaded first)
    return c, args


def finish_stage(c: ConfigDict, args: ConfigDict) -> ConfigDict:
    """The locked stage config; `size=tiny` (a CPU-sized smoke run: tiny model, data fields that fit it,
    a few steps instead of the paper's epochs) is applied after the stage's values."""
    if args.size == "tiny":
        apply_tiny(c)
    return config_lib.finalize(c)


def apply_tiny(c: ConfigDict) -> ConfigDict:
    """Turns a stage config into its `size=tiny` smoke-run version, in place (after its values)."""
    c.model = tiny_model()
    # Room for a synthetic world's word-level tokenizer (a few hundred words; job synthetic_world):
    # an id past the vocabulary is an error (data/text.check_tokenizer_fits).
    c.model.llm.vocab_size = 1024
    c.data.num_frames = 4  # tiny clips
    c.data.max_len = 64  # tiny text
    c.data.image_size = c.model.vision.image_size  # the tiny tower's input side
    c.train.epochs = 0.0  # a fixed number of steps, not the paper's epochs
    c.train.steps = 2  # smoke run
    c.train.global_batch = 8  # one example per fake CPU device
    c.train.warmup_ratio = 0.0
    c.train.warmup_steps = 0
    if c.exo2ego.lora_rank:
        c.exo2ego.lora_rank = 4  # tiny LLM
        c.exo2ego.lora_alpha = 8.0  # keeps the paper's alpha / r = 2
    return c


def tiny_model(*, vocab_size: int = 64, width: int = 64, vit_width: int = 64, image_size: int = 32,
               patch_size: int = 8, llm_layers: int = 2, vit_layers: int = 2,
               connector: str = "stc", mapping_width: int = 16, mapping_blocks: int = 2) -> ConfigDict:
    """A CPU-sized model with the full-size layout (tests and the demo)."""
    m = tiny_config.shrink(full_size_model(), vocab_size=vocab_size, width=width, vit_width=vit_width,
                           image_size=image_size, patch_size=patch_size, llm_layers=llm_layers,
                           vit_layers=vit_layers)
    m.llm.tie_word_embeddings = False  # as Mistral
    c = m.connector
    c.kind = connector  # stc (paper) or mlp2x_gelu (cheaper)
    c.stc_depth = 1  # one RegStage block per stage (paper: 4)
    mp = m.mapping
    mp.width = mapping_width  # tiny generator
    mp.n_blocks = mapping_blocks  # fewer residual blocks than the paper's 9
    mp.n_downsample = 0  # tiny maps (2x2 tokens): a 1x1 bottleneck would zero instance norm
    return m


def stages_config(stages: dict[str, ConfigDict], *, sources: dict[str, tuple[str, ...]] | None = None,
                    job: str = "exo2ego_pipeline") -> ConfigDict:
    """Wraps per-stage trainer configs into one pipeline config (unlocked; job exo2ego_pipeline)."""
    c = ConfigDict()
    c.job = job  # exo2ego_pipeline (or demo)
    c.order = tuple(stages)  # stage names, run in this order
    c.stages = ConfigDict(stages)  # name -> trainer config of that stage
    src = ConfigDict()
    for name in stages:
        src[name] = tuple((sources or {}).get(name, ()))  # "regex=<earlier stage>" extra init sources
    c.sources = src
    first = next(iter(stages.values()))
    c.hardware = first.hardware  # main.py reads the preset's XLA flags from here
    return c
