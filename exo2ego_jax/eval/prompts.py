"""MCQ prompt formats: EgoBench-style (Exo2Ego) and Ego2ExoVLM's exact format.

The model adapter wraps these strings in its chat template and adds the video placeholder;
the strings here are the user turn's text only.
"""
from __future__ import annotations

from exo2ego_jax.eval.records import MCQRecord

# Exo2Ego (docs/papers.md, EgoBench): the evaluation prompt adds task details and a first-person cue
# ("this video is recorded from your own point of view"-like; worth +1.1 avg). The paper does not
# print its wording: these sentences are ours [I]; `first_person_text` is a config field.
FIRST_PERSON_TEXT = "This video is recorded from your own point of view."

TASK_DETAILS = {
    "egoschema": "The video is a three-minute egocentric recording; the camera wearer is referred to as C. "
                 "Answer the question about the overall activity in the video.",
    "egoplan": "The video shows the progress of a task up to the current moment, whose last frame is the "
               "current observation. Choose the most reasonable next action.",
    "qaego4d": "Answer the question about objects, places and events seen in the video.",
    "egotaskqa": "Answer the question about the actions, object states and goals in the video.",
    "vlnqa": "The video shows what an agent sees while navigating. Choose the next action it should take.",
    "ego_in_exo": "Answer the question about the person performing the activity in the video.",
    "adlx": "Answer the question about the daily activity in the video.",
    "epic_mir": "The video is a short egocentric clip of an action in a kitchen.",
    "charades_ego": "The video shows a person's activity at home.",
    "egomcq": "The video is a short egocentric clip; the camera wearer is referred to as C.",
}
DEFAULT_TASK_DETAIL = "Answer the multiple-choice question about the video."

# VideoLLaMA2's MCQ instruction (its EgoSchema eval maps options to (A)..(E)), the base of EgoBench.
EGOBENCH_SUFFIX = "Answer with the option's letter from the given choices directly."

# Ego2ExoVLM (docs/papers.md, Ego2ExoVLM evaluation; EgoExo4ADL egoperceptionmcq.py): options joined by single spaces.
EGO2EXO_TEMPLATE = ("{question} The output should be the choice among one of the following choices. "
                    "Choices are {choices}")

STYLES = ("egobench", "ego2exo", "raw")
# Benchmarks whose papers evaluate with Ego2ExoVLM's format when `prompt_style="auto"`.
EGO2EXO_BENCHMARKS = ("ego_in_exo", "adlx")


def resolve_style(style: str, family: str) -> str:
    """`auto` -> `ego2exo` for the Ego2ExoVLM benchmarks, `egobench` otherwise."""
    if style == "auto":
        return "ego2exo" if family in EGO2EXO_BENCHMARKS else "egobench"
    if style not in STYLES:
        raise ValueError(f"eval.prompt_style: expected 'auto' or one of {STYLES}, got {style!r}")
    return style


def ego2exo_prompt(record: MCQRecord) -> str:
    """Ego2ExoVLM: "{question} The output should be ... Choices are (A) x (B) y"."""
    choices = " ".join(f"({letter}) {option}" for letter, option in zip(record.letters, record.options))
    return EGO2EXO_TEMPLATE.format(question=record.question, choices=choices)


def egobench_prompt(record: MCQRecord, family: str, *, first_person: bool, task_details: bool,
                    first_person_text: str = FIRST_PERSON_TEXT) -> str:
    """Exo2Ego EgoBench style: task detail, first-person cue, question, lettered options."""
    lines = _preamble(family, first_person, task_details, first_person_text)
    lines.append(f"Question: {record.question}")
    lines.append("Options:")
    lines.extend(f"({letter}) {option}" for letter, option in zip(record.letters, record.options))
    lines.append(EGOBENCH_SUFFIX)
    return "\n".join(lines)


def build_mcq_prompt(record: MCQRecord, family: str, *, style: str = "auto", first_person: bool = True,
                     task_details: bool = True, first_person_text: str = FIRST_PERSON_TEXT) -> str:
    """The prompt for one MCQ record. `raw` uses the benchmark's own prompt text where the file
    carries one (VLN-QA `text`), else falls back to EgoBench style."""
    style = resolve_style(style, family)
    if style == "ego2exo":
        return ego2exo_prompt(record)
    if style == "raw" and "raw_prompt" in record.meta:
        return record.meta["raw_prompt"]
    return egobench_prompt(record, family, first_person=first_person, task_details=task_details,
                           first_person_text=first_person_text)


# QaEgo4D open-ended answers are short phrases ("on the table"); ask for one so EM / F1 are fair.
OPEN_SUFFIX = "Answer the question with a short phrase."
# EPIC-KITCHENS MIR likelihood scoring: the log-likelihood of each sentence as the clip's caption.
CAPTION_INSTRUCTION = "Describe the action in the video in one short sentence."


def _preamble(family: str, first_person: bool, task_details: bool, first_person_text: str) -> list[str]:
    lines = []
    if task_details:
        lines.append(TASK_DETAILS.get(family, DEFAULT_TASK_DETAIL))
    if first_person:
        lines.append(first_person_text)
    return lines


def build_open_prompt(question: str, family: str, *, first_person: bool = True, task_details: bool = True,
                      first_person_text: str = FIRST_PERSON_TEXT) -> str:
    """An open-ended question in EgoBench style: task detail, first-person cue, question, short-answer ask."""
    return "\n".join(_preamble(family, first_person, task_details, first_person_text)
                     + [f"Question: {question}", OPEN_SUFFIX])


def build_caption_prompt(family: str, *, first_person: bool = True, task_details: bool = True,
                         first_person_text: str = FIRST_PERSON_TEXT) -> str:
    """The prompt whose continuation (a sentence) is scored in likelihood retrieval."""
    return "\n".join(_preamble(family, first_person, task_details, first_person_text) + [CAPTION_INSTRUCTION])


def option_targets(record: MCQRecord, target: str = "text") -> list[str]:
    """Continuations scored in log-likelihood mode: `text` (the option) or `letter_text` ("(A) x")."""
    if target == "text":
        return list(record.options)
    if target == "letter_text":
        return [f"({letter}) {option}" for letter, option in zip(record.letters, record.options)]
    raise ValueError(f"eval.loglik_target: expected 'text' or 'letter_text', got {target!r}")
