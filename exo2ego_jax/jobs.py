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

# One line per job for `python -m exo2ego_jax.main --help` (the README's job table says the same).
DESCRIPTIONS = {
    "build_records": "Ego-ExoClip pair records (ArrayRecord, or the tfds builder ego_exo_clip)",
    "chat": "answer a prompt (optionally about a video) with an HF dir or a .gguf",
    "synthetic_world": "write a synthetic ego-exo world in the Ego-Exo4D layout",
    "demo": "the Exo2Ego demo: synthetic world, stages 1-3 on a tiny model, held-out ego MCQ",
    "eval": "EgoBench / Ego-in-Exo / ADL-X evaluation; results.json + results.md",
    "exo2ego_pipeline": "Exo2Ego stages 0-3, each from the previous stage's checkpoint",
    "train": "one training stage",
    "label": "Ego2ExoVLM teacher labelling (resumable)",
    "ego2exo_demo": "the Ego2ExoVLM synthetic demo",
}
