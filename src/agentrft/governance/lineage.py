"""A run's lineage and its model card: where its weights came from, and what the audit log says about it.

:func:`build_lineage` follows a run directory's ``init_from`` parents (RFT on top of SFT on top of a base
model), reads what each run's store recorded (:func:`~agentrft.jobs.audit.run_lineage_fields`: the config,
data, grader and base-model hashes, the weights' hash; :func:`~agentrft.jobs.audit.metrics_summary`), picks
the audit-log entries that concern those runs (their train decisions, a promotion that named one of them,
and the rollbacks and serves of the aliases it was promoted as) and verifies the whole log's hash chain.
:func:`describe_lineage` lays it out for a terminal (``agentrft lineage``); :func:`model_card` writes it as
Markdown: base model, data (files with sha256 and row counts), graders with their versions,
hyperparameters, final and best validation figures, gate results and the chain.

Nothing here recomputes a run's identity: the hashes are the ones its store holds. The data files are
re-hashed only to show whether the file on disk is still the one trained on.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agentrft.jobs.audit import AuditLog, metrics_summary, run_lineage_fields
from agentrft.jobs.store import DB_NAME, RunStore, hash_file

__all__ = ["CARD_NAME", "HYPERPARAMETER_SECTIONS", "Lineage", "RunRecord", "build_lineage", "describe_lineage",
           "model_card", "write_model_card"]

CARD_NAME = "MODEL_CARD.md"
HYPERPARAMETER_SECTIONS = ("seed", "training", "optim", "lora", "rollout", "rft", "dpo")
"""The resolved-config sections a card lists as hyperparameters (``rft``/``dpo`` only for their method)."""
_PROMOTIONS = ("promote", "promote_refused")


@dataclass
class RunRecord:
    """One run of a lineage, as its store recorded it; ``missing`` says why a parent could not be read."""

    run_dir: Path
    fields: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    data_files: list[dict[str, Any]] = field(default_factory=list)
    missing: str | None = None


@dataclass
class Lineage:
    """A run and its ancestors (``runs[0]`` is the run asked about), with the audit entries about them."""

    runs: list[RunRecord]
    audit_path: Path
    entries: list[dict[str, Any]]
    problems: list[str]
    """The audit log's verification problems (:meth:`AuditLog.verify`); empty when its chain is intact."""
    head: str | None
    """The audit log's head hash: anchor it elsewhere to detect a log rewritten from the start."""

    @property
    def intact(self) -> bool:
        return not self.problems

    def promotions(self) -> list[dict[str, Any]]:
        """The promote and refused-promote entries about these runs: their details carry the gate results."""
        return [e for e in self.entries if e.get("action") in _PROMOTIONS]


def build_lineage(run_dir: str | os.PathLike[str], audit: AuditLog | None = None) -> Lineage:
    """The lineage of ``run_dir``: its ``init_from`` parents, recursively, and the audit log's entries about
    them. Raises ``FileNotFoundError`` when ``run_dir`` itself holds no run."""
    audit = audit or AuditLog()
    runs: list[RunRecord] = [_run_record(Path(run_dir))]
    seen = {runs[0].fields["run_dir"]}
    while (parent := runs[-1].fields.get("parent_run")) and parent not in seen:
        seen.add(parent)
        try:
            runs.append(_run_record(Path(parent)))
        except FileNotFoundError as e:
            runs.append(RunRecord(Path(parent), {"run_dir": parent}, missing=str(e)))
    return Lineage(runs, audit.path, _entries_about({r.fields["run_dir"] for r in runs}, audit.entries()),
                   audit.verify(), audit.head())


def _run_record(run_dir: Path) -> RunRecord:
    if not (run_dir / DB_NAME).is_file():
        raise FileNotFoundError(f"{run_dir.resolve()} holds no run ({DB_NAME} is missing)")
    with RunStore(run_dir) as store:
        fields = run_lineage_fields(run_dir, store)
        config = (store.get_run() or {}).get("resolved_config") or {}
        metrics = metrics_summary(store)
    return RunRecord(Path(fields["run_dir"]), fields, config, metrics, _data_files(config, fields))


def _data_files(config: dict[str, Any], fields: dict[str, Any]) -> list[dict[str, Any]]:
    """Each file of the config's ``data`` section with its sha256 and row count now, and whether that is
    still the file the run recorded (for demonstrations and pairs, whose file hash the runner stores)."""
    recorded = {"demonstrations_file": fields["data_hashes"].get("demonstrations"),
                "pairs_file": fields["data_hashes"].get("pairs")}
    out = []
    for key, value in sorted((config.get("data") or {}).items()):
        if not key.endswith("_file") or not isinstance(value, str):
            continue
        path = Path(value).expanduser()
        entry: dict[str, Any] = {"key": key, "path": value, "sha256": None, "rows": None, "as_trained": None}
        if path.is_file():
            entry["sha256"] = hash_file(path)
            entry["rows"] = sum(1 for line in path.read_text(encoding="utf-8", errors="replace").splitlines()
                                if line.strip())
            if recorded.get(key):
                entry["as_trained"] = entry["sha256"] == recorded[key]
        out.append(entry)
    return out


def _entries_about(run_dirs: set[str], entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Entries whose subject or any detail is one of ``run_dirs``, and then every entry about an alias that
    one of them was promoted as (its rollbacks and serves)."""
    about = [e for e in entries if e.get("subject") in run_dirs or run_dirs & set(_strings(e.get("details")))]
    aliases = {e.get("subject") for e in about if e.get("action") in _PROMOTIONS}
    ids = {id(e) for e in about}
    return [e for e in entries if id(e) in ids or e.get("subject") in aliases]


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


# -- for a terminal -------------------------------------------------------------------


def _short(h: str | None) -> str:
    return h[:12] if h else "-"


def _figures(v: dict[str, Any] | None) -> str:
    if not v:
        return "no eval"
    parts = [f"reward {v['reward_mean']:.3f}" if "reward_mean" in v else None,
             f"acc {v['accuracy']:.1%}" if "accuracy" in v else None,
             f"calls {v['tool_calls_per_rollout']:.2f}" if "tool_calls_per_rollout" in v else None]
    return " ".join(p for p in parts if p) + f" (step {v['step']})"


def describe_lineage(lin: Lineage) -> list[str]:
    """Lines for a terminal: the chain of runs (newest first), the audit entries about them, the audit
    log's state and head hash."""
    lines = [f"lineage of {lin.runs[0].run_dir} ({len(lin.runs)} run{'s' if len(lin.runs) > 1 else ''})"]
    for i, run in enumerate(lin.runs):
        f = run.fields
        if i:
            lines.append("    ^ init_from")
        if run.missing:
            lines.append(f"  {run.run_dir}: {run.missing}")
            continue
        lines += [f"  {f['method']}  {run.run_dir}  [{f['status']}]",
                  f"    base model {f['base_model']} ({_short(f['base_model_hash'])})",
                  f"    config {_short(f['config_hash'])}  data {_short(f['dataset_hash'])}  "
                  f"grader {_short(f['grader_hash'])}  weights {_short(f['weights_hash'])}"
                  + "".join(f"  {k} {_short(v)}" for k, v in sorted(f["data_hashes"].items())),
                  f"    steps {run.metrics['steps']}  final val {_figures(run.metrics['final_validation'])}  "
                  f"best val {_figures(run.metrics['best_validation'])}"]
    lines.append(f"audit log {lin.audit_path}: {len(lin.entries)} entr{'y' if len(lin.entries) == 1 else 'ies'} "
                 "about these runs")
    for e in lin.entries:
        lines.append(f"  seq {e.get('seq')}  {e.get('time')}  {e.get('actor')}  {e.get('action')}  {e.get('subject')}")
    if lin.intact:
        lines.append(f"audit chain intact; head {lin.head or '(empty log)'}")
    else:
        lines += ["AUDIT LOG TAMPERED:", *(f"  {p}" for p in lin.problems)]
    return lines


# -- the model card -------------------------------------------------------------------


def _json_block(obj: Any) -> list[str]:
    return ["```json", json.dumps(obj, indent=2, sort_keys=True, default=str), "```"]


def _data_lines(run: RunRecord) -> list[str]:
    f, data = run.fields, run.config.get("data") or {}
    out = [f"### `{f['run_id']}` ({f['method']})", "",
           f"- environment: `{data.get('env')}`, train split `{data.get('train_split')}`, row limit "
           f"{data.get('limit_train')}",
           f"- dataset hash (the rows trained on): `{f['dataset_hash']}`",
           *(f"- {k} hash: `{v}`" for k, v in sorted(f["data_hashes"].items()))]
    if run.data_files:
        out += ["", "| file | sha256 now | rows | as trained |", "|---|---|---|---|"]
        out += [f"| `{d['path']}` ({d['key']}) | `{d['sha256'] or 'missing'}` | "
                f"{'-' if d['rows'] is None else d['rows']} | "
                f"{'-' if d['as_trained'] is None else 'yes' if d['as_trained'] else 'NO: changed since'} |"
                for d in run.data_files]
    return out + [""]


def model_card(lin: Lineage) -> str:
    """The Markdown model card of ``lin.runs[0]``: base model, data, graders, hyperparameters, metrics, gate
    results and the lineage chain (full hashes throughout)."""
    run = lin.runs[0]
    f, cfg = run.fields, run.config
    out = [f"# Model card: {f['run_id']}", "",
           f"Run directory `{run.run_dir}`, method `{f['method']}`, status `{f['status']}`. Written by "
           "`agentrft lineage` from the run's store and the audit log; every hash is the one recorded when the "
           "run was created.", "",
           "## Base model", "",
           f"- model: `{f['base_model']}` (base-model hash `{f['base_model_hash']}`)",
           f"- initialised from: `{f['parent_run']}`" if f["parent_run"] else "- initialised from: the base model",
           f"- weights of the latest checkpoint: `{f['weights_hash']}`", "",
           "## Data", "", "What each run of the lineage trained on, this run first.", ""]
    readable = [r for r in lin.runs if not r.missing]
    for r in readable:
        out += _data_lines(r)
    out += ["## Graders", ""]
    for r in readable:
        grader, env = r.config.get("grader"), (r.config.get("data") or {}).get("env")
        what = (f"`{grader.get('type')}` grader `{grader.get('name')}`" if isinstance(grader, dict)
                else f"the environment's own grader (`{env}`)" if env else "no grader (no environment, no spec)")
        out.append(f"- `{r.fields['run_id']}` ({r.fields['method']}): {what}, version (content hash) "
                   f"`{r.fields['grader_hash']}`")
    sections = {k: cfg[k] for k in HYPERPARAMETER_SECTIONS
                if k in cfg and (k not in ("rft", "dpo") or k == f["method"])}
    out += ["", "## Hyperparameters", "", f"Config hash `{f['config_hash']}`; the resolved sections:", "",
            *_json_block(sections), "",
            "## Metrics", "",
            f"- steps: {run.metrics['steps']}",
            f"- final validation: {_figures(run.metrics['final_validation'])}",
            f"- best validation: {_figures(run.metrics['best_validation'])}", "",
            "## Gate results", ""]
    promotions = lin.promotions()
    if not promotions:
        out.append("No promotion of this run is in the audit log.")
    for e in promotions:
        out += [f"- seq {e['seq']}, {e['time']}, {e['actor']}: `{e['action']}` as `{e['subject']}`", "",
                *_json_block(e.get("details")), ""]
    out += ["", "## Lineage", ""]
    for i, r in enumerate(lin.runs):
        if r.missing:
            out.append(f"{i + 1}. `{r.run_dir}`: {r.missing}")
            continue
        rf = r.fields
        out.append(f"{i + 1}. `{rf['run_id']}` ({rf['method']}, {rf['status']}) at `{r.run_dir}`: config "
                   f"`{rf['config_hash']}`, data `{rf['dataset_hash']}`, grader `{rf['grader_hash']}`, base model "
                   f"`{rf['base_model_hash']}`, weights `{rf['weights_hash']}`")
    out += ["", "## Audit log", "", f"`{lin.audit_path}`, head hash `{lin.head}`; "
            + ("chain intact." if lin.intact else "CHAIN BROKEN: " + "; ".join(lin.problems)), ""]
    out += [f"- seq {e.get('seq')} {e.get('time')} {e.get('actor')}: `{e.get('action')}` `{e.get('subject')}`"
            for e in lin.entries]
    return "\n".join(out) + "\n"


def write_model_card(lin: Lineage, path: str | os.PathLike[str] | None = None) -> Path:
    """Write :func:`model_card` to ``path`` (default ``RUN_DIR/MODEL_CARD.md``) whole or not at all."""
    path = Path(path) if path is not None else lin.runs[0].run_dir / CARD_NAME
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(model_card(lin), encoding="utf-8")
    os.replace(tmp, path)
    return path
