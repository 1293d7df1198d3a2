"""Tiny transformer LM on generated sequences: exercises the whole trainer on a CPU in seconds.

    python -m exo2ego_jax.main --config configs/toy.py:hardware=cpu,steps=60 --workdir /tmp/toy
"""
from exo2ego_jax import config_lib


def get_config(arg: str | None = None):
    a = config_lib.parse_arg(arg, hardware="cpu", steps=60, batch=16, micro=0, freeze_embed=False,
                             tiny=False)
    c = config_lib.base_config(method="toy", hardware=a.hardware)

    c.model.vocab = 64  # vocabulary size (tokens are integers mod vocab)
    c.model.dim = 64  # model width
    c.model.layers = 2  # transformer blocks
    c.model.heads = 4  # attention heads
    c.model.mlp_dim = 128  # MLP hidden width

    c.data.seq_len = 32  # tokens per sequence
    c.data.max_step = 7  # progression step d is drawn from [1, max_step]
    if a.tiny:  # smallest shapes, shared by the CPU tests so their compiles stay cheap
        c.model.dim, c.model.mlp_dim, c.model.layers, c.data.seq_len = 32, 64, 1, 16

    c.train.steps = a.steps
    c.train.global_batch = a.batch
    c.train.micro_batches = a.micro
    c.train.groups = ([("embed/", None)] if a.freeze_embed else []) + [(".*", 3e-3)]
    c.train.warmup_steps = 5
    c.train.log_every = 10
    c.train.ckpt_every = 20
    c.train.async_ckpt = True
    return config_lib.finalize(c)
