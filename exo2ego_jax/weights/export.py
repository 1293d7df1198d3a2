"""Export a DecoderLM (LoRA merged) back to a HF safetensors directory."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np

from exo2ego_jax.models.llm import DecoderLM
from exo2ego_jax.weights import llm_weights, safetensors_io

# Files copied from the source checkpoint so the export loads with transformers' AutoModel/AutoTokenizer.
_SIDE_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
               "special_tokens_map.json", "tokenizer.model", "vocab.json", "merges.txt",
               "chat_template.jinja", "added_tokens.json")


def export_hf(model: DecoderLM, out_dir: str, *, source_dir: str | None = None, dtype=None,
              max_shard_bytes: int = 5 * 2**30, tokenizer=None) -> list[str]:
    """Writes ``model`` as HF safetensors (sharded with index.json past ``max_shard_bytes``).

    config.json (and tokenizer files) come from ``source_dir`` when given; the vocab size is
    updated if embeddings were resized for added tokens. Without a source, a config.json is
    written from ``model.cfg``. Returns the safetensors files written.
    """
    os.makedirs(out_dir, exist_ok=True)
    tensors = llm_weights.to_hf_tensors(model, dtype=dtype)
    files = safetensors_io.save_safetensors(tensors, out_dir, max_shard_bytes)
    cfg = model.cfg
    if source_dir and os.path.isdir(source_dir):
        for f in _SIDE_FILES:
            if os.path.exists(os.path.join(source_dir, f)):
                shutil.copy(os.path.join(source_dir, f), out_dir)
        with open(os.path.join(out_dir, "config.json")) as fh:
            hf_cfg = json.load(fh)
    else:
        arch = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM"}
        hf_cfg = {
            "architectures": [arch[cfg.model_type]], "model_type": cfg.model_type,
            "hidden_size": cfg.hidden_size, "intermediate_size": cfg.intermediate_size,
            "num_hidden_layers": cfg.num_layers, "num_attention_heads": cfg.num_heads,
            "num_key_value_heads": cfg.num_kv_heads, "head_dim": cfg.head_dim,
            "rms_norm_eps": cfg.rms_norm_eps, "rope_theta": cfg.rope_theta,
            "rope_scaling": dict(cfg.rope_scaling) if cfg.rope_scaling else None,
            "tie_word_embeddings": cfg.tie_word_embeddings, "attention_bias": cfg.attention_bias,
            "max_position_embeddings": cfg.max_position_embeddings, "hidden_act": "silu",
            "bos_token_id": cfg.bos_token_id, "eos_token_id": cfg.eos_token_id,
        }
    hf_cfg["vocab_size"] = int(tensors["model.embed_tokens.weight"].shape[0])
    if dtype is not None:
        hf_cfg["torch_dtype"] = {np.dtype("float32"): "float32", np.dtype("float16"): "float16"}.get(
            np.dtype(dtype), "bfloat16")
    with open(os.path.join(out_dir, "config.json"), "w") as fh:
        json.dump(hf_cfg, fh, indent=2)
    if tokenizer is not None:
        tokenizer.save_pretrained(out_dir)
    return files
