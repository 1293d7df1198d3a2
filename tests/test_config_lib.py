"""Configs: typed file.py:key=value args, locked configs, presets, command-line overrides."""
import os

import pytest
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
    """The CPU preset keeps freed host blocks up to 1 GiB in malloc's heap (XLA:CPU's per-step
    temporaries are tens of MiB: above glibc's mmap threshold each step faulted in fresh pages);
    accelerator presets keep glibc's defaults. Child processes get glibc's MALLOC_*_ variables."""
    assert config_lib.hardware_preset("cpu").malloc_reuse_bytes == 1 << 30
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
