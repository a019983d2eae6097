"""Graders: OpenAI-compatible grader specs turned into ``(sample, item) -> Grade``.

Bring OpenAI grader JSON unchanged (``string_check``, ``text_similarity``,
``python``, ``score_model``, ``label_model``, ``multi``) or use agentrft's
extensions (``endpoint``; ``tool_calls``, ``tool_errors``, ``tokens``,
``latency``). See docs/graders.md.

    grader = load_grader("grader.json")
    grade = grader.grade(trajectory, row)     # -> agentrft.types.Grade
    grades = grade_batch(grader, trajectories, rows, max_concurrency=8)
"""

from agentrft.graders.base import ERROR_FLAGS, Grader, GradingFailure
from agentrft.graders.batch import (
    GraderErrorRateError,
    GraderErrorStats,
    check_error_rate,
    grade_batch,
    safe_grade,
)
from agentrft.graders.formula import FormulaError, evaluate_formula, parse_formula
from agentrft.graders.loader import load_grader
from agentrft.graders.model_graders import JudgeClient, JudgeConfig, OpenAIChatJudge
from agentrft.graders.python_grader import PythonLimits, network_isolation
from agentrft.graders.sample import build_sample
from agentrft.graders.spec import GRADER_TYPES, grader_version, normalised_spec, parse_spec
from agentrft.graders.templates import TemplateError, render

__all__ = [
    "ERROR_FLAGS",
    "GRADER_TYPES",
    "FormulaError",
    "Grader",
    "GraderErrorRateError",
    "GraderErrorStats",
    "GradingFailure",
    "JudgeClient",
    "JudgeConfig",
    "OpenAIChatJudge",
    "PythonLimits",
    "TemplateError",
    "build_sample",
    "check_error_rate",
    "evaluate_formula",
    "grade_batch",
    "grader_version",
    "load_grader",
    "network_isolation",
    "normalised_spec",
    "parse_formula",
    "parse_spec",
    "render",
    "safe_grade",
]
