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
