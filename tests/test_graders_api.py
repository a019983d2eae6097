"""The graders API (:mod:`agentrft.platform.graders_api`) driven by the official ``openai`` SDK over HTTP:
``client.fine_tuning.alpha.graders.validate`` and ``.run`` against a real uvicorn server on 127.0.0.1."""

from __future__ import annotations

import shutil

import openai
import pytest
from fastapi import FastAPI

from agentrft.graders import JudgeConfig
from agentrft.graders.testing import LocalJSONServer, ScriptedChatServer
from agentrft.platform.graders_api import router
from agentrft.serving.app import add_error_handlers
from agentrft.trust import EgressPolicy

STRING_CHECK = {"type": "string_check", "name": "exact", "input": "{{sample.output_text}}",
                "reference": "{{item.answer}}", "operation": "eq"}
SIMILARITY = {"type": "text_similarity", "name": "close", "input": "{{sample.output_text}}",
              "reference": "{{item.answer}}", "evaluation_metric": "fuzzy_match"}
PYTHON = {"type": "python", "name": "py", "source": (
    "def grade(sample, item):\n"
    "    return 1.0 if sample['output_json'] == {'answer': item['answer']} else 0.25\n")}
SCORE = {"type": "score_model", "name": "judge", "model": "judge-model",
         "input": [{"role": "user", "content": "Grade {{sample.output_text}} against {{item.answer}}"}],
         "range": [0, 10]}
ERROR_FLAGS = {"formula_parse_error", "invalid_variable_error", "model_grader_parse_error",
               "model_grader_refusal_error", "model_grader_server_error", "model_grader_server_error_details",
               "other_error", "python_grader_runtime_error", "python_grader_runtime_error_details",
               "python_grader_server_error", "python_grader_server_error_type", "sample_parse_error",
               "truncated_observation_error", "unresponsive_reward_error"}


def app(egress: EgressPolicy | None = None, judge: JudgeConfig | None = None) -> FastAPI:
    app = FastAPI()
    add_error_handlers(app)
    app.include_router(router)
    if egress is not None:
        app.state.egress = egress
    if judge is not None:
        app.state.judge = judge
    return app


@pytest.fixture(scope="module")
def client():
    """A server with the default (strict) egress policy and no judge of its own."""
    from agentrft.serving import serve_in_background

    with serve_in_background(app()) as base_url:
        yield openai.OpenAI(base_url=base_url, api_key="x", max_retries=0, timeout=60)


def raw(response) -> dict:
    """The response JSON as sent (the SDK's models rename ``model_grader_*`` fields)."""
    return response.model_dump(by_alias=True)


def test_validate_returns_the_grader_as_validated(client):
    out = client.fine_tuning.alpha.graders.validate(grader={**STRING_CHECK})
    assert out.grader.type == "string_check" and out.grader.name == "exact"
    spec = {"type": "text_similarity", "input": "a", "reference": "b", "evaluation_metric": "bleu"}
    out = raw(client.fine_tuning.alpha.graders.validate(grader=spec))
    assert out["grader"] == {**spec, "name": "text_similarity"}  # the default name filled in


def test_run_string_check_has_openais_run_response_shape(client):
    out = client.fine_tuning.alpha.graders.run(grader=STRING_CHECK, model_sample="Paris", item={"answer": "Paris"})
    assert out.reward == 1.0
    assert out.metadata.name == "exact" and out.metadata.type == "string_check"
    assert out.metadata.execution_time >= 0 and out.metadata.scores == {"exact": 1.0}
    body = raw(out)
    assert set(body) >= {"reward", "metadata", "sub_rewards", "model_grader_token_usage_per_model"}
    assert set(body["metadata"]["errors"]) == ERROR_FLAGS
    assert not any(body["metadata"]["errors"].values())
    out = client.fine_tuning.alpha.graders.run(grader=STRING_CHECK, model_sample="Lyon", item={"answer": "Paris"})
    assert out.reward == 0.0


def test_run_text_similarity(client):
    out = client.fine_tuning.alpha.graders.run(grader=SIMILARITY, model_sample="Pariss", item={"answer": "Paris"})
    assert 0.8 < out.reward < 1.0


def test_run_python_grader_in_the_sandbox(client):
    assert shutil.which("bwrap"), "bubblewrap (bwrap) is not installed: python graders cannot be sandboxed"
    out = client.fine_tuning.alpha.graders.run(grader=PYTHON, model_sample='{"answer": "Paris"}',
                                               item={"answer": "Paris"})
    errors = raw(out)["metadata"]["errors"]
    assert not errors["python_grader_server_error"], out.metadata  # the sandbox ran
    assert out.reward == 1.0, out.metadata  # output_json is model_sample parsed
    crash = {**PYTHON, "source": "def grade(sample, item):\n    raise ValueError('boom')\n"}
    out = raw(client.fine_tuning.alpha.graders.run(grader=crash, model_sample="x"))
    assert out["reward"] == 0.0 and out["metadata"]["errors"]["python_grader_runtime_error"]
    assert "boom" in out["metadata"]["errors"]["python_grader_runtime_error_details"]


def test_run_multi_with_a_formula_and_sub_rewards(client):
    multi = {"type": "multi", "name": "combo", "graders": {"exact": STRING_CHECK, "close": SIMILARITY},
             "calculate_output": "0.5 * exact + 0.5 * close"}
    out = client.fine_tuning.alpha.graders.run(grader=multi, model_sample="Paris", item={"answer": "Paris"})
    assert out.reward == 1.0 and out.sub_rewards == {"exact": 1.0, "close": 1.0}
    out = client.fine_tuning.alpha.graders.run(grader=multi, model_sample="Pariss", item={"answer": "Paris"})
    assert out.sub_rewards["exact"] == 0.0 and 0.8 < out.sub_rewards["close"] < 1.0
    assert out.reward == pytest.approx(0.5 * out.sub_rewards["close"])
    assert out.metadata.scores == out.sub_rewards


def test_score_model_judge_on_loopback_is_refused_by_the_default_policy_and_works_when_allowed():
    """The judge is the operator's (``app.state.judge``) but must pass the egress policy. Refused, the grade
    flags ``model_grader_server_error`` (the request was fine; nothing in it could fix the server's judge),
    no request reaches the judge, and the other graders of a multi still score."""
    from agentrft.serving import serve_in_background

    with ScriptedChatServer(lambda body: '{"result": 8}') as judge_server:
        judge = JudgeConfig(base_url=judge_server.base_url, api_key="operator-key", max_retries=0, timeout_s=10)
        with serve_in_background(app(judge=judge)) as base_url:
            strict = openai.OpenAI(base_url=base_url, api_key="x", max_retries=0)
            out = raw(strict.fine_tuning.alpha.graders.run(grader=SCORE, model_sample="Paris",
                                                           item={"answer": "Paris"}))
            errors = out["metadata"]["errors"]
            assert out["reward"] == 0.0 and errors["model_grader_server_error"]
            assert "refused" in errors["model_grader_server_error_details"]  # default policy: nothing allowed
            multi = {"type": "multi", "graders": {"exact": STRING_CHECK, "judge": SCORE},
                     "calculate_output": "exact + judge"}
            out = raw(strict.fine_tuning.alpha.graders.run(grader=multi, model_sample="Paris",
                                                           item={"answer": "Paris"}))
            assert out["sub_rewards"] == {"exact": 1.0, "judge": 0.0}
            assert out["metadata"]["errors"]["model_grader_server_error"]
            assert judge_server.requests == []  # refused before any connection

        listed = EgressPolicy(allow=(judge_server.url,))  # on the allow-list, but a loopback address
        with serve_in_background(app(egress=listed, judge=judge)) as base_url:
            out = raw(openai.OpenAI(base_url=base_url, api_key="x", max_retries=0).fine_tuning.alpha.graders.run(
                grader=SCORE, model_sample="Paris", item={"answer": "Paris"}))
            details = out["metadata"]["errors"]["model_grader_server_error_details"]
            assert "loopback address (allow_loopback is off)" in details
        assert judge_server.requests == []

        allowing = EgressPolicy(allow=(judge_server.url,), allow_loopback=True)
        with serve_in_background(app(egress=allowing, judge=judge)) as base_url:
            allowed = openai.OpenAI(base_url=base_url, api_key="x", max_retries=0)
            out = allowed.fine_tuning.alpha.graders.run(grader=SCORE, model_sample="Paris", item={"answer": "Paris"})
            assert out.reward == 8.0 and out.metadata.sampled_model_name == "judge-model"
            assert not raw(out)["metadata"]["errors"]["model_grader_server_error"]
        (request,) = judge_server.requests
        assert request["body"]["messages"][0]["content"] == "Grade Paris against Paris"
        assert request["headers"]["authorization"] == "Bearer operator-key"


def test_endpoint_grader_urls_pass_the_policy_and_env_references_are_refused(monkeypatch):
    from agentrft.serving import serve_in_background

    monkeypatch.setenv("AGENTRFT_TEST_SECRET", "do-not-send")
    with LocalJSONServer(lambda path, body, headers: (200, {"score": 0.75})) as service:
        endpoint = {"type": "endpoint", "name": "svc", "url": service.url + "/grade"}
        allowing = EgressPolicy(allow=(service.url,), allow_loopback=True)
        with serve_in_background(app()) as strict_url, serve_in_background(app(egress=allowing)) as allowed_url:
            strict = openai.OpenAI(base_url=strict_url, api_key="x", max_retries=0)
            allowed = openai.OpenAI(base_url=allowed_url, api_key="x", max_retries=0)
            with pytest.raises(openai.BadRequestError) as e:  # the client's own URL: a bad request, named
                strict.fine_tuning.alpha.graders.run(grader=endpoint, model_sample="x")
            assert e.value.param == "grader.url" and "refused" in e.value.message
            assert allowed.fine_tuning.alpha.graders.run(grader=endpoint, model_sample="x").reward == 0.75

            for header in ("${AGENTRFT_TEST_SECRET}", "Bearer ${HOME}"):
                spec = {"type": "multi", "graders": {"svc": {**endpoint, "headers": {"Authorization": header}}},
                        "calculate_output": "svc"}
                for call in (lambda: allowed.fine_tuning.alpha.graders.run(grader=spec, model_sample="x"),
                             lambda: allowed.fine_tuning.alpha.graders.validate(grader=spec)):
                    with pytest.raises(openai.BadRequestError) as e:
                        call()
                    assert e.value.param == "grader.graders.svc.headers.Authorization"
                    assert "environment variable" in e.value.message
        assert len(service.requests) == 1  # only the allowed run reached it
        assert all("do-not-send" not in str(r["headers"]) for r in service.requests)


@pytest.mark.parametrize("body, param", [
    ({"model_sample": "x"}, "grader"),  # missing grader
    ({"grader": "grader.json", "model_sample": "x"}, "grader"),  # a string is not read as a server path
    ({"grader": {"type": "no_such_grader", "input": "a"}, "model_sample": "x"}, "grader.type"),
    ({"grader": {"type": "string_check", "input": "a", "reference": "b"}, "model_sample": "x"},
     "grader.operation"),
    ({"grader": {**STRING_CHECK, "operation": "contains"}, "model_sample": "x"}, "grader.operation"),
    ({"grader": {"type": "multi", "graders": {"a": {**STRING_CHECK, "extra": 1}}, "calculate_output": "a"},
      "model_sample": "x"}, "grader.graders.a.extra"),
    ({"grader": STRING_CHECK, "model_sample": 3}, "model_sample"),
    ({"grader": STRING_CHECK}, "model_sample"),
    ({"grader": STRING_CHECK, "model_sample": "x", "item": [1, 2]}, "item"),
])
def test_malformed_bodies_are_400s_naming_the_field(client, body, param):
    with pytest.raises(openai.BadRequestError) as e:
        client.post("/fine_tuning/alpha/graders/run", body=body, cast_to=object)
    assert e.value.status_code == 400 and e.value.param == param, e.value.body
    assert e.value.body["type"] == "invalid_request_error"


def test_validate_refuses_bad_graders_with_their_path(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.fine_tuning.alpha.graders.validate(grader={"type": "unknown_type"})
    assert e.value.param == "grader.type"
    with pytest.raises(openai.BadRequestError) as e:
        client.fine_tuning.alpha.graders.validate(grader={**PYTHON, "source": "x = 1\n"})
    assert e.value.param == "grader.source" and "grade(sample, item)" in e.value.message
    with pytest.raises(openai.BadRequestError) as e:
        client.post("/fine_tuning/alpha/graders/validate", body={}, cast_to=object)
    assert e.value.param == "grader"


def test_load_grader_takes_an_egress_policy_for_endpoints_and_judges_and_defaults_to_the_jobs():
    from agentrft.graders import load_grader
    from agentrft.trust import EgressDenied, JobTrust, trusting

    endpoint = {"type": "endpoint", "url": "http://127.0.0.1:9/grade"}
    judge = JudgeConfig(base_url="http://127.0.0.1:9/v1", api_key="k")
    assert load_grader(endpoint).type == "endpoint"  # the operator's CLI: trusted
    with pytest.raises(EgressDenied, match="not on the allow-list"):
        load_grader(endpoint, egress=EgressPolicy())
    with pytest.raises(EgressDenied, match="loopback"):
        load_grader(SCORE, judge=judge, egress=EgressPolicy(allow=("http://127.0.0.1:9",)))
    with trusting(JobTrust(egress=EgressPolicy())):  # a platform worker's job
        with pytest.raises(EgressDenied):
            load_grader({"type": "multi", "graders": {"e": endpoint}, "calculate_output": "e"})
    assert load_grader(endpoint, egress=EgressPolicy(allow=("http://127.0.0.1:9",), allow_loopback=True))
