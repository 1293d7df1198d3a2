"""bench/train_vs_torch.py and bench/matmul_bounds.py: the matmul list is the step's FLOP count; op kinds."""
import importlib.util
import pathlib

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
