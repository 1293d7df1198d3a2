"""Full-size VideoLLaMA3-7B (Ego2ExoVLM teacher; the student VideoLLaMA3-7B-Image has the same
architecture): our abstract model's parameter count equals transformers' on the meta device."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from flax import nnx  # noqa: E402

from exo2ego_jax.models import videollama3 as vl3  # noqa: E402
from exo2ego_jax.weights import llm_weights  # noqa: E402
from exo2ego_jax.weights import videollama3_weights as vw  # noqa: E402


def _analytic(cfg: vl3.VideoLlama3Config) -> int:
    v, t = cfg.vision, cfg.llm
    d, f = v.hidden_size, v.intermediate_size
    vision = v.patch_dim * d + d + v.num_layers * (4 * (d * d + d) + 2 * d * f + f + d + 4 * d) + 2 * d
    projector = d * t.hidden_size + t.hidden_size + t.hidden_size ** 2 + t.hidden_size
    h, kv = t.num_heads * t.head_dim, t.num_kv_heads * t.head_dim
    layer = t.hidden_size * (h + 2 * kv) + (h + 2 * kv) + h * t.hidden_size + 3 * t.hidden_size * t.intermediate_size \
        + 2 * t.hidden_size
    llm = t.vocab_size * t.hidden_size * (1 if t.tie_word_embeddings else 2) + t.num_layers * layer + t.hidden_size
    return vision + projector + llm


def test_7b_parameter_count_equals_transformers():
    cfg = vl3.VideoLlama3Config()  # defaults: VideoLLaMA3-7B
    with nnx.use_eager_sharding(False):
        ours = nnx.eval_shape(lambda: vl3.VideoLlama3(cfg, rngs=nnx.Rngs(0)))
    n_ours = llm_weights.param_count(ours)
    hf_cfg = transformers.VideoLlama3Config(**{k: v for k, v in vw.hf_config_dict(cfg).items()
                                              if k not in ("model_type", "architectures")})
    with torch.device("meta"):
        hf = transformers.VideoLlama3ForConditionalGeneration(hf_cfg)
    n_hf = sum(int(np.prod(p.shape)) for p in hf.parameters())
    print(f"VideoLLaMA3-7B parameters: ours {n_ours:,}, transformers {n_hf:,}")
    assert n_ours == n_hf == _analytic(cfg) == 8_044_744_944  # 7.62B Qwen2.5-7B + 0.41B encoder + 17M projector


VL3_7B = 8_044_744_944  # transformers' VideoLlama3ForConditionalGeneration (above): the VideoLLaMA3-7B(-Image) base
VL3_PROJECTOR = 1152 * 3584 + 3584 + 3584 * 3584 + 3584  # the two-layer GELU projector, copied as probe projector
VL3_EAVT = 16 * 1152 + 27 * 4 * (1152 * 1152 + 1152) + VL3_PROJECTOR  # probes + one cross-attn per layer (27)
VL3_LORA = 28 * 64 * (2 * (3584 + 3584) + 2 * (3584 + 512) + 3 * (3584 + 18944))  # r64 on all 7 linears


def _student_config(arg=""):
    import importlib.util
    import os
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    spec = importlib.util.spec_from_file_location("cfg_student_vl3", os.path.join(root, "configs/ego2exo/student.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.get_config(arg or None)


def test_7b_student_with_probes_parameter_counts_and_groups():
    """configs/ego2exo/student.py (VideoLLaMA3-7B-Image + 16 EAVT probes + LoRA r64): the base equals
    transformers' count; EAVT and LoRA are counted by hand; only LoRA / projector / EAVT train."""
    from exo2ego_jax.methods.ego2exo import method as ego2exo
    from exo2ego_jax.train import optim

    c = _student_config()
    assert c.model.arch == "videollama3" and c.ego2exo.lora_rank == 64 and c.ego2exo.lora_alpha == 16.0
    assert (c.ego2exo.lr_lora, c.ego2exo.lr_probe) == (1e-5, 2e-6)
    with nnx.use_eager_sharding(False):
        model = nnx.eval_shape(lambda: ego2exo.Ego2Exo(c).build_model(nnx.Rngs(0)))
    flat = {"/".join(map(str, k)): v.get_value() for k, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}
    groups = optim.assign_groups(list(flat), c.train.groups)
    size = lambda pred: sum(int(np.prod(v.shape)) for p, v in flat.items() if pred(p))  # noqa: E731
    lr = lambda p: c.train.groups[groups[p]][1]  # noqa: E731
    base = size(lambda p: not p.startswith("eavt/") and "lora_" not in p)
    assert base == VL3_7B
    assert size(lambda p: p.startswith("eavt/")) == VL3_EAVT
    assert size(lambda p: "lora_" in p) == VL3_LORA
    assert flat["eavt/cross_attn/attn/q_proj/kernel"].shape == (27, 1152, 1152)  # every encoder layer
    assert size(lambda p: lr(p) == 1e-5) == VL3_LORA
    assert size(lambda p: lr(p) == 2e-6) == VL3_PROJECTOR + VL3_EAVT
    assert size(lambda p: lr(p) is None) == VL3_7B - VL3_PROJECTOR  # encoder + LLM base frozen
    total = size(lambda p: True)
    print(f"VideoLLaMA3-7B-Image student: {total:,} parameters ({VL3_EAVT:,} EAVT, {VL3_LORA:,} LoRA)")
    assert total == VL3_7B + VL3_EAVT + VL3_LORA == 8_366_676_720


@pytest.mark.slow
def test_7b_student_step_compiles_on_fake_devices():
    """eval_shape + AOT compile of the VideoLLaMA3 student's train step on the v5e-64 layout (8 fake CPU
    devices); per-device memory printed."""
    import jax
    from exo2ego_jax.methods.ego2exo import memory as ego2exo_memory

    c = _student_config("hardware=tpu_v5e_64")
    assert jax.device_count() == 8
    r = ego2exo_memory.analyse(c)
    assert r["params_total"] == VL3_7B + VL3_EAVT + VL3_LORA
    mem = r["memory_per_device"]
    assert 4.0e9 < mem["argument_size_in_bytes"] < 8.5e9  # fp32 weights / 8 + Adam moments of the trainable part
    print("VideoLLaMA3 student bytes per device:", {k: f"{v / 2**30:.2f} GiB" for k, v in mem.items()})
