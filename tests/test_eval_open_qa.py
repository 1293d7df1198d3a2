"""QaEgo4D open-ended scoring: judge-free exact match / token F1 and the LLM judge's verdicts."""
import pytest

from exo2ego_jax.eval import open_qa


def test_exact_match_and_token_f1_hand_computed():
    assert open_qa.normalize_answer("On the Table!") == "on table"
    assert open_qa.exact_match("The table.", "table") and not open_qa.exact_match("a table", "the chair")
    # pred {on, kitchen, table} vs gold {on, table}: 2 common -> P 2/3, R 1 -> F1 0.8.
    assert open_qa.token_f1("on the kitchen table", "on the table") == pytest.approx(0.8)
    assert open_qa.token_f1("", "") == 1.0 and open_qa.token_f1("", "x") == 0.0
    assert open_qa.token_f1("in the drawer", "on the table") == 0.0


def test_parse_judge_replies():
    assert open_qa.parse_judge('{"pred": "yes", "score": 4}') == (True, 4.0)
    assert open_qa.parse_judge("{'pred': 'no', 'score': 1}") == (False, 1.0)
    assert open_qa.parse_judge('Sure! {"pred": "YES", "score": 9}') == (True, 5.0)  # clipped to 0..5
    assert open_qa.parse_judge("I think so.") == (None, None)


def _rows():
    return [{"question": "Where are the keys?", "answer": "on the table", "response": "On the table."},
            {"question": "What did I pour?", "answer": "milk from the white carton", "response": "white milk"},
            {"question": "How many cups?", "answer": "2", "response": "three"}]


def test_judge_free_scores():
    m = open_qa.score_answers(_rows(), judge=None)
    assert m["scorer"] == "match" and m["num"] == 3
    assert m["accuracy"] == m["exact_match"] == pytest.approx(100 / 3)
    # F1: 1; {white, milk} vs {milk, from, white, carton}: P 1, R 1/2 -> 2/3; 0.
    assert m["token_f1"] == pytest.approx(100 * (1 + 2 / 3 + 0) / 3)
    assert m["score"] != m["score"]  # NaN: only a judge grades


def test_judge_scores_and_prompt(tmp_path):
    template = open_qa.read_judge_prompt()  # the file shipped in the repository
    seen = []

    def judge(prompts):
        seen.extend(prompts)
        replies = ['{"pred": "yes", "score": 5}', '{"pred": "yes", "score": 3}', "no idea"]
        return replies[len(seen) - len(prompts):len(seen)]

    rows = _rows()
    m = open_qa.score_answers(rows, judge, template, batch_size=2)
    assert m["scorer"] == "judge" and m["accuracy"] == pytest.approx(200 / 3)
    assert m["score"] == pytest.approx((5 + 3 + 0) / 3) and m["judge_unparsed"] == 1
    assert "Correct answer: milk from the white carton" in seen[1] and "Predicted answer: white milk" in seen[1]
    assert rows[2]["judge_reply"] == "no idea" and rows[2]["judge_correct"] is None
    bad = tmp_path / "judge.txt"
    bad.write_text("Grade {prediction}")
    with pytest.raises(ValueError, match=r"lacks placeholder\(s\) \['\{question\}', '\{answer\}'\]"):
        open_qa.read_judge_prompt(str(bad))
