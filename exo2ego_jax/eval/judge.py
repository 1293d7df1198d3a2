"""An LLM judge for open-ended answers: any decoder checkpoint the stack loads (HF directory,
.safetensors or .gguf), greedy decoding of the judge prompt (`open_qa.judge_prompt`).

    --config.eval.judge.checkpoint=/models/Qwen2.5-7B-Instruct   (or a .gguf file)

Prompts are batched (`eval.judge.batch_size`) and left-padded to a multiple of `_PAD_MULTIPLE`
tokens so a run compiles a handful of shapes. The judge is not sharded: every process decodes the
same prompts on its first device (a few thousand short replies, small next to the model's own
evaluation), so it needs a checkpoint that fits one device.
"""
from __future__ import annotations

import numpy as np

from exo2ego_jax import chat
from exo2ego_jax import generate as gen
from exo2ego_jax.tokenizer import load_tokenizer
from exo2ego_jax.weights import llm_weights

_PAD_MULTIPLE = 64  # prompt lengths are rounded up to this: one compile per length bucket


class LLMJudge:
    """`judge(prompts) -> replies`: greedy answers of a chat LLM to the judge prompts."""

    def __init__(self, checkpoint: str, *, tokenizer: str = "", max_new_tokens: int = 24,
                 attention_impl: str = "auto", batch_size: int = 8):
        self.tok = load_tokenizer(tokenizer or checkpoint, extra_special_tokens=())
        self.model = llm_weights.load_llm(checkpoint, attention_impl=attention_impl, scan_layers=False)
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        self.eos = chat.end_of_turn_ids(self.tok)
        self.name = checkpoint

    def __call__(self, prompts: list[str]) -> list[str]:
        replies = []
        for i in range(0, len(prompts), self.batch_size):
            chunk = prompts[i:i + self.batch_size]
            n = len(chunk)
            chunk = chunk + [chunk[-1]] * (self.batch_size - n)  # static batch size
            ids = [chat.encode_text(self.tok, chat.build_prompt(self.tok, p)) for p in chunk]
            width = -(-max(len(x) for x in ids) // _PAD_MULTIPLE) * _PAD_MULTIPLE
            pad = self.tok.pad_token_id or 0
            input_ids = np.full((len(ids), width), pad, np.int32)  # [B, T] left-padded
            mask = np.zeros((len(ids), width), np.int32)
            for row, x in enumerate(ids):
                input_ids[row, width - len(x):] = x
                mask[row, width - len(x):] = 1
            out = gen.generate(self.model, input_ids=input_ids, attention_mask=mask,
                               max_new_tokens=self.max_new_tokens, eos_token_id=self.eos, pad_token_id=pad,
                               tokenizer=self.tok)
            replies += [t.strip() for t in out.texts[:n]]
        return replies
