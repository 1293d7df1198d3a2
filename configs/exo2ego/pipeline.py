"""All Exo2Ego stages in order, each from the previous one's checkpoint (job exo2ego_pipeline).

Each stage is its own file here (stage1_demonstrator.py, stage2_guidance.py, stage3_practice.py,
with stage0=true also stage0_init.py); this file loads them and chains them. A stage's fields are
overridden as `--config.stages.<stage file name>.<field>=...`:

    python -m exo2ego_jax.main --config configs/exo2ego/pipeline.py:hardware=tpu_v5p_128 \
      --config.stages.stage1_demonstrator.data.records_dir=gs://BUCKET/ego_exoclip ... \
      --workdir gs://BUCKET/exo2ego

Tiny smoke run on a synthetic world (CPU, a few minutes): write a world (its job also writes the
world's word-level tokenizer to WORLD/tokenizer), build its atomic-narration records, then run
every stage on them with one command:

    python -m exo2ego_jax.main --config configs/data/synthetic.py:tiny --workdir /tmp/world
    python -m exo2ego_jax.main --config configs/data/records.py:kinds=atomic --config.data.root=/tmp/world --workdir /tmp/records
    python -m exo2ego_jax.main --config configs/exo2ego/pipeline.py:size=tiny,records_dir=/tmp/records,tokenizer=/tmp/world/tokenizer --workdir /tmp/pipeline

Args (`pipeline.py:key=value`): hardware=<preset>, stage0=false (also run stage 0 init first),
size=full|tiny, records_dir= and tokenizer= (set `data.records_dir` / `data.tokenizer` of every stage).
Restarting the same command continues where it stopped: finished stages are skipped, an
interrupted stage resumes from its last checkpoint. Checkpoints hold trainable parameters only,
so parameters a stage keeps frozen come from the stage that last trained them (`config.sources`):
with stage 0, stage 2 takes the ego encoder from stage 0 (stage 1 kept it out of its model).
"""
import os

from exo2ego_jax import config_lib
from exo2ego_jax.methods.exo2ego import config as ec

HERE = os.path.dirname(os.path.abspath(__file__))


def get_config(arg: str | None = None):
    args = config_lib.parse_arg(arg, hardware="cpu", stage0=False, size="full", records_dir="", tokenizer="")
    stages, sources = {}, {}
    for s in ((0, 1, 2, 3) if args.stage0 else (1, 2, 3)):
        name = ec.STAGE_NAMES[s]
        c = config_lib.load(os.path.join(HERE, f"{name}.py"), f"hardware={args.hardware},size={args.size}")
        c.unlock()
        c.data.records_dir = args.records_dir or c.data.records_dir
        c.data.tokenizer = args.tokenizer or c.data.tokenizer
        stages[name] = c
    if args.stage0:
        sources[ec.STAGE_NAMES[2]] = (r"^ego/=" + ec.STAGE_NAMES[0],)
    return config_lib.finalize(ec.stages_config(stages, sources=sources))
