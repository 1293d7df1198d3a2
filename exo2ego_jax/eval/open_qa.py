"""Open-ended video QA (QaEgo4D open): the official records, judge-free scores, the judge's reply.

The paper reports QaEgo4D open-ended "accuracy / score": an LLM judge says whether each answer is
right (accuracy, %) and grades it 0-5 (score). With a judge (`eval.judge.checkpoint`, any decoder
checkpoint the stack loads; prompt in `judge_prompt.txt`) both are computed; without one the
judge-free fallback reports exact match (as accuracy) and token F1, and `scorer` says which ran.
"""
from __future__ import annotations

import json
import os
import re
import string
from collections import Counter
from typing import Any, Callable, Sequence

import numpy as np

from exo2ego_jax.eval.loaders_mcq import EGO4D_FPS, _as_list, read_json, require
from exo2ego_jax.eval.records import OpenQARecord, VideoRef

JUDGE_PROMPT_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "judge_prompt.txt")
JUDGE_MAX_SCORE = 5  # the judge grades 0..5 (the paper's QaEgo4D open "score" column)
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PRED = re.compile(r"[\"']?pred[\"']?\s*:\s*[\"']?(yes|no)\b", re.I)
_SCORE = re.compile(r"[\"']?score[\"']?\s*:\s*[\"']?(\d+(?:\.\d+)?)", re.I)


def load_qaego4d_open(annotation: str, video_dir: str, fps: float = EGO4D_FPS) -> list[OpenQARecord]:
    """QaEgo4D `annotations.<split>.json` (lbaermann/qaego4d): {video_id, sample_id, question, answer,
    moment_start_frame, moment_end_frame}. The question is asked about the whole clip
    `<video_dir>/<video_id>.mp4`; the moment (frames at 30 fps, may be float) stays in `meta`.
    The closed file (with `wrong_answers`) is read too; its distractors are ignored.
    """
    items = _as_list(read_json(annotation), annotation)
    records = []
    for i, item in enumerate(items):
        require(item, ["video_id", "sample_id", "question", "answer"], annotation, i)
        meta: dict[str, Any] = {}
        if "moment_start_frame" in item and "moment_end_frame" in item:
            meta["moment"] = (float(item["moment_start_frame"]) / fps, float(item["moment_end_frame"]) / fps)
        records.append(OpenQARecord(
            uid=str(item["sample_id"]), video=VideoRef(os.path.join(video_dir, f"{item['video_id']}.mp4")),
            question=str(item["question"]), answer=str(item["answer"]), meta=meta))
    return records


def normalize_answer(text: str) -> str:
    """Lower case, no punctuation, no articles, single spaces (the SQuAD answer normalisation)."""
    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, answer: str) -> bool:
    return normalize_answer(prediction) == normalize_answer(answer)


def token_f1(prediction: str, answer: str) -> float:
    """F1 of the normalised tokens in common (0 if either side is empty, 1 if both are)."""
    pred, gold = normalize_answer(prediction).split(), normalize_answer(answer).split()
    if not pred or not gold:
        return float(pred == gold)
    common = sum((Counter(pred) & Counter(gold)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(gold)
    return 2 * precision * recall / (precision + recall)


def read_judge_prompt(path: str = "") -> str:
    """The judge template (placeholders {question}, {answer}, {prediction})."""
    path = path or JUDGE_PROMPT_FILE
    if not os.path.exists(path):
        raise FileNotFoundError(f"judge prompt {path!r} does not exist (eval.judge.prompt_file)")
    with open(path) as f:
        template = f.read()
    missing = [p for p in ("{question}", "{answer}", "{prediction}") if p not in template]
    if missing:
        raise ValueError(f"judge prompt {path}: lacks placeholder(s) {missing}")
    return template


def judge_prompt(template: str, question: str, answer: str, prediction: str) -> str:
    # str.replace, not str.format: answers and the template's JSON example contain braces.
    return (template.replace("{question}", question).replace("{answer}", answer)
            .replace("{prediction}", prediction))


def parse_judge(reply: str) -> tuple[bool | None, float | None]:
    """'{"pred": "yes", "score": 4}' -> (True, 4.0); a missing field -> None (counted as unparsed)."""
    pred = _PRED.search(reply)
    score = _SCORE.search(reply)
    verdict = None if pred is None else pred.group(1).lower() == "yes"
    value = None if score is None else min(max(float(score.group(1)), 0.0), float(JUDGE_MAX_SCORE))
    return verdict, value


def open_qa_metrics(rows: Sequence[dict[str, Any]], scorer: str) -> dict[str, Any]:
    """Accuracy (%) and score (0-5) from the judge's verdicts, or exact match (%) without a judge;
    exact match and token F1 (%) always."""
    n = len(rows)
    def pct(key: str) -> float:
        return 100.0 * float(np.mean([r[key] for r in rows])) if n else float("nan")

    out: dict[str, Any] = {"scorer": scorer, "num": n, "exact_match": pct("exact_match"), "token_f1": pct("token_f1")}
    if scorer == "judge":
        out["accuracy"] = 100.0 * float(np.mean([bool(r["judge_correct"]) for r in rows])) if n else float("nan")
        out["score"] = float(np.mean([r["judge_score"] or 0.0 for r in rows])) if n else float("nan")
        out["judge_unparsed"] = sum(r["judge_correct"] is None or r["judge_score"] is None for r in rows)
    else:
        out["accuracy"] = out["exact_match"]
        out["score"] = float("nan")  # only a judge grades 0-5
    return out


def score_answers(rows: list[dict[str, Any]], judge: Callable[[list[str]], list[str]] | None,
                  template: str = "", batch_size: int = 8) -> dict[str, Any]:
    """Fill each row's exact_match / token_f1 (and the judge's reply, verdict, score), then metrics."""
    for r in rows:
        r["exact_match"] = exact_match(r["response"], r["answer"])
        r["token_f1"] = token_f1(r["response"], r["answer"])
    if judge is None:
        return open_qa_metrics(rows, "match")
    prompts = [judge_prompt(template, r["question"], r["answer"], r["response"]) for r in rows]
    for i in range(0, len(prompts), batch_size):
        replies = judge(prompts[i:i + batch_size])
        if len(replies) != len(prompts[i:i + batch_size]):
            raise ValueError(f"judge returned {len(replies)} replies for {len(prompts[i:i + batch_size])} prompts")
        for r, reply in zip(rows[i:i + batch_size], replies):
            r["judge_reply"] = reply
            r["judge_correct"], r["judge_score"] = parse_judge(reply)
    return open_qa_metrics(rows, "judge")


def judge_settings(judge_cfg) -> str:
    """What identifies a judge for the results cache (checkpoint + prompt text)."""
    if not judge_cfg.get("checkpoint"):
        return "match"
    prompt = read_judge_prompt(judge_cfg.get("prompt_file", ""))
    return json.dumps({"checkpoint": judge_cfg.checkpoint, "prompt": prompt})
