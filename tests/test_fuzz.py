"""Property-based fuzzing of every parser that reads input agentrft does not control.

Configs and ``--set`` overrides (users), dataset rows and JSONL files
(users, soon API clients), the text a model samples (tool calls), grader
specs and ``calculate_output`` formulas (users, soon API clients), and the
URLs the egress policy vets (soon API clients). The
property is the same everywhere: the answer is the documented value or one
of the project's typed errors (an :class:`~agentrft.errors.AgentRFTError`,
or :class:`~agentrft.graders.formula.FormulaError` for formulas), never
another exception and never a hang (hypothesis' per-example deadline and
pytest-timeout on the whole test).

The strategies are built from the grammar each parser expects -- known
section and field names, the chat formats' own markers, the formula's
tokens -- mixed with random values, so examples reach deep into the parsers
instead of failing at the first check. Values that broke them once are
pinned with ``@example``: integers past Python's 4,300-digit limit
(``ValueError`` from ``int()`` inside ``json``/``yaml``), nesting past the
recursion limit, floats that overflow. Example counts keep the file under a
minute on two cores.
"""

from __future__ import annotations

import functools
import json
import math
import tempfile
from datetime import timedelta
from pathlib import Path
from unittest import mock

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from agentrft.config import JobConfig, load_config, parse_override
from agentrft.datasets import (
    DatasetLoad,
    load_jsonl_dataset,
    validate_preference_row,
    validate_row,
    validate_supervised_row,
)
from agentrft.errors import AgentRFTError, ConfigError, DatasetError, GraderSpecError
from agentrft.graders import load_grader
from agentrft.graders.base import Grader
from agentrft.graders.formula import FormulaError, parse_formula
from agentrft.graders.spec import GRADER_TYPES, parse_spec
from agentrft.models.chat_format import ParsedAssistant, get_chat_format
from agentrft.trust import EgressDenied, EgressPolicy
from agentrft.trust import egress as egress_module
from agentrft.types import Grade

pytestmark = pytest.mark.timeout(120)

FUZZ = settings(database=None, deadline=timedelta(seconds=5), max_examples=60,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

HUGE_DIGITS = "1" * 4400  # past int()'s 4,300-digit limit for str -> int
DEEP = 3000  # past the recursion limit
YAML_DEEP = 1100  # past it for PyYAML's composer too (which takes seconds to unwind from deeper)

# -- values ----------------------------------------------------------------------------------
scalars = (st.none() | st.booleans() | st.integers() | st.integers(min_value=10**300, max_value=10**320)
           | st.floats() | st.text(max_size=12))
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=16)


def deep_list(depth: int) -> list:
    value: list = []
    for _ in range(depth):
        value = [value]
    return value


# -- configs ---------------------------------------------------------------------------------
def _section_fields(model) -> dict[str, list[str]]:
    out = {}
    for name, field in model.model_fields.items():
        sub = field.annotation
        out[name] = list(sub.model_fields) if isinstance(sub, type) and hasattr(sub, "model_fields") else []
    return out


SECTIONS = _section_fields(JobConfig)
ENUM_WORDS = ["rft", "sft", "dpo", "auto", "grpo", "ppo_clip", "dapo", "gspo", "per_turn", "trajectory", "cpu",
              "float32", "hermes", "finance", "toy", "true", "null", ".inf", "-1", "0", "1e308"]
config_values = json_values | st.sampled_from(ENUM_WORDS) | st.floats(min_value=1e300, allow_infinity=True)


@st.composite
def config_dicts(draw) -> dict:
    raw: dict = {}
    for key in draw(st.lists(st.sampled_from(sorted(SECTIONS)) | st.text(max_size=6), max_size=6)):
        fields = SECTIONS.get(key) or []
        if fields and draw(st.booleans()):
            raw[key] = draw(st.dictionaries(st.sampled_from(fields) | st.text(max_size=5), config_values, max_size=4))
        else:
            raw[key] = draw(config_values)
    if draw(st.booleans()):
        raw["method"] = draw(st.sampled_from(["rft", "sft", "dpo"]))
    return raw


def _config_or_error(load) -> None:
    try:
        assert isinstance(load(), JobConfig)
    except ConfigError:
        pass


@FUZZ
@given(config_dicts())
@example({"method": "rft", "hyperparameters": {"compute_multiplier": math.inf}})
@example({"method": "rft", "hyperparameters": {"compute_multiplier": 1e308}})
def test_load_config_on_random_sections(raw):
    _config_or_error(lambda: load_config(raw))


YAML_PIECES = ["method: rft\n", "training:\n  max_steps: ", "rollout: {max_turns: ", "}", "[", "]", "{", "- ",
               "&a ", "*a", "!!python/object:os.system ", "!!binary ", "'", '"', ":", "\n  ", "\t", "%", "? ",
               ".inf", "1e999", "0x1F", "2020-13-45", "~", "---\n", "...\n", "seed: ", "7", "\x00", "é", "|\n  x"]
yaml_texts = st.lists(st.sampled_from(YAML_PIECES) | st.text(max_size=6), max_size=20).map("".join)


@functools.cache
def _scratch() -> Path:
    return Path(tempfile.mkdtemp(prefix="agentrft-fuzz-"))


@FUZZ
@given(yaml_texts | st.binary(max_size=64).map(lambda b: b.decode("latin-1")))
@example("method: rft\nseed: " + HUGE_DIGITS + "\n")
@example("method: rft\ngrader: " + "[" * YAML_DEEP + "]" * YAML_DEEP + "\n")
def test_load_config_on_random_yaml_text(text):
    path = _scratch() / "config.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogateescape")
    _config_or_error(lambda: load_config(path))


override_keys = st.lists(st.sampled_from(sorted(SECTIONS)) | st.sampled_from(
    [f for fields in SECTIONS.values() for f in fields]) | st.text(max_size=4), min_size=0, max_size=3).map(".".join)


@FUZZ
@given(override_keys, st.sampled_from(["=", "", "=="]), yaml_texts)
@example("training.max_steps", "=", HUGE_DIGITS)
@example("grader", "=", "[" * YAML_DEEP)
@example("method.x", "=", "1")
def test_parse_override_then_load(key, sep, value):
    try:
        path, parsed = parse_override(key + sep + value)
    except ConfigError:
        return
    _config_or_error(lambda: load_config({"method": "rft"}, {path: parsed}))


# -- dataset rows ------------------------------------------------------------------------------
roles = st.sampled_from(["system", "developer", "user", "assistant", "tool"]) | scalars
tool_calls = st.lists(st.fixed_dictionaries({}, optional={
    "type": st.just("function") | scalars, "id": scalars,
    "function": st.fixed_dictionaries({}, optional={"name": st.text(max_size=5) | scalars,
                                                    "arguments": st.text(max_size=10) | json_values})}) | scalars,
    max_size=3)
messages = st.fixed_dictionaries({}, optional={
    "role": roles, "content": st.text(max_size=10) | json_values | st.lists(
        st.fixed_dictionaries({"type": st.just("text") | scalars, "text": st.text(max_size=5) | scalars}), max_size=2),
    "tool_calls": tool_calls | scalars, "tool_call_id": st.text(max_size=4) | scalars, "weight": scalars})
function_schemas = st.fixed_dictionaries({"type": st.just("function") | scalars}, optional={
    "function": st.fixed_dictionaries({}, optional={"name": st.text(max_size=5) | scalars, "description": scalars,
                                                    "parameters": json_values | st.fixed_dictionaries(
                                                        {"type": st.just("object") | scalars,
                                                         "properties": json_values})})})
task_rows = st.fixed_dictionaries({}, optional={
    "messages": st.lists(messages, max_size=4) | scalars, "tools": st.lists(function_schemas, max_size=3) | scalars,
    "id": scalars, "parallel_tool_calls": scalars, "answer": json_values})
preference_rows = st.fixed_dictionaries({}, optional={
    "input": task_rows | scalars, "preferred_output": st.lists(messages, max_size=2) | scalars,
    "non_preferred_output": st.lists(messages, max_size=2) | scalars,
    "prompt": st.lists(messages, max_size=2) | scalars, "chosen": st.lists(messages, max_size=2),
    "rejected": st.lists(messages, max_size=2)})
any_row = task_rows | preference_rows | json_values


@settings(FUZZ, max_examples=150)
@given(any_row)
@example({"messages": [{"role": "user", "content": [deep_list(400)]}]})
def test_row_validators_return_a_list_of_problems(row):
    for validate in (validate_row, validate_supervised_row, validate_preference_row):
        problems = validate(row)
        assert isinstance(problems, list) and all(isinstance(p, str) for p in problems)


jsonl_lines = (st.binary(max_size=40) | task_rows.map(lambda r: json.dumps(r, default=str).encode())
               | st.sampled_from([b"", b"{}", b"[", b"\xff\xfe", b'{"messages": []}', HUGE_DIGITS.encode(),
                                  b"[" * DEEP, b'{"messages":[{"role":"user","content":"hi"}]}']))


@FUZZ
@given(st.lists(jsonl_lines, max_size=6), st.sampled_from(["task", "supervised", "preference"]), st.booleans())
@example([b'{"messages":[{"role":"user","content":"hi"}]}', HUGE_DIGITS.encode()], "task", False)
@example([b'{"messages":[{"role":"user","content":"hi"}]}', b"[" * DEEP], "task", False)
def test_load_jsonl_dataset_on_random_lines(lines, kind, strict):
    path = _scratch() / "rows.jsonl"
    path.write_bytes(b"\n".join(line.replace(b"\n", b" ") for line in lines))
    try:
        loaded = load_jsonl_dataset(path, strict=strict, kind=kind)
    except DatasetError:
        return
    assert isinstance(loaded, DatasetLoad) and loaded.rows


# -- tool-call text from the model ---------------------------------------------------------------
FORMAT_FAMILIES = {"hermes": None, "qwen2.5": "qwen", "qwen3": "qwen", "llama3": "llama3",
                   "mistral-v3": "mistral", "mistral-tekken": "mistral"}
MODEL_PIECES = ["<tool_call>", "</tool_call>", "<tool_call>\n", "\n</tool_call>", "[TOOL_CALLS]", "<|python_tag|>",
                "<|eot_id|>", "<|eom_id|>", "<|im_end|>", "</s>", "<|endoftext|>", "<think>", "</think>", "\n",
                '{"name": "add", "arguments": ', '{"name": "add", "parameters": ', '{"a": 1, "b": 2}',
                '"id": "abc123XYZ"',
                '[{"name": "add", "arguments": {}}', "}", "{", "]", "[", '"', ",", ":", "\\", "null", "NaN", "1e999",
                HUGE_DIGITS, "[" * DEEP, '{"name": ', '"arguments": "{\\"a\\": 1}"', "; ", "add", " "]
model_texts = st.lists(st.sampled_from(MODEL_PIECES) | st.text(max_size=8), max_size=16).map("".join)


@functools.cache
def chat_format(family: str):
    if family == "hermes":
        from agentrft.models.loading import load_tokenizer

        return get_chat_format(load_tokenizer("smollm2-135m"), "hermes")
    from family_tokenizers import family_tokenizer

    return get_chat_format(family_tokenizer(family), FORMAT_FAMILIES[family])


@settings(FUZZ, max_examples=40)
@given(st.sampled_from(sorted(FORMAT_FAMILIES)), model_texts)
@example("hermes", '<tool_call>\n{"name": "add", "arguments": {"a": ' + HUGE_DIGITS + "}}\n</tool_call>")
@example("qwen2.5", "<tool_call>\n" + "[" * DEEP + "\n</tool_call>")
@example("llama3", '<|python_tag|>{"name": "add", "parameters": {"a": ' + HUGE_DIGITS + "}}")
@example("mistral-v3", '[TOOL_CALLS][{"name": "add", "arguments": {"a": ' + HUGE_DIGITS + "}}]")
@example("mistral-tekken", "[TOOL_CALLS]add" + "[" * DEEP)
def test_parse_assistant_turns_any_text_into_a_parsed_turn(family, text):
    cf = chat_format(family)
    parsed = cf.parse_assistant(text)
    assert isinstance(parsed, ParsedAssistant) and isinstance(parsed.content, str)
    assert len(parsed.parse_errors) == len(parsed.malformed)
    assert all(isinstance(c.arguments, dict) for c in parsed.tool_calls)
    message = cf.assistant_message(parsed)
    assert message["role"] == "assistant"


# -- grader specs ------------------------------------------------------------------------------
SPEC_FIELDS = ["name", "input", "reference", "operation", "evaluation_metric", "pass_threshold", "source",
               "image_tag", "model", "labels", "passing_labels", "range", "sampling_params", "graders",
               "calculate_output", "url", "headers", "timeout", "max_retries", "target", "budget", "target_s",
               "budget_s"]
TEMPLATES = ["{{ sample.output_text }}", "{{item.answer}}", "{{ sample.output_json.a[0] }}", "{{", "}}",
             "{{ item[", "{{ sample.output_tools[0].function.name }}", "x", "{{item['k']}}", "{{ nope.x }}"]
spec_values = (json_values | st.sampled_from(["eq", "ne", "like", "ilike", "fuzzy_match", "rouge_l", "bleu",
                                              "a + b", "def grade(sample, item):\n    return 1.0\n", "http://x/"])
               | st.lists(st.sampled_from(TEMPLATES), max_size=3).map("".join) | st.integers(min_value=10**300))


def grader_specs(depth: int = 1):
    leaf = st.fixed_dictionaries({"type": st.sampled_from(GRADER_TYPES) | scalars},
                                 optional={f: spec_values for f in SPEC_FIELDS})
    if depth == 0:
        return leaf
    multi = st.fixed_dictionaries({"type": st.just("multi"), "graders": st.dictionaries(
        st.sampled_from(["a", "b", "c d", ""]), grader_specs(depth - 1), max_size=3),
        "calculate_output": formulas | scalars})
    return leaf | multi


LOCAL_TYPES = {"string_check", "text_similarity", "multi", "tool_calls", "tool_errors", "tokens", "latency"}


def _grades_locally(spec) -> bool:
    if spec.type == "multi":
        return all(_grades_locally(s) for s in spec.graders.values())
    if spec.type == "text_similarity":
        return spec.evaluation_metric in ("fuzzy_match", "rouge_1", "rouge_l")
    return spec.type in LOCAL_TYPES


# -- formulas ---------------------------------------------------------------------------------
FORMULA_PIECES = ["a", "b", "x", "min(", "max(", "abs(", "log(", "sqrt(", "exp(", "floor(", "ceil(", "(", ")",
                  ",", "+", "-", "*", "/", "^", " ", "0", "1", "2.5", ".5", "1e308", "1e-308", "9" * 400,
                  "__import__", "a.b", "[", "'", "=", "**", "pow("]
formulas = st.lists(st.sampled_from(FORMULA_PIECES), max_size=24).map("".join)


@settings(FUZZ, max_examples=150)
@given(grader_specs() | json_values, st.text(max_size=30) | st.sampled_from([HUGE_DIGITS, "[" * DEEP, '{"a": [1]}']),
       st.dictionaries(st.sampled_from(["answer", "k", "x"]), json_values, max_size=3))
@example({"type": "tool_calls", "budget": 10**400}, "x", {})
@example("", "x", {})  # a string is a spec file's path; "" is the current directory
@example({"type": "python", "source": "def grade(s, i):\n    return " + "-" * 100_000 + "1\n"}, "x", {})
@example({"type": "string_check", "input": "{{ sample.output_json }}", "reference": "1", "operation": "eq"},
         HUGE_DIGITS, {})
@example({"type": "string_check", "input": "{{ sample.output_text }}", "reference": "1", "operation": "eq"},
         "[" * DEEP, {})
def test_grader_specs_load_or_fail_typed_and_grade_without_raising(raw, output, item):
    try:
        grader = load_grader(raw)
    except GraderSpecError:
        with pytest.raises(GraderSpecError):
            parse_spec(raw)
        return
    assert isinstance(grader, Grader)
    if _grades_locally(grader.spec):
        grade = grader.grade(output, item)
        assert isinstance(grade, Grade) and math.isfinite(grade.reward)


@FUZZ
@given(st.binary(max_size=80) | grader_specs().map(lambda d: json.dumps(d, default=str).encode()) | st.sampled_from(
    [HUGE_DIGITS, "[" * DEEP, '{"type": "tool_calls", "budget": ' + "9" * 400 + "}"]).map(str.encode))
@example(b'{"type": "tool_calls", "budget": ' + HUGE_DIGITS.encode() + b"}")
@example(b'{"type": "multi", "graders": ' + b"[" * DEEP + b"}")
@example(b"\xff{}")
def test_grader_spec_files_load_or_fail_typed(data):
    path = _scratch() / "grader.json"
    path.write_bytes(data)
    try:
        assert isinstance(load_grader(path), Grader)
    except GraderSpecError:
        pass


@settings(FUZZ, max_examples=300)
@given(formulas, st.dictionaries(st.sampled_from(["a", "b", "x"]), st.floats() | st.integers(-10, 10), max_size=3))
@example("9" * 400 + " ^ 9" + "9" * 300, {})
@example("exp(1e308)", {})
@example("floor(a)", {"a": math.nan})
@example("-" * 300 + "1", {})
def test_calculate_output_parses_and_evaluates_or_raises_formula_error(text, env):
    try:
        formula = parse_formula(text)
    except FormulaError as e:
        assert e.flag == "formula_parse_error"
        return
    try:
        value = formula.evaluate(env)
    except FormulaError as e:
        assert e.flag in ("formula_parse_error", "invalid_variable_error")
        return
    assert isinstance(value, float) and math.isfinite(value)


@FUZZ
@given(json_values)
@example(["a + b"])
@example({"x": 1})
def test_a_formula_that_is_not_a_string_is_a_formula_error(value):
    if isinstance(value, str):
        return
    with pytest.raises(FormulaError):
        parse_formula(value)


# -- URLs against the egress policy -------------------------------------------------------------
URL_PIECES = ["http://", "https://", "ftp://", "file:///", "a.com", "b.a.com", ".", "..", ":", "@", "user:pw@",
              "[", "]", "::1", "127.0.0.1", "169.254.169.254", "0x7f.1", "2130706433", "localhost", "xn--", "ä",
              "/x", "/%2e%2e", "%", "?", "#", ":80", ":99999", "\\", " ", "\x00"]
urls = st.lists(st.sampled_from(URL_PIECES) | st.text(max_size=6), max_size=10).map("".join)


@settings(FUZZ, max_examples=200)
@given(urls)
@example("http://xn--.com/")
@example("http://.a.com/")
def test_the_egress_check_vets_any_url_or_refuses_it_typed(url):
    policy = EgressPolicy(allow=("http://*.a.com", "https://a.com/x", "http://localhost"), allow_private=True)
    with mock.patch.object(egress_module, "resolve_host", lambda host, port: ("93.184.216.34",)):  # no DNS lookups
        try:
            assert policy.check_url(url, "fuzz") == ("93.184.216.34",)
        except EgressDenied:
            pass


def test_the_typed_errors_are_the_projects():
    assert all(issubclass(e, AgentRFTError) for e in (ConfigError, DatasetError, GraderSpecError))
