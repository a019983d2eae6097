"""The finance environment: deterministic corpus, retrieval, tools, splits, oracles, and a real rollout."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter

import pytest

from agentrft.datasets import validate_row
from agentrft.envs.finance import (
    FISCAL_YEARS,
    METRICS,
    FinanceEnvironment,
    build_corpus,
    default_corpus,
    efficient_oracle,
    env_spec,
    load_split,
    logged_oracle,
    oracle_conversation,
    verbose_oracle,
)
from agentrft.envs.finance.corpus import corpus_digest
from agentrft.envs.finance.oracles import answer_text
from agentrft.envs.finance.retrieval import default_index, tokenize
from agentrft.envs.registry import get_env
from agentrft.errors import ConfigError
from agentrft.graders.numeric import grade_numeric
from agentrft.tools.base import ToolFailure
from agentrft.tools.executor import ToolExecutor
from agentrft.types import ToolCall, ToolErrorKind, Trajectory


@pytest.fixture(scope="module")
def corpus():
    return default_corpus()


@pytest.fixture(scope="module")
def validation():
    return load_split("validation")


# -- corpus ---------------------------------------------------------------------------


def test_corpus_shape(corpus):
    assert len(corpus.companies) >= 48
    names = {c.name for c in corpus.companies}
    assert {"Northwind Capital", "Northwind Capital Group", "Northwood Capital", "Northwind Holdings"} <= names
    ids = [d.doc_id for d in corpus.documents]
    assert len(ids) == len(set(ids))
    kinds = Counter(d.kind for d in corpus.documents)
    n = len(corpus.companies) * len(FISCAL_YEARS)
    assert kinds == {"annual_report": n, "quarterly_report": 3 * n, "press_release": n, "analyst_note": n}
    for c in corpus.companies:
        for year in FISCAL_YEARS:
            report = corpus.document(f"10K-{c.code}-{year}")
            assert report is not None and report.company == c.name and report.year == year
            assert c.name in report.title and str(year) in report.title and "10-K" in report.title
            assert 60 <= len(report.text.split()) <= 100
            assert len(corpus.look_alikes(c.name)) == 3


def test_figures_are_plausible(corpus):
    by_metric: dict[str, list[float]] = {m: [] for m in METRICS}
    for (_, _, metric), value in corpus.figures.items():
        by_metric[metric].append(value)
    assert 50 < min(by_metric["revenue"]) and max(by_metric["revenue"]) < 50_000
    assert -15 < min(by_metric["operating_margin"]) and max(by_metric["operating_margin"]) < 45
    assert all(v == int(v) and v >= 50 for v in by_metric["headcount"])
    assert all(abs(ni) < rev for (c, y, m), ni in corpus.figures.items() if m == "net_income"
               for rev in [corpus.figures[(c, y, "revenue")]])
    assert len(set(by_metric["revenue"])) > 0.95 * len(by_metric["revenue"])  # not a handful of repeated values


def test_corpus_is_deterministic_across_processes(corpus):
    assert corpus_digest(build_corpus()) == corpus_digest(corpus)
    assert corpus_digest(build_corpus(seed=1)) != corpus_digest(corpus)
    probe = (
        "from agentrft.envs.finance import load_split; from agentrft.envs.finance.corpus import corpus_digest;"
        "from agentrft.envs.finance.retrieval import default_index; import json;"
        "print(json.dumps([corpus_digest(), [r['id'] for r in load_split('test')],"
        "[d.doc_id for d in default_index().search('Northwind capital revenue 2021')]]))"
    )
    here = [corpus_digest(corpus), [r["id"] for r in load_split("test")],
            [d.doc_id for d in default_index().search("Northwind capital revenue 2021")]]
    env = dict(os.environ, PYTHONHASHSEED="12345")  # another string-hash order than this process's
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == here


def test_filings_state_the_answers_and_distractors_do_not(corpus, validation):
    for row in validation:
        answer = row["answer"]
        shown = f"{int(answer):,}" if row["unit"] == "employees" else f"{abs(answer):,.1f}"
        gold = corpus.document(row["gold_doc_id"])
        assert shown in gold.text, (row["id"], gold.text)
        code = gold.doc_id.split("-")[1]
        estimate = corpus.document(f"AN-{code}-{row['year']}")
        assert row["company"] in estimate.title and shown not in estimate.text


# -- retrieval and tools ----------------------------------------------------------------------


def test_tokenize():
    assert tokenize("10K-NWC-2021 | Northwind Capital's annual reports") == ["10k", "nwc", "2021", "northwind", "capital", "annual", "report"]
    assert tokenize("the of and") == []


def test_search_lists_top5_ids_and_titles(corpus):
    env = FinanceEnvironment()
    lines = env.search("Northwind Capital annual report fiscal 2021").splitlines()
    assert len(lines) == 5
    ids = [line.split(" | ")[0] for line in lines]
    assert ids[0] == "10K-NWC-2021"
    for line in lines:
        doc_id, title = line.split(" | ")
        assert corpus.document(doc_id).title == title
    assert env.searches == ["Northwind Capital annual report fiscal 2021"]
    assert env.search("zzzz qqqq") == "No documents match the query."
    with pytest.raises(ToolFailure) as info:
        env.search("   ")
    assert info.value.kind == ToolErrorKind.TOOL_ERROR


def test_efficient_oracle_query_retrieves_the_gold_document(validation):
    env = FinanceEnvironment()
    found = 0
    for row in validation:
        first_call = efficient_oracle(row)[0]["tool_calls"][0]["function"]
        assert first_call["name"] == "search"
        listed = [line.split(" | ")[0] for line in env.search(**json.loads(first_call["arguments"])).splitlines()]
        found += row["gold_doc_id"] in listed
    assert found / len(validation) >= 0.95


def test_read_returns_the_document_and_rejects_unknown_ids(corpus):
    env = FinanceEnvironment()
    text = env.read("10K-NWC-2021")
    assert text == corpus.document("10K-NWC-2021").render()
    assert "Northwind Capital" in text and "fiscal 2021" in text
    assert env.read(" 10k-nwc-2021 ") == text  # forgiving about case and spaces
    assert env.read("10K-NWC-2021 | Northwind Capital annual report (Form 10-K), fiscal 2021") == text
    assert env.reads == ["10K-NWC-2021"] * 3
    with pytest.raises(ToolFailure) as info:
        env.read("10K-NOPE-2021")
    assert info.value.kind == ToolErrorKind.TOOL_ERROR
    assert "unknown doc_id '10K-NOPE-2021'" in info.value.message and "use search" in info.value.message
    assert env.reads == ["10K-NWC-2021"] * 3


def test_tools_and_schemas_through_the_executor():
    env = FinanceEnvironment()
    tools = env.tools()
    assert [t.name for t in tools] == ["search", "read"]
    search_schema = tools[0].schema()["function"]
    assert search_schema["parameters"]["required"] == ["query"]
    assert "doc_id | title" in search_schema["description"]
    assert tools[1].schema()["function"]["parameters"]["properties"]["doc_id"]["type"] == "string"
    records = ToolExecutor(tools).execute(
        [ToolCall("read", {"doc_id": "nope"}, id="a"), ToolCall("read", {"doc_id": "PR-NWC-2021"}, id="b"),
         ToolCall("search", {}, id="c")], turn=1)
    assert records[0].error.kind == ToolErrorKind.TOOL_ERROR and "use search to find ids" in records[0].result
    assert records[1].ok and "outlook" in records[1].result
    assert records[2].error.kind == ToolErrorKind.INVALID_ARGUMENTS


# -- splits ------------------------------------------------------------------------------------------


def test_splits_are_disjoint_valid_rft_rows(corpus):
    splits = {name: load_split(name) for name in ("train", "validation", "test")}
    assert {k: len(v) for k, v in splits.items()} == {"train": 400, "validation": 64, "test": 200}
    keys = [(r["company"], r["year"], r["metric"]) for rows in splits.values() for r in rows]
    assert len(keys) == len(set(keys))
    assert len({r["id"] for rows in splits.values() for r in rows}) == len(keys)
    for rows in splits.values():
        for row in rows:
            assert validate_row(row) == []
            assert "tools" not in row
            assert [m["role"] for m in row["messages"]] == ["system", "user"]
            assert row["company"] in row["messages"][1]["content"] and str(row["year"]) in row["messages"][1]["content"]
            assert row["answer"] == corpus.figures[(row["company"], row["year"], row["metric"])]
            assert isinstance(row["answer"], float) and row["unit"] == METRICS[row["metric"]].unit
            assert row["gold_doc_id"] == corpus.annual_report_id(row["company"], row["year"])
    assert set(Counter(r["metric"] for r in splits["test"])) == set(METRICS)  # every metric is asked


def test_load_split_returns_copies_and_rejects_unknown_names():
    rows = load_split("validation")
    rows[0]["answer"] = -1.0
    rows[0]["messages"].append({"role": "user", "content": "x"})
    fresh = load_split("validation")
    assert fresh[0]["answer"] != -1.0 and len(fresh[0]["messages"]) == 2
    with pytest.raises(ConfigError, match="no split 'dev'"):
        load_split("dev")


# -- oracles -------------------------------------------------------------------------------------------


def _check_conversation(conv, row):
    assert conv[:2] == row["messages"]
    pending: list[str] = []
    for m in conv[2:]:
        if m["role"] == "assistant":
            assert not pending  # every call was answered before the next turn
            pending = [c["id"] for c in m.get("tool_calls", [])]
        else:
            assert m["role"] == "tool" and m["tool_call_id"] == pending.pop(0)
            assert not m["content"].startswith("Error")
    assert conv[-1] == {"role": "assistant", "content": answer_text(row)}


def test_efficient_oracle_conversations_score_full_marks(validation):
    for row in validation:
        turns = efficient_oracle(row)
        assert [len(m.get("tool_calls", [])) for m in turns] == [1, 1, 0]
        conv = oracle_conversation(row, efficient_oracle)
        _check_conversation(conv, row)
        assert conv[5]["content"] == default_corpus().document(row["gold_doc_id"]).render()  # the gold report
        grade = grade_numeric(Trajectory(task_id=row["id"], messages=conv), row)
        assert grade.reward == 1.0 and grade.sub_rewards["correct"] == 1.0


def test_verbose_oracle_reads_distractors_then_the_gold_document(validation):
    for row in validation[:16]:
        turns = verbose_oracle(row)
        calls = [json.loads(c["function"]["arguments"]) | {"name": c["function"]["name"]}
                 for m in turns for c in m.get("tool_calls", [])]
        assert [c["name"] for c in calls] == ["search", "read", "search", "read", "read"]
        reads = [c["doc_id"] for c in calls if c["name"] == "read"]
        assert reads[-1] == row["gold_doc_id"] and row["gold_doc_id"] not in reads[:-1]
        assert len(set(reads)) == 3
        assert len({m["tool_calls"][0]["id"] for m in turns[:-1]}) == 5  # unique call ids
        env = FinanceEnvironment()
        conv = oracle_conversation(row, verbose_oracle, env=env)
        _check_conversation(conv, row)
        assert env.reads == reads and len(env.searches) == 2
        for distractor in reads[:-1]:  # each distractor was listed by the search before it
            assert any(distractor in m["content"] for m in conv if m.get("name") == "search")
        assert grade_numeric(Trajectory(task_id=row["id"], messages=conv), row).reward == 1.0


def test_oracle_answers_use_the_right_number_format():
    assert answer_text({"answer": 12450.0, "unit": "employees"}) == "12450"
    assert answer_text({"answer": -3.0, "unit": "$ millions"}) == "-3.0"
    assert answer_text({"answer": 17.25, "unit": "%"}) == "17.2"  # figures are stored to one decimal anyway


# -- the registry entry and a real rollout ------------------------------------------------------------


def test_env_spec(validation):
    spec = get_env("finance")
    assert spec.name == env_spec().name == "finance"
    assert spec.splits == ("train", "validation", "test")
    assert spec.load_split("validation") == validation
    row = validation[0]
    a, b = spec.make_env(row), spec.make_env(row)
    assert isinstance(a, FinanceEnvironment) and a is not b
    a.read(row["gold_doc_id"])
    assert b.reads == []  # per-rollout state is not shared
    assert set(spec.oracles) == {"efficient", "verbose", "logged"}
    conv = spec.oracles["efficient"](row)
    assert conv == oracle_conversation(row, efficient_oracle)
    assert spec.grade(Trajectory(task_id=row["id"], messages=conv), row).reward == 1.0


def test_scripted_rollout_through_the_episode_loop(tokenizer, validation):
    """The efficient oracle's turns, sampled token-for-token, through the real rollout loop and grader."""
    from agentrft.models.chat_format import HermesChatFormat
    from agentrft.rollout.episode import RolloutConfig, run_episodes
    from agentrft.rollout.sampler import ScriptedSampler
    from agentrft.types import StopReason

    cf = HermesChatFormat(tokenizer)
    rows = validation[:2]
    # Rollouts advance in lockstep: the script interleaves the rows turn by turn.
    per_row = [[cf.assistant_tokens(m) for m in efficient_oracle(r)] for r in rows]
    script = [list(turn) for turns in zip(*per_row) for turn in turns]
    trajs = run_episodes(rows, get_env("finance").make_env, ScriptedSampler(script), cf, RolloutConfig(max_turns=4, max_total_tokens=8192))
    for traj, row in zip(trajs, rows):
        assert traj.stop_reason == StopReason.ANSWER, traj.errors
        assert [r.call.name for r in traj.tool_calls] == ["search", "read"] and all(r.ok for r in traj.tool_calls)
        expected = oracle_conversation(row, efficient_oracle)
        assert [m.get("content") for m in traj.messages if m["role"] == "tool"] == [m["content"] for m in expected if m["role"] == "tool"]
        grade = get_env("finance").grade(traj, row)
        assert grade.reward == 1.0 and grade.sub_rewards["correct"] == 1.0


def test_logged_oracle_mixes_verbose_and_efficient_traces_deterministically():
    train = load_split("train")
    kinds = ["efficient" if logged_oracle(r) == efficient_oracle(r) else "verbose" for r in train]
    assert all(k == "efficient" or logged_oracle(r) == verbose_oracle(r) for k, r in zip(kinds, train))
    share = kinds.count("efficient") / len(kinds)
    assert 0.18 < share < 0.32  # 1 in 4 by design
    assert kinds == ["efficient" if logged_oracle(r) == efficient_oracle(r) else "verbose" for r in load_split("train")]
    row = train[0]
    assert logged_oracle(row, efficient_share=1.0) == efficient_oracle(row)
    assert logged_oracle(row, efficient_share=0.0) == verbose_oracle(row)
    with pytest.raises(ValueError, match="efficient_share"):
        logged_oracle(row, efficient_share=1.5)
