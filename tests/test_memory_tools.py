"""The full-size memory tools on the tiny Exo2Ego stage-2 model (same code path, CPU-sized shapes)."""
import os
import jax
import pytest

from exo2ego_jax import config_lib
from exo2ego_jax.methods.exo2ego import config as exo2ego_config
from exo2ego_jax.methods.exo2ego import memory as exo2ego_memory

def stage_config(stage: int, hardware: str = "cpu"):
    """configs/exo2ego/stage<N>_*.py (the paper's stage), unlocked for the test to shrink."""
    c = config_lib.load(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs",
                                     "exo2ego", f"{exo2ego_config.STAGE_NAMES[stage]}.py"), f"hardware={hardware}")
    c.unlock()
    return c



def _tiny_stage2(global_batch: int):
    c = stage_config(2, hardware="tpu_v5p_128")  # fsdp=-1, remat on, bf16
    c.model = exo2ego_config.tiny_model()
    c.data.num_frames, c.data.max_len = 4, 64
    c.train.global_batch = global_batch
    c.hardware.per_device_batch = 2
    return c


def test_shapes_only_report():
    r = exo2ego_memory.analyse(_tiny_stage2(32), num_devices=8, compile=False)
    assert r["mesh"] == {"data": 1, "fsdp": 8, "tensor": 1}
    # 32 rows over 8 devices with at most 2 rows per device per micro-batch: 2 micro-batches.
    assert r["micro_batches"] == 2 and r["per_device_micro_batch"] == 2
    assert r["remat"] == "dots_no_batch" and r["platform"] == "cpu"
    assert r["trainable_params"] > 0 and r["frozen_params"] > 0
    assert "temp_size_in_bytes_per_device_GiB" not in r


@pytest.mark.slow
def test_whole_step_activation_memory_is_per_device():
    """Every part of the stage-2 step (ViT, STC, F/G, LLM) is split over the batch axes: 8 devices
    with 2 rows each need about what one device needs for 2 rows."""
    assert jax.device_count() == 8
    eight = exo2ego_memory.analyse(_tiny_stage2(16), num_devices=8)
    one = exo2ego_memory.analyse(_tiny_stage2(2), num_devices=1)
    assert eight["per_device_micro_batch"] == one["per_device_micro_batch"] == 2
    t8, t1 = eight["temp_size_in_bytes_per_device_GiB"], one["temp_size_in_bytes_per_device_GiB"]
    assert t8 <= 1.5 * t1 + 0.01, (t8, t1)
