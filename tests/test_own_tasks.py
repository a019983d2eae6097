"""Your own function-calling tasks, the OpenAI way: the rows' own tools by default, schema-only calls
counted and checked, OpenAI's SFT and DPO file formats, and the whole path through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from agentrft.cli import main
from agentrft.config import load_config
from agentrft.datasets import load_jsonl_dataset, write_jsonl
from agentrft.envs.registry import task_source
from agentrft.errors import ConfigError
from agentrft.evaluation import evaluate_rows, summarize
from agentrft.models.chat_format import HermesChatFormat
from agentrft.rollout.episode import RolloutConfig
from agentrft.rollout.sampler import ScriptedSampler
from agentrft.train.demonstrations import preference_pair, supervised_trajectory
from agentrft.types import ToolCall

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
CONVERT = {"type": "function", "function": {
    "name": "convert_currency", "description": "Convert an amount between currencies",
    "parameters": {"type": "object", "properties": {"amount": {"type": "number"}, "to": {"type": "string"}},
                   "required": ["amount", "to"]}}}
CITIES = ["Oslo", "Rome", "Lima", "Pune", "Kyiv", "Quito"]
# Scores the calls the way OpenAI's function-calling RFT does: from sample["output_tools"].
GRADER = {"type": "python", "name": "calls", "source": (
    "import json\n"
    "def grade(sample, item):\n"
    "    got = sorted((c['function']['name'], json.dumps(json.loads(c['function']['arguments']), sort_keys=True))\n"
    "                 for c in sample['output_tools'])\n"
    "    want = sorted((c['name'], json.dumps(c['arguments'], sort_keys=True)) for c in item['expected_calls'])\n"
    "    if got == want:\n"
    "        return 1.0\n"
    "    hits = sum(1 for g in got if g in want)\n"
    "    return 0.5 * hits / max(len(want), len(got))\n")}


def task(i: int, cities: list[str]) -> dict:
    return {"id": f"t{i}", "category": "parallel" if len(cities) > 1 else "simple",
            "messages": [{"role": "user", "content": f"Weather in {' and '.join(cities)}?"}],
            "tools": [WEATHER, CONVERT], "expected_calls": [{"name": "get_weather", "arguments": {"city": c}} for c in cities]}


def supervised(row: dict) -> dict:
    calls = [{"id": f"call_{k}", "type": "function",
              "function": {"name": c["name"], "arguments": json.dumps(c["arguments"])}}
             for k, c in enumerate(row["expected_calls"])]
    return {"messages": row["messages"] + [{"role": "assistant", "content": None, "tool_calls": calls}],
            "tools": row["tools"], "parallel_tool_calls": True}


@pytest.fixture()
def files(tmp_path):
    tasks = [task(i, [CITIES[i % 6]] if i % 2 else [CITIES[i % 6], CITIES[(i + 1) % 6]]) for i in range(6)]
    write_jsonl(tmp_path / "tasks.jsonl", tasks)
    write_jsonl(tmp_path / "sft.jsonl", [supervised(t) for t in tasks])
    (tmp_path / "grader.json").write_text(json.dumps(GRADER))
    return tmp_path


def prompt_text(traj: dict, cf) -> str:
    return cf.decode([t for t, k in zip(traj["token_ids"], traj["token_kinds"]) if k == "prompt"])


def test_data_without_env_offers_only_the_rows_tools(files, tokenizer):
    """The prompt tokens hold the row's tools and nothing of a built-in environment."""
    from agentrft.models.loading import save_tiny_model

    model = save_tiny_model(files / "tiny")
    cf = HermesChatFormat(tokenizer)
    args = ["rollout", "--model", str(model), "--data", str(files / "tasks.jsonl"), "--grader",
            str(files / "grader.json"), "--max-new-tokens", "4", "--max-turns", "1", "--json"]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    traj = json.loads(res.output[res.output.index("{"):])
    row = load_jsonl_dataset(files / "tasks.jsonl").rows[0]
    expected = cf.prompt_tokens(row["messages"], row["tools"])
    assert traj["token_ids"][: len(expected)] == expected and traj["token_kinds"][len(expected) - 1] == "prompt"
    text = prompt_text(traj, cf)
    assert '"name": "get_weather"' in text and '"name": "convert_currency"' in text
    assert '"name": "search"' not in text and "system" not in text.split("<tools>")[1]

    # naming a built-in environment runs the rows inside it: its tools join the prompt (so the check above bites)
    res = CliRunner().invoke(main, args[:5] + ["--env", "finance"] + args[5:])
    assert res.exit_code == 0, res.output
    assert '"name": "search"' in prompt_text(json.loads(res.output[res.output.index("{"):]), cf)


def test_data_without_env_needs_a_grader(files):
    res = CliRunner().invoke(main, ["eval", "--data", str(files / "tasks.jsonl"), "--out", str(files / "o")])
    assert res.exit_code == 2 and "--grader" in res.output and "--env" in res.output
    with pytest.raises(ConfigError, match="grader"):
        from agentrft.train.runner import setup

        setup(load_config({"method": "rft", "model": "unused", "out_dir": str(files / "run"),
                           "data": {"train_file": str(files / "tasks.jsonl")}}))
    assert not (files / "run").exists()


def test_parallel_schema_only_calls_are_counted_checked_and_graded(files, tokenizer):
    """Two parallel calls, one with an argument outside the schema: 2.0 calls per rollout, both calls in
    output_tools for the grader, one schema violation recorded."""
    cf = HermesChatFormat(tokenizer)
    source = task_source(None, "validation", str(files / "tasks.jsonl"), None, str(files / "grader.json"))
    row = source.rows[0]  # expects Oslo and Rome
    calls = [ToolCall("get_weather", {"city": "Oslo"}), ToolCall("get_weather", {"town": "Rome"})]
    turn = cf.assistant_tokens({"role": "assistant", "content": "", "tool_calls": [c.to_openai() for c in calls]})
    graded = evaluate_rows([row], source.env, ScriptedSampler([list(turn)]), cf, RolloutConfig())
    summary = summarize(graded, wall_s=1.0)
    assert summary["tool_calls_per_rollout"] == 2.0 and summary["schema_violations"] == 1
    assert summary["stop_reasons"] == {"tool_calls_output": 1}
    (g,) = graded
    assert [json.loads(c["function"]["arguments"]) for c in g.trajectory.output_tools] == [{"city": "Oslo"},
                                                                                          {"town": "Rome"}]
    assert g.grade.reward == pytest.approx(0.25)  # one of two expected calls: graded from both calls as written


def test_sft_rows_render_the_prompt_a_rollout_sees(files, tokenizer):
    """SFT on OpenAI supervised rows trains on the very prompt the generic environment shows at eval."""
    cf = HermesChatFormat(tokenizer)
    sft_row = load_jsonl_dataset(files / "sft.jsonl", kind="supervised").rows[0]
    task_row = load_jsonl_dataset(files / "tasks.jsonl").rows[0]
    source = task_source(None, "validation", str(files / "tasks.jsonl"), None, str(files / "grader.json"))
    turn = cf.assistant_tokens(sft_row["messages"][-1])
    (g,) = evaluate_rows([task_row], source.env, ScriptedSampler([list(turn)]), cf, RolloutConfig())
    demo = supervised_trajectory(sft_row, cf)
    assert demo.token_ids == g.trajectory.token_ids  # prompt, calls and turn end: token for token
    assert [k for k in demo.token_kinds if k == "sampled"] == [k for k in g.trajectory.token_kinds if k == "sampled"]
    assert g.grade.reward == 1.0


def test_schemas_without_parameters_render_alike_in_sft_and_rollouts(tokenizer):
    cf = HermesChatFormat(tokenizer)
    bare = {"type": "function", "function": {"name": "ping", "description": "Ping"}}
    row = {"messages": [{"role": "user", "content": "ping"},
                        {"role": "assistant", "content": None,
                         "tool_calls": [{"id": "c", "type": "function", "function": {"name": "ping", "arguments": "{}"}}]}],
           "tools": [bare]}
    from agentrft.rollout.episode import tools_for_row

    rollout_schemas = [t.schema() for t in tools_for_row(None, row)]
    demo = supervised_trajectory(row, cf)
    assert demo.token_ids[: len(cf.prompt_tokens(row["messages"][:1], rollout_schemas))] == \
        cf.prompt_tokens(row["messages"][:1], rollout_schemas)


def test_supervised_and_preference_rows_are_validated_with_line_numbers(tmp_path):
    good = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    rows = [good, {"messages": [{"role": "user", "content": "hi"}]},
            {"messages": good["messages"][:1] + [dict(good["messages"][1], weight=2)]},
            {**good, "parallel_tool_calls": "yes"}]
    write_jsonl(tmp_path / "sft.jsonl", rows)
    errors = [str(e) for e in load_jsonl_dataset(tmp_path / "sft.jsonl", kind="supervised").errors]
    assert len(errors) == 3
    assert "sft.jsonl:2" in errors[0] and "no assistant message" in errors[0]
    assert "sft.jsonl:3" in errors[1] and "weight must be 0 or 1" in errors[1]
    assert "sft.jsonl:4" in errors[2] and "parallel_tool_calls" in errors[2]

    pref = {"input": {"messages": [{"role": "user", "content": "hi"}]},
            "preferred_output": [{"role": "assistant", "content": "Hello!"}],
            "non_preferred_output": [{"role": "assistant", "content": "go away"}]}
    write_jsonl(tmp_path / "pref.jsonl", [pref, {"input": {"messages": []}, "preferred_output": [],
                                                 "non_preferred_output": [{"role": "user", "content": "x"}]},
                                          {"prompt": [], "chosen": []}])
    errors = [str(e) for e in load_jsonl_dataset(tmp_path / "pref.jsonl", kind="preference").errors]
    assert len(errors) == 2
    assert "pref.jsonl:2" in errors[0] and "input: 'messages' is empty" in errors[0]
    assert "'preferred_output' must be a non-empty list" in errors[0] and "non_preferred_output[0] must be an assistant" in errors[0]
    assert "pref.jsonl:3" in errors[1] and "'preferred_output'" in errors[1]


def test_weight_zero_assistant_turns_are_shown_not_trained(tokenizer):
    cf = HermesChatFormat(tokenizer)
    msgs = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "first", "weight": 0},
            {"role": "user", "content": "b"}, {"role": "assistant", "content": "second"}]
    demo = supervised_trajectory({"messages": msgs}, cf)
    trained = cf.decode([t for t, k in zip(demo.token_ids, demo.token_kinds) if k == "sampled"])
    assert "second" in trained and "first" not in trained and "first" in cf.decode(demo.token_ids)


def test_openai_preference_rows_become_token_pairs(tokenizer):
    cf = HermesChatFormat(tokenizer)
    row = {"input": {"messages": [{"role": "user", "content": "Weather in Oslo?"}], "tools": [WEATHER]},
           "preferred_output": [{"role": "assistant", "content": None, "tool_calls": [
               {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}]}],
           "non_preferred_output": [{"role": "assistant", "content": "I cannot check the weather."}]}
    chosen, rejected = preference_pair(row, cf)
    assert "<tool_call>" in cf.decode([t for t, k in zip(chosen.token_ids, chosen.token_kinds) if k == "sampled"])
    n = chosen.token_kinds.index("sampled")
    assert chosen.token_ids[:n] == rejected.token_ids[:n] and '"get_weather"' in cf.decode(chosen.token_ids[:n])


@pytest.mark.slow
def test_function_calling_path_through_the_cli(files):
    """eval → SFT on OpenAI supervised rows → RFT with the same grader → eval, on a tiny model, through
    the CLI; then DPO on OpenAI preference rows."""
    from agentrft.models.loading import save_tiny_model

    model = save_tiny_model(files / "tiny")
    data, grader = str(files / "tasks.jsonl"), str(files / "grader.json")
    small = ["--max-new-tokens", "8", "--max-turns", "1"]
    res = CliRunner().invoke(main, ["eval", "--model", str(model), "--data", data, "--grader", grader, *small,
                                    "--out", str(files / "base")])
    assert res.exit_code == 0, res.output
    assert "environment: data" in res.output
    base = json.loads((files / "base" / "summary.json").read_text())
    assert base["env"] == "data" and set(base["by_category"]) == {"simple", "parallel"}

    common = {"model": str(model), "lora": {"r": 4}, "optim": {"learning_rate": 1e-3, "micro_batch_size": 2},
              "rollout": {"max_turns": 1, "max_new_tokens": 8}}
    sft = {**common, "method": "sft", "out_dir": str(files / "sft"),
           "data": {"train_file": str(files / "sft.jsonl"), "eval_file": data}, "grader": grader,
           "training": {"max_steps": 2, "batch_size": 2, "eval_interval": 2, "eval_samples": 2}}
    (files / "sft.yaml").write_text(yaml.safe_dump(sft))
    res = CliRunner().invoke(main, ["train", str(files / "sft.yaml")])
    assert res.exit_code == 0, res.output
    rft = {**common, "method": "rft", "out_dir": str(files / "rft"), "init_from": str(files / "sft"),
           "data": {"train_file": data, "eval_file": data}, "grader": grader,
           "rft": {"group_size": 2}, "training": {"max_steps": 1, "batch_size": 2, "eval_interval": 1, "eval_samples": 2}}
    (files / "rft.yaml").write_text(yaml.safe_dump(rft))
    res = CliRunner().invoke(main, ["train", str(files / "rft.yaml")])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(main, ["eval", "--model", str(files / "rft"), "--data", data, "--grader", grader, *small,
                                    "--out", str(files / "after")])
    assert res.exit_code == 0, res.output
    after = json.loads((files / "after" / "summary.json").read_text())
    assert after["n_rollouts"] == base["n_rollouts"] == 6

    pref = [{"input": {"messages": r["messages"][:-1], "tools": r["tools"]}, "preferred_output": r["messages"][-1:],
             "non_preferred_output": [{"role": "assistant", "content": "I do not know."}]}
            for r in load_jsonl_dataset(files / "sft.jsonl", kind="supervised").rows]
    write_jsonl(files / "pref.jsonl", pref)
    dpo = {**common, "method": "dpo", "out_dir": str(files / "dpo"), "data": {"train_file": str(files / "pref.jsonl")},
           "training": {"max_steps": 1, "batch_size": 2, "eval_samples": 0}}
    (files / "dpo.yaml").write_text(yaml.safe_dump(dpo))
    res = CliRunner().invoke(main, ["train", str(files / "dpo.yaml")])
    assert res.exit_code == 0, res.output


def test_a_bad_preference_file_stops_the_job_before_anything_loads(files):
    write_jsonl(files / "pref.jsonl", [{"input": {"messages": [{"role": "user", "content": "x"}]},
                                        "preferred_output": [{"role": "assistant", "content": "a"}]}])
    cfg = load_config({"method": "dpo", "model": "unused", "out_dir": str(files / "dpo"),
                       "data": {"train_file": str(files / "pref.jsonl")}, "training": {"eval_samples": 0}})
    from agentrft.errors import DatasetError
    from agentrft.train.runner import setup

    with pytest.raises((ConfigError, DatasetError), match="pref.jsonl:1.*non_preferred_output"):
        setup(cfg)
    assert not (files / "dpo").exists()


def test_example_configs_read_their_files_in_openai_formats(monkeypatch):
    """examples/function_calling/*.yaml (docs/own-tasks.md) load, and every file they read is valid in the
    format its method needs: supervised rows for SFT, tasks for RFT."""
    from agentrft.train.runner import check_data_files, data_files

    root = Path(__file__).resolve().parents[1]
    monkeypatch.chdir(root)
    kinds = {}
    for name in ("sft", "rft"):
        cfg = load_config(root / "examples" / "function_calling" / f"{name}.yaml")
        kinds.update(data_files(cfg))
        assert check_data_files(cfg) == {}
    assert kinds == {"bench/function_calling/data/sft_train.jsonl": "supervised",
                     "bench/function_calling/data/rft_train.jsonl": "task"}


def test_grader_variance_on_your_data(files):
    """`grader variance --data`: the learning-signal check on your own tasks, with progress shown."""
    from agentrft.models.loading import save_tiny_model

    model = save_tiny_model(files / "tiny")
    res = CliRunner().invoke(main, ["grader", "variance", str(files / "grader.json"), "--model", str(model),
                                    "--data", str(files / "tasks.jsonl"), "--limit", "2", "--samples", "2",
                                    "--max-new-tokens", "4", "--max-turns", "1"])
    assert res.exit_code == 0, res.output
    assert "2 tasks x 2 samples" in res.output and "variance data" in res.output
