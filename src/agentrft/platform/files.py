"""Uploaded files (``purpose: fine-tune``): stored, validated at once, listed, read back and deleted.

An upload is written under ``HOME/files/`` by the server (its name on disk is the file id, never the
client's filename) and validated right away against the three dataset formats the jobs take
(:data:`agentrft.datasets.ROW_VALIDATORS`: ``task`` rows for reinforcement, ``supervised`` rows,
``preference`` rows). A file every row of which satisfies at least one format is ``processed`` and
records which formats it satisfies; otherwise it is kept with status ``error`` and ``status_details``
listing the bad rows by line number (bad JSON, wrong roles, bad tool schemas), so a job on it is
refused at creation (:mod:`agentrft.platform.jobspec`) instead of failing mid-run.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import time
from pathlib import Path
from typing import Any

from agentrft.datasets import DatasetError, load_jsonl_dataset
from agentrft.platform.db import PlatformDB
from agentrft.serving.protocol import APIError
from agentrft.trust import SubmissionLimits, TrustError

PURPOSES = ("fine-tune",)
FORMATS = ("task", "supervised", "preference")
"""What each method needs: reinforcement ``task``, supervised ``supervised``, dpo ``preference``."""
MAX_DETAILS = 20
"""Bad rows listed in ``status_details`` (the count says how many there are in all)."""


class FileService:
    def __init__(self, db: PlatformDB, limits: SubmissionLimits) -> None:
        self.db = db
        self.limits = limits
        self.dir = db.home / "files"
        self.dir.mkdir(parents=True, exist_ok=True)

    def path(self, file_id: str) -> Path:
        """Where a stored file's bytes are (the id was looked up first: never a client string)."""
        return self.dir / f"{file_id}.jsonl"

    def create(self, filename: str, purpose: str, content: bytes) -> dict[str, Any]:
        if purpose not in PURPOSES:
            raise APIError(400, f"purpose must be one of {list(PURPOSES)} on this server; got {purpose!r}",
                           param="purpose")
        try:
            self.limits.check_upload_bytes(len(content))
        except TrustError as e:
            raise APIError(413, str(e), param="file", code="file_too_large") from None
        file_id = "file-" + secrets.token_hex(12)
        path = self.path(file_id)
        tmp = path.with_suffix(".part")
        tmp.write_bytes(content)
        os.replace(tmp, path)
        formats, rows, details = _validate(path, self.limits)
        row = {"id": file_id, "filename": Path(filename or "upload.jsonl").name[:255], "purpose": purpose,
               "bytes": len(content), "created_at": int(time.time()), "status": "processed" if formats else "error",
               "status_details": details, "formats": formats, "rows": rows,
               "sha256": hashlib.sha256(content).hexdigest()}
        self.db.insert_file(row)
        return row

    def get(self, file_id: str) -> dict[str, Any]:
        row = self.db.get_file(file_id)
        if row is None:
            raise APIError(404, f"No such File object: {file_id}", param="id", code="file_not_found")
        return row

    def content(self, file_id: str) -> bytes:
        self.get(file_id)
        return self.path(file_id).read_bytes()

    def delete(self, file_id: str) -> dict[str, Any]:
        self.get(file_id)
        self.db.delete_file(file_id)
        self.path(file_id).unlink(missing_ok=True)
        return {"id": file_id, "object": "file", "deleted": True}


def file_object(row: dict[str, Any]) -> dict[str, Any]:
    """The OpenAI ``file`` object of a stored file (plus ``formats``: what jobs it can feed)."""
    return {"id": row["id"], "object": "file", "bytes": row["bytes"], "created_at": row["created_at"],
            "filename": row["filename"], "purpose": row["purpose"], "status": row["status"],
            "status_details": row["status_details"], "expires_at": None, "formats": row["formats"]}


def _validate(path: Path, limits: SubmissionLimits) -> tuple[list[str], int, str | None]:
    """(formats every row satisfies, rows, details of the failure or None)."""
    results: dict[str, Any] = {}
    for kind in FORMATS:
        try:
            results[kind] = load_jsonl_dataset(path, kind=kind)
        except DatasetError as e:
            results[kind] = e
    formats = [k for k, r in results.items() if not isinstance(r, DatasetError) and not r.errors]
    rows = max((len(r.rows) for r in results.values() if not isinstance(r, DatasetError)), default=0)
    if formats:
        try:
            limits.check_rows_per_file(rows)
        except TrustError as e:
            return [], rows, str(e)
        return formats, rows, None
    # The format the file comes closest to names its errors (fewest bad rows; a file that is not JSONL at
    # all fails every format on the same lines).
    best = min(FORMATS, key=lambda k: _bad_rows(results[k]))
    result = results[best]
    if isinstance(result, DatasetError):
        return [], 0, f"not a valid {best} file: {str(result).replace(str(path), 'line')}"
    listed = "; ".join(f"line {e.line}: {e.message}" for e in result.errors[:MAX_DETAILS])
    more = f" (and {len(result.errors) - MAX_DETAILS} more)" if len(result.errors) > MAX_DETAILS else ""
    return [], len(result.rows), (f"{len(result.errors)} invalid row(s) for the {best} format (closest of "
                                  f"{', '.join(FORMATS)}): {listed}{more}")


def _bad_rows(result: Any) -> int:
    return 1 << 30 if isinstance(result, DatasetError) else len(result.errors)
