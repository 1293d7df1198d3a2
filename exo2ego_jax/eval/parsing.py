"""Answer-letter parsing for generated MCQ answers: regex first, then option-text matching.

Order (the first that yields a valid letter wins; docs/papers.md, Ego2ExoVLM evaluation: "letter parsed by
regex, then by matching the option text"):

1. `(B)` or `(b)` anywhere (the first valid one).
2. An answer phrase: `Answer: B`, `the answer is B`, `Option B`, `correct choice: (B)`. A
   lowercase letter counts here only when punctuation or the end follows it, so
   "the answer is a cup" is not read as option A.
3. A leading letter with punctuation: `B.`, `B)`, `B:`, `b.`.
4. The whole response is one letter (`B`, `b`, `"B"`).
5. An upper-case letter followed by `.` or `)` anywhere (`I pick B.`).
Then option text: exact match, then an option contained in the response (the longest one; a tie
between different options is ambiguous), then the best token-F1 overlap above a threshold (a
unique best only). Anything else is unparseable (`index=None`), which the metrics count as wrong
and report separately.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Sequence

from exo2ego_jax.eval.records import LETTERS

_PAREN = re.compile(r"\(\s*([A-Za-z])\s*\)")
_PHRASE = re.compile(
    r"\b(?:answer|option|choice)\b(?:\s+(?:is|would\s+be|should\s+be))?\s*[:\-]?\s*\(?([A-Za-z])(?![A-Za-z])(?=(.*))",
    re.IGNORECASE | re.DOTALL)
_LEADING = re.compile(r"^\W*?([A-Za-z])\s*[\.\):](?!\w)")
_LONE = re.compile(r"^\W*([A-Za-z])\W*$")
_INLINE = re.compile(r"(?<![A-Za-z])([A-Z])[\.\)](?!\w)")
_WORD = re.compile(r"[a-z0-9]+")


@dataclasses.dataclass(frozen=True)
class ParseResult:
    """`index` into the options (None = unparseable) and which rule found it."""

    index: int | None
    method: str  # "paren" | "phrase" | "leading" | "lone" | "inline" | "exact" | "contained" | "overlap" | "none"


def _normalize(text: str) -> str:
    return " ".join(_WORD.findall(text.lower()))


def _letter_index(letter: str, num_options: int) -> int | None:
    idx = LETTERS.find(letter.upper())
    return idx if 0 <= idx < num_options else None


def parse_letter(response: str, num_options: int, options: Sequence[str] = ()) -> ParseResult:
    """Regex stage only: the option letter in `response`, or `ParseResult(None, "none")`.

    With `options`, an answer phrase whose "letter" starts an option's text is left to the text
    stage: in EgoSchema "the answer is C prepares tea" names option "C prepares tea", not (C).
    """
    norm_options = [_normalize(o) for o in options]
    for m in _PAREN.finditer(response):
        if (idx := _letter_index(m.group(1), num_options)) is not None:
            return ParseResult(idx, "paren")
    for m in _PHRASE.finditer(response):
        letter, after = m.group(1), m.group(2)
        if letter.islower() and after.strip() and after.lstrip()[:1].isalnum():
            continue  # "the answer is a cup": an article, not option A
        if after.lstrip()[:1].isalnum() and any(
                o and _normalize(letter + after).startswith(o) for o in norm_options):
            continue
        if (idx := _letter_index(letter, num_options)) is not None:
            return ParseResult(idx, "phrase")
    if (m := _LEADING.match(response)) and (idx := _letter_index(m.group(1), num_options)) is not None:
        return ParseResult(idx, "leading")
    if (m := _LONE.match(response)) and (idx := _letter_index(m.group(1), num_options)) is not None:
        return ParseResult(idx, "lone")
    for m in _INLINE.finditer(response):
        if (idx := _letter_index(m.group(1), num_options)) is not None:
            return ParseResult(idx, "inline")
    return ParseResult(None, "none")


def _token_f1(a: list[str], b: list[str]) -> float:
    if not a or not b:
        return 0.0
    common = sum(min(a.count(t), b.count(t)) for t in set(a))
    if common == 0:
        return 0.0
    precision, recall = common / len(a), common / len(b)
    return 2 * precision * recall / (precision + recall)


def match_option_text(response: str, options: list[str], overlap_threshold: float = 0.5) -> ParseResult:
    """Text stage only: exact, then contained (longest option wins), then best token F1."""
    resp = _normalize(response)
    opts = [_normalize(o) for o in options]
    if not resp:
        return ParseResult(None, "none")
    exact = [i for i, o in enumerate(opts) if o and o == resp]
    if len(exact) == 1:
        return ParseResult(exact[0], "exact")
    padded = f" {resp} "
    contained = [i for i, o in enumerate(opts) if o and f" {o} " in padded]
    if contained:
        longest = max(len(opts[i]) for i in contained)
        best = [i for i in contained if len(opts[i]) == longest]
        # An option that is part of a longer contained option ("hand" in "right hand") is
        # explained by the longer one; two different equally long options are ambiguous.
        if len({opts[i] for i in best}) == 1:
            return ParseResult(best[0], "contained")
    resp_tokens = resp.split()
    scores = [_token_f1(resp_tokens, o.split()) for o in opts]
    top = max(scores)
    if top >= overlap_threshold and scores.count(top) == 1:
        return ParseResult(scores.index(top), "overlap")
    return ParseResult(None, "none")


def parse_answer(response: str, options: list[str], overlap_threshold: float = 0.5) -> ParseResult:
    """Letter regex, then option-text match; see the module docstring for the order."""
    result = parse_letter(response, len(options), options)
    if result.index is not None:
        return result
    return match_option_text(response, options, overlap_threshold)
