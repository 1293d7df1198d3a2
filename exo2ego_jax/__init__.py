"""exo2ego_jax: exocentric <-> egocentric video MLLM training in JAX / Flax NNX."""
import os as _os
import sys as _sys

# Parameters carry *logical* axis names ("embed", "mlp", ...); flax 0.12 would otherwise try to
# shard them eagerly with those names as mesh axes. We place them ourselves: a jitted init with
# out_shardings derived from the logical-axis rule table (exo2ego_jax/parallel/rules.py).
# Through flax's environment variable when flax is not loaded yet, so importing the package does
# not import flax and jax (the synthetic world's writer processes never need them).
if "flax" in _sys.modules:
    _sys.modules["flax"].config.update("flax_always_shard_variable", False)
else:
    _os.environ["FLAX_ALWAYS_SHARD_VARIABLE"] = "false"
