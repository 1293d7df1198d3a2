"""Shared test set-up: 8 fake CPU devices (sharding tests), set before any JAX computation, and a cheaper
XLA CPU back end for the tests' many small programs.

`--xla_backend_optimization_level=0` skips LLVM's optimisation passes: the XLA (HLO) passes that decide what
is computed (fusion, layout, sharding, collectives) still run, so the tests check the same programs;
the machine code is less tuned, which costs little at the tests' tiny shapes and cuts the suite's compile
time (on 2 cores, tests/test_mllm.py + tests/test_generate.py: 64 -> 47 s CPU). Subprocesses the tests
start (`python -m exo2ego_jax.main ...`) inherit both flags through XLA_FLAGS.
"""
import os

_TEST_XLA_FLAGS = ("--xla_force_host_platform_device_count=8", "--xla_backend_optimization_level=0")
_flags = os.environ.get("XLA_FLAGS", "").split()
os.environ["XLA_FLAGS"] = " ".join(
    _flags + [f for f in _TEST_XLA_FLAGS if f.split("=")[0] not in {g.split("=")[0] for g in _flags}])
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)
