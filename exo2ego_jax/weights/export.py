"""Export a DecoderLM (LoRA merged) back to a HF safetensors directory."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np

from exo2ego_jax.models.llm import DecoderLM, LLMConfig
from exo2ego_jax.weights import llm_weights, safetensors_io

# Files copied from the source checkpoint so the export loads with transformers' AutoModel/AutoTokenizer.
_SIDE_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
               "special_tokens_map.json", "tokenizer.model", "vocab.json", "merges.txt",
               "chat_template.jinja", "added_tokens.json")


def hf_config(cfg: LLMConfig) -> dict:
    """A transformers config.json dict describing ``cfg`` (LLMConfig.from_hf inverts it).

    Raises where transformers' class for ``cfg.model_type`` cannot express the config (its
    model would silently compute something else).
    """
    arch = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM"}
    mt = cfg.model_type
    rope = cfg.rope_dict
    problems = []
    if rope and rope.get("rope_type") == "rope_freqs":
        problems.append("RoPE given as llama.cpp's per-frequency factors (rope_freqs) has no transformers "
                        "rope type; export from the original HF checkpoint's config (source_dir)")
    if mt == "qwen2" and (not cfg.attention_bias or cfg.o_proj_bias or cfg.mlp_bias):
        problems.append("transformers' Qwen2 always has q/k/v biases and no o_proj / MLP bias")
    if mt == "mistral" and (cfg.attention_bias or cfg.o_proj_bias or cfg.mlp_bias):
        problems.append("transformers' Mistral has no biases")
    if mt == "llama" and (cfg.attention_bias != cfg.o_proj_bias):
        problems.append("transformers' Llama biases q/k/v and o_proj together (attention_bias)")
    windows = cfg.layer_windows
    if any(windows) and mt == "llama":
        problems.append("transformers' Llama has no sliding window (use model_type mistral or qwen2)")
    if any(windows) and mt == "mistral" and not all(windows):
        problems.append("transformers' Mistral applies the sliding window to every layer")
    if problems:
        raise ValueError(f"cannot write a {mt} config.json for this model: " + "; ".join(problems) + ".")
    hf_cfg = {
        "architectures": [arch[mt]], "model_type": mt,
        "hidden_size": cfg.hidden_size, "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_layers, "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.num_kv_heads, "head_dim": cfg.head_dim,
        "rms_norm_eps": cfg.rms_norm_eps, "rope_theta": cfg.rope_theta,
        # The legacy key: transformers 4.x reads it, 5.x converts it to rope_parameters.
        "rope_scaling": {k: (list(v) if isinstance(v, tuple) else v) for k, v in rope.items()} if rope else None,
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "max_position_embeddings": cfg.max_position_embeddings, "hidden_act": "silu",
        "bos_token_id": cfg.bos_token_id, "eos_token_id": cfg.eos_token_id,
    }
    if mt == "llama":
        hf_cfg.update(attention_bias=cfg.attention_bias, mlp_bias=cfg.mlp_bias)
    if mt == "mistral":
        hf_cfg["sliding_window"] = cfg.sliding_window if any(windows) else None
    if mt == "qwen2":
        hf_cfg.update(use_sliding_window=any(windows), sliding_window=cfg.sliding_window if any(windows) else None,
                      # max_window_layers for transformers 4.x; layer_types (5.x) says it per layer.
                      max_window_layers=next((i for i, w in enumerate(windows) if w), cfg.num_layers),
                      layer_types=["sliding_attention" if w else "full_attention" for w in windows])
    return hf_cfg


def export_hf(model: DecoderLM, out_dir: str, *, source_dir: str | None = None, dtype=None,
              max_shard_bytes: int = 5 * 2**30, tokenizer=None) -> list[str]:
    """Writes ``model`` as HF safetensors (sharded with index.json past ``max_shard_bytes``).

    config.json (and tokenizer files) come from ``source_dir`` when given; the vocab size is
    updated if embeddings were resized for added tokens. Without a source, a config.json is
    written from ``model.cfg`` (``hf_config``: windows, biases and RoPE included). Returns the
    safetensors files written.
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
        hf_cfg = hf_config(cfg)
    hf_cfg["vocab_size"] = int(tensors["model.embed_tokens.weight"].shape[0])
    if dtype is not None:
        hf_cfg["torch_dtype"] = {np.dtype("float32"): "float32", np.dtype("float16"): "float16"}.get(
            np.dtype(dtype), "bfloat16")
    with open(os.path.join(out_dir, "config.json"), "w") as fh:
        json.dump(hf_cfg, fh, indent=2)
    if tokenizer is not None:
        tokenizer.save_pretrained(out_dir)
    return files
