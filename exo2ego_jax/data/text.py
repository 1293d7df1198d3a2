"""Chat-template tokenisation with answer-only labels, placeholder expansion and static padding.

Conversations use the LLaVA/VideoLLaMA2 roles (``human``/``gpt``, docs/formats.md section 3) or chat
roles (``user``/``assistant``/``system``); they are rendered with the tokenizer's own
``apply_chat_template``. Answer spans are found by rendering the conversation prefix by prefix:
the characters that turn ``render(messages[:i], add_generation_prompt=True)`` into
``render(messages[:i+1])`` are assistant turn ``i`` (its answer and end-of-turn markup, so the
model learns to stop). Tokens whose character offsets start inside such a span carry their id as
label; every other position is ``IGNORE_INDEX``. This works for any template whose renders are
prefixes of each other, which holds for the usual ChatML / Llama / Mistral / Zephyr templates; a
template for which it fails raises an error naming it instead of silently mislabelling.

Each ``<video>`` placeholder token is then expanded to ``num_visual_tokens`` copies (the model
replaces them with visual tokens), and ``<probe>`` to ``num_probes`` copies; with
``num_probes > 0`` and no explicit ``<probe>`` in the text, probes go right after each video's
tokens (Ego2ExoVLM EAVT places them after the visual tokens, before the question). Sequences
longer than ``max_len`` raise :class:`TextTooLong` (the pipeline skips and counts them): cutting
text could cut placeholders or the whole answer, so nothing is truncated.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

IGNORE_INDEX = -100  # LLaVA / VideoLLaMA2 IGNORE_INDEX (docs/formats.md section 3)
ROLE_MAP = {"human": "user", "gpt": "assistant", "user": "user", "assistant": "assistant",
            "system": "system"}


class TextError(ValueError):
    """A conversation that cannot become a training example (the pipeline skips it)."""

    reason = "bad_text"


class TextTooLong(TextError):
    reason = "text_too_long"


class NoAnswer(TextError):
    reason = "no_answer"


@dataclasses.dataclass(frozen=True)
class Encoded:
    """One tokenised conversation, padded to a static length."""

    input_ids: np.ndarray       # [max_len] int32
    labels: np.ndarray          # [max_len] int32, IGNORE_INDEX off answers and on padding
    attention_mask: np.ndarray  # [max_len] int32, 1 = real token
    num_videos: int             # number of <video> placeholders found (before expansion)
    length: int                 # real tokens after expansion


def to_messages(conversations: Sequence[Mapping[str, Any]], system_prompt: str | None = None,
                *, source: str = "<conversation>") -> list[dict[str, str]]:
    """LLaVA turns (``{"from", "value"}``) or chat turns (``{"role", "content"}``) -> chat messages."""
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    for i, turn in enumerate(conversations):
        if not isinstance(turn, Mapping):
            raise TextError(f"{source}: turn {i} is {type(turn).__name__}, expected a dict with "
                            "'from'/'value' (LLaVA) or 'role'/'content'")
        role = turn.get("from", turn.get("role"))
        content = turn.get("value", turn.get("content"))
        if role not in ROLE_MAP:
            raise TextError(f"{source}: turn {i} has role {role!r}; expected one of {sorted(ROLE_MAP)}")
        if not isinstance(content, str):
            raise TextError(f"{source}: turn {i} has {type(content).__name__} content, expected str")
        messages.append({"role": ROLE_MAP[role], "content": content})
    return messages


def special_id(tokenizer, token: str) -> int:
    """Id of a placeholder token that must be a single special token of ``tokenizer``."""
    ids = tokenizer.encode(token, add_special_tokens=False)
    if len(ids) != 1 or ids[0] == tokenizer.unk_token_id:
        raise ValueError(
            f"token {token!r} is not a single token of tokenizer {tokenizer.name_or_path!r} (got ids "
            f"{ids}); load it with exo2ego_jax.tokenizer.load_tokenizer(path, extra_special_tokens="
            f"('<video>', '<probe>')) or add it with tokenizer.add_special_tokens")
    return ids[0]


def check_tokenizer_fits(tokenizer, vocab_size: int, *, placeholder_ids: Iterable[int] = (),
                         tokenizer_field: str = "config.data.tokenizer",
                         vocab_field: str = "config.model.llm.vocab_size") -> None:
    """Raises ValueError when ``tokenizer`` can emit an id that the model's embedding table (``vocab_size``
    rows) lacks: such an id embeds as NaN (or another row) instead of failing. ``placeholder_ids``
    (``<video>``, ``<probe>``) may lie past the table: the model replaces their rows before use."""
    allowed = set(int(i) for i in placeholder_ids)
    past = [i for i in range(vocab_size, len(tokenizer)) if i not in allowed]
    if past:
        shown = ", ".join(f"{i} ({tokenizer.convert_ids_to_tokens(i)!r})" for i in past[:4])
        raise ValueError(
            f"{tokenizer_field}={getattr(tokenizer, 'name_or_path', '')!r} has {len(tokenizer)} tokens but the "
            f"model's vocabulary has {vocab_size} rows ({vocab_field}): token id {past[0]} and {len(past) - 1} more "
            f"lie past it ({shown}) and would embed as NaN. Set {vocab_field} >= {len(tokenizer)} (a model trained "
            f"from scratch), or use the tokenizer the LLM was trained with.")


def check_ids_in_vocabulary(input_ids: np.ndarray, vocab_size: int, *, placeholder_ids: Iterable[int] = (),
                            source: str = "batch") -> None:
    """Host-side guard of a tokenised batch: every id of ``input_ids`` [B, T] is in [0, vocab_size)
    or a placeholder the model replaces; anything else raises ValueError naming the id."""
    ids = np.asarray(input_ids)
    bad = (ids < 0) | (ids >= vocab_size)
    if placeholder_ids:
        bad &= ~np.isin(ids, np.fromiter(placeholder_ids, np.int64))
    if bad.any():
        where = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(
            f"{source}: input_ids{list(where)} = {int(ids[where])} is outside the model's vocabulary of "
            f"{vocab_size} tokens: the tokenizer does not match the model. Use the LLM's own tokenizer or "
            f"a vocabulary of at least {int(ids[bad].max()) + 1} tokens (config.model.llm.vocab_size).")


class IdsInVocabulary:
    """Grain map of batches: `check_ids_in_vocabulary` on each batch's ``input_ids``, batch unchanged."""

    def __init__(self, vocab_size: int, placeholder_ids: Iterable[int] = ()):
        self.vocab_size = int(vocab_size)
        self.placeholder_ids = tuple(int(i) for i in placeholder_ids)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        check_ids_in_vocabulary(batch["input_ids"], self.vocab_size, placeholder_ids=self.placeholder_ids)
        return batch


def _render(tokenizer, messages, add_generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False,
                                         add_generation_prompt=add_generation_prompt)


def answer_spans(tokenizer, messages: Sequence[Mapping[str, str]]) -> tuple[str, list[tuple[int, int]]]:
    """Renders ``messages`` and returns (text, [(start, end) character span of each assistant turn])."""
    full = _render(tokenizer, messages, False)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prefix = _render(tokenizer, messages[:i], True)
        upto = _render(tokenizer, messages[: i + 1], False)
        if not (upto.startswith(prefix) and full.startswith(upto)):
            raise ValueError(
                f"chat template of {tokenizer.name_or_path!r} does not render conversation prefixes as "
                f"prefixes of the whole (turn {i}), so answer spans cannot be located; use a template "
                "whose renders extend each other")
        end = len(upto.rstrip())  # keep end-of-turn markup, drop trailing newlines
        if end > len(prefix):
            spans.append((len(prefix), end))
    return full, spans


def _expand(ids: Sequence[int], labels: Sequence[int], video_id: int, probe_id: int | None,
            num_visual_tokens: int, num_probes: int) -> tuple[list[int], list[int], int]:
    auto_probes = num_probes > 0 and probe_id is not None and probe_id not in ids
    out_ids: list[int] = []
    out_labels: list[int] = []
    num_videos = 0
    for tok, lab in zip(ids, labels):
        if tok == video_id:
            num_videos += 1
            n_probe = num_probes if auto_probes else 0
            out_ids += [video_id] * num_visual_tokens + [probe_id] * n_probe
            out_labels += [IGNORE_INDEX] * (num_visual_tokens + n_probe)
        elif probe_id is not None and tok == probe_id:
            out_ids += [probe_id] * num_probes
            out_labels += [IGNORE_INDEX] * num_probes
        else:
            out_ids.append(tok)
            out_labels.append(lab)
    return out_ids, out_labels, num_videos


def pad(seq: Sequence[int], max_len: int, value: int, side: str = "right") -> np.ndarray:
    """``seq`` padded with ``value`` to ``max_len`` on ``side`` ("right" train, "left" generation)."""
    if len(seq) > max_len:
        raise TextTooLong(f"sequence of {len(seq)} tokens does not fit max_len={max_len}")
    fill = [value] * (max_len - len(seq))
    out = list(seq) + fill if side == "right" else fill + list(seq)
    return np.asarray(out, np.int32)


def tokenize_conversation(tokenizer, messages: Sequence[Mapping[str, str]], *, max_len: int,
                          num_visual_tokens: int, num_probes: int = 0,
                          video_token: str = "<video>", probe_token: str = "<probe>") -> Encoded:
    """Training example: right-padded ids, answer-only labels and attention mask of ``max_len``."""
    text, spans = answer_spans(tokenizer, messages)
    if not spans:
        raise NoAnswer("conversation has no non-empty assistant turn to train on")
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    labels = []
    for tok, (s, e) in zip(enc["input_ids"], enc["offset_mapping"]):
        inside = any(a <= s < b or (s == e and a < s <= b) for a, b in spans)
        labels.append(tok if inside else IGNORE_INDEX)
    video_id = special_id(tokenizer, video_token)
    probe_id = special_id(tokenizer, probe_token) if num_probes else None
    ids, labels, num_videos = _expand(enc["input_ids"], labels, video_id, probe_id,
                                      num_visual_tokens, num_probes)
    if len(ids) > max_len:
        raise TextTooLong(f"{len(ids)} tokens after expanding {num_videos} <video> placeholder(s) to "
                          f"{num_visual_tokens} tokens exceed max_len={max_len}")
    if all(l == IGNORE_INDEX for l in labels):
        raise NoAnswer("no answer token survived tokenisation")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return Encoded(
        input_ids=pad(ids, max_len, pad_id), labels=pad(labels, max_len, IGNORE_INDEX),
        attention_mask=pad([1] * len(ids), max_len, 0), num_videos=num_videos, length=len(ids))


def encode_prompt(tokenizer, messages: Sequence[Mapping[str, str]], *, max_len: int,
                  num_visual_tokens: int, num_probes: int = 0, video_token: str = "<video>",
                  probe_token: str = "<probe>") -> Encoded:
    """Generation prompt (ends with the assistant header), LEFT-padded to ``max_len``; no labels."""
    text = _render(tokenizer, list(messages), True)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    video_id = special_id(tokenizer, video_token)
    probe_id = special_id(tokenizer, probe_token) if num_probes else None
    ids, _, num_videos = _expand(ids, [IGNORE_INDEX] * len(ids), video_id, probe_id,
                                 num_visual_tokens, num_probes)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return Encoded(input_ids=pad(ids, max_len, pad_id, "left"),
                   labels=np.full((max_len,), IGNORE_INDEX, np.int32),
                   attention_mask=pad([1] * len(ids), max_len, 0, "left"),
                   num_videos=num_videos, length=len(ids))


def stack(encoded: Iterable[Encoded]) -> dict[str, np.ndarray]:
    """[B, T] batch dict from encoded examples."""
    encoded = list(encoded)
    return {"input_ids": np.stack([e.input_ids for e in encoded]),
            "labels": np.stack([e.labels for e in encoded]),
            "attention_mask": np.stack([e.attention_mask for e in encoded])}


def split_shared_prefix(rows: Sequence[Encoded], question: Sequence[int], *, prefix_len: int,
                        option_multiple: int = 8) -> dict[str, np.ndarray] | None:
    """Multiple-choice rows (one tokenised (prompt, option) conversation each) as one prompt per
    question plus the option tokens, for scoring with a shared KV cache (generate.option_log_likelihood).

    ``question[r]`` is the question of row r (0..Q-1, each question with at least one row). A row's
    prompt is everything before its first labelled token; its option runs from there to its last
    real token. Returns ``prefix_ids`` / ``prefix_mask`` [Q, prefix_len] (left-padded),
    ``option_ids`` / ``option_mask`` / ``option_labels`` [R, O] (right-padded; O = the longest
    option rounded up to ``option_multiple``, so shapes repeat across batches); or None when some question's rows do not share one prompt token for token, or a row has no
    label, or a prompt is longer than ``prefix_len`` (then score whole rows instead).
    """
    question = np.asarray(question, np.int32)
    n_q = int(question.max()) + 1 if len(question) else 0
    prefixes: list[np.ndarray | None] = [None] * n_q
    options = []
    for enc, q in zip(rows, question):
        labelled = np.flatnonzero(enc.labels[:enc.length] != IGNORE_INDEX)
        if not len(labelled):
            return None
        first = int(labelled[0])
        prefix = enc.input_ids[:first]
        if len(prefix) > prefix_len or (prefixes[q] is not None and not np.array_equal(prefixes[q], prefix)):
            return None
        prefixes[q] = prefix
        options.append((enc.input_ids[first:enc.length], enc.labels[first:enc.length]))
    if any(p is None for p in prefixes):
        return None
    width = -(-max(len(ids) for ids, _ in options) // option_multiple) * option_multiple
    out = {"prefix_ids": np.zeros((n_q, prefix_len), np.int32), "prefix_mask": np.zeros((n_q, prefix_len), np.int32),
           "option_ids": np.zeros((len(options), width), np.int32),
           "option_mask": np.zeros((len(options), width), np.int32),
           "option_labels": np.full((len(options), width), IGNORE_INDEX, np.int32)}
    for q, prefix in enumerate(prefixes):
        out["prefix_ids"][q, prefix_len - len(prefix):] = prefix
        out["prefix_mask"][q, prefix_len - len(prefix):] = 1
    for r, (ids, labels) in enumerate(options):
        out["option_ids"][r, :len(ids)] = ids
        out["option_mask"][r, :len(ids)] = 1
        out["option_labels"][r, :len(ids)] = labels
    return out
