"""The CPU-sized VideoLLM shared by both methods' tests and demos (one place for the tiny numbers)."""
from __future__ import annotations

from exo2ego_jax import config_lib


def shrink(m: config_lib.ConfigDict, *, vocab_size: int, width: int, vit_width: int, image_size: int,
           patch_size: int, llm_layers: int, vit_layers: int) -> config_lib.ConfigDict:
    """Shrinks a full-size `config.model` (fields llm / vision / connector) in place to tiny sizes."""
    m.video_token_id = 4  # synthetic_tokenizer: <video> is special token 4
    llm = m.llm
    llm.vocab_size = vocab_size  # tiny word-level vocabulary
    llm.hidden_size = width  # tiny LLM width
    llm.intermediate_size = 2 * width  # tiny MLP
    llm.num_layers = llm_layers  # tiny depth
    llm.num_heads = 4  # tiny heads
    llm.num_kv_heads = 2  # keeps grouped-query attention exercised
    llm.head_dim = width // 4  # width / heads
    llm.rope_theta = 10000.0  # Llama default
    llm.max_position_embeddings = 1024  # tiny context
    v = m.vision
    v.hidden_size = vit_width  # tiny ViT width
    v.intermediate_size = 2 * vit_width  # tiny ViT MLP
    v.num_layers = vit_layers  # tiny ViT depth
    v.num_heads = 4  # tiny ViT heads
    v.image_size = image_size  # tiny frames
    v.patch_size = patch_size  # image_size / patch_size patches per side
    v.feature_layer = -1  # last layer (a 2-layer tower has no useful second-to-last)
    m.connector.in_dim = vit_width  # = vision.hidden_size
    m.connector.out_dim = width  # = llm.hidden_size
    return m
