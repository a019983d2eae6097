"""Bring your own tasks, tool servers and grader: the unchanged Agent RFT tool server and an MCP server,
driven through the real episode loop, and the CLI's --data/--tools/--grader path."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from agentrft.cli import main
from agentrft.envs.external import external_env_spec, load_tools_config
from agentrft.errors import ConfigError
from agentrft.graders import load_grader
from agentrft.models.chat_format import HermesChatFormat
from agentrft.rollout.episode import RolloutConfig, run_episodes
from agentrft.rollout.sampler import ScriptedSampler
from agentrft.types import StopReason, ToolCall

ROOT = Path(__file__).resolve().parents[1]
ADD_SCHEMA = {"type": "function", "function": {"name": "add", "description": "Add two integers",
              "parameters": {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
                             "required": ["a", "b"]}}}
ROW = {"id": "r1", "messages": [{"role": "user", "content": "What is 2+3?"}], "tools": [ADD_SCHEMA], "answer": "5"}
GRADER = {"type": "string_check", "name": "exact", "input": "{{sample.output_text}}", "reference": "{{item.answer}}",
          "operation": "eq"}


@pytest.fixture(scope="module")
def server():
    spec = importlib.util.spec_from_file_location("agent_rft_tool_server", ROOT / "tests/fixtures/agent_rft_tool_server.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    with mod.AgentRFTToolServer() as srv:
        yield srv


def test_endpoint_and_mcp_tools_in_a_rollout(server, tokenizer):
    cf = HermesChatFormat(tokenizer)
    tools = load_tools_config({
        "endpoints": [{"name": "add", "server_url": server.url + "/tools"}],
        "mcp_servers": [{"name": "mcp", "command": sys.executable, "args": [str(ROOT / "tests/test_mcp_tools.py"), "stdio"],
                         "tools": ["echo"]}],
    })
    env = external_env_spec([ROW], tools, load_grader(GRADER).grade)
    calls = [ToolCall("add", {"a": 2, "b": 3}, id="c1"), ToolCall("echo", {"text": "hi"}, id="c2")]
    script = [cf.assistant_tokens({"role": "assistant", "content": "", "tool_calls": [c.to_openai() for c in calls]}),
              cf.assistant_tokens({"role": "assistant", "content": "5"})]
    (traj,) = run_episodes(env.load_split("data"), env.make_env, ScriptedSampler([list(s) for s in script]), cf,
                           RolloutConfig(max_total_tokens=8192))
    assert traj.stop_reason == StopReason.ANSWER
    assert [(r.call.name, r.result, r.error) for r in traj.tool_calls] == [("add", "5", None), ("echo", "hi", None)]
    (req,) = [r["body"] for r in server.requests if r["body"].get("name") == "add"]
    assert req["trace_id"] == traj.trace_id and req["item"]["id"] == "r1" and json.loads(req["arguments"]) == {"a": 2, "b": 3}
    assert env.grade(traj, ROW).reward == 1.0


def test_bad_tools_config_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="endpoints.0.server_url"):
        load_tools_config({"endpoints": [{"name": "add", "server_url": "ftp://x"}]})
    with pytest.raises(ConfigError, match="unexpected|Extra inputs"):
        load_tools_config({"endpoint": []})


def test_cli_eval_with_data_tools_and_grader(tmp_path, server):
    from agentrft.models.loading import save_tiny_model

    model = save_tiny_model(tmp_path / "tiny")
    data = tmp_path / "tasks.jsonl"
    data.write_text(json.dumps(ROW) + "\n" + "{not json}\n")
    tools = tmp_path / "tools.yaml"
    tools.write_text(yaml.safe_dump({"endpoints": [{"name": "add", "server_url": server.url + "/tools"}]}))
    grader = tmp_path / "grader.json"
    grader.write_text(json.dumps(GRADER))
    out = tmp_path / "out"
    res = CliRunner().invoke(main, ["eval", "--model", str(model), "--data", str(data), "--tools", str(tools),
                                    "--grader", str(grader), "--max-new-tokens", "6", "--max-turns", "1", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "tasks.jsonl:2" in res.output  # the bad row is reported with its line, the good one still runs
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_rollouts"] == 1 and summary["env"] == "data"
    res = CliRunner().invoke(main, ["eval", "--model", str(model), "--tools", str(tools), "--out", str(out)])
    assert res.exit_code == 2 and "--data" in res.output
