"""bench/train_vs_torch.py and bench/matmul_bounds.py: the matmul list is the step's FLOP count; op kinds."""
import importlib.util
import pathlib

import numpy as np
import pytest

_PATH = pathlib.Path(__file__).resolve().parents[1] / "bench" / "train_vs_torch.py"
_spec = importlib.util.spec_from_file_location("train_vs_torch", _PATH)
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


def test_step_gemms_are_the_step_flops_without_attention():
    c = bench.SMOLLM2_135M
    gemms = bench.bounds.llm_step_gemms(c, layers=30, tokens=1024)
    # q/o share [1024, 576, 576] (and its three layouts), k/v [576 -> 192], gate/up [576 -> 1536],
    # down [1536 -> 576]: 4 shapes x 3 layouts, plus the LM head's 3.
    assert len(gemms) == 15
    assert sum(count for *_, count in gemms) == 30 * 7 * 3 + 3
    assert (1024, 576, 576, "nn", 60) in gemms  # q and o forward, every layer
    assert (49152, 1024, 576, "tn", 1) in gemms  # the tied embedding's LM-head gradient
    dense = sum(2 * m * k * n * count for m, k, n, _, count in gemms)
    # Per token and layer: 2 * 576 * (576 + 192 + 192 + 576 + 3 * 1536) = 7,077,888 FLOPs, plus the
    # head's 2 * 576 * 49152 = 56,623,104; forward, input and weight gradient: 3x; 1024 tokens.
    assert dense == 3 * 1024 * (30 * 7_077_888 + 56_623_104)
    attention = 3 * 1024 * 30 * 2 * 2 * 256 * 9 * 64  # the full T x T square, as llm_step_flops
    assert dense + attention == bench.llm_step_flops(30)


def test_op_kind_reads_the_executor_from_compiled_hlo():
    ynn = ('%ynn_fusion.1117 = f32[1024,576]{1,0} fusion(%a, %b), kind=kCustom, calls=%fused_computation.1117, '
           'backend_config={"fusion_config":{"kind":"__ynn_fusion"},"outer_dimension_partitions":[]}')
    eigen = ('%dot.3 = f32[576,576]{1,0} dot(%x, %dy), lhs_contracting_dims={0}, rhs_contracting_dims={0}, '
             'metadata={op_name="jit(step)/transpose(jvp())/dot_general"}')
    loop = '%add_select_fusion.271 = f32[49152,576]{1,0} fusion(%p, %m, %v), kind=kLoop, calls=%fused_computation.9'
    copy = '%copy.2 = f32[49152,576]{1,0} copy(%transpose.0), metadata={op_name="jit(f)/transpose"}'
    assert bench.op_kind(ynn).startswith("YNNPACK")
    assert bench.op_kind(eigen).startswith("Eigen dots")
    assert bench.op_kind(loop) == "XLA loop fusions"
    assert bench.op_kind(copy) == "copy"


def test_param_shapes_are_smollm2_135m():
    shapes = bench.bounds.llm_param_shapes(bench.SMOLLM2_135M, layers=30)
    # Embedding 49152 x 576 = 28,311,552; per layer q/o 2 x 576^2, k/v 2 x 576 x 192, gate/up/down
    # 3 x 576 x 1536, two norms 2 x 576 = 3,540,096; x30 + the final norm's 576.
    assert len(shapes) == 1 + 30 * 9 + 1
    assert sum(int(np.prod(s)) for s in shapes) == 28_311_552 + 30 * 3_540_096 + 576 == 134_515_008


TINY = dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4, num_kv_heads=2,
            head_dim=8)


def test_kernel_floor_times_the_same_math_in_both_libraries():
    # The attention ours times is torch's sdpa (same gradients), and its AdamW update torch's AdamW
    # with clipping (17,568 parameters' gradients of std 1e-3: norm ~0.13 > clip 0.05, so it clips).
    jax_attention, torch_attention = bench.bounds.attention_calls(TINY, batch=2, seq=16)
    for ours, theirs in zip(jax_attention(), torch_attention()):
        np.testing.assert_allclose(np.asarray(ours), theirs.transpose(1, 2).numpy(), atol=2e-5)
    shapes = bench.bounds.llm_param_shapes(TINY, layers=2)
    adamw = dict(lr=1e-2, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.1, clip=0.05)
    jax_update, torch_update, read = bench.bounds.optimizer_calls(shapes, **adamw)
    before = read()[0]
    for _ in range(3):
        jax_update()
        torch_update()
    ours, theirs = read()
    assert max(np.abs(a - b).max() for a, b in zip(ours, before)) > 1e-3  # three steps moved them
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a, b, atol=1e-6)
    parts = bench.bounds.kernel_floor(TINY, 2, 2, 16, (0.5, 0.25), adamw, reps=1, passes=1)
    assert parts["dense matmuls"] == (0.5, 0.25)
    for lib in range(2):
        assert parts["attention"][lib] > 0 and parts["optimizer"][lib] > 0
        assert parts["step"][lib] == pytest.approx(sum(parts[p][lib] for p in ("dense matmuls", "attention", "optimizer")))
