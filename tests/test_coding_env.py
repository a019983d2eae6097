"""Coding env: deterministic tasks that fail before and pass after their fix, real sandbox, grader replay."""

from __future__ import annotations

import os
import statistics

import pytest

from agentrft.envs.coding import (
    MAX_COST,
    SPLIT_SIZES,
    TASKS,
    CodingEnv,
    get_task,
    grade,
    load_split,
    oracle,
    play,
    run_test_suite,
)
from agentrft.envs.registry import get_env
from agentrft.tools.executor import ToolExecutor
from agentrft.tools.sandbox import Sandbox, bwrap_available
from agentrft.types import ToolCall, ToolCallRecord, ToolError, ToolErrorKind, Trajectory

pytestmark = pytest.mark.skipif(not bwrap_available(), reason="bubblewrap unavailable (apt-get install bubblewrap)")


def row_for(task_id: str) -> dict:
    for split in SPLIT_SIZES:
        for row in load_split(split):
            if row["task_id"] == task_id:
                return row
    raise KeyError(task_id)


@pytest.fixture
def env_and_row():
    row = row_for("off_by_one-sum_to")
    env = CodingEnv()
    env.setup(row)
    yield env, row
    env.close()


def run(env: CodingEnv, row: dict, *calls: tuple[str, dict]) -> list[ToolCallRecord]:
    executor = ToolExecutor(env.tools(), item=row)
    return executor.execute([ToolCall(name, args) for name, args in calls], turn=1)


def traj_of(row: dict, *records: tuple[str, dict, ToolError | None]) -> Trajectory:
    calls = [ToolCallRecord(ToolCall(n, a, id=f"c{i}"), turn=i + 1, result="", error=e) for i, (n, a, e) in enumerate(records)]
    return Trajectory(task_id=row["id"], messages=list(row["messages"]), tool_calls=calls)


# -- tasks and splits ---------------------------------------------------------------------------------
def test_tasks_are_distinct_and_splits_are_deterministic_and_disjoint():
    assert len(TASKS) == 30 and len({t.task_id for t in TASKS}) == 30
    assert len({t.source for t in TASKS}) == 30
    assert all(3 <= t.num_tests <= 6 for t in TASKS)
    splits = {name: load_split(name) for name in SPLIT_SIZES}
    assert {name: len(rows) for name, rows in splits.items()} == SPLIT_SIZES
    assert splits == {name: load_split(name) for name in SPLIT_SIZES}  # deterministic
    ids = [row["task_id"] for rows in splits.values() for row in rows]
    assert sorted(ids) == sorted(t.task_id for t in TASKS)  # disjoint and complete
    assert [r["task_id"] for r in load_split("validation", seed=1)] != [r["task_id"] for r in splits["validation"]]
    row = splits["train"][0]
    task = get_task(row["task_id"])
    assert [m["role"] for m in row["messages"]] == ["system", "user"]
    user = row["messages"][1]["content"]
    assert task.module in user and f"{task.function}(" in user and "instead of returning" in user
    assert row["solution"] == {"path": task.module, "old": task.old, "new": task.new}
    assert task.files()[task.test_file].count("def test_") == task.num_tests


def test_every_task_fails_before_and_passes_after_its_fix():
    for task in TASKS:
        with Sandbox() as sandbox:
            for name, text in task.files().items():
                sandbox.write_file(name, text)
            before = run_test_suite(sandbox, task)
            sandbox.write_file(task.module, task.fixed_source)
            after = run_test_suite(sandbox, task)
        assert before.finished and (before.passed, before.total) == (0, task.num_tests), (task.task_id, before.output)
        assert after.passed == after.total == task.num_tests, (task.task_id, after.output)
        assert f'{{"passed": {task.num_tests}, "total": {task.num_tests}}}' in after.output


# -- policies ---------------------------------------------------------------------------------------
def test_oracle_scores_one_and_doing_nothing_scores_zero_on_validation():
    rows = load_split("validation")
    oracle_grades = [grade(play(row, "oracle"), row) for row in rows]
    idle_grades = [grade(play(row, "do_nothing"), row) for row in rows]
    assert statistics.mean(g.reward for g in oracle_grades) >= 0.9
    assert all(g.sub_rewards == {"tests": 1.0, "cost": 0.0} for g in oracle_grades)
    assert statistics.mean(g.reward for g in idle_grades) <= 0.2
    assert not any(g.has_error for g in oracle_grades + idle_grades)


def test_registry_entry_and_demonstration_conversation():
    spec = get_env("coding")
    assert spec.name == "coding" and spec.splits == ("train", "validation", "test")
    assert set(spec.oracles) == {"oracle", "do_nothing"}
    row = spec.load_split("test")[0]
    messages = spec.oracles["oracle"](row)
    assert [m["role"] for m in messages] == ["system", "user"] + ["assistant", "tool"] * 3 + ["assistant"]
    calls = [m["tool_calls"][0] for m in messages if m.get("tool_calls")]
    assert [c["function"]["name"] for c in calls] == ["read_file", "replace_in_file", "run_tests"]
    tool_msgs = [m for m in messages if m["role"] == "tool"]
    assert [m["tool_call_id"] for m in tool_msgs] == [c["id"] for c in calls]
    assert tool_msgs[0]["content"] == get_task(row["task_id"]).source  # real tool results
    assert tool_msgs[2]["content"].endswith('"total": %d}' % get_task(row["task_id"]).num_tests)
    assert "Error" not in "".join(m["content"] for m in tool_msgs)
    assert spec.oracles["do_nothing"](row)[-1]["role"] == "assistant"


# -- tools and the sandbox --------------------------------------------------------------------------------
def test_repository_lives_in_the_sandbox_and_code_cannot_see_the_host(env_and_row, tmp_path):
    env, row = env_and_row
    scratch = env.sandbox.scratch_dir
    assert sorted(os.listdir(scratch)) == ["run_tests.py", "series.py", "test_series.py"]
    assert not os.path.exists("series.py")  # nothing lands in the working directory
    secret = tmp_path / "host_secret.txt"
    secret.write_text("do not read")
    probe = f"import os\nprint('HOST FILE VISIBLE' if os.path.exists({str(secret)!r}) else 'host file hidden')\n"
    probe += "print('cwd', os.getcwd())\n"
    records = run(env, row, ("write_file", {"path": "series.py", "content": probe}))
    assert records[0].ok
    output = env.run_tests()
    assert "host file hidden" in output and "cwd /work" in output and "HOST FILE VISIBLE" not in output
    assert env.list_files().splitlines()[1].startswith("series.py (")
    env.close()
    assert not os.path.exists(scratch)


def test_paths_outside_the_repository_are_refused(env_and_row, tmp_path):
    env, row = env_and_row
    outside = tmp_path / "escaped.txt"
    records = run(env, row,
                  ("write_file", {"path": "../../etc/x", "content": "pwned"}),
                  ("write_file", {"path": str(outside), "content": "pwned"}),
                  ("read_file", {"path": "/etc/passwd"}),
                  ("replace_in_file", {"path": "../run_tests.py", "old": "a", "new": "b"}),
                  ("write_file", {"path": "/work/notes/plan.txt", "content": "ok"}))  # in-sandbox spelling is fine
    assert [r.error.kind if r.error else None for r in records] == [ToolErrorKind.GUARDRAIL] * 4 + [None]
    assert records[0].result.startswith("Error (guardrail): '../../etc/x' is outside the repository")
    assert not outside.exists() and not os.path.exists("/etc/x")
    assert env.read_file("notes/plan.txt") == "ok"


def test_tests_and_runner_are_read_only_and_planted_symlinks_are_not_followed(env_and_row):
    env, row = env_and_row
    records = run(env, row,
                  ("write_file", {"path": "test_series.py", "content": "def test_ok():\n    pass\n"}),
                  ("replace_in_file", {"path": "./run_tests.py", "old": "passed = total = 0", "new": "passed = total = 9"}))
    assert all(r.error.kind == ToolErrorKind.GUARDRAIL and "read-only" in r.result for r in records)
    # Code run by run_tests plants a link to a host file; reading it through the tool is refused.
    plant = "import os\nos.symlink('/etc/passwd', 'notes.txt')\n" + get_task(row["task_id"]).fixed_source
    assert run(env, row, ("write_file", {"path": "series.py", "content": plant}))[0].ok
    assert '"passed": 4' in env.run_tests()
    [read] = run(env, row, ("read_file", {"path": "notes.txt"}))
    assert read.error.kind == ToolErrorKind.GUARDRAIL and "root:" not in read.result


def test_replace_in_file_needs_exactly_one_match(env_and_row):
    env, row = env_and_row
    records = run(env, row,
                  ("replace_in_file", {"path": "series.py", "old": "range(1,n)", "new": "x"}),
                  ("replace_in_file", {"path": "series.py", "old": "total", "new": "x"}),
                  ("read_file", {"path": "missing.py"}))
    assert [r.error.kind for r in records] == [ToolErrorKind.TOOL_ERROR] * 3
    assert "occurs 0 times" in records[0].result and "occurs 3 times" in records[1].result
    assert "no file missing.py" in records[2].result
    [ok] = run(env, row, ("replace_in_file", {"path": "series.py", "old": "range(1, n)", "new": "range(1, n + 1)"}))
    assert ok.ok and ok.result == "replaced 1 line(s) at line 4 of series.py"
    assert '{"passed": 4, "total": 4}' in env.run_tests()
    assert env.last_test_run.fraction == 1.0


# -- grading ----------------------------------------------------------------------------------------
def test_grader_replays_only_successful_edits_and_never_the_tests():
    row = row_for("off_by_one-sum_to")
    task = get_task(row["task_id"])
    fixed = ("write_file", {"path": "series.py", "content": task.fixed_source}, None)
    assert grade(traj_of(row, fixed), row).reward == 1.0
    failed = ("write_file", {"path": "series.py", "content": task.fixed_source},
              ToolError(ToolErrorKind.TIMEOUT, "late"))
    assert grade(traj_of(row, failed), row).sub_rewards["tests"] == 0.0
    # Partial fix: 2 of the 4 tests (sum_to(5), sum_to(1)) pass.
    partial = ("write_file", {"path": "series.py", "content": "def sum_to(n):\n    return {5: 15, 1: 1}.get(n, 0)\n"}, None)
    assert grade(traj_of(row, partial), row).sub_rewards["tests"] == 0.5
    # A forged "successful" edit of the tests is not replayed; the pristine tests still fail.
    forged = ("write_file", {"path": "test_series.py", "content": "def test_ok():\n    pass\n"}, None)
    g = grade(traj_of(row, forged), row)
    assert g.reward == 0.0 and "did not replay" in g.error_messages[0] and not g.has_error
    # Code that never finishes scores 0, with a note (not a grader error).
    hang = ("write_file", {"path": "series.py", "content": "while True:\n    pass\n"}, None)
    g = grade(traj_of(row, hang), row)
    assert g.reward == 0.0 and not g.has_error


def test_cost_term_per_call_beyond_target_is_capped():
    row = row_for("off_by_one-sum_to")
    task = get_task(row["task_id"])
    fix = ("replace_in_file", {"path": task.module, "old": task.old, "new": task.new}, None)
    look = ("list_files", {}, None)
    assert row["target_tool_calls"] == 5
    g = grade(traj_of(row, *[look] * 6, fix), row)  # 7 calls: 2 beyond the target
    assert g.sub_rewards == {"tests": 1.0, "cost": pytest.approx(0.1)} and g.reward == pytest.approx(0.9)
    g = grade(traj_of(row, *[look] * 30, fix), row)
    assert g.sub_rewards["cost"] == MAX_COST and g.reward == pytest.approx(1.0 - MAX_COST)
    assert grade(traj_of(row, *[look] * 30), row).reward == 0.0  # never below 0


def test_grader_flags_an_unknown_task_instead_of_a_silent_zero():
    row = dict(load_split("test")[0], task_id="no-such-task")
    g = grade(traj_of(row), row)
    assert g.reward == 0.0 and g.errors["sample_parse_error"] and g.error_messages


def test_oracle_script_uses_the_row_solution():
    row = load_split("train")[3]
    calls = [m["tool_calls"][0]["function"]["name"] for m in oracle(row) if m.get("tool_calls")]
    assert calls == ["read_file", "replace_in_file", "run_tests"]
    assert oracle(row)[-1]["content"].startswith(f"Fixed the bug in {row['module']}")


# -- forging the grade --------------------------------------------------------------------------------
# Each edit leaves the bug in sum_to() (range(1, n)) and tries to make the grade count the tests as passed
# anyway. The grade must stay at 0 for correctness: only the values the function returns count.
_BUGGY = get_task("off_by_one-sum_to").source
_FORGED_SUMMARY = '{"passed": 4, "total": 4}'
FORGERIES = {
    # print the runner's summary line at import and exit before any test runs
    "print_and_exit_at_import": (
        "import os, sys\n"
        "for k in range(1, 5):\n"
        "    print('PASS test_sum_to_%d' % k)\n"
        f"print({_FORGED_SUMMARY!r}, flush=True)\n"
        "os._exit(0)\n" + _BUGGY
    ),
    # after the real run, write a passing summary to every descriptor this process holds and to the
    # sandbox's own stdout (through pid 1), so the forged line comes last whatever the channel is
    "overwrite_the_result_channel_at_exit": (
        "import atexit, os\n"
        "def _forge():\n"
        f"    line = ({_FORGED_SUMMARY!r} + '\\n').encode()\n"
        "    for fd in range(1, 64):\n"
        "        try:\n"
        "            os.write(fd, line)\n"
        "        except OSError:\n"
        "            pass\n"
        "    for pid in ('1', str(os.getppid())):\n"
        "        try:\n"
        "            with open('/proc/%s/fd/1' % pid, 'wb', buffering=0) as f:\n"
        "                f.write(line)\n"
        "        except OSError:\n"
        "            pass\n"
        "atexit.register(_forge)\n" + _BUGGY
    ),
    # patch the machinery the runner reports with (its JSON encoder and print)
    "monkeypatch_the_runner": (
        "import builtins, json\n"
        f"json.dumps = lambda *args, **kwargs: {_FORGED_SUMMARY!r}\n"
        "_print = builtins.print\n"
        "builtins.print = lambda *a, **k: _print(*(str(x).replace('FAIL', 'PASS') for x in a), **k)\n" + _BUGGY
    ),
    # read the expected values out of the test file at import and return them (a lookup table built at run time)
    "read_the_expected_values_from_the_tests": (
        "import os, re\n"
        "_TABLE = {}\n"
        "if os.path.exists('test_series.py'):\n"
        "    for args, value in re.findall(r'assert sum_to\\((\\d+)\\) == (\\d+)', open('test_series.py').read()):\n"
        "        _TABLE[int(args)] = int(value)\n"
        "def sum_to(n):\n"
        "    return _TABLE.get(n, 0)\n"
    ),
    # return an object that compares equal to anything, so every assert in the tests holds
    "always_equal_result": (
        "class _Anything:\n"
        "    def __eq__(self, other):\n"
        "        return True\n"
        "    def __sub__(self, other):\n"
        "        return 0\n"
        "    __rsub__ = __sub__\n"
        "def sum_to(n):\n"
        "    return _Anything()\n"
    ),
}
# Start-up hooks planted next to the module: a pytest conftest and a sitecustomize that forge the summary.
_HOOK = f"import os\nprint({_FORGED_SUMMARY!r}, flush=True)\nos._exit(0)\n"


@pytest.mark.parametrize("name", sorted(FORGERIES))
def test_forged_test_results_earn_no_reward(name):
    row = row_for("off_by_one-sum_to")
    edit = ("write_file", {"path": "series.py", "content": FORGERIES[name]}, None)
    g = grade(traj_of(row, edit), row)
    assert g.sub_rewards["tests"] == 0.0 and g.reward == 0.0, (name, g.error_messages)
    assert not g.has_error, g.error_messages


def test_planted_start_up_hooks_earn_no_reward():
    row = row_for("off_by_one-sum_to")
    edits = [("write_file", {"path": name, "content": _HOOK}, None)
             for name in ("conftest.py", "sitecustomize.py", "usercustomize.py")]
    g = grade(traj_of(row, *edits), row)
    assert g.sub_rewards["tests"] == 0.0 and not g.has_error, g.error_messages
    fixed = ("write_file", {"path": "series.py", "content": get_task(row["task_id"]).fixed_source}, None)
    assert grade(traj_of(row, *edits, fixed), row).sub_rewards["tests"] == 1.0
