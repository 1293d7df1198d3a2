"""Full-size towers and the VideoLLaMA2-style 7B MLLM built abstractly (nnx.eval_shape): shapes and
parameter counts against formulas and against transformers' models built on the meta device."""

import jax.numpy as jnp
import pytest
from flax import nnx

from exo2ego_jax.models.connectors import ConnectorConfig
from exo2ego_jax.models.llm import LLMConfig
from exo2ego_jax.models.mllm import VideoLLM, VideoLLMConfig, num_visual_tokens
from exo2ego_jax.models.vit import VisionConfig, VisionTower
from exo2ego_jax.weights import vision_weights as vw
from exo2ego_jax.weights.safetensors_io import param_paths

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

# Public HF configs (openai/clip-vit-large-patch14-336, google/siglip-so400m-patch14-384).
CLIP_L_336_HF = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                     image_size=336, patch_size=14, hidden_act="quick_gelu", layer_norm_eps=1e-5)
SIGLIP_SO400M_HF = dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16,
                        image_size=384, patch_size=14, hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6)
MISTRAL_7B = LLMConfig(vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_layers=32, num_heads=32,
                       num_kv_heads=8, head_dim=128, rope_theta=1e6, rms_norm_eps=1e-5, model_type="mistral")


def _count(module) -> int:
    return sum(v.get_value().size for v in param_paths(module).values())


def _abstract(fn):
    with nnx.use_eager_sharding(False):
        return nnx.eval_shape(fn)


def _hf_count(model_cls, cfg, skip_prefix=None) -> int:
    with torch.device("meta"):
        m = model_cls(cfg)
    return sum(p.numel() for n, p in m.named_parameters() if not (skip_prefix and n.startswith(skip_prefix)))


def _vit_formula(d, mlp, layers, patch, positions, cls: bool) -> int:
    layer = 4 * (d * d + d) + (d * mlp + mlp) + (mlp * d + d) + 2 * 2 * d
    embed = 3 * patch * patch * d + (0 if cls else d) + positions * d + (d + 2 * d if cls else 0)
    return embed + layers * layer + 2 * d  # + post-LayerNorm


def test_clip_vit_l14_336():
    cfg = VisionConfig.from_hf({"model_type": "clip_vision_model", **CLIP_L_336_HF})
    tower = _abstract(lambda: VisionTower(cfg, dtype=jnp.bfloat16, rngs=nnx.Rngs(0)))
    formula = _vit_formula(1024, 4096, 24, 14, 577, cls=True)
    hf = _hf_count(transformers.CLIPVisionModel, transformers.CLIPVisionConfig(**CLIP_L_336_HF))
    assert formula == 303_507_456  # HF CLIPVisionModel incl. post_layernorm
    assert hf == 303_507_456
    assert _count(tower) == 303_507_456
    assert param_paths(tower)["layers/attn/q_proj/kernel"].get_value().shape == (24, 1024, 1024)
    assert cfg.num_feature_tokens == 576 and cfg.feature_num_layers == 23
    out = nnx.eval_shape(lambda t, x: t.features(x), tower, jnp.zeros((1, 2, 16, 336, 336, 3)))
    assert out.shape == (1, 2, 16, 576, 1024) and out.dtype == jnp.bfloat16
    assert set(vw.to_mapping(vw.vision_entries(cfg))) == set(param_paths(tower))


def test_siglip_so400m_patch14_384():
    cfg = VisionConfig.from_hf({"model_type": "siglip_vision_model", **SIGLIP_SO400M_HF})
    tower = _abstract(lambda: VisionTower(cfg, rngs=nnx.Rngs(0)))
    formula = _vit_formula(1152, 4304, 27, 14, 729, cls=False)
    hf_cfg = transformers.SiglipVisionConfig(**SIGLIP_SO400M_HF)
    hf_no_head = _hf_count(transformers.SiglipVisionModel, hf_cfg, skip_prefix="head.")
    hf_all = _hf_count(transformers.SiglipVisionModel, hf_cfg)
    assert formula == hf_no_head == 412_987_248  # SiglipVisionModel without the MAP head we do not build
    assert hf_all == 428_225_600  # with its MAP pooling head (15,238,352 params)
    assert _count(tower) == 412_987_248
    assert cfg.grid == 27 and cfg.num_feature_tokens == 729


def _stc_formula(din, d, depth, se=0.25) -> int:
    def block(cin):
        rd = round(cin * se)
        n = (cin * d + 2 * d) + (9 * d + 2 * d) + (d * rd + rd + rd * d + d) + (d * d + 2 * d)
        return n + ((cin * d + 2 * d) if cin != d else 0)
    stages = block(din) + (depth - 1) * block(d) + depth * block(d)
    return stages + (8 * d * d + d) + 2 * (d * d + d)  # + Conv3d sampler + 2-layer readout


def test_videollama2_7b_shapes_and_count():
    cfg = VideoLLMConfig(vision=VisionConfig.from_hf({"model_type": "clip_vision_model", **CLIP_L_336_HF}),
                         connector=ConnectorConfig(kind="stc", in_dim=1024, out_dim=4096), llm=MISTRAL_7B,
                         num_frames=16, video_token_id=32000)
    model = _abstract(lambda: VideoLLM(cfg, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16, rngs=nnx.Rngs(0)))
    stc = _stc_formula(1024, 4096, 4)
    assert stc == 489_188_608
    hf_mistral = _hf_count(transformers.MistralForCausalLM, transformers.MistralConfig(
        vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=8, head_dim=128, tie_word_embeddings=False))
    assert hf_mistral == 7_241_732_096
    assert _count(model.connector) == stc
    assert _count(model.llm) == hf_mistral
    total = 303_507_456 + 489_188_608 + 7_241_732_096
    assert total == 8_034_428_160 and _count(model) == total
    assert num_visual_tokens(cfg) == 1152
    vis = nnx.eval_shape(lambda m, x: m.encode_video(x), model, jnp.zeros((1, 1, 16, 336, 336, 3), jnp.bfloat16))
    assert vis.shape == (1, 1, 1152, 4096)
    maps = vw.videollm_mappings(model)
    assert {p + k for p, m in maps.items() for k in m} == set(param_paths(model))
