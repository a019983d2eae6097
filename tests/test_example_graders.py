"""The shipped finance grader specs: their unit cases pass, and the probes tell the lenient one from the strict one."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from agentrft.cli import main

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "graders"


def test_strict_finance_grader_passes_its_cases():
    res = CliRunner().invoke(main, ["grader", "test", str(EXAMPLES / "finance_numeric_strict.json"),
                                    str(EXAMPLES / "finance_cases.jsonl")])
    assert res.exit_code == 0, res.output
    assert "9 passed, 0 failed" in res.output


def test_lenient_grader_fails_the_ramble_cases():
    res = CliRunner().invoke(main, ["grader", "test", str(EXAMPLES / "finance_numeric.json"),
                                    str(EXAMPLES / "finance_cases.jsonl")])
    assert res.exit_code == 1
    assert "FAIL ramble containing the reference" in res.output


def test_probes_flag_the_lenient_grader_only(tmp_path):
    rows = tmp_path / "val.jsonl"
    runner = CliRunner()
    assert runner.invoke(main, ["tasks", "--env", "finance", "--split", "validation", "--limit", "3", "--out", str(rows)]).exit_code == 0
    lenient = runner.invoke(main, ["grader", "probe", str(EXAMPLES / "finance_numeric.json"), "--data", str(rows),
                                   "--fail-on-flag"])
    assert lenient.exit_code == 1 and "buried_reference" in lenient.output and "FLAGGED" in lenient.output
    strict = runner.invoke(main, ["grader", "probe", str(EXAMPLES / "finance_numeric_strict.json"), "--data", str(rows),
                                  "--fail-on-flag"])
    assert strict.exit_code == 0, strict.output
    assert "0 of 18 probe grades flagged" in strict.output
