"""Privacy: the detectors on positives and near-misses, the redactor's record modes, and what a run leaves on
disk: a tiny RFT run whose task rows and tool outputs carry planted emails, card numbers, IBANs and API keys
writes none of them anywhere under its run directory with ``privacy.store: redacted`` (or ``none``), and all of
them with ``full`` (the control that shows the search can fail)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from agentrft.config import load_config
from agentrft.errors import AgentRFTError
from agentrft.privacy import DETECTORS, Redactor, TokensNotStoredError, iban_valid, luhn_valid, stored_privacy
from agentrft.tools.environment import Environment, EnvSpec
from agentrft.types import Grade, ToolCall, Trajectory

REDACT = Redactor("redacted")

EMAIL_TASK = "jane.doe@example.com"
EMAIL_TOOL = "billing-owner@corp.example.org"
CARD_TASK = "4111 1111 1111 1111"
CARD_TOOL = "5500005555555559"
IBAN_TOOL = "GB82 WEST 1234 5698 7654 32"
KEY_TASK = "sk-proj-Q7fKx2LmP9rT4vW8yZ3bN6cH1jD5gS0aE"
KEY_TOOL = "ghp_" + "R8kLm2Qx7Tz4Wv9Yb3Nc6Hd1Jf5Gs0Ae8PqUoI"[:36]
AWS_TOOL = "AKIAIOSFODNN7EXAMPLE"
PHONE_TOOL = "+44 20 7946 0958"
PLANTED = (EMAIL_TASK, EMAIL_TOOL, CARD_TASK, CARD_TOOL, IBAN_TOOL, KEY_TASK, KEY_TOOL, AWS_TOOL, PHONE_TOOL)


# -- detectors ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text, kind", [
    (f"write to {EMAIL_TASK}.", "email"),
    ("Ping first.last+tag@mail.co.uk today", "email"),
    (f"call {PHONE_TOOL} or (415) 555-0132", "phone"),
    ("office: 415-555-0132", "phone"),
    (f"card {CARD_TASK}", "credit_card"),
    (f"card {CARD_TOOL}", "credit_card"),
    ("amex 3782-822463-10005", "credit_card"),
    (f"iban {IBAN_TOOL}", "iban"),
    ("IBAN DE89370400440532013000 please", "iban"),
    (f"key {KEY_TASK}", "secret"),
    ("key sk-ant-api03-abcdefghijklmnopqrstuvwxyz012345", "secret"),
    (f"token {KEY_TOOL}", "secret"),
    (f"{AWS_TOOL} is the id", "secret"),
    ('aws_secret_access_key = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"', "secret"),
    ("slack xoxb-1234567890-abcdefghij", "secret"),
    ("jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U", "secret"),
    ('{"password": "hunter2-but-longer"}', "secret"),
    ("Authorization: Bearer abcdefghijklmnopqrstuvwxyz123456", "secret"),
])
def test_each_detector_finds_its_kind(text, kind):
    out = REDACT.redact_text(text)
    assert f"[REDACTED:{kind}]" in out, out
    # nothing of the finding's characteristic part is left
    for piece in ("@", "1111 1111", "5559", "WEST", "T4vW8", "Jf5G", "IOSFODNN", "7946", "555-0132", "bPxRf",
                  "hunter2", "dozjg", "xoxb", "uvwxyz"):
        if piece in text:
            assert piece not in out, (piece, out)


def test_private_key_blocks_are_removed_whole():
    pem = "-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEAsecretbody\nmoresecret==\n-----END RSA PRIVATE KEY-----"
    out = REDACT.redact_text(f"key:\n{pem}\nend")
    assert out == "key:\n[REDACTED:secret]\nend"


@pytest.mark.parametrize("text", [
    "4111 1111 1111 1112 fails Luhn",  # 16 digits, bad check digit
    "4111111111111112",
    "1234567812345670 starts outside the issuers' ranges",
    "DE89 3704 0044 0532 0130 01 is a broken IBAN",  # bad mod-97
    "GB00WEST12345698765432",
    "The meeting on 2024-01-15 at 10:30 had 1234567 attendees; version 1.2.3 of pi 3.14159265358979.",
    "Order #12345 cost $99.99; call ext. 1234 or room 555-01.",
    "trace 3f2a9c1e5b7d4e6f8a0b1c2d3e4f5a6b uuid 123e4567-e89b-12d3-a456-426614174000 t=1733561234567",
    "Say something about apple. The quick brown fox jumps over the lazy dog, task-key sk-1 and a@b.",
    "The password is a secret; tokens are counted; the key to success is practice.",
])
def test_near_misses_and_prose_are_kept(text):
    assert REDACT.redact_text(text) == text


def test_checksums():
    assert luhn_valid("4111111111111111") and not luhn_valid("4111111111111112")
    assert luhn_valid(CARD_TOOL)
    assert iban_valid(IBAN_TOOL) and iban_valid("DE89370400440532013000")
    assert not iban_valid("DE89370400440532013001") and not iban_valid("DE89")


def test_detectors_are_chosen_by_config_and_unknown_names_are_refused():
    only_email = Redactor.from_config({"store": "redacted", "detectors": ["email"]})
    assert only_email.redact_text(f"{EMAIL_TASK} {KEY_TOOL}") == f"[REDACTED:email] {KEY_TOOL}"
    from agentrft.config_sections import PRIVACY_DETECTORS

    assert set(DETECTORS) == set(PRIVACY_DETECTORS)
    with pytest.raises(AgentRFTError, match="unknown detector.*'emial'.*known: email, phone"):
        load_config({"method": "rft", "model": "x", "data": {"env": "toy"}, "privacy": {"detectors": ["emial"]}})
    with pytest.raises(ValueError, match="known: email"):
        Redactor("redacted", ["emial"])
    from agentrft.platform.jobspec import _extension  # an API job may set it too

    assert _extension({"config": {"privacy": {"store": "redacted"}}})["config"]["privacy"] == {"store": "redacted"}
    # high_entropy is opt-in: quoted random strings, not hashes outside quotes
    entropic = Redactor("redacted", ["high_entropy"])
    assert entropic.redact_text('secret "Zx9Qw2Er8Ty7Ui6Op5As4Df3Gh"') == 'secret "[REDACTED:high_entropy]"'
    assert REDACT.redact_text('secret "Zx9Qw2Er8Ty7Ui6Op5As4Df3Gh"') == 'secret "Zx9Qw2Er8Ty7Ui6Op5As4Df3Gh"'


# -- records -----------------------------------------------------------------------------------------------


def _record() -> dict:
    traj = Trajectory(task_id="t1", messages=[{"role": "user", "content": f"mail {EMAIL_TASK}"},
                                              {"role": "assistant", "content": "", "tool_calls": [
                                                  {"id": "c1", "type": "function", "function": {
                                                      "name": "lookup", "arguments": json.dumps({"q": CARD_TASK})}}]},
                                              {"role": "tool", "tool_call_id": "c1", "content": KEY_TOOL}],
                      token_ids=[1, 2, 3], token_kinds=["prompt", "sampled", "env"], logprobs=[None, -0.5, None])
    from agentrft.types import ToolCallRecord

    traj.tool_calls = [ToolCallRecord(ToolCall("lookup", {"q": CARD_TASK}, id="c1"), turn=0, result=KEY_TOOL)]
    grade = Grade(reward=0.5, sub_rewards={"a": 0.5}, error_messages=[f"expected {EMAIL_TOOL}"])
    return {**traj.to_dict(), "grade": grade.to_dict(), "reward": 0.5, "advantage": 0.25}


def test_trajectory_record_per_store_mode():
    rec = _record()
    assert Redactor("full").trajectory_record(rec) == rec
    red = Redactor("redacted").trajectory_record(rec)
    text = json.dumps(red)
    assert not any(p in text for p in PLANTED) and "[REDACTED:credit_card]" in text
    assert red["token_ids"] == [] and red["token_kinds"] == rec["token_kinds"] and red["logprobs"] == rec["logprobs"]
    assert red["tool_calls"][0]["arguments"] == {"q": "[REDACTED:credit_card]"}
    assert stored_privacy(red) == "redacted" and stored_privacy(rec) == "full"
    none = Redactor("none").trajectory_record(rec)
    assert [m for m in none["messages"]] == [{"role": "user"}, {"role": "assistant"}, {"role": "tool"}]
    assert none["tool_calls"][0]["name"] == "lookup" and none["tool_calls"][0]["result"] is None
    assert none["grade"]["reward"] == 0.5 and none["grade"]["metadata"]["error_messages"] == []
    assert none["reward"] == 0.5 and none["advantage"] == 0.25 and none["token_ids"] == []
    Trajectory.from_dict({k: v for k, v in none.items() if k not in ("grade", "reward", "advantage")})  # loads
    assert not any(p in json.dumps(none) for p in PLANTED)


def test_readers_that_need_token_ids_say_the_run_was_stored_redacted():
    from agentrft.train.demonstrations import pairs_from_records

    red = Redactor("redacted").trajectory_record(_record())
    with pytest.raises(TokensNotStoredError, match="privacy.store: redacted.*no token ids"):
        pairs_from_records([{**red, "step": 1}])


def test_the_store_redacts_events_status_and_config_and_remembers_the_setting(tmp_path):
    from agentrft.jobs.store import RunStore

    cfg = {"privacy": {"store": "redacted", "detectors": ["email", "secrets"]}, "prompt": {"system": EMAIL_TASK}}
    with RunStore(tmp_path, privacy=cfg["privacy"]) as store:
        store.create_run("r", "rft", cfg, {})
        store.log_event("invalid_rows", f"row 3: {EMAIL_TOOL}", {"rows": [KEY_TOOL]})
    with RunStore(tmp_path) as store:  # another process: the privacy setting comes from the saved config
        assert store.privacy.store == "redacted"
        store.set_status("failed", f"tool said {KEY_TASK}")
        text = json.dumps([store.get_run(), store.events()])
    assert not any(p in text for p in (EMAIL_TASK, EMAIL_TOOL, KEY_TOOL, KEY_TASK))
    assert "[REDACTED:email]" in text and "[REDACTED:secret]" in text


def test_eval_outputs_are_written_through_the_redactor(tmp_path):
    from agentrft.evaluation import GradedRollout, write_eval_outputs

    rec = _record()
    traj = Trajectory.from_dict({k: v for k, v in rec.items() if k not in ("grade", "reward", "advantage")})
    write_eval_outputs(tmp_path, [GradedRollout({"id": "t1"}, traj, Grade(reward=1.0))], {"n": 1},
                       Redactor("redacted"))
    assert_nothing_planted(tmp_path)


def test_served_request_log_is_redacted(tmp_path, tokenizer):
    from fastapi.testclient import TestClient

    from agentrft.models.chat_format import HermesChatFormat
    from agentrft.rollout.sampler import ScriptedSampler
    from agentrft.serving import ServerSettings, create_app
    from agentrft.serving.request_log import add_request_log

    cf = HermesChatFormat(tokenizer)
    answer = f"Reach {EMAIL_TOOL} with key {KEY_TOOL}"
    ids = tokenizer.encode(answer, add_special_tokens=False) + [cf.stop_token_ids[0]]
    logs = {}
    for mode in ("redacted", "full"):
        app = create_app(ScriptedSampler([list(ids), list(ids)]), cf, ServerSettings(model_name="s", max_context=4096))
        logs[mode] = tmp_path / f"{mode}.jsonl"
        add_request_log(app, logs[mode], mode)
        body = {"model": "s", "messages": [{"role": "user", "content": f"my card is {CARD_TASK}, mail {EMAIL_TASK}"}]}
        with TestClient(app) as client:
            assert client.post("/v1/chat/completions", json=body).status_code == 200
            streamed = client.post("/v1/chat/completions", json={**body, "stream": True})
            assert streamed.status_code == 200 and "data:" in streamed.text
    lines = [json.loads(ln) for ln in logs["redacted"].read_text().splitlines()]
    assert len(lines) == 2 and lines[1]["response"]["stream"] is True
    assert "[REDACTED:email]" in lines[1]["response"]["choices"][0]["content"]  # joined before redaction
    assert_nothing_planted(logs["redacted"].parent, only=logs["redacted"].name,
                           planted=(EMAIL_TOOL, KEY_TOOL, CARD_TASK, EMAIL_TASK))
    assert all(p in logs["full"].read_text() for p in (EMAIL_TOOL, KEY_TOOL, CARD_TASK, EMAIL_TASK))


# -- a whole run -------------------------------------------------------------------------------------------


class PlantedEnvironment(Environment):
    def lookup_account(self, customer: str) -> str:
        """Look up a customer's account.

        Args:
            customer: the customer's email
        """
        return (f"holder {EMAIL_TOOL}, phone {PHONE_TOOL}, card {CARD_TOOL}, IBAN {IBAN_TOOL}, "
                f"deploy key {KEY_TOOL}, aws {AWS_TOOL}")


def _grade(traj: Trajectory, row: dict) -> Grade:
    return Grade(reward=float(len(traj.tool_calls) > 0), sub_rewards={"called": 1.0})


def planted_env() -> EnvSpec:
    """The run's environment (``data.env: test_privacy:planted_env``); its tasks come from the data file."""
    return EnvSpec(name="planted", description="tool output with planted secrets", splits=("train", "validation"),
                   load_split=lambda split: [], make_env=lambda row: PlantedEnvironment(), grade=_grade)


class ToolThenAnswer:
    """Sampler double: calls ``lookup_account`` with the task's email, then answers quoting the tool's email."""

    max_context = 1 << 20

    def __init__(self, cf) -> None:
        call = ToolCall("lookup_account", {"customer": EMAIL_TASK}, id="c1")
        self.call = cf.assistant_tokens({"role": "assistant", "content": "", "tool_calls": [call.to_openai()]})
        self.answer = cf.assistant_tokens({"role": "assistant", "content": f"The holder is {EMAIL_TOOL}."})
        self._call_text = ",".join(map(str, self.call[:-1]))

    def generate(self, prompts, params, on_token=None):
        from agentrft.rollout.sampler import Completion

        out = []
        for p in prompts:
            ids = self.answer if self._call_text in ",".join(map(str, p)) else self.call
            out.append(Completion(list(ids), [-0.5] * len(ids), "stop"))
        if on_token is not None:
            for row, c in enumerate(out):
                for t in c.token_ids:
                    on_token(row, t)
        return out

    def release(self) -> None:
        pass


def assert_nothing_planted(root: Path, only: str | None = None, planted: tuple[str, ...] = PLANTED) -> int:
    """Every file under ``root`` (binary too) searched for each planted string and its JSON-escaped and
    compact forms; returns how many files were read."""
    forms = {f for p in planted for f in (p, json.dumps(p)[1:-1], p.replace(" ", ""))}
    files = [f for f in root.rglob("*") if f.is_file() and (only is None or f.name == only)]
    for f in files:
        data = f.read_bytes()
        for form in forms:
            for enc in ("utf-8", "utf-16-le"):
                assert form.encode(enc) not in data, f"{form!r} ({enc}) found in {f}"
    return len(files)


def _run(tmp_path: Path, tiny_model, monkeypatch, store: str) -> Path:
    from agentrft.models.chat_format import get_chat_format
    from agentrft.train import runner

    model, tok = tiny_model
    rows = [{"id": f"acct-{i}", "messages": [{"role": "user", "content":
             f"Customer {EMAIL_TASK} (card {CARD_TASK}, key {KEY_TASK}) asks about their account."}],
             "customer_email": EMAIL_TASK, "api_key": KEY_TASK} for i in range(2)]
    data = tmp_path / "tasks.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cf = get_chat_format(tok, "auto")
    monkeypatch.setattr(runner, "HFSampler", lambda *a, **k: ToolThenAnswer(cf))
    run_dir = tmp_path / "runs" / store
    cfg = load_config({
        "method": "rft", "model": "unused", "out_dir": str(run_dir),
        "data": {"env": "test_privacy:planted_env", "train_file": str(data), "eval_file": str(data)},
        "lora": {"enabled": False}, "rft": {"group_size": 2},
        "training": {"max_steps": 1, "batch_size": 1, "eval_interval": 1, "eval_samples": 1, "checkpoint_interval": 1},
        "rollout": {"max_turns": 2, "max_new_tokens": 96},
        "privacy": {"store": store},
    })
    runner.run_job(cfg, model=copy.deepcopy(model), tokenizer=tok, log=lambda s: None)
    return run_dir


@pytest.mark.slow
def test_a_redacted_run_leaves_no_planted_string_on_disk(tmp_path, tiny_model, monkeypatch):
    from agentrft.jobs.store import RunStore
    from agentrft.platform.dashboard import queries

    run_dir = _run(tmp_path, tiny_model, monkeypatch, "redacted")
    with RunStore(run_dir) as store:
        train, val = store.trajectories(), store.trajectories(split="validation")
    assert len(train) == 2 and len(val) == 1
    # the rollouts did call the tool and see its output: there was something to redact
    assert train[0]["tool_calls"][0]["result"].startswith("holder [REDACTED:email], phone [REDACTED:phone], card "
                                                          "[REDACTED:credit_card], IBAN [REDACTED:iban]")
    assert train[0]["token_ids"] == [] and train[0]["token_kinds"]
    with queries.reading(run_dir) as conn:  # what the dashboard shows
        page = queries.trajectory_page(conn, queries.TrajectoryFilter())
        record = queries.trajectory_record(conn, page["data"][0]["id"])
    assert page["data"][0]["tokens"] > 0 and "[REDACTED:secret]" in json.dumps(record)
    assert assert_nothing_planted(run_dir) >= 5  # run.db (+ WAL), checkpoint files, metrics.png, ...
    from click.testing import CliRunner

    from agentrft.cli import main

    shown = CliRunner().invoke(main, ["runs", "show", str(run_dir), "--trajectory", "0"])
    assert shown.exit_code == 0, shown.output
    assert "privacy.store: redacted" in shown.output and "user: Customer [REDACTED:email]" in shown.output


@pytest.mark.slow
def test_full_and_none_controls(tmp_path, tiny_model, monkeypatch):
    from agentrft.jobs.store import RunStore

    full = _run(tmp_path, tiny_model, monkeypatch, "full")
    with pytest.raises(AssertionError, match="found in"):  # the search can fail: a full run holds them all
        assert_nothing_planted(full)
    with RunStore(full) as store:
        text = json.dumps(store.trajectories())
    assert all(p in text for p in PLANTED)

    none = _run(tmp_path, tiny_model, monkeypatch, "none")
    assert_nothing_planted(none)
    with RunStore(none) as store:
        (rec, _) = store.trajectories()
    assert rec["messages"][0] == {"role": "user"} and rec["tool_calls"][0]["name"] == "lookup_account"
    assert rec["tool_calls"][0]["arguments"] == {} and rec["reward"] == 1.0 and "REDACTED" not in json.dumps(rec)


def test_a_request_log_that_cannot_be_written_says_so_once_and_never_fails_the_request(tmp_path, capsys):
    from agentrft.privacy import Redactor
    from agentrft.serving.request_log import RequestLog

    blocked = tmp_path / "log.jsonl"
    blocked.mkdir()  # a folder where the file should be: every append fails
    log = RequestLog(None, blocked, Redactor.from_config({"store": "redacted"}))
    for _ in range(3):
        log.write({"method": "POST", "path": "/v1/chat/completions"}, 200, 0.01, b"{}", b"{}")
    assert log.failures == 3
    assert capsys.readouterr().err.count("cannot be written") == 1
