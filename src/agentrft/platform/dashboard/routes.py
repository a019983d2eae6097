"""The dashboard's HTTP surface: a JSON API under ``/dashboard/api`` and the page with its static files.

Two routers, because they need different protection:

* :data:`router` — the JSON API (runs, one run's config/lineage/checkpoints/events, metric series, trajectory
  pages, one trajectory with its token view). It shows run data, so the platform includes it behind its
  bearer-key dependency; this module never checks keys itself.
* :data:`page_router` — ``GET /dashboard`` (index.html) and ``GET /dashboard/static/...``: the same bytes for
  everyone, no run data, so a browser can load the page before the user has typed a key.

A run id comes from the client and is resolved only through ``request.app.state.run_index.get_run(id)``
(:class:`~agentrft.platform.runs.RunIndex`); no path is ever built from it, and an unknown id is a 404 in
OpenAI's error JSON (:class:`~agentrft.serving.protocol.APIError`, rendered by the app's handler). Static
files are served from a fixed table of the files shipped in ``static/``, never from a client path.

Handlers are plain ``def``: SQLite reads and tokenizer work run in the server's thread pool, off the event loop.
"""

from __future__ import annotations

import mimetypes
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import FileResponse, RedirectResponse

from agentrft.errors import AgentRFTError
from agentrft.jobs.inspect import json_ready
from agentrft.platform.dashboard import queries
from agentrft.platform.runs import RunIndex, RunRef
from agentrft.serving.protocol import APIError

STATIC_DIR = Path(__file__).resolve().parent / "static"
STATIC_FILES: dict[str, Path] = {p.relative_to(STATIC_DIR).as_posix(): p for p in STATIC_DIR.rglob("*") if p.is_file()}
"""Every file the page may load, by its URL path under ``/dashboard/static/`` (fixed when the module loads)."""
CONTENT_SECURITY_POLICY = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:;"
                           " connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'")
"""Only the page's own files run: text from a run (tool results, model output) can never become script."""

router = APIRouter(prefix="/dashboard/api", tags=["dashboard"])
page_router = APIRouter(tags=["dashboard"], include_in_schema=False)


# -- the page -----------------------------------------------------------------------------------------------


@page_router.get("/dashboard")
@page_router.get("/dashboard/")
def index_page() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html",
                        headers={"Content-Security-Policy": CONTENT_SECURITY_POLICY, "Cache-Control": "no-cache"})


@page_router.get("/dashboard/static/{name:path}")
def static_file(name: str) -> FileResponse:
    path = STATIC_FILES.get(name)
    if path is None:
        raise APIError(404, f"no static file {name!r}", code="not_found")
    media_type = mimetypes.guess_type(path.name)[0] or "text/plain"
    return FileResponse(path, media_type=media_type, headers={"Cache-Control": "no-cache"})


# -- query parameters ---------------------------------------------------------------------------------------


def _int(request: Request, name: str, default: int | None = None, minimum: int | None = None) -> int | None:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise APIError(400, f"{name} must be an integer, got {raw!r}", param=name) from None
    if minimum is not None and value < minimum:
        raise APIError(400, f"{name} must be >= {minimum}, got {value}", param=name)
    return value


def _float(request: Request, name: str) -> float | None:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return None
    try:
        return float(raw)
    except ValueError:
        raise APIError(400, f"{name} must be a number, got {raw!r}", param=name) from None


def _bool(request: Request, name: str) -> bool | None:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return None
    if raw.lower() not in ("1", "0", "true", "false"):
        raise APIError(400, f"{name} must be true or false, got {raw!r}", param=name)
    return raw.lower() in ("1", "true")


def _str(request: Request, name: str) -> str | None:
    return request.query_params.get(name) or None


# -- runs ---------------------------------------------------------------------------------------------------


def _index(request: Request) -> RunIndex:
    return request.app.state.run_index


def _find_run(request: Request, run_id: str) -> RunRef:
    ref = _index(request).get_run(run_id)
    if ref is None:
        raise APIError(404, f"no run {run_id!r}", param="run_id", code="run_not_found")
    return ref


def _unreadable(ref: RunRef, e: Exception) -> APIError:
    return APIError(503, f"run {ref.id!r}: {e}", code="run_unreadable", kind="server_error")


def _summary(ref: RunRef) -> dict[str, Any]:
    """A run as the runs list shows it; a store that cannot be read says so instead of hiding the run."""
    out: dict[str, Any] = {"id": ref.id, "name": ref.name, "status": ref.status, "run_status": None,
                           "method": ref.method,
                           "model": ref.model, "created_at": ref.created_at, "latest_step": None,
                           "total_steps": None, "latest_reward": None, "latest_val_reward": None,
                           "updated_at": None, "error": None}
    try:
        with queries.reading(ref.run_dir) as conn:
            run = queries.run_row(conn)
            if run is not None:
                # status: the index's (a platform job's queued/paused/succeeded); run_status: run.db's own
                out.update(queries.progress(conn, run), run_status=run["status"])
    except queries.RunUnreadable as e:
        out["error"] = str(e)
    return out


@router.get("/runs")
def list_runs(request: Request) -> dict[str, Any]:
    """Every run the server shows, newest first, with its progress and latest reward."""
    return {"object": "list", "data": [_summary(ref) for ref in _index(request).list_runs()]}


@router.get("/runs/{run_id}")
def get_run(run_id: str, request: Request) -> dict[str, Any]:
    """One run: progress, resolved config, lineage hashes, checkpoints, the status message."""
    ref = _find_run(request, run_id)
    try:
        with queries.reading(ref.run_dir) as conn:
            run = queries.run_row(conn)
            if run is None:
                raise APIError(404, f"run {run_id!r} has no record yet", param="run_id", code="run_not_found")
            body = {**_summary(ref), **queries.progress(conn, run), "run_status": run["status"],
                    "message": run["message"], "config": run["resolved_config"],
                    "lineage": queries.run_lineage(run), "checkpoints": queries.checkpoints(conn, ref.run_dir),
                    "error_filters": queries.error_filters()}
    except queries.RunUnreadable as e:
        raise _unreadable(ref, e) from None
    return json_ready(body)


@router.get("/runs/{run_id}/events")
def run_events(run_id: str, request: Request) -> dict[str, Any]:
    """A page of the run's events, newest first (``limit``, ``offset``, ``kind``)."""
    ref = _find_run(request, run_id)
    limit = min(_int(request, "limit", 50, minimum=1), queries.MAX_PAGE)
    offset = _int(request, "offset", 0, minimum=0)
    try:
        with queries.reading(ref.run_dir) as conn:
            return queries.events(conn, limit, offset, _str(request, "kind"))
    except queries.RunUnreadable as e:
        raise _unreadable(ref, e) from None


@router.get("/runs/{run_id}/metrics")
def run_metrics(run_id: str, request: Request) -> dict[str, Any]:
    """Metric series per split from ``since_step`` on (inclusive), aligned on steps for charting."""
    ref = _find_run(request, run_id)
    since = _int(request, "since_step", 0, minimum=0)
    try:
        with queries.reading(ref.run_dir) as conn:
            return queries.metric_series(conn, since)
    except queries.RunUnreadable as e:
        raise _unreadable(ref, e) from None


# -- trajectories -------------------------------------------------------------------------------------------


@router.get("/runs/{run_id}/trajectories")
def list_trajectories(run_id: str, request: Request) -> dict[str, Any]:
    """A page of trajectory summaries: filters ``split``, ``step``, ``step_min``, ``step_max``, ``reward_min``,
    ``reward_max``, ``task_id``, ``error``; ``sort`` (id, step, reward), ``order`` (asc, desc), ``limit``,
    ``offset``; ``count`` (true: count the matches even with an error filter, which reads every record)."""
    ref = _find_run(request, run_id)
    order = _str(request, "order") or "desc"
    if order not in ("asc", "desc"):
        raise APIError(400, f"order must be asc or desc, got {order!r}", param="order")
    filters = queries.TrajectoryFilter(
        split=_str(request, "split"), step=_int(request, "step"), step_min=_int(request, "step_min"),
        step_max=_int(request, "step_max"), reward_min=_float(request, "reward_min"),
        reward_max=_float(request, "reward_max"), task_id=_str(request, "task_id"), error=_str(request, "error"))
    sort = _str(request, "sort") or "id"
    if sort not in queries.SORT_COLUMNS:
        raise APIError(400, f"sort must be one of {', '.join(queries.SORT_COLUMNS)}, got {sort!r}", param="sort")
    try:
        with queries.reading(ref.run_dir) as conn:
            return queries.trajectory_page(conn, filters, sort=sort, descending=order == "desc",
                                           limit=_int(request, "limit", 50, minimum=1),
                                           offset=_int(request, "offset", 0, minimum=0),
                                           count=_bool(request, "count"))
    except ValueError as e:  # an unknown error filter
        raise APIError(400, str(e), param="error") from None
    except queries.RunUnreadable as e:
        raise _unreadable(ref, e) from None


@router.get("/runs/{run_id}/trajectories/{trajectory_id}")
def get_trajectory(run_id: str, trajectory_id: str, request: Request) -> dict[str, Any]:
    """One trajectory: messages, tool calls, grade, advantage and the token view (text decoded with the
    run's tokenizer when it loads; ids otherwise)."""
    ref = _find_run(request, run_id)
    record = None
    try:
        if trajectory_id.isdigit():
            with queries.reading(ref.run_dir) as conn:
                record = queries.trajectory_record(conn, int(trajectory_id))
    except queries.RunUnreadable as e:
        raise _unreadable(ref, e) from None
    if record is None:
        raise APIError(404, f"run {run_id!r} has no trajectory {trajectory_id!r}", param="trajectory_id",
                       code="trajectory_not_found")
    ids = record.get("token_ids") or []
    kinds = record.get("token_kinds") or []
    text, decode_error = TOKENIZERS.pieces(ref.model, ids)
    tokens = {"ids": ids, "kinds": kinds, "logprobs": record.get("logprobs") or [],
              "advantages": queries.token_advantages(kinds, record.get("advantage")),
              "text": text, "tokenizer": ref.model, "decode_error": decode_error,
              # a run stored with privacy.store redacted|none keeps no token ids (they decode to the text)
              "withheld": (record.get("metadata") or {}).get("privacy_store")}
    keep = ("id", "step", "split", "task_id", "trace_id", "group_index", "reward", "advantage", "stop_reason",
            "turns", "timings", "metadata", "messages", "tool_calls", "errors", "grade")
    body = {k: record.get(k) for k in keep}
    body.update(error_labels=queries.error_labels(record), tokens=tokens)
    return json_ready(body)


class TokenizerCache:
    """One tokenizer per model name (the few most recent), used under a lock; a model whose tokenizer cannot
    be loaded is remembered for ``retry_s`` so each request does not retry it."""

    def __init__(self, max_models: int = 4, retry_s: float = 60.0) -> None:
        self._lock = threading.Lock()
        self._loaded: OrderedDict[str, Any] = OrderedDict()
        self._pieces: dict[str, dict[int, str]] = {}
        self._failed: dict[str, tuple[float, str]] = {}
        self.max_models, self.retry_s = max_models, retry_s

    def _get(self, model: str) -> Any:
        from agentrft.models.loading import load_tokenizer

        if model in self._loaded:
            self._loaded.move_to_end(model)
            return self._loaded[model]
        failed = self._failed.get(model)
        if failed is not None and time.monotonic() - failed[0] < self.retry_s:
            raise AgentRFTError(failed[1])
        try:
            tok = load_tokenizer(model)
        except Exception as e:  # any reason at all: the page shows token ids instead
            message = f"cannot load the tokenizer of {model!r}: {type(e).__name__}: {e}"
            self._failed[model] = (time.monotonic(), message)
            raise AgentRFTError(message) from None
        self._loaded[model] = tok
        self._pieces[model] = {}
        while len(self._loaded) > self.max_models:
            evicted, _ = self._loaded.popitem(last=False)
            self._pieces.pop(evicted, None)
        return tok

    def pieces(self, model: str | None, ids: list[int]) -> tuple[list[str] | None, str | None]:
        """The text of each token (special tokens included), or ``(None, why)`` when it cannot be decoded."""
        if not model:
            return None, "the run records no model to take a tokenizer from"
        with self._lock:
            try:
                tok = self._get(model)
            except AgentRFTError as e:
                return None, str(e)
            cache = self._pieces[model]
            missing = sorted({i for i in ids if i not in cache})
            if missing:
                for i, text in zip(missing, tok.batch_decode([[i] for i in missing], skip_special_tokens=False)):
                    cache[i] = text
            return [cache[i] for i in ids], None


TOKENIZERS = TokenizerCache()


# -- a standalone app ---------------------------------------------------------------------------------------


def create_app(run_index: RunIndex) -> FastAPI:
    """The dashboard alone over ``run_index`` (``agentrft dashboard RUNS_DIR``, tests, the benchmark): both
    routers, ``/`` redirecting to the page, and errors rendered by the serving app's handlers."""
    from agentrft.serving.app import add_error_handlers

    app = FastAPI(title="agentrft dashboard", docs_url=None, redoc_url=None)
    app.state.run_index = run_index
    add_error_handlers(app)
    app.include_router(page_router)
    app.include_router(router)

    @app.get("/", include_in_schema=False)
    def root() -> RedirectResponse:
        return RedirectResponse("/dashboard")

    return app
