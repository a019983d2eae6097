"""The redactor: what a run writes of the text it sees, per its ``privacy`` section.

Training uses the exact tokens in memory; only the written copy passes through here. Every writer of a run's
text (the run store's trajectories, events, status messages and config snapshot; the W&B config; ``agentrft
eval``'s ``trajectories.jsonl``; the served request log) calls one of three methods:

* :meth:`Redactor.redact_text` / :meth:`Redactor.redact_record`: each finding of the enabled detectors
  (:mod:`agentrft.privacy.detectors`) replaced by ``[REDACTED:<kind>]``, in a string or in every string of a
  nested dict/list (dict keys are names, not data, and are kept);
* :meth:`Redactor.written`: what to write of any other text-bearing value: as it is with ``store: full``,
  redacted otherwise (``none`` keeps operational text such as event messages, redacted: they are not
  trajectories);
* :meth:`Redactor.trajectory_record`: a stored trajectory record (``Trajectory.to_dict()`` plus grade, reward,
  advantage). ``redacted``: every string redacted and ``token_ids`` dropped, since token ids decode back to
  the very text that was redacted; token kinds and logprobs stay (they are numbers and the dashboard's token
  counts). ``none``: no text at all: each message keeps its role only, tool calls their name, turn, error
  kind and latency (no arguments, results or error text), rollout errors their kind, the grade its reward,
  sub-rewards and error flags (no messages); numbers (reward, advantage, timings, turns, token kinds,
  logprobs) stay. Both mark the record (``metadata.privacy_store``) so a reader that needs token ids can say
  why they are missing (:func:`require_tokens`) instead of failing on an empty list.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from agentrft.config_sections import PrivacyConfig
from agentrft.errors import AgentRFTError
from agentrft.privacy.detectors import DEFAULT_DETECTORS, DETECTORS, Span

STORE_MODES = ("full", "redacted", "none")
MARKER = "privacy_store"
"""Key in a stored trajectory record's ``metadata``: the ``privacy.store`` it was written with (absent: full)."""
_SHORTEST_FINDING = 6
"""No detector finds anything in fewer characters (``a@b.co``)."""


class TokensNotStoredError(AgentRFTError):
    """A reader needs stored token ids, but the run was stored with ``privacy.store: redacted`` or ``none``."""


def _merge(spans: Iterable[Span]) -> list[Span]:
    """Overlapping findings as one, keeping the kind of the one that starts first (the longer one on a tie)."""
    merged: list[Span] = []
    for s in sorted(spans, key=lambda s: (s.start, -s.end)):
        if merged and s.start < merged[-1].end:
            last = merged[-1]
            merged[-1] = Span(last.start, max(last.end, s.end), last.kind)
        else:
            merged.append(s)
    return merged


class Redactor:
    """A run's ``privacy`` section made callable. See the module docstring."""

    def __init__(self, store: str = "full", detectors: Iterable[str] = DEFAULT_DETECTORS) -> None:
        if store not in STORE_MODES:
            raise ValueError(f"privacy.store must be one of {', '.join(STORE_MODES)}, got {store!r}")
        detectors = list(detectors)
        unknown = [d for d in detectors if d not in DETECTORS]
        if unknown:
            raise ValueError(f"unknown privacy detector(s) {', '.join(map(repr, unknown))}; known: "
                             f"{', '.join(DETECTORS)}")
        self.store = store
        self.detectors = tuple(dict.fromkeys(detectors))

    @classmethod
    def from_config(cls, privacy: PrivacyConfig | Mapping[str, Any] | None) -> "Redactor":
        """From a job's ``privacy`` section, or its JSON form as saved in a run's resolved config (``None``:
        the section's defaults, which write everything as it is)."""
        if privacy is None:
            privacy = PrivacyConfig()
        elif isinstance(privacy, Mapping):
            privacy = PrivacyConfig.model_validate(dict(privacy))
        return cls(privacy.store, privacy.detectors)

    @property
    def redacts(self) -> bool:
        """Whether anything written differs from what was seen (``store`` is not ``full``)."""
        return self.store != "full"

    # -- text ------------------------------------------------------------------------------------------------
    def findings(self, text: str) -> list[Span]:
        """The merged findings of the enabled detectors in ``text``, by position."""
        if len(text) < _SHORTEST_FINDING:
            return []
        return _merge(span for name in self.detectors for span in DETECTORS[name](text))

    def redact_text(self, text: str) -> str:
        """``text`` with each finding replaced by ``[REDACTED:<kind>]`` (whatever ``store`` says)."""
        spans = self.findings(text)
        if not spans:
            return text
        parts, pos = [], 0
        for s in spans:
            parts.append(text[pos:s.start])
            parts.append(f"[REDACTED:{s.kind}]")
            pos = s.end
        parts.append(text[pos:])
        return "".join(parts)

    def redact_record(self, obj: Any) -> Any:
        """A copy of ``obj`` with every string inside it (nested dicts, lists, tuples) redacted; dict keys and
        non-string values are kept."""
        if isinstance(obj, str):
            return self.redact_text(obj)
        if isinstance(obj, Mapping):
            return {k: self.redact_record(v) for k, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            return [self.redact_record(v) for v in obj]
        return obj

    def written(self, obj: Any) -> Any:
        """What to write of ``obj`` (an event's message or data, a status message, a config snapshot, a
        request): as it is with ``store: full``, redacted otherwise."""
        return self.redact_record(obj) if self.redacts else obj

    # -- trajectories ----------------------------------------------------------------------------------------
    def trajectory_record(self, record: Mapping[str, Any]) -> dict[str, Any]:
        """What to write of one trajectory record (``Trajectory.to_dict()`` plus grade, reward, advantage)."""
        if not self.redacts:
            return dict(record)
        out = self.redact_record(record)
        out["token_ids"] = []  # they decode back to the text
        out["metadata"] = {**(out.get("metadata") or {}), MARKER: self.store}
        if self.store == "none":
            _strip_text(out)
        return out


def _strip_text(rec: dict[str, Any]) -> None:
    """``store: none``: the record keeps its shape (it still loads as a ``Trajectory``) and numbers, no text."""
    rec["messages"] = [{"role": m.get("role")} for m in rec.get("messages") or [] if isinstance(m, Mapping)]
    rec["tool_calls"] = [
        {**c, "arguments": {}, "result": None,
         "error": {"kind": c["error"].get("kind"), "message": ""} if isinstance(c.get("error"), Mapping) else None}
        for c in rec.get("tool_calls") or [] if isinstance(c, Mapping)]
    rec["errors"] = [{**e, "message": ""} for e in rec.get("errors") or [] if isinstance(e, Mapping)]
    rec["metadata"] = {MARKER: "none"}
    grade = rec.get("grade")
    if isinstance(grade, Mapping):
        meta = dict(grade.get("metadata") or {})
        meta["error_messages"] = []
        rec["grade"] = {**grade, "metadata": meta}


def stored_privacy(record: Mapping[str, Any]) -> str:
    """The ``privacy.store`` a stored trajectory record was written with (``full`` when unmarked)."""
    meta = record.get("metadata")
    return str(meta.get(MARKER, "full")) if isinstance(meta, Mapping) else "full"


def require_tokens(records: Iterable[Mapping[str, Any]], purpose: str) -> None:
    """Raise :class:`TokensNotStoredError` naming ``purpose`` if any record was stored without token ids."""
    for rec in records:
        mode = stored_privacy(rec)
        if mode != "full":
            raise TokensNotStoredError(
                f"{purpose} needs the stored trajectories' token ids, but the run was stored with privacy.store: "
                f"{mode}, which writes no token ids (they decode back to the redacted text); use a run stored "
                "with privacy.store: full")


__all__ = ["MARKER", "STORE_MODES", "Redactor", "TokensNotStoredError", "require_tokens", "stored_privacy"]
