"""Limits on what one API client may submit to the platform server: sizes, counts and concurrency.

Why: every submission costs the operator memory, disk, GPU time or a slot
in the job queue; without a bound one key can exhaust them for everyone.
Each limit is a field of :class:`SubmissionLimits` with its default, and a
``check_*`` method that raises :class:`LimitExceeded` naming the field, its
value and what was submitted, so the server answers with a 4xx that says
which limit to respect (or which setting the operator can raise).

The defaults follow the hosted API where it publishes a limit (512 MB per
file) and agentrft's own server otherwise (8 MiB request bodies, ``n`` up
to 8: see docs/security.md).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from agentrft.trust.errors import LimitExceeded

__all__ = ["SubmissionLimits"]

MiB = 1 << 20


class SubmissionLimits(BaseModel):
    """Per-submission bounds the platform server enforces (one instance per server)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_upload_bytes: int = Field(512 * MiB, gt=0)
    """Size of one uploaded file (a JSONL dataset), in bytes: 512 MiB, like the hosted files API."""
    max_rows_per_file: int = Field(1_000_000, gt=0)
    """Rows (JSONL lines) of one uploaded file."""
    max_request_bytes: int = Field(8 * MiB, gt=0)
    """Body of any other request (a job, a grader spec, a tool config), in bytes: as ``agentrft serve``."""
    max_n: int = Field(8, gt=0)
    """``n``: completions per prompt asked for in one request, and rollouts per task of a job."""
    max_tokens: int = Field(32_768, gt=0)
    """``max_tokens`` / ``max_completion_tokens`` of one request or one rollout's completion."""
    max_concurrent_jobs_per_key: int = Field(2, gt=0)
    """Jobs one API key may have queued or running at once."""

    def check_upload_bytes(self, size: int) -> None:
        """Refuse an upload of ``size`` bytes over :attr:`max_upload_bytes`."""
        self._check("max_upload_bytes", size, "the upload's size in bytes")

    def check_rows_per_file(self, rows: int) -> None:
        """Refuse a file of ``rows`` rows over :attr:`max_rows_per_file` (call it as rows are counted)."""
        self._check("max_rows_per_file", rows, "the file's row count")

    def check_request_bytes(self, size: int) -> None:
        """Refuse a request body of ``size`` bytes over :attr:`max_request_bytes`."""
        self._check("max_request_bytes", size, "the request body's size in bytes")

    def check_n(self, n: int) -> None:
        """Refuse ``n`` over :attr:`max_n`."""
        self._check("max_n", n, "n")

    def check_max_tokens(self, max_tokens: int) -> None:
        """Refuse a ``max_tokens`` over :attr:`max_tokens`."""
        self._check("max_tokens", max_tokens, "max_tokens")

    def check_concurrent_jobs(self, active: int) -> None:
        """Refuse one more job for a key that already has ``active`` jobs queued or running."""
        self._check("max_concurrent_jobs_per_key", active + 1, "the key's queued and running jobs, this one included")

    def _check(self, limit: str, value: int, what: str) -> None:
        maximum = getattr(self, limit)
        if value > maximum:
            raise LimitExceeded(limit, maximum, value, what)
