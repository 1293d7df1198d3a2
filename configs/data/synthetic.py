"""Job synthetic_world: writes a synthetic ego-exo world in the Ego-Exo4D layout.

python -m exo2ego_jax.main --config configs/data/synthetic.py --workdir DIR
Args (`synthetic.py:key=value`): num_takes=160, seed=0, tiny (a 6-take world for smoke tests).
See docs/synthetic_world.md for what is in the world.
"""
from exo2ego_jax import config_lib
from exo2ego_jax.synthetic.world import world_config


def get_config(arg: str | None = None):
    args = config_lib.parse_arg(arg, num_takes=160, seed=0, tiny=False)
    config = config_lib.base_config(method="none", job="synthetic_world")
    config.data = world_config()
    config.data.num_takes = 6 if args.tiny else args.num_takes
    config.data.seed = args.seed
    return config_lib.finalize(config)
