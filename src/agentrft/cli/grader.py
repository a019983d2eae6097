"""``agentrft grader ...``: validate, run, test and probe grader specs from the shell.

A click group the main CLI mounts as ``grader``. Each command is a thin
wrapper over the library (:func:`load_grader`, :func:`grade_batch`,
:func:`run_probes`, :func:`~agentrft.evaluation.variance_report`), so
everything here is also a Python API.

Exit codes: 0 success; 1 a test case failed or a probe was flagged (with
``--fail-on-flag``); 2 bad input (invalid spec, unreadable file).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import IO, Any

import click

from agentrft.cli.common import MODEL_HELP, fail, pop_rollout_config, rollout_options
from agentrft.config import RolloutConfig
from agentrft.errors import AgentRFTError
from agentrft.graders.batch import grade_batch
from agentrft.graders.loader import load_grader
from agentrft.graders.model_graders import JudgeConfig
from agentrft.graders.operations import run_grader, validate_grader
from agentrft.graders.probes import run_probes
from agentrft.graders.spec import grader_version


def _fail(message: str) -> None:
    fail(message)


def _is_file(value: str) -> bool:
    """Whether ``value`` names a file; text that cannot be a path (too long, NUL bytes) does not."""
    try:
        return Path(value).is_file()
    except (OSError, ValueError):
        return False


def _json_or_file(value: str, what: str) -> dict[str, Any]:
    """A JSON object given inline or as a file path."""
    if _is_file(value):
        value = Path(value).read_text()
    return _json_object(value, what)


def _json_object(text: str, what: str) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        data = None
    if not isinstance(data, dict):
        _fail(f"{what} must be a JSON object")
    return data


SAMPLE_KEYS = {"output_text", "output_json", "output_tools", "trajectory", "trace_id"}


def _run_sample(text: str | None, text_file: IO[str] | None, obj: str | None, obj_file: IO[str] | None) -> Any:
    """What ``run`` grades: the output text (OpenAI's ``model_sample``) or, from the object flags, a sample dict."""
    given = [flag for flag, v in (("--sample", text), ("--sample-file", text_file), ("--sample-object", obj),
                                  ("--sample-object-file", obj_file)) if v is not None]
    if len(given) != 1:
        _fail("give exactly one of --sample, --sample-file, --sample-object, --sample-object-file"
              + (f" (got {', '.join(given)})" if given else ""))
    if obj is not None:
        return _json_object(obj, "--sample-object")
    if obj_file is not None:
        return _json_object(obj_file.read(), f"--sample-object-file {obj_file.name}")
    if text_file is not None:
        return text_file.read()
    # Until this release --sample read a sample object or a file path; both now grade as the output text.
    # A value that looks like the old use gets a hint on stderr, never a different meaning.
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        data = None
    if isinstance(data, dict) and data and set(data) <= SAMPLE_KEYS:
        click.echo("note: --sample is the model's output text; to grade a sample object use --sample-object",
                   err=True)
    elif _is_file(text):
        click.echo("note: --sample is the model's output text; to read it from a file use --sample-file", err=True)
    return text


def _read_jsonl(path: str) -> list[dict[str, Any]]:
    rows = []
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as e:
        _fail(f"cannot read {path}: {e}")
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            _fail(f"{path}:{n}: not valid JSON: {e}")
        if not isinstance(row, dict):
            _fail(f"{path}:{n}: each line must be a JSON object")
        rows.append(row)
    return rows


def judge_options(f):
    opts = [
        click.option("--judge-base-url", envvar="OPENAI_BASE_URL", help="OpenAI-compatible endpoint for model graders."),
        click.option("--judge-api-key", envvar="OPENAI_API_KEY", help="API key for the judge endpoint."),
        click.option("--judge-model", default=None, help="Use this judge model instead of the spec's."),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def _judge_config(judge_base_url=None, judge_api_key=None, judge_model=None) -> JudgeConfig:
    return JudgeConfig(base_url=judge_base_url, api_key=judge_api_key, model=judge_model)


def _load(spec_path: str, judge_base_url=None, judge_api_key=None, judge_model=None):
    judge = _judge_config(judge_base_url, judge_api_key, judge_model)
    try:
        return load_grader(spec_path, judge=judge)
    except AgentRFTError as e:
        _fail(str(e))


@click.group("grader", context_settings={"help_option_names": ["-h", "--help"]})
def grader() -> None:
    """Validate, run, test and probe OpenAI-compatible grader specs."""


@grader.command("validate")
@click.argument("spec", type=click.Path(dir_okay=False))
def validate_cmd(spec: str) -> None:
    """Check SPEC (a grader JSON file) and print its type, name and version."""
    try:
        parsed = validate_grader(spec)
    except AgentRFTError as e:
        _fail(str(e))
    click.echo(f"ok: {parsed.type} grader {parsed.name!r}, version {grader_version(parsed)}")


@grader.command("run")
@click.argument("spec", type=click.Path(dir_okay=False))
@click.option("--sample", "sample_text", default=None,
              help="The model's output text (OpenAI's model_sample), taken as-is, JSON or not.")
@click.option("--sample-file", type=click.File("r", encoding="utf-8"), default=None,
              help="Read the output text from this file ('-': stdin), verbatim (a trailing newline counts).")
@click.option("--sample-object", "sample_object", default=None,
              help="A whole sample as JSON: output_text, output_json, output_tools, trajectory, ...")
@click.option("--sample-object-file", type=click.File("r", encoding="utf-8"), default=None,
              help="Read the whole sample JSON object from this file ('-': stdin).")
@click.option("--item", "item_arg", default="{}", show_default=True, help="Dataset row JSON (inline or file).")
@judge_options
def run_cmd(spec: str, sample_text: str | None, sample_file: IO[str] | None, sample_object: str | None,
            sample_object_file: IO[str] | None, item_arg: str, **judge: Any) -> None:
    """Grade one sample and print the result JSON (shaped like OpenAI's graders/run).

    As in OpenAI's graders/run, the sample is the model's output text: --sample (or --sample-file) fills
    sample.output_text, and sample.output_json when that text is valid JSON. So --sample '{"name": "x"}'
    grades an output that is that JSON. To set output_tools, trajectory or other fields, give the whole sample
    object with --sample-object (or --sample-object-file) instead.

    Changed: --sample used to take a sample object or a file path as well as text; JSON text and file names
    are now output text like any other (a note on stderr points to --sample-object / --sample-file).
    """
    sample = _run_sample(sample_text, sample_file, sample_object, sample_object_file)
    item = _json_or_file(item_arg, "--item")
    try:
        run = run_grader(spec, sample, item, judge=_judge_config(**judge))
    except AgentRFTError as e:
        _fail(str(e))
    click.echo(json.dumps(run.grade.to_dict(), indent=2))


def _check_case(case: dict[str, Any], reward: float, flags: list[str]) -> str | None:
    """Why a test case failed, or ``None``."""
    expected_error = case.get("expect_error")
    if expected_error and expected_error not in flags:
        return f"expected error flag {expected_error}, got {flags or 'none'}"
    if flags and not expected_error:
        return f"grader errors: {', '.join(flags)}"
    tol = float(case.get("tolerance", 1e-6))
    if "expected" in case and abs(reward - float(case["expected"])) > tol:
        return f"reward {reward:.6g} != expected {case['expected']}"
    if "min" in case and reward < float(case["min"]) - tol:
        return f"reward {reward:.6g} < min {case['min']}"
    if "max" in case and reward > float(case["max"]) + tol:
        return f"reward {reward:.6g} > max {case['max']}"
    return None


@grader.command("test")
@click.argument("spec", type=click.Path(dir_okay=False))
@click.argument("cases", type=click.Path(dir_okay=False))
@click.option("--max-concurrency", default=4, show_default=True)
@judge_options
def test_cmd(spec: str, cases: str, max_concurrency: int, **judge: Any) -> None:
    """Run the CASES (JSONL of {sample, item, expected | min | max, [expect_error], [name]}) against SPEC."""
    g = _load(spec, **judge)
    rows = _read_jsonl(cases)
    for n, case in enumerate(rows, 1):
        if "sample" not in case or not ({"expected", "min", "max", "expect_error"} & set(case)):
            _fail(f"{cases}:{n}: a case needs 'sample' and one of expected / min / max / expect_error")
    samples = [c["sample"] if isinstance(c["sample"], dict) else {"output_text": str(c["sample"])} for c in rows]
    grades = grade_batch(g, samples, [c.get("item") or {} for c in rows], max_concurrency=max_concurrency)
    failed = 0
    for n, (case, grade) in enumerate(zip(rows, grades), 1):
        flags = [f for f, on in grade.errors.items() if on]
        why = _check_case(case, grade.reward, flags)
        label = case.get("name") or f"case {n}"
        if why is None:
            click.echo(f"PASS {label}: reward {grade.reward:.6g}")
        else:
            failed += 1
            click.secho(f"FAIL {label}: {why}", fg="red")
            for message in grade.error_messages:
                click.echo(f"     {message[:300]}")
    click.echo(f"{len(rows) - failed} passed, {failed} failed")
    if failed:
        sys.exit(1)


@grader.command("probe")
@click.argument("spec", type=click.Path(dir_okay=False))
@click.option("--data", "data", required=True, type=click.Path(dir_okay=False), help="Dataset rows (JSONL, OpenAI RFT format).")
@click.option("--threshold", default=0.5, show_default=True, help="Flag probes scoring above this.")
@click.option("--reference-key", default=None, help="Row key holding the reference answer (default: first of answer, reference_answer, ...).")
@click.option("--limit", default=20, show_default=True, help="Probe at most this many rows.")
@click.option("--fail-on-flag", is_flag=True, help="Exit 1 when any probe is flagged.")
@click.option("--json-out", type=click.Path(dir_okay=False), default=None, help="Also write every probe result as JSON.")
@judge_options
def probe_cmd(spec: str, data: str, threshold: float, reference_key: str | None, limit: int, fail_on_flag: bool, json_out: str | None, **judge: Any) -> None:
    """Grade reward-hacking probes (empty, echo, buried reference, injection, ...) built from each row."""
    g = _load(spec, **judge)
    rows = _read_jsonl(data)[:limit]
    report = run_probes(g, rows, threshold=threshold, reference_key=reference_key)
    click.echo(report.format())
    if json_out:
        Path(json_out).write_text(json.dumps(report.to_dict(), indent=2))
    if fail_on_flag and report.flagged:
        sys.exit(1)


@grader.command("variance")
@click.argument("spec", type=click.Path(dir_okay=False))
@click.option("--model", default="smollm2-135m", show_default=True, help=MODEL_HELP)
@click.option("--env", "env_name", default=None,
              help="Built-in environment (default: finance; with --data, none: the rows' own tools).")
@click.option("--split", default="validation", show_default=True)
@click.option("--data", type=click.Path(exists=True, dir_okay=False), default=None,
              help="JSONL task file (OpenAI RFT format) instead of a built-in split.")
@click.option("--tools", type=click.Path(exists=True, dir_okay=False), default=None,
              help="tools.yaml: HTTP tool endpoints and MCP servers for --data tasks.")
@click.option("--limit", default=16, show_default=True, help="Tasks to sample.")
@click.option("--samples", default=4, show_default=True, help="Samples per task.")
@rollout_options(RolloutConfig(seed=0))
@click.option("--json-out", type=click.Path(dir_okay=False), default=None)
@judge_options
def variance_cmd(spec: str, model: str, env_name: str | None, split: str, data: str | None, tools: str | None,
                 limit: int, samples: int, json_out: str | None, judge_base_url: str | None,
                 judge_api_key: str | None, judge_model: str | None, **options: Any) -> None:
    """Is there a learning signal? N samples per task with the current model; per-task score spread.

    Tasks whose samples all score the same give GRPO-style training nothing to
    learn from; a high zero-variance fraction means: change the grader (more
    continuous), the tasks (easier/harder), or warm-start with SFT first. The
    rollout options default to RFT's sampling (``rollout`` of a training config).
    """
    from agentrft.cli.common import sampler_and_format
    from agentrft.envs.registry import task_source
    from agentrft.evaluation import evaluate_rows, variance_report

    g = _load(spec, judge_base_url, judge_api_key, judge_model)
    try:
        cfg = pop_rollout_config(options)
        source = task_source(env_name, split, data, tools, spec if data and not env_name else None)
        rows = source.rows[:limit]
        sampler, chat_format = sampler_and_format(model, "auto")  # a run directory: its weights and chat format
    except AgentRFTError as e:
        _fail(str(e))
    from tqdm import tqdm

    with tqdm(total=len(rows) * samples, desc=f"variance {source.env.name}", unit="rollout", file=sys.stderr) as bar:
        graded = evaluate_rows(rows, source.env, sampler, chat_format, cfg, samples=samples,
                               batch_size=max(samples, 8), grade=g.grade, progress=bar.update)
    report = variance_report(graded, samples)
    click.echo(f"grader {g.name!r} version {g.version}: {len(rows)} tasks x {samples} samples")
    click.echo(f"  mean reward {report['reward_mean']:.3f}; mean per-task std {report['per_task_std_mean']:.3f}")
    click.echo(f"  zero-variance tasks: {report['zero_variance_tasks']}/{len(rows)} "
               f"({report['zero_variance_fraction']:.0%}) -- these give no learning signal")
    click.echo(f"  grader errors: {report['grader_errors']}")
    if json_out:
        Path(json_out).write_text(json.dumps(report, indent=2) + "\n")
