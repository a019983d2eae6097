"""The calculate_output parser: arithmetic, functions, precedence, and hostile input."""

from __future__ import annotations

import math

import pytest

from agentrft.graders import FormulaError, evaluate_formula, load_grader, parse_formula
from agentrft.graders.formula import UnknownVariableError


@pytest.mark.parametrize(
    "text, expected",
    [
        ("1 + 2 * 3", 7.0),
        ("(1 + 2) * 3", 9.0),
        ("2 ^ 3 ^ 2", 512.0),  # right-associative
        ("-2 ^ 2", -4.0),  # unary minus binds looser than ^
        ("2 ^ -1", 0.5),
        ("--3", 3.0),
        ("10 / 4 - 1", 1.5),
        ("min(a, b, 0.7) + max(a)", 0.2 + 0.2),
        ("abs(-a) + floor(2.7) + ceil(b)", 0.2 + 2 + 1),
        ("exp(0) + sqrt(16) + log(1)", 5.0),
        ("1e-1 * .5 + 2.", 2.05),
        ("0.5 * a + 0.5 * b", 0.5),
    ],
)
def test_evaluates(text, expected):
    assert evaluate_formula(text, {"a": 0.2, "b": 0.8}) == pytest.approx(expected)


def test_variables_are_collected():
    assert parse_formula("w * acc + min(tools, 1) - log(x)").variables == {"w", "acc", "tools", "x"}


@pytest.mark.parametrize(
    "hostile",
    [
        "__import__('os')",
        "__import__('os').system('true')",
        "a.__class__",
        "a.real",
        "lambda: 1",
        "a[0]",
        "open('f')",
        "eval('1')",
        "a if b else 1",
        "a ** 2",
        "1 +",
        "(1",
        "min()",
        "sqrt(1, 2)",
        "min",
        "1 2",
        "",
        "a; b",
        "'x'",
        "(" * 500 + "1" + ")" * 500,
        "1" + "+1" * 5000,
        "1" + "+1" * 999,  # under the length limit, but too many tokens to nest safely
    ],
)
def test_hostile_input_is_a_parse_error(hostile):
    with pytest.raises(FormulaError) as e:
        parse_formula(hostile)
    assert e.value.flag == "formula_parse_error"


@pytest.mark.parametrize("text", ["2 ^ 99999999", "10 ^ 10 ^ 10", "1 / 0", "sqrt(-1)", "log(0)", "exp(1000)"])
def test_runtime_math_errors_are_flagged_not_raised_as_python_errors(text):
    with pytest.raises(FormulaError) as e:
        evaluate_formula(text, {})
    assert e.value.flag == "formula_parse_error"


def test_unknown_variable_flag():
    with pytest.raises(UnknownVariableError) as e:
        evaluate_formula("a + nope", {"a": 1})
    assert e.value.flag == "invalid_variable_error"


def test_multi_grader_flags_runtime_formula_errors():
    sc = {"type": "string_check", "input": "{{sample.output_text}}", "reference": "x", "operation": "eq"}
    grader = load_grader({"type": "multi", "graders": {"a": sc}, "calculate_output": "1 / (a - 1)"})
    grade = grader.grade("x", {})
    assert grade.reward == 0.0 and grade.errors["formula_parse_error"]
    assert "division by zero" in grade.error_messages[0]
    assert math.isclose(grader.grade("y", {}).reward, -1.0)
