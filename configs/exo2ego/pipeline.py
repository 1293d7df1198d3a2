"""All Exo2Ego stages in order, each from the previous one's checkpoint (job exo2ego_pipeline).

    python -m exo2ego_jax.main --config configs/exo2ego/pipeline.py:hardware=tpu_v5p_128 \
      --config.stages.stage1.data.records_dir=gs://BUCKET/ego_exoclip ... --workdir gs://BUCKET/exo2ego

Args (`pipeline.py:key=value`): hardware=<preset>, stage0=false (also run stage 0 init first),
size=full|tiny. Restarting the same command continues where it stopped: finished stages are
skipped, an interrupted stage resumes from its last checkpoint.
Checkpoints hold trainable parameters only, so parameters a stage keeps frozen come from the
stage that last trained them (`config.sources`): with stage 0, stage 2 takes the ego encoder
from stage 0 (stage 1 kept it out of its model).
"""
from exo2ego_jax import config_lib
from exo2ego_jax.methods.exo2ego import config as exo2ego_config
from exo2ego_jax.methods.exo2ego import pipeline


def get_config(arg: str | None = None):
    args = config_lib.parse_arg(arg, hardware="cpu", stage0=False, size="full")
    stages, sources = {}, {}
    for s in ((0, 1, 2, 3) if args.stage0 else (1, 2, 3)):
        c = exo2ego_config.stage_config(s, hardware=args.hardware)
        if args.size == "tiny":
            c.model = exo2ego_config.tiny_model()
            c.data.num_frames = 4
            c.data.max_len = 64
        stages[exo2ego_config.STAGE_NAMES[s]] = c
    if args.stage0:
        sources[exo2ego_config.STAGE_NAMES[2]] = (r"^ego/=" + exo2ego_config.STAGE_NAMES[0],)
    return config_lib.finalize(pipeline.pipeline_config(stages, sources=sources))
