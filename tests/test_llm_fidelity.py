"""Real decoder configs load right or are refused: sliding windows, YaRN options, Llama biases and
head_dim, Llama-3 GGUF (rope_freqs.weight), in the forward pass and in KV-cache generation.

Reference: transformers + torch (float32, eager attention) on tiny random checkpoints saved with
``save_pretrained``. The forward batch mixes left and right padding; every sequence is longer than
the window. Run with ``-s`` to print the measured max |logit diff| per configuration.
"""

import dataclasses
import json
import math

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx

from exo2ego_jax import generate as gen
from exo2ego_jax.models import rope as rope_lib
from exo2ego_jax.models.llm_config import (HF_FIELDS_WITHOUT_FORWARD_EFFECT, HF_IMPLEMENTED_FIELDS, HF_REFUSED_FIELDS,
                                           ROPE_KEYS_OF_REFUSED_TYPES, LLMConfig)
from exo2ego_jax.weights import export, llm_weights

WINDOW = 6
TINY = dict(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=64,
            # Wider than the 0.02 default so greedy tokens change from step to step and argmax
            # margins are far above float32 noise.
            initializer_range=0.15, bos_token_id=None, eos_token_id=None, pad_token_id=None)
CASES = {
    # Mistral: the window applies to every layer.
    "mistral_window": (transformers.MistralConfig, dict(sliding_window=WINDOW, head_dim=16)),
    # Qwen2: layers >= max_window_layers use the window (layer 0 full, layer 1 windowed).
    "qwen2_window_layers": (transformers.Qwen2Config, dict(use_sliding_window=True, sliding_window=WINDOW,
                                                           max_window_layers=1)),
    "yarn_no_truncate": (transformers.LlamaConfig, dict(rope_parameters=dict(
        # A pretraining length whose correction range is fractional, so truncation matters.
        rope_type="yarn", rope_theta=10000.0, factor=4.0, original_max_position_embeddings=4096, truncate=False),
        max_position_embeddings=16384)),
    "yarn_mscale": (transformers.LlamaConfig, dict(rope_parameters=dict(
        rope_type="yarn", rope_theta=10000.0, factor=4.0, original_max_position_embeddings=16, mscale=1.0,
        mscale_all_dim=0.5, beta_fast=16.0, beta_slow=2.0))),
    "llama_biases_head_dim": (transformers.LlamaConfig, dict(attention_bias=True, mlp_bias=True, head_dim=24)),
    # Converted to GGUF as llama.cpp does: the llama3 rope becomes rope_freqs.weight.
    "llama3_gguf": (transformers.LlamaConfig, dict(rope_parameters=dict(
        rope_type="llama3", rope_theta=500000.0, factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
        original_max_position_embeddings=16))),
}
# Generation through the unstacked layout compiles a second decoder per case; the window cases
# (the per-layer mask logic) stay in the fast suite, the others are marked slow.
FAST_UNSTACKED = ("mistral_window", "qwen2_window_layers")


def _llama_cpp_rope_freqs(rope: dict, head_dim: int) -> np.ndarray:
    """llama.cpp convert_hf_to_gguf.py (LlamaModel) for rope_type llama3: one divisor per frequency."""
    base, factor = rope["rope_theta"], rope["factor"]
    low, high, old = rope["low_freq_factor"], rope["high_freq_factor"], rope["original_max_position_embeddings"]
    freqs = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    out = []
    for freq in freqs.tolist():
        wavelen = 2 * math.pi / freq
        if wavelen < old / high:
            out.append(1.0)
        elif wavelen > old / low:
            out.append(factor)
        else:
            smooth = (old / wavelen - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.asarray(out, np.float32)


def write_llama_gguf(hf, path: str) -> None:
    """Writes ``hf`` (a LlamaForCausalLM) as llama.cpp's converter does, in float32."""
    import gguf as gguf_pkg

    c = hf.config
    heads, kv, hd = c.num_attention_heads, c.num_key_value_heads, c.head_dim
    w = gguf_pkg.GGUFWriter(path, "llama")
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_block_count(c.num_hidden_layers)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(heads)
    w.add_head_count_kv(kv)
    w.add_rope_freq_base(c.rope_parameters["rope_theta"])
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_rope_dimension_count(hd)
    w.add_vocab_size(c.vocab_size)
    w.add_file_type(gguf_pkg.LlamaFileType.ALL_F32)

    def permute(x, n):  # convert_hf_to_gguf.LlamaModel.permute (rotate-half -> interleaved)
        return x.reshape(n, 2, x.shape[0] // n // 2, *x.shape[1:]).swapaxes(1, 2).reshape(x.shape)

    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    per_layer = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
                 "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
                 "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm",
                 "post_attention_layernorm": "ffn_norm"}
    w.add_tensor("rope_freqs.weight", _llama_cpp_rope_freqs(c.rope_parameters, hd))
    for name, t in hf.state_dict().items():
        x = t.detach().numpy().astype(np.float32)
        if name in names:
            w.add_tensor(names[name], x)
            continue
        _, _, i, *rest = name.split(".")
        module, kind = ".".join(rest[:-1]), rest[-1]
        if module == "self_attn.q_proj":
            x = permute(x, heads)
        elif module == "self_attn.k_proj":
            x = permute(x, kv)
        w.add_tensor(f"blk.{i}.{per_layer[module]}.{kind}", x)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@dataclasses.dataclass
class Case:
    hf: torch.nn.Module
    path: str  # what our loader reads: the HF directory or the .gguf file
    hf_dir: str


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    built = {}

    def get(name):
        if name not in built:
            cls, extra = CASES[name]
            torch.manual_seed(0)
            cfg = cls(**{**TINY, **extra})
            hf = transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").float().eval()
            with torch.no_grad():  # random (non-unit) norms and biases so every parameter matters
                for n, p in hf.named_parameters():
                    if "norm" in n:
                        p.uniform_(0.5, 1.5)
                    elif n.endswith("bias"):
                        p.uniform_(-0.5, 0.5)
            d = tmp_path_factory.mktemp(name)
            hf.save_pretrained(d)
            path = str(d)
            if name.endswith("_gguf"):
                path = str(d / "model.gguf")
                write_llama_gguf(hf, path)
            built[name] = Case(hf, path, str(d))
        return built[name]

    return get


def _padded_batch():
    """[3, 20] ids and mask: right-padded (14 tokens), left-padded (15 tokens), full (20)."""
    rng = np.random.default_rng(0)
    t = 20
    ids = rng.integers(0, 97, size=(3, t))
    mask = np.ones((3, t), np.int64)
    mask[0, 14:] = 0
    mask[1, :5] = 0
    ids[mask == 0] = 0
    return ids, mask


def _max_logit_diff(case) -> float:
    ids, mask = _padded_batch()
    model = llm_weights.load_llm(case.path, attention_impl="xla")
    ours, _ = nnx.jit(lambda m, x, a: m(x, attention_mask=a))(model, jnp.asarray(ids), jnp.asarray(mask))
    positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0)  # what generate() uses for left padding
    with torch.no_grad():
        ref = case.hf(torch.tensor(ids), attention_mask=torch.tensor(mask),
                      position_ids=torch.tensor(positions)).logits.numpy()
    real = mask.astype(bool)
    return float(np.abs(np.asarray(ours)[real] - ref[real]).max())


@pytest.mark.parametrize("name", list(CASES))
def test_logits_match_transformers_with_padding(cases, name):
    case = cases(name)
    diff = _max_logit_diff(case)
    print(f"\n{name}: float32 max |logit diff| vs transformers = {diff:.2e}")
    assert diff <= 1e-4


def _prompts():
    """Batch of 3, left-padded differently (0, 3 and 7 pads), 16 new tokens: past the window."""
    rng = np.random.default_rng(1)
    lengths, t = (11, 8, 4), 11
    ids = np.zeros((3, t), np.int64)
    mask = np.zeros((3, t), np.int64)
    for i, n in enumerate(lengths):
        ids[i, t - n:] = rng.integers(3, 97, size=n)
        mask[i, t - n:] = 1
    return ids, mask


@pytest.mark.parametrize("name, layout", [
    pytest.param(n, layout, marks=() if layout == "scanned" or n in FAST_UNSTACKED else pytest.mark.slow)
    for n in CASES for layout in ("scanned", "unstacked")])
def test_greedy_generation_matches_transformers(cases, name, layout):
    case = cases(name)
    ids, mask = _prompts()
    steps = 16
    with torch.no_grad():
        ref = case.hf.generate(torch.tensor(ids), attention_mask=torch.tensor(mask), max_new_tokens=steps,
                               do_sample=False, pad_token_id=0)[:, ids.shape[1]:].numpy()
    model = llm_weights.load_llm(case.path, attention_impl="xla", scan_layers=layout == "scanned")
    assert hash(model.cfg) == hash(dataclasses.replace(model.cfg))  # a static jit argument in generate
    out = gen.generate(model, input_ids=ids, attention_mask=mask, max_new_tokens=steps, eos_token_id=-1)
    assert ref.shape == (3, steps)
    assert out.tokens.tolist() == ref.tolist()
    assert all(len(set(row)) > 3 for row in ref.tolist()), ref  # meaningful only if tokens change


@pytest.mark.parametrize("name", ["mistral_window", "qwen2_window_layers"])
def test_export_of_windowed_model_round_trips_through_transformers(cases, name, tmp_path):
    case = cases(name)
    model = llm_weights.load_llm(case.path, attention_impl="xla")
    out = tmp_path / "exported"
    export.export_hf(model, str(out))  # no source_dir: config.json written from model.cfg
    written = json.load(open(out / "config.json"))
    assert written["sliding_window"] == WINDOW
    assert LLMConfig.from_hf(str(out)).layer_windows == model.cfg.layer_windows
    back = transformers.AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager").float().eval()
    ids = torch.tensor(np.random.default_rng(2).integers(0, 97, size=(2, 4 * WINDOW)))
    with torch.no_grad():
        a = case.hf(ids).logits.numpy()
        b = back(ids).logits.numpy()
    np.testing.assert_array_equal(a, b)  # past the window included (positions >= WINDOW)


def test_windows_and_biases_are_read_per_layer(cases):
    m = LLMConfig.from_hf(cases("mistral_window").hf_dir)
    assert m.layer_windows == (WINDOW, WINDOW)
    q = LLMConfig.from_hf(cases("qwen2_window_layers").hf_dir)
    assert q.layer_windows == (0, WINDOW) and q.attention_bias and not q.o_proj_bias
    llama = LLMConfig.from_hf(cases("llama_biases_head_dim").hf_dir)
    assert (llama.attention_bias, llama.o_proj_bias, llama.mlp_bias, llama.head_dim) == (True, True, True, 24)
    # Qwen2 without use_sliding_window: transformers drops the window whatever max_window_layers says.
    off = LLMConfig.from_hf(transformers.Qwen2Config(**TINY, sliding_window=4, max_window_layers=0))
    assert off.layer_windows == (0, 0)
    g = llm_weights.llm_config(cases("llama3_gguf").path)
    assert g.rope_dict["rope_type"] == "rope_freqs" and len(g.rope_dict["freq_factors"]) == 8


# --------------------------------------------------------------------------------- refusals

HF_CLASSES = (transformers.LlamaConfig, transformers.MistralConfig, transformers.Qwen2Config)


@pytest.mark.parametrize("cls", HF_CLASSES, ids=lambda c: c.__name__)
def test_every_hf_config_field_is_implemented_refused_or_inert(cls):
    """A new forward-affecting field in transformers must be implemented or refused, not ignored."""
    known = HF_IMPLEMENTED_FIELDS | set(HF_REFUSED_FIELDS) | HF_FIELDS_WITHOUT_FORWARD_EFFECT
    fields = {f.name for f in dataclasses.fields(cls)} | set(cls().to_dict())
    assert not fields - known, f"{cls.__name__}: triage {sorted(fields - known)} in models/llm.py"
    assert not HF_IMPLEMENTED_FIELDS & HF_FIELDS_WITHOUT_FORWARD_EFFECT


def test_every_rope_parameter_is_implemented_refused_or_of_a_refused_type():
    keys = set(transformers.modeling_rope_utils.RopeParameters.__annotations__)
    known = rope_lib.IMPLEMENTED_ROPE_KEYS | set(HF_REFUSED_FIELDS) | ROPE_KEYS_OF_REFUSED_TYPES
    assert not keys - known, f"triage rope keys {sorted(keys - known)} in models/rope.py"


BASE = dict(TINY, model_type="llama")


@pytest.mark.parametrize("overrides, name", [
    (dict(hidden_act="gelu"), "hidden_act"),
    (dict(attention_dropout=0.1), "attention_dropout"),
    (dict(partial_rotary_factor=0.5), "partial_rotary_factor"),
    (dict(rope_parameters=dict(rope_type="default", rope_theta=1e4, partial_rotary_factor=0.5)),
     "partial_rotary_factor"),
    (dict(rope_scaling=dict(type="dynamic", factor=2.0)), "'dynamic'"),
    (dict(rope_parameters=dict(rope_type="longrope", rope_theta=1e4, short_factor=[1.0] * 8,
                               long_factor=[2.0] * 8)), "'longrope'"),
    (dict(rope_parameters=dict(full_attention=dict(rope_type="default"))), "per layer type"),
    (dict(model_type="qwen2", use_sliding_window=True, sliding_window=4, layer_types=["chunked_attention"] * 2),
     "chunked_attention"),
], ids=lambda x: x if isinstance(x, str) else None)
def test_unimplemented_options_are_refused_by_name(overrides, name):
    with pytest.raises(ValueError, match=name):
        LLMConfig.from_hf({**BASE, **overrides})


def test_config_is_hashable_with_any_rope_scaling():
    yarn = dict(type="yarn", factor=4.0, original_max_position_embeddings=16)
    cfg = LLMConfig.from_hf({**BASE, "rope_scaling": yarn})
    assert cfg.rope_dict == dict(rope_type="yarn", factor=4.0, original_max_position_embeddings=16)
    assert hash(cfg) == hash(LLMConfig.from_hf({**BASE, "rope_parameters": dict(
        rope_type="yarn", rope_theta=10000.0, factor=4.0, original_max_position_embeddings=16)}))
    with pytest.raises(ValueError, match="GGUF"):
        LLMConfig.from_hf("model.gguf")


def test_export_refuses_what_transformers_cannot_express(cases):
    g = llm_weights.llm_config(cases("llama3_gguf").path)
    with pytest.raises(ValueError, match="rope_freqs"):
        export.hf_config(g)
    windowed_llama = LLMConfig(num_layers=2, sliding_window=4, model_type="llama")
    with pytest.raises(ValueError, match="Llama has no sliding window"):
        export.hf_config(windowed_llama)


def test_gguf_is_dispatched_in_weights_not_in_the_safetensors_reader(tmp_path):
    from exo2ego_jax.weights import safetensors_io as sio

    with pytest.raises(ValueError, match="open_gguf"):
        sio.open_checkpoint(str(tmp_path / "model.gguf"))


def _metadata_gguf(path, scaling_type, **scaling):
    """A llama GGUF with the converter's rope-scaling keys and one tensor (config reading only)."""
    import gguf as gguf_pkg

    w = gguf_pkg.GGUFWriter(str(path), "llama")
    for add, value in ((w.add_context_length, 64), (w.add_embedding_length, 64), (w.add_block_count, 2),
                       (w.add_feed_forward_length, 96), (w.add_head_count, 4), (w.add_head_count_kv, 2),
                       (w.add_vocab_size, 97), (w.add_rope_freq_base, 1e4), (w.add_layer_norm_rms_eps, 1e-6)):
        add(value)
    w.add_rope_scaling_type(getattr(gguf_pkg.RopeScalingType, scaling_type.upper()))
    w.add_rope_scaling_factor(4.0)
    for key, value in scaling.items():
        w.add_float32(f"llama.rope.scaling.{key}", value)
    w.add_tensor("token_embd.weight", np.zeros((97, 64), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return str(path)


def test_gguf_rope_scaling_metadata_is_read_or_refused(tmp_path):
    from exo2ego_jax.weights import gguf

    cfg = gguf.config_from_gguf(_metadata_gguf(tmp_path / "yarn.gguf", "yarn", yarn_beta_fast=16.0))
    assert cfg.rope_dict == dict(rope_type="yarn", factor=4.0, beta_fast=16.0)
    with pytest.raises(ValueError, match="attn_factor"):
        gguf.config_from_gguf(_metadata_gguf(tmp_path / "attn.gguf", "yarn", attn_factor=0.7))
    with pytest.raises(ValueError, match="'longrope'"):
        gguf.config_from_gguf(_metadata_gguf(tmp_path / "longrope.gguf", "longrope"))
    cfg = gguf.config_from_gguf(_metadata_gguf(tmp_path / "linear.gguf", "linear"))
    assert cfg.rope_dict == dict(rope_type="linear", factor=4.0)
