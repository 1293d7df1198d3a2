"""A small word-level Hugging Face tokenizer for the synthetic world.

The demos train tiny models on synthetic Ego-Exo4D data. A 49k-token BPE vocabulary would dominate
their parameter count, so this builds a word-level tokenizer over the words that actually occur
(narrations, keystep names, questions, answers, instruction templates). The result is a plain local
HF tokenizer directory (``tokenizer.json`` + ``tokenizer_config.json`` with a chat template) that
``transformers.AutoTokenizer.from_pretrained(dir)`` loads offline. The vocabulary order is
deterministic (frequency, then alphabetical), so two builds over the same texts are identical.
"""
from __future__ import annotations

import collections
import json
import os
import re
from typing import Iterable

from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers
from tokenizers.models import WordLevel

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<s>", "</s>"
VIDEO, PROBE = "<video>", "<probe>"
ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>", "<|end|>")
SPECIAL_TOKENS = (PAD, UNK, BOS, EOS, VIDEO, PROBE, *ROLE_TOKENS)

# A role-tagged template in the style of Zephyr/Phi-3: each turn is "<|role|> text <|end|>", so
# an assistant answer is followed by "<|end|>", which therefore gets a label (the model learns to stop).
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|> ' + message['content'] + ' <|end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|> ' }}{% endif %}"
)

# Same split rule as the pre-tokenizer below (words and single punctuation marks), lower-cased.
_WORD_RE = re.compile(r"\w+|[^\w\s]")
_UID_OR_PATH = re.compile(r"[0-9a-fA-F-]{8,}|\S*[/\\]\S*|\S+\.(mp4|json|jpg|png)")


def words(text: str) -> list[str]:
    """The words the tokenizer sees in ``text`` (lower-cased, punctuation split off)."""
    return _WORD_RE.findall(text.lower())


def build_vocab(texts: Iterable[str], *, min_count: int = 1) -> dict[str, int]:
    """Special tokens first, then words by descending count, ties alphabetical (deterministic)."""
    counts: collections.Counter[str] = collections.Counter()
    for text in texts:
        counts.update(w for w in words(text) if w not in SPECIAL_TOKENS)
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for word, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        if n >= min_count and word not in vocab:
            vocab[word] = len(vocab)
    return vocab


def build_tokenizer(texts: Iterable[str], out_dir: str, *, min_count: int = 1,
                    model_max_length: int = 4096) -> str:
    """Builds the word-level tokenizer over ``texts`` and saves it as an HF tokenizer dir.

    Returns ``out_dir``. Load it with ``transformers.AutoTokenizer.from_pretrained(out_dir)``.
    """
    vocab = build_vocab(texts, min_count=min_count)
    tok = Tokenizer(WordLevel(vocab=vocab, unk_token=UNK))
    tok.normalizer = normalizers.Lowercase()
    # Whitespace = the regex \w+|[^\w\s]+ ; Punctuation then splits runs like ".," into single marks.
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Whitespace(), pre_tokenizers.Punctuation()])
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=True)  # joins words with spaces
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    os.makedirs(out_dir, exist_ok=True)
    tok.save(os.path.join(out_dir, "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": BOS, "eos_token": EOS, "pad_token": PAD, "unk_token": UNK,
        "additional_special_tokens": [VIDEO, PROBE, *ROLE_TOKENS],
        "extra_special_tokens": {"video_token": VIDEO, "probe_token": PROBE},
        "chat_template": CHAT_TEMPLATE,
        "model_max_length": model_max_length,
        "padding_side": "right",
        "clean_up_tokenization_spaces": False,
    }
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w") as f:
        json.dump(config, f, indent=1, sort_keys=True)
    with open(os.path.join(out_dir, "special_tokens_map.json"), "w") as f:
        json.dump({"bos_token": BOS, "eos_token": EOS, "pad_token": PAD, "unk_token": UNK,
                   "additional_special_tokens": [VIDEO, PROBE, *ROLE_TOKENS]}, f, indent=1)
    return out_dir


def world_texts(root: str) -> list[str]:
    """Every text of a synthetic (or real) Ego-Exo4D world that a demo model may read or write.

    Reads the atomic-description and keystep annotations, ``synthetic_meta.json`` (all string
    values) and the instruction templates of :mod:`exo2ego_jax.data.instructions`.
    """
    from exo2ego_jax.data import instructions  # local: instructions imports nothing from here

    texts: list[str] = list(instructions.all_template_texts())
    ann = os.path.join(root, "annotations")
    for name in sorted(os.listdir(ann)) if os.path.isdir(ann) else []:
        if name.startswith(("atomic_descriptions_", "keystep_")) and name.endswith(".json"):
            with open(os.path.join(ann, name), encoding="utf-8") as f:
                texts.extend(_strings(json.load(f)))
    meta = os.path.join(root, "synthetic_meta.json")
    if os.path.exists(meta):
        with open(meta, encoding="utf-8") as f:
            texts.extend(_strings(json.load(f)))
    return texts


def _strings(obj) -> Iterable[str]:
    """All string values (not keys) in a JSON tree, except uids and file paths."""
    if isinstance(obj, str):
        if not _UID_OR_PATH.fullmatch(obj):
            yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _strings(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _strings(v)
