"""Configs: typed file.py:key=value args, locked configs, presets, command-line overrides."""
import os
import platform
import resource
import subprocess
import sys
import textwrap

import pytest
import ml_collections
from absl import flags
from ml_collections import config_flags

from exo2ego_jax import config_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_parse_arg_types():
    a = config_lib.parse_arg("steps=7,lr=0.5,name=x,freeze,shape=(2, 4)",
                             steps=1, lr=1.0, name="a", freeze=False, shape=(1, 1))
    assert (a.steps, a.lr, a.name, a.freeze, a.shape) == (7, 0.5, "x", True, (2, 4))
    assert isinstance(a.steps, int) and isinstance(a.lr, float)
    assert config_lib.parse_arg(None, steps=3).steps == 3


def test_parse_arg_errors_name_the_key():
    with pytest.raises(KeyError, match="stepz"):
        config_lib.parse_arg("stepz=3", steps=1)
    with pytest.raises(ValueError, match="'steps'.*int.*'three'"):
        config_lib.parse_arg("steps=three", steps=1)
    assert config_lib.parse_arg("extra=1", lazy=True, steps=1).extra == "1"


def test_unknown_field_rejected_with_its_name():
    c = config_lib.finalize(config_lib.base_config())
    with pytest.raises(AttributeError, match="lerning_rate"):
        c.train.lerning_rate = 1.0
    with pytest.raises(AttributeError, match="stpes"):
        _ = c.train.stpes
    c.train.steps = 5  # known fields stay assignable
    with pytest.raises(TypeError):
        c.train.steps = "five"


@pytest.mark.parametrize("name", sorted(config_lib.PRESETS))
def test_presets_fill_every_hardware_field(name):
    hw = config_lib.hardware_preset(name)
    assert hw.preset == name
    assert [hw.ici_data, hw.ici_fsdp, hw.ici_tensor].count(-1) <= 1
    assert hw.compute_dtype in ("float32", "bfloat16") and hw.param_dtype == "float32"
    if name.startswith("tpu"):
        assert "--xla_tpu" in hw.libtpu_flags and hw.compute_dtype == "bfloat16"
    assert hw.layer_loop in config_lib.LAYER_LOOPS
    with pytest.raises(ValueError, match="tpu_v9"):
        config_lib.hardware_preset("tpu_v9")


def test_layer_loop_per_preset_and_its_model_argument():
    loops = {name: config_lib.hardware_preset(name).layer_loop for name in config_lib.PRESETS}
    assert loops == {"cpu": "unroll", "gpu_h100x8": "scan", "tpu_v5e_64": "scan", "tpu_v5p_128": "scan"}
    hw = config_lib.hardware_preset("cpu")
    assert config_lib.unroll_layers(hw) is True
    hw.layer_loop = "scan"
    assert config_lib.unroll_layers(hw) is False
    hw.layer_loop = "scanned"
    with pytest.raises(ValueError, match=r"config.hardware.layer_loop='scanned'; expected one of \('unroll', 'scan'\)"):
        config_lib.unroll_layers(hw)
    # A run config saved before the field: the backend default those runs had.
    old = config_lib.ConfigDict({k: v for k, v in hw.items() if k != "layer_loop"})
    assert config_lib.unroll_layers(old) is None


def _parse(argv):
    # Override flags are registered from the argv seen at definition time (sys_argv).
    fv = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "", flag_values=fv, lock_config=True,
                                    sys_argv=argv)
    fv(argv)
    return fv.config


def test_command_line_overrides_and_typos():
    path = os.path.join(ROOT, "configs/toy.py")
    c = _parse(["prog", f"--config={path}:steps=11,hardware=gpu_h100x8", "--config.train.clip=0.5"])
    assert c.train.steps == 11 and c.train.clip == 0.5
    assert c.hardware.preset == "gpu_h100x8" and c.hardware.compute_dtype == "bfloat16"
    stage3 = os.path.join(ROOT, "configs/exo2ego/stage3_practice.py")
    c = _parse(["prog", f"--config={stage3}:hardware=tpu_v5p_128", "--config.hardware.layer_loop=unroll"])
    assert c.hardware.preset == "tpu_v5p_128" and config_lib.unroll_layers(c.hardware) is True
    with pytest.raises(Exception, match="clipp"):
        _parse(["prog", f"--config={path}", "--config.train.clipp=0.5"])
    with pytest.raises(Exception, match="stepz"):
        _parse(["prog", f"--config={path}:stepz=3"])


def test_every_field_has_a_comment():
    """Each assignment in base_config / hardware_preset carries a one-line comment."""
    import inspect
    for fn in (config_lib.base_config, config_lib.hardware_preset):
        for line in inspect.getsource(fn).splitlines():
            s = line.strip()
            if (s.startswith(("c.", "t.", "hw.")) and " = " in s
                    and not s.split(" = ")[1].startswith("ConfigDict()")):
                assert "#" in s, f"field without a comment: {s}"


def test_malloc_reuse_preset_and_its_application(monkeypatch):
    """The CPU preset keeps freed host blocks up to mallopt's largest value (2 GiB - 1) in malloc's
    heap (XLA:CPU's per-step temporaries: above glibc's mmap threshold each step faulted in fresh
    pages); accelerator presets keep glibc's defaults. Child processes get glibc's MALLOC_*_ variables."""
    assert config_lib.hardware_preset("cpu").malloc_reuse_bytes == 2 ** 31 - 1
    assert all(config_lib.hardware_preset(p).malloc_reuse_bytes == 0
               for p in ("gpu_h100x8", "tpu_v5e_64", "tpu_v5p_128"))
    for var in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"):
        monkeypatch.delenv(var, raising=False)
    config_lib.set_malloc_reuse(0)
    assert "MALLOC_MMAP_THRESHOLD_" not in os.environ
    config_lib.set_malloc_reuse(1 << 30)
    assert os.environ["MALLOC_MMAP_THRESHOLD_"] == os.environ["MALLOC_TRIM_THRESHOLD_"] == str(1 << 30)
    with pytest.raises(ValueError, match=r"malloc_reuse_bytes=2147483648.*below 2 GiB"):
        config_lib.set_malloc_reuse(1 << 31)


def test_host_huge_pages_preset_and_environment(monkeypatch, tmp_path):
    """The cpu preset asks for glibc's transparent huge pages for large host blocks, accelerator
    presets do not; the restart environment appends the tunable to GLIBC_TUNABLES only where glibc
    >= 2.35 and the kernel's THP mode is `madvise`, and never twice."""
    assert config_lib.hardware_preset("cpu").host_huge_pages is True
    assert not any(config_lib.hardware_preset(p).host_huge_pages for p in ("gpu_h100x8", "tpu_v5e_64", "tpu_v5p_128"))
    mode = tmp_path / "enabled"
    monkeypatch.setattr(config_lib, "THP_MODE_FILE", str(mode))
    monkeypatch.setattr(config_lib.platform, "libc_ver", lambda: ("glibc", "2.36"))
    mode.write_text("always [madvise] never\n")
    env = config_lib.host_huge_pages_env({"PATH": "/bin", "GLIBC_TUNABLES": "glibc.malloc.tcache_count=0"})
    assert env == {"PATH": "/bin", "GLIBC_TUNABLES": "glibc.malloc.tcache_count=0:glibc.malloc.hugetlb=1"}
    assert config_lib.host_huge_pages_env({})["GLIBC_TUNABLES"] == "glibc.malloc.hugetlb=1"
    assert config_lib.host_huge_pages_env(env) is None  # set already: no second restart
    mode.write_text("[always] madvise never\n")  # the kernel backs large blocks by itself
    assert config_lib.host_huge_pages_env({}) is None
    mode.unlink()  # no THP in this kernel
    assert config_lib.host_huge_pages_env({}) is None
    mode.write_text("always [madvise] never\n")
    monkeypatch.setattr(config_lib.platform, "libc_ver", lambda: ("glibc", "2.34"))  # no such tunable
    assert config_lib.host_huge_pages_env({}) is None
    monkeypatch.setattr(config_lib.platform, "libc_ver", lambda: ("", ""))  # musl, macOS
    assert config_lib.host_huge_pages_env({}) is None


_FAULTS_SCRIPT = textwrap.dedent("""
    import os, resource, sys
    from exo2ego_jax import config_lib
    print("pid", os.getpid(), os.environ.get("GLIBC_TUNABLES", ""), flush=True)
    if sys.argv[1] == "restart":
        config_lib.restart_with_host_huge_pages(config_lib.hardware_preset("cpu"))
    config_lib.set_malloc_reuse(config_lib.CPU_MALLOC_REUSE)
    import jax, jax.numpy as jnp
    x = jnp.ones((64 << 20,), jnp.float32)
    double = jax.jit(lambda x: x * 2)  # a fresh 256 MiB output, allocated on XLA's worker thread
    for _ in range(2):
        double(x).block_until_ready()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(4):
        double(x).block_until_ready()
    print("faults", resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
""")


@pytest.mark.skipif(config_lib.host_huge_pages_env({}) is None,
                    reason="needs glibc >= 2.35 and transparent huge pages in madvise mode")
def test_restart_with_host_huge_pages_faults_large_blocks_2_mib_at_a_time():
    """A program that restarts itself for the cpu preset's huge pages keeps its pid and arguments
    and runs again with the tunable set; XLA:CPU's fresh 256 MiB outputs then fault in 2 MiB pages
    (under 1/50 of the 4 KiB faults of the same program without the restart)."""
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES" and not k.startswith("MALLOC_")}
    env["JAX_PLATFORMS"] = "cpu"
    outputs = {}
    for mode in ("plain", "restart"):
        run = subprocess.run([sys.executable, "-c", _FAULTS_SCRIPT, mode], env=env, capture_output=True,
                             text=True, timeout=120, cwd=ROOT)
        assert run.returncode == 0, run.stderr[-2000:]
        outputs[mode] = run.stdout.splitlines()
    plain, restarted = outputs["plain"], outputs["restart"]
    assert len(plain) == 2 and len(restarted) == 3, outputs
    first, second = restarted[0].split(), restarted[1].split()
    assert first[1] == second[1] and first[2:] == [] and second[2] == "glibc.malloc.hugetlb=1", outputs
    faults = {mode: int(lines[-1].split()[1]) for mode, lines in outputs.items()}
    assert faults["plain"] >= 4 * (256 << 20) // resource.getpagesize() // 2, faults
    assert faults["restart"] * 50 < faults["plain"], faults


def test_cpu_async_dispatch_preset_and_its_application(monkeypatch):
    """The cpu preset runs CPU programs on the calling thread, accelerator presets keep JAX's
    asynchronous dispatch; configure_host sets JAX's flag here and its variable for child processes."""
    import jax
    assert config_lib.hardware_preset("cpu").cpu_async_dispatch is False
    assert all(config_lib.hardware_preset(p).cpu_async_dispatch for p in ("gpu_h100x8", "tpu_v5e_64", "tpu_v5p_128"))
    before = jax.config.read("jax_cpu_enable_async_dispatch")
    monkeypatch.setenv(config_lib.CPU_ASYNC_DISPATCH_ENV, "true")
    for var in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"):
        monkeypatch.delenv(var, raising=False)
    try:
        config_lib.configure_host(config_lib.hardware_preset("cpu"))
        assert os.environ[config_lib.CPU_ASYNC_DISPATCH_ENV] == "false"
        assert jax.config.read("jax_cpu_enable_async_dispatch") is False
        assert os.environ["MALLOC_MMAP_THRESHOLD_"] == str(2 ** 31 - 1)
        old_block = ml_collections.ConfigDict({"preset": "cpu"})  # saved before both fields existed
        config_lib.configure_host(old_block)
        assert jax.config.read("jax_cpu_enable_async_dispatch") is True
    finally:
        jax.config.update("jax_cpu_enable_async_dispatch", before)


_HEAP_SCRIPT = textwrap.dedent("""
    import resource, sys
    from exo2ego_jax import config_lib
    if sys.argv[1] == "preset":
        config_lib.configure_host(config_lib.hardware_preset("cpu"))
    import jax, jax.numpy as jnp
    x = jnp.ones((64 << 20,), jnp.float32)
    double = jax.jit(lambda x: x * 2)  # a fresh 256 MiB output per call
    for _ in range(4):
        double(x).block_until_ready()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(8):
        double(x).block_until_ready()
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
""")


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc" or config_lib.thp_mode() == "always",
                    reason="counts glibc's 4 KiB page faults")
def test_cpu_preset_keeps_xla_buffers_in_the_heap():
    """With the cpu preset (malloc reuse, synchronous dispatch) XLA:CPU's 256 MiB outputs come from
    the calling thread's heap and are reused: at most two buffers' pages faulted in over 8 calls (when
    a freed output outlives the next call). With JAX's and glibc's defaults each one is mapped afresh
    (256 MiB is above glibc's largest dynamic mmap threshold, 32 MiB): 8 x 65,536 faults of 4 KiB.
    (The preset with asynchronous dispatch sits in between: 5-8 buffers were seen, as a worker thread
    maps the buffer unless it happens to share the main arena.)"""
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES" and not k.startswith("MALLOC_")}
    env["JAX_PLATFORMS"] = "cpu"
    env.pop(config_lib.CPU_ASYNC_DISPATCH_ENV, None)
    pages = (256 << 20) // resource.getpagesize()
    faults = {}
    for mode in ("defaults", "preset"):
        run = subprocess.run([sys.executable, "-c", _HEAP_SCRIPT, mode], env=env, capture_output=True,
                             text=True, timeout=120, cwd=ROOT)
        assert run.returncode == 0, run.stderr[-2000:]
        faults[mode] = int(run.stdout.split()[-1])
    assert faults["defaults"] >= 8 * pages, faults
    assert faults["preset"] <= 2 * pages + 100, faults


def test_restart_with_host_huge_pages_runs_on_where_exec_fails(monkeypatch, caplog):
    """A failed exec (a sandbox that forbids it) is logged and the program runs on unchanged."""
    monkeypatch.setattr(config_lib, "host_huge_pages_env", lambda environ: {**environ, "GLIBC_TUNABLES": "x"})

    def refuse(*args):
        raise PermissionError("exec not permitted")
    monkeypatch.setattr(config_lib.os, "execve", refuse)
    config_lib.restart_with_host_huge_pages(config_lib.hardware_preset("cpu"))
    assert "could not restart with glibc.malloc.hugetlb=1 (exec not permitted)" in caplog.text
    caplog.clear()
    config_lib.restart_with_host_huge_pages(config_lib.hardware_preset("tpu_v5e_64"))  # off: never tries
    assert not caplog.text
