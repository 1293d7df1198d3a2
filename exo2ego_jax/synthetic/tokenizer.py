"""A small word-level Hugging Face tokenizer for the synthetic world.

The demos train tiny models on synthetic Ego-Exo4D data. A 49k-token BPE vocabulary would dominate
their parameter count, so this builds a word-level tokenizer over the words that actually occur
(narrations, keystep names, questions, answers, instruction templates). The result is a plain local
HF tokenizer directory (``tokenizer.json`` + ``tokenizer_config.json`` with a chat template) that
``transformers.AutoTokenizer.from_pretrained(dir)`` loads offline. The vocabulary order is
deterministic (frequency, then alphabetical), so two builds over the same texts are identical.

With ``stems=True`` a word that is another word of the corpus plus a final "s" ("picks" = "pick" +
"s") is not a token of its own: it becomes the stem and a continuation piece ``##s`` (WordPiece),
as subword vocabularies of pretrained LLMs share stems between inflections. A tiny LLM trained
from scratch on narrations ("C picks up ...") then already has trained embeddings and output rows
for the words that questions and answers use ("pick up").
"""
from __future__ import annotations

import collections
import json
import os
import re
from typing import Iterable

from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers
from tokenizers.models import WordLevel, WordPiece
from exo2ego_jax.data import egoexo4d, instructions

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
# Not words: uids, paths, file names, take names ("synth_drink_0184": one per take, never said).
_UID_OR_PATH = re.compile(r"[0-9a-fA-F-]{8,}|\S*[/\\]\S*|\S+\.(mp4|json|jpg|png)|\w+_\d{3,}")


def words(text: str) -> list[str]:
    """The words the tokenizer sees in ``text`` (lower-cased, punctuation split off)."""
    return _WORD_RE.findall(text.lower())


SUFFIX = "##s"  # the one continuation piece of stems=True
MIN_STEM = 3  # "is" / "its" keep their own tokens


def build_vocab(texts: Iterable[str], *, min_count: int = 1, stems: bool = False) -> dict[str, int]:
    """Special tokens first, then words by descending count, ties alphabetical (deterministic).

    ``stems``: words that are another corpus word + "s" are counted as that word + ``##s``.
    """
    counts: collections.Counter[str] = collections.Counter()
    for text in texts:
        counts.update(w for w in words(text) if w not in SPECIAL_TOKENS)
    if stems:
        split = [w for w in counts if len(w) > MIN_STEM and w.endswith("s") and w[:-1] in counts]
        for w in split:
            n = counts.pop(w)
            counts[w[:-1]] += n
            counts[SUFFIX] += n
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for word, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        if n >= min_count and word not in vocab:
            vocab[word] = len(vocab)
    return vocab


def build_tokenizer(texts: Iterable[str], out_dir: str, *, min_count: int = 1,
                    model_max_length: int = 4096, stems: bool = False) -> str:
    """Builds the word-level tokenizer over ``texts`` and saves it as an HF tokenizer dir.

    Returns ``out_dir``. Load it with ``transformers.AutoTokenizer.from_pretrained(out_dir)``.
    """
    vocab = build_vocab(texts, min_count=min_count, stems=stems)
    # WordPiece matches the longest vocabulary prefix of each word, then "##" pieces: with stems
    # "picks" -> "pick", "##s"; a word with no split is one token, exactly as WordLevel gives.
    model = WordPiece(vocab=vocab, unk_token=UNK, continuing_subword_prefix="##") if stems else \
        WordLevel(vocab=vocab, unk_token=UNK)
    tok = Tokenizer(model)
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


def world_texts(root: str, skips=None) -> list[str]:
    """Every text of a synthetic (or real) Ego-Exo4D world that a demo model may read or write.

    Reads the atomic-description and keystep annotations, ``synthetic_meta.json`` (all string
    values) and the instruction templates of :mod:`exo2ego_jax.data.instructions`. Files are read
    as the Ego-Exo4D reader reads them (a malformed file is an error naming it); a text with
    invalid UTF-8 is left out and counted in ``skips`` (a SkipCounter) as ``non_utf8_text`` with
    its file name.
    """

    texts: list[str] = list(instructions.all_template_texts())
    paths = []
    ann = os.path.join(root, "annotations")
    for name in sorted(os.listdir(ann)) if os.path.isdir(ann) else []:
        if name.startswith(("atomic_descriptions_", "keystep_")) and name.endswith(".json"):
            paths.append(os.path.join(ann, name))
    meta = os.path.join(root, "synthetic_meta.json")
    if os.path.exists(meta):
        paths.append(meta)
    for path in paths:
        for text in _strings(egoexo4d.load_json(path)):
            if egoexo4d.has_bad_text(text):
                if skips is not None:
                    skips.skip("non_utf8_text", path, repr(text)[:60])
                continue
            texts.append(text)
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
