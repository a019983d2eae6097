"""The platform app: files, jobs, graders, models and the dashboard over one home directory.

:func:`create_platform_app` builds the services on ``app.state`` (``db``, ``files``, ``jobs``, ``catalog``,
``supervisor``, ``limits``, ``keys``, ``egress``, ``run_index``), checks the bearer key of every request
but the public ones before any route runs (:mod:`agentrft.platform.keys`), renders every error as
OpenAI's error JSON, and runs the job supervisor for the app's lifespan. ``agentrft server`` serves it
with uvicorn; tests serve it with :func:`agentrft.serving.serve_in_background`.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse

from agentrft.platform import dashboard, graders_api, models, routes
from agentrft.platform.db import PlatformDB
from agentrft.platform.files import FileService
from agentrft.platform.jobs import JobService
from agentrft.platform.keys import KeyRing, is_public
from agentrft.platform.models import ModelCatalog
from agentrft.platform.runs import RunRef
from agentrft.platform.supervisor import Supervisor
from agentrft.serving.app import add_error_handlers
from agentrft.serving.protocol import APIError
from agentrft.trust import EgressPolicy, McpRegistry, SubmissionLimits

BUNDLED_MODEL = "smollm2-135m"


@dataclass
class PlatformSettings:
    home: Path
    """Where ``platform.db``, uploaded files and job directories live."""
    base_models: dict[str, str] = field(default_factory=lambda: {BUNDLED_MODEL: BUNDLED_MODEL})
    """Model names clients may fine-tune and chat with -> what loads them (bundled name or local HF folder)."""
    concurrency: int = 1
    """Jobs trained at once (each in its own worker process)."""
    egress: EgressPolicy = field(default_factory=EgressPolicy)
    """Where submitted graders, tool endpoints and MCP servers may connect (default: public addresses only)."""
    mcp_registry: McpRegistry = field(default_factory=McpRegistry)
    """The stdio MCP servers submitted jobs may launch (default: none)."""
    limits: SubmissionLimits = field(default_factory=SubmissionLimits)
    max_loaded_models: int = 1
    """Models kept loaded for chat completions (least recently used unloaded first)."""
    stop_timeout_s: float = 30.0
    """How long cancel/pause wait for a worker to stop after SIGTERM before SIGKILL."""


class _JobRunIndex:
    """The dashboard's runs: the jobs whose runs have started, by job id."""

    def __init__(self, jobs: JobService) -> None:
        self.jobs = jobs

    def list_runs(self) -> list[RunRef]:
        return self.jobs.run_refs()

    def get_run(self, run_id: str) -> RunRef | None:
        return self.jobs.run_ref(run_id)


def create_platform_app(settings: PlatformSettings) -> FastAPI:
    db = PlatformDB(settings.home)
    (settings.home / "trust.json").write_text(json.dumps({
        "egress": settings.egress.model_dump(mode="json"), "mcp": settings.mcp_registry.model_dump(mode="json")}))
    catalog = ModelCatalog(db, settings.base_models, max_loaded=settings.max_loaded_models,
                           max_request_bytes=settings.limits.max_request_bytes)
    supervisor = Supervisor(db, settings.concurrency, stop_timeout_s=settings.stop_timeout_s)
    files = FileService(db, settings.limits)
    jobs = JobService(db, files, catalog, supervisor)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        supervisor.start()
        try:
            yield
        finally:
            supervisor.stop()
            catalog.close()

    app = FastAPI(title="agentrft platform", lifespan=lifespan)
    app.state.db, app.state.files, app.state.jobs, app.state.catalog = db, files, jobs, catalog
    app.state.supervisor, app.state.limits, app.state.egress = supervisor, settings.limits, settings.egress
    app.state.keys = KeyRing(db)
    app.state.run_index = _JobRunIndex(jobs)
    add_error_handlers(app)
    app.add_exception_handler(RequestValidationError, _validation_error)

    @app.middleware("http")
    async def authenticate(request: Request, call_next):
        if not is_public(request.url.path):
            try:
                request.state.key_name = request.app.state.keys.check(request.headers.get("authorization"))
            except APIError as e:
                return JSONResponse(status_code=e.status, content=e.body())
        return await call_next(request)

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "running_jobs": supervisor.running()}

    app.include_router(routes.router)
    app.include_router(graders_api.router)
    app.include_router(models.router)
    app.include_router(dashboard.page_router)  # the page and its static files: public, no run data
    app.include_router(dashboard.router)  # run data: behind the key check above

    @app.get("/", include_in_schema=False)
    async def root() -> RedirectResponse:
        return RedirectResponse("/dashboard")

    return app


async def _validation_error(request: Request, e: RequestValidationError) -> JSONResponse:
    """FastAPI's parameter errors (``limit=abc``) as OpenAI's 400 instead of a 422."""
    first = e.errors()[0] if e.errors() else {}
    param = ".".join(str(p) for p in first.get("loc", ())[1:]) or None
    return JSONResponse(status_code=400, content=APIError(400, f"invalid {param}: {first.get('msg', 'bad value')}",
                                                          param=param).body())
