"""A job's ``prompt`` section: the system prompt, tool descriptions and guardrails every rollout of the run sees."""

from __future__ import annotations

import asyncio
import copy

import pytest

from agentrft.config import PromptConfig, load_config
from agentrft.envs.registry import get_env
from agentrft.errors import ConfigError
from agentrft.jobs.store import RunStore
from agentrft.tools.base import ToolContext, ToolFailure
from agentrft.tools.presentation import present_prompt
from agentrft.types import ToolErrorKind


def _finance_rows(n=2):
    env = get_env("finance")
    return env, env.load_split("validation")[:n]


def test_system_prompt_replaces_or_prepends_and_tool_descriptions_reach_the_schemas():
    env, rows = _finance_rows()
    original = rows[0]["messages"][0]["content"]
    shown_env, (replaced,) = present_prompt(PromptConfig(system="NEW PROMPT", tool_descriptions={"read": "READ IT"}),
                                            env, rows)
    assert [r["messages"][0] for r in replaced] == [{"role": "system", "content": "NEW PROMPT"}] * 2
    assert rows[0]["messages"][0]["content"] == original  # the job's rows are copies, never edited
    assert [r["messages"][1:] for r in replaced] == [r["messages"][1:] for r in rows]
    tools = {t.name: t.schema() for t in shown_env.make_env(replaced[0]).tools()}
    assert tools["read"]["function"]["description"] == "READ IT"
    untouched = {t.name: t.schema() for t in env.make_env(rows[0]).tools()}
    assert tools["search"] == untouched["search"] and untouched["read"]["function"]["description"] != "READ IT"

    _, (prepended,) = present_prompt(PromptConfig(system="FIRST", system_mode="prepend"), env, rows)
    assert prepended[0]["messages"][0]["content"] == f"FIRST\n\n{original}"
    same_env, (same,) = present_prompt(PromptConfig(), env, rows)
    assert same_env is env and same == rows


def test_guardrails_refuse_a_tool_outside_the_allow_list_as_a_typed_error():
    env, rows = _finance_rows(1)
    shown_env, (shown,) = present_prompt(PromptConfig(guardrails={"allowed_tools": ["search"]}), env, rows)
    inner = shown_env.make_env(shown[0])
    asyncio.run(inner.asetup(shown[0]))
    read = next(t for t in inner.tools() if t.name == "read")
    with pytest.raises(ToolFailure) as e:
        asyncio.run(read.acall({"doc_id": "x"}, ToolContext(trace_id="t", call_id="c1", turn=1, item=shown[0])))
    assert e.value.kind == ToolErrorKind.GUARDRAIL
    with pytest.raises(ConfigError, match="prompt.guardrails: allowed_tools"):
        present_prompt(PromptConfig(guardrails={"allowed_tools": "search"}), env, rows)
    with pytest.raises(ConfigError, match="prompt.system_mode"):
        load_config({"method": "rft", "data": {"env": "toy"}, "prompt": {"system_mode": "append"}})


def test_a_training_run_rolls_out_and_evaluates_with_the_prompt_section(tmp_path, tiny_model):
    from agentrft.train.runner import run_job

    model, tok = tiny_model
    cfg = load_config({
        "method": "rft", "model": "unused", "out_dir": str(tmp_path / "r"), "data": {"env": "toy"},
        "lora": {"enabled": False}, "rft": {"group_size": 2},
        "training": {"max_steps": 1, "batch_size": 1, "eval_interval": 1, "eval_samples": 1, "checkpoint_interval": 1},
        "rollout": {"max_turns": 1, "max_new_tokens": 4, "temperature": 0.1},
        "prompt": {"system": "PROMPT-SECTION-MARKER"}})
    run_job(cfg, model=copy.deepcopy(model), tokenizer=tok, log=lambda s: None)
    stored = RunStore(tmp_path / "r").trajectories(split=None)
    assert sorted(t["split"] for t in stored) == ["train", "train", "validation"]
    for t in stored:
        assert t["messages"][0] == {"role": "system", "content": "PROMPT-SECTION-MARKER"}
        assert "PROMPT-SECTION-MARKER" in tok.decode([i for i, k in zip(t["token_ids"], t["token_kinds"])
                                                      if k == "prompt"])
