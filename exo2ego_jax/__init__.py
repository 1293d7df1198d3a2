"""exo2ego_jax: exocentric <-> egocentric video MLLM training in JAX / Flax NNX."""
import flax as _flax

# Parameters carry *logical* axis names ("embed", "mlp", ...); flax 0.12 would otherwise try to
# shard them eagerly with those names as mesh axes. We place them ourselves: a jitted init with
# out_shardings derived from the logical-axis rule table (exo2ego_jax/parallel/rules.py).
_flax.config.update("flax_always_shard_variable", False)
