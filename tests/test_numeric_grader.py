"""The numeric grader: number extraction, the continuous-credit schedule, flags on unreadable answers."""

from __future__ import annotations

import math

import pytest

from agentrft.graders.base import ERROR_FLAGS
from agentrft.graders.numeric import NumericTolerance, extract_number, grade_numeric, numeric_credit, relative_error
from agentrft.types import Trajectory


@pytest.mark.parametrize(
    "text, expected",
    [
        ("1234.5", 1234.5),
        ("$1,234.5 million", 1234.5),
        ("US$ 1,234,567", 1234567.0),
        ("12.3%", 12.3),
        ("The answer is 42.", 42.0),
        ("-12.3", -12.3),
        ("-$7.5 million", -7.5),
        ("$-7.5 million", -7.5),
        ("\u22123.2", -3.2),  # unicode minus sign
        ("Net income was -$12.3 million (a net loss).", -12.3),
        ("12,450 employees", 12450.0),
        ("0.5", 0.5),
        ("1234.5M", 1234.5),  # unit suffix, not scaled
        ("$1.2 billion", 1.2),  # scale words are not applied
        # several numbers: the last one ...
        ("Q1 was 10.5 and the full year 44.0", 44.0),
        ("I first thought 12 but the answer is 13", 13.0),
        # ... but not a year that only labels the period
        ("Revenue in fiscal 2021 was $1,234.5 million.", 1234.5),
        ("1,234.5 in fiscal 2021", 1234.5),
        ("It was 88 during 2020", 88.0),
        ("FY 2022: 17.5%", 17.5),
        ("There were 2021 employees in 2021", 2021.0),  # a year-like answer still counts
        ("2021", 2021.0),  # the only number is the answer
        ("5-10", 10.0),  # a range, not a negative 10
        ("10-K", 10.0),
    ],
)
def test_extract_number(text, expected):
    assert extract_number(text) == pytest.approx(expected)


@pytest.mark.parametrize("text", ["", None, "I don't know", "FY twenty-one", "3rd", "1234,5"])
def test_extract_number_none(text):
    assert extract_number(text) is None


def test_relative_error_and_credit_schedule():
    assert relative_error(101.0, 100.0) == pytest.approx(0.01)
    assert relative_error(-5.0, 5.0) == pytest.approx(2.0)
    assert relative_error(0.3, 0.0) == pytest.approx(0.3)  # absolute error at a zero reference
    assert numeric_credit(0.0) == 1.0
    assert numeric_credit(0.005) == 1.0
    assert numeric_credit(0.0525) == pytest.approx(0.5)
    assert numeric_credit(0.10) == 0.0
    assert numeric_credit(3.0) == 0.0
    assert numeric_credit(math.nan) == 0.0
    errs = [i / 1000 for i in range(0, 150)]
    credits = [numeric_credit(e) for e in errs]
    assert all(a >= b for a, b in zip(credits, credits[1:]))  # monotone non-increasing
    assert all(0.0 <= c <= 1.0 for c in credits)


def test_tolerance_is_parameterised_and_checked():
    loose = NumericTolerance(full_credit=0.05, zero_credit=0.5, correct=0.05)
    assert numeric_credit(0.04, loose) == 1.0
    assert numeric_credit(0.275, loose) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        NumericTolerance(full_credit=0.2, zero_credit=0.1)
    with pytest.raises(ValueError):
        NumericTolerance(correct=-0.1)


ROW = {"answer": 1234.5, "unit": "$ millions"}


def test_grade_exact_close_and_wrong_answers():
    exact = grade_numeric("1234.5", ROW)
    assert exact.reward == 1.0 and exact.sub_rewards == {"numeric": 1.0, "correct": 1.0}
    assert set(exact.errors) == set(ERROR_FLAGS) and not exact.has_error
    assert exact.grader_version.startswith("numeric-v1")

    close = grade_numeric("$1,245 million", ROW)  # 0.85 % off: correct, partial credit
    assert close.sub_rewards["correct"] == 1.0
    assert 0.9 < close.reward < 1.0

    off = grade_numeric("1,190", ROW)  # 3.6 % off: not correct, some credit
    assert off.sub_rewards["correct"] == 0.0
    assert off.reward == pytest.approx(1 - (abs(1190 - 1234.5) / 1234.5 - 0.005) / 0.095)

    far = grade_numeric("123.45", ROW)
    assert far.reward == 0.0 and far.sub_rewards["correct"] == 0.0 and not far.has_error

    flipped = grade_numeric("-12.3", {"answer": 12.3})
    assert flipped.reward == 0.0
    assert grade_numeric("Net income was -$12.3 million", {"answer": -12.3}).reward == 1.0


def test_no_number_is_flagged_never_silent():
    g = grade_numeric("I could not find it.", ROW)
    assert g.reward == 0.0 and g.sub_rewards == {"numeric": 0.0, "correct": 0.0}
    assert g.errors["sample_parse_error"] is True
    assert g.has_error and "no number" in g.error_messages[0]


def test_bad_reference_is_flagged():
    g = grade_numeric("12", {"answer": "n/a"})
    assert g.errors["invalid_variable_error"] and g.reward == 0.0
    assert grade_numeric("12", {}).errors["invalid_variable_error"]
    assert grade_numeric("12", {"answer": True}).errors["invalid_variable_error"]
    assert grade_numeric("1234.5", {"answer": "$1,234.5"}).reward == 1.0  # a numeric string reference is fine


def test_answer_key_and_tolerance_arguments():
    row = {"gold": 50.0}
    assert grade_numeric("52", row, answer_key="gold").reward == pytest.approx(1 - (0.04 - 0.005) / 0.095)
    assert grade_numeric("52", row, answer_key="gold", tolerance=NumericTolerance(0.05, 0.5, 0.05)).reward == 1.0
    assert grade_numeric("52", row, answer_key="gold", tolerance=NumericTolerance(0.05, 0.5, 0.05)).sub_rewards["correct"] == 1.0


def test_grades_the_final_assistant_message_of_a_trajectory():
    traj = Trajectory(
        task_id="t",
        messages=[
            {"role": "user", "content": "Revenue of X in fiscal 2021?"},
            {"role": "assistant", "content": "", "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "read", "arguments": "{\"doc_id\": \"10K-X-2021\"}"}}
            ]},
            {"role": "tool", "tool_call_id": "c1", "content": "Revenue was $999.0 million."},
            {"role": "assistant", "content": "1234.5"},
        ],
    )
    assert grade_numeric(traj, ROW).reward == 1.0
    traj.messages[-1] = {"role": "assistant", "content": "Sorry."}  # numbers elsewhere do not count
    assert grade_numeric(traj, ROW).errors["sample_parse_error"]
    assert grade_numeric({"output_text": "1234.5"}, ROW).reward == 1.0  # an OpenAI-style sample dict
