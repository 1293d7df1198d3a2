"""Job registry: config.job -> "module:function". A job is fn(config, workdir) -> dict | None.

Entries are strings so that `main` imports only the job it runs.
"""
JOBS = {
    "build_records": "exo2ego_jax.data.records:run",
    "chat": "exo2ego_jax.chat:run",
    "synthetic_world": "exo2ego_jax.synthetic.world:run",
    "demo": "exo2ego_jax.methods.exo2ego.demo:run",
    "eval": "exo2ego_jax.eval.runner:run",
    "exo2ego_pipeline": "exo2ego_jax.methods.exo2ego.pipeline:run",
    "train": "exo2ego_jax.train.loop:train",
    "label": "exo2ego_jax.methods.ego2exo.label:label",  # Ego2ExoVLM teacher labelling
    "ego2exo_demo": "exo2ego_jax.methods.ego2exo.demo:run",  # Ego2ExoVLM synthetic demo
}
