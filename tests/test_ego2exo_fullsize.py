"""Full-size Ego2ExoVLM student (SigLIP so400m + Qwen2.5-7B + EAVT + LoRA r64) without allocating it."""
import jax
import numpy as np
import pytest
from flax import nnx

from exo2ego_jax.methods.ego2exo import method as ego2exo
from exo2ego_jax.train import optim
from test_label_job import load_config

QWEN25_7B = 7_615_616_512  # HF Qwen2ForCausalLM(Qwen2.5-7B config) parameter count
SIGLIP_SO400M = 412_987_248  # SiglipVisionModel without its MAP head (tests/test_fullsize_shapes.py)
PROJECTOR = 1152 * 3584 + 3584 + 3584 * 3584 + 3584  # mlp2x_gelu 1152 -> 3584
LORA = 28 * 64 * (2 * (3584 + 3584) + 2 * (3584 + 512) + 3 * (3584 + 18944))  # r64 on all 7 linears
EAVT = 16 * 1152 + 26 * 4 * (1152 * 1152 + 1152) + PROJECTOR  # probes + 26 run layers + probe projector


def test_student_parameter_counts_and_groups():
    c = load_config("configs/ego2exo/student.py", "arch=llava_video")
    with nnx.use_eager_sharding(False):
        model = nnx.eval_shape(lambda: ego2exo.Ego2Exo(c).build_model(nnx.Rngs(0)))
    flat = {"/".join(map(str, k)): v.get_value() for k, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}
    groups = optim.assign_groups(list(flat), c.train.groups)
    size = lambda pred: sum(int(np.prod(v.shape)) for p, v in flat.items() if pred(p))  # noqa: E731
    lr = lambda p: c.train.groups[groups[p]][1]  # noqa: E731
    assert size(lambda p: p.startswith("llm/") and "lora_" not in p) == QWEN25_7B
    assert size(lambda p: p.startswith("vision/")) == SIGLIP_SO400M
    assert size(lambda p: p.startswith("connector/")) == PROJECTOR
    assert size(lambda p: "lora_" in p) == LORA
    assert size(lambda p: p.startswith("eavt/")) == EAVT
    assert size(lambda p: lr(p) is not None) == LORA + PROJECTOR + EAVT == 333_599_744
    assert flat["eavt/cross_attn/attn/q_proj/kernel"].shape == (26, 1152, 1152)  # feature_layer=-2: 26 layers
    assert c.data.num_visual_tokens == 16 * 14 * 14 and c.data.num_probes == 16
    assert c.train.global_batch == 128 and c.train.epochs == 3.0 and c.train.warmup_ratio == 0.03


@pytest.mark.slow
def test_student_step_compiles_on_fake_devices():
    """eval_shape + AOT compile of the real train step for 8 devices; memory per device reported."""
    from exo2ego_jax.methods.ego2exo import memory as ego2exo_memory
    c = load_config("configs/ego2exo/student.py", "hardware=tpu_v5e_64,arch=llava_video")
    assert jax.device_count() == 8
    r = ego2exo_memory.analyse(c)
    assert r["params_total"] == QWEN25_7B + SIGLIP_SO400M + PROJECTOR + LORA + EAVT == 8_362_203_504
    assert r["mesh"] == {"data": 1, "fsdp": 2, "tensor": 4}  # the config's v5e layout (ici_tensor=4)
    mem = r["memory_per_device"]
    # Arguments: float32 master weights sharded 8 ways (fsdp x tensor: 8.4e9 * 4 / 8 bytes) + Adam moments of
    # the trainable part.
    assert 4.0e9 < mem["argument_size_in_bytes"] < 8.0e9
    print("ego2exo full-size bytes per device:", {k: f"{v / 2**30:.2f} GiB" for k, v in mem.items()})
