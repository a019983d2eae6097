"""``agentrft promote RUN --as NAME --gate gate.yaml``: gate a run's weights, then point an alias at them.

:func:`promote` is the whole decision, in order:

1. stage: copy the run's checkpoint weights out of the run and hash them
   (:meth:`~agentrft.governance.registry.ModelRegistry.stage`), so the weights
   measured are the weights promoted even if the run writes a new checkpoint;
2. measure: roll out and grade the gate's tasks with the staged candidate and,
   when the alias has one, with its current model -- same tasks, same seeds,
   one model in memory at a time -- and grade the reward-hacking probes;
3. decide: every declared threshold must hold (:func:`~agentrft.governance.gate.gate_checks`);
4. record: promoted -> a registry entry (with the gate's summary) and an audit ``promote`` entry; refused ->
   an audit ``promote_refused`` entry with the failing checks, and the registry untouched.

The :class:`GateReport` says what was measured and why it passed or not; the CLI prints it and exits non-zero
when the candidate was refused.
"""

from __future__ import annotations

import gc
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agentrft.errors import AgentRFTError
from agentrft.evaluation import GradedRollout, evaluate_rows, summarize, write_eval_outputs
from agentrft.governance.gate import GateCheck, GateSpec, gate_checks, gate_tasks, load_gate_spec, probe_score
from agentrft.governance.registry import ModelRegistry
from agentrft.jobs.registry_store import RegistryEntry, RegistryError, load_registered, valid_alias
from agentrft.jobs.store import RunStore, hash_json
from agentrft.privacy import Redactor

__all__ = ["GateReport", "gate_eval", "promote"]


@dataclass
class GateReport:
    """The gate's verdict on one candidate for one alias."""

    name: str
    run_dir: str
    step: int
    weights_sha256: str
    current_sha256: str | None
    """The weights the alias pointed at when the gate ran (None: first promotion, absolute checks only)."""
    checks: list[GateCheck]
    candidate_summary: dict[str, Any] = field(default_factory=dict)
    current_summary: dict[str, Any] | None = None
    spec_sha256: str = ""
    promoted: RegistryEntry | None = None

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    @property
    def failed(self) -> list[GateCheck]:
        return [c for c in self.checks if not c.passed]

    def summary(self) -> dict[str, Any]:
        """What the registry entry and the audit log keep: the verdict, each check, what it compared."""
        return {"passed": self.passed, "spec_sha256": self.spec_sha256, "baseline_weights_sha256": self.current_sha256,
                "n_tasks": self.candidate_summary.get("n_tasks"), "checks": [c.to_dict() for c in self.checks]}

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "run_dir": self.run_dir, "step": self.step, "weights_sha256": self.weights_sha256,
                **self.summary(), "candidate": self.candidate_summary, "current": self.current_summary,
                "promoted": None if self.promoted is None else self.promoted.to_dict()}

    def format(self) -> str:
        base = (f"current {self.current_sha256[:12]}" if self.current_sha256
                else "no current model (absolute checks only)")
        lines = [f"gate for {self.name!r}: candidate {self.weights_sha256[:12]} ({self.run_dir} step {self.step}) "
                 f"vs {base}", "",
                 f"{'check':<24} {'value':>10} {'threshold':>10} {'current':>10}  result"]
        for c in self.checks:
            baseline = "-" if c.baseline is None else f"{c.baseline:.4g}"
            lines.append(f"{c.name:<24} {c.value:>10.4g} {c.threshold:>10.4g} {baseline:>10}  "
                         f"{'pass' if c.passed else 'FAIL'}" + (f"  ({c.detail})" if c.detail else ""))
        lines.append("")
        if self.promoted is not None:
            lines.append(f"promoted: {self.name} -> {self.weights_sha256[:12]} (entry {self.promoted.index})")
        else:
            lines.append(f"refused: {', '.join(c.name for c in self.failed)} failed; {self.name!r} is unchanged")
        return "\n".join(lines)


def gate_eval(loaded, env, rows: list[dict[str, Any]], spec: GateSpec) -> list[GradedRollout]:
    """Roll out and grade ``rows`` with ``loaded`` (a LoadedModel) under the gate's rollout settings."""
    from agentrft.models.chat_format import get_chat_format
    from agentrft.rollout.hf_sampler import HFSampler

    sampler = HFSampler(loaded.model, pad_token_id=loaded.tokenizer.pad_token_id, cpu_matmul=loaded.cpu_matmul)
    chat_format = get_chat_format(loaded.tokenizer, loaded.chat_format)
    return evaluate_rows(rows, env, sampler, chat_format, spec.rollout)


def _measure(root: Path, entry: RegistryEntry, env, rows, spec: GateSpec, device: str | None) -> list[GradedRollout]:
    loaded = load_registered(root, entry, device=device)
    try:
        return gate_eval(loaded, env, rows, spec)
    finally:
        del loaded
        gc.collect()  # one model in memory at a time


def promote(run_dir: str | Path, name: str, gate: GateSpec | str | Path, *, home: str | Path | None = None,
            step: int | None = None, device: str | None = None, actor: str | None = None,
            out_dir: str | Path | None = None) -> GateReport:
    """Gate the run's latest (or ``step``'s) checkpoint for alias ``name`` and promote it if every declared
    threshold holds (see the module docstring). ``out_dir``: also write ``gate.json`` and both evals'
    ``summary.json`` / ``trajectories.jsonl`` there. Raises for what is not a verdict (no such run, a bad spec,
    the candidate already current, the alias changed while the gate ran)."""
    valid_alias(name)
    spec = gate if isinstance(gate, GateSpec) else load_gate_spec(gate)
    registry = ModelRegistry(home)
    current = registry.current(name)
    env, rows = gate_tasks(spec)
    if not rows:
        raise AgentRFTError("the gate's task set is empty; nothing to measure the candidate on")
    with registry.stage(run_dir, step) as staged:
        if current is not None and current.weights_sha256 == staged.weights_sha256:
            raise RegistryError(f"{name!r} already points at these weights ({staged.weights_sha256[:16]}); "
                                "nothing to promote")
        candidate = _measure(registry.root, staged.entry(), env, rows, spec, device)
        baseline = None if current is None else _measure(registry.root, current, env, rows, spec, device)
        checks = gate_checks(spec, candidate, baseline, probe_score(spec, env.grade, rows))
        report = GateReport(
            name, str(staged.run_dir), staged.step, staged.weights_sha256,
            None if current is None else current.weights_sha256, checks,
            summarize(candidate, 0.0, spec.accuracy_threshold, spec.tasks.category_key),
            None if baseline is None else summarize(baseline, 0.0, spec.accuracy_threshold, spec.tasks.category_key),
            hash_json(spec.model_dump(mode="json")))
        if out_dir is not None:
            _write(Path(out_dir), report, candidate, baseline)
        if report.passed:
            report.promoted = registry.promote_staged(name, staged, gate=report.summary(),
                                                      expected_current=report.current_sha256, actor=actor)
        else:
            registry.audit.append("promote_refused", subject=name, actor=actor, details={
                "weights_sha256": report.weights_sha256, "run_dir": report.run_dir, "step": report.step,
                "current_weights_sha256": report.current_sha256,
                "failed": [c.to_dict() for c in report.failed], **report.summary()})
    if out_dir is not None and report.promoted is not None:
        _write(Path(out_dir), report, None, None)  # gate.json again, now with the registry entry
    return report


def _write(out: Path, report: GateReport, candidate: list[GradedRollout] | None,
           baseline: list[GradedRollout] | None) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "gate.json").write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    for label, graded, summary in (("candidate", candidate, report.candidate_summary),
                                   ("current", baseline, report.current_summary)):
        if graded is not None:
            write_eval_outputs(out / label, graded, summary, _run_privacy(report.run_dir))


def _run_privacy(run_dir: str | Path) -> Redactor:
    """What the candidate run writes of the text it sees (its ``privacy`` section): the gate's evals are written
    the same way."""
    with RunStore(run_dir) as store:
        return store.privacy
