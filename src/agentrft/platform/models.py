"""The models a platform server offers: registered base models, fine-tuned models and their checkpoints.

``GET /v1/models`` lists the base models the operator registered (``agentrft server --model NAME=PATH``;
the bundled ``smollm2-135m`` always) and the ``ft:`` models of succeeded jobs. ``POST /v1/chat/completions``
with any of them, or with a checkpoint's name (``ft:<base>:<suffix>:<job-id>:ckpt-step-<N>``), is answered
by the serving stack of ``agentrft serve`` (:mod:`agentrft.serving`): the model is loaded on first use
into its own serving app (engine, batching, tools, streaming), at most ``max_loaded`` at once (the least
recently used one is unloaded), and the request is handed to that app unchanged.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI, Request, Response
from starlette.types import Receive, Scope, Send

from agentrft.platform.db import PlatformDB
from agentrft.platform.jobspec import checkpoint_name, fine_tuned_name
from agentrft.serving.protocol import APIError, ServerSettings, byte_size, model_card

router = APIRouter()

CKPT = ":ckpt-step-"


class ModelCatalog:
    def __init__(self, db: PlatformDB, base_models: dict[str, str], *, max_loaded: int = 1,
                 max_request_bytes: int = 8 * 1024 * 1024) -> None:
        self.db = db
        self.base_models = dict(base_models)
        """name -> what :func:`agentrft.jobs.trained.load_any_model` takes (the operator's, never a client's)."""
        self.max_loaded = max_loaded
        self.max_request_bytes = max_request_bytes
        self.created = int(time.time())
        self._apps: OrderedDict[str, FastAPI] = OrderedDict()
        self._lock = threading.Lock()

    def cards(self) -> list[dict[str, Any]]:
        cards = [model_card(name, self.created) | {"owned_by": "agentrft"} for name in sorted(self.base_models)]
        for job in self.db.jobs_with_status("succeeded"):
            cards.append(model_card(job["fine_tuned_model"], job["finished_at"] or job["created_at"])
                         | {"owned_by": "agentrft", "root": job["model"]})
        return cards

    def source(self, name: str) -> str:
        """What to load for ``name``; a 404 ``model_not_found`` when this server has no such model."""
        if name in self.base_models:
            return self.base_models[name]
        job, step = self._job_of(name)
        if job is not None:
            run_dir = job["config"]["out_dir"]
            if step is None:
                return run_dir
            if _has_checkpoint(Path(run_dir), step):
                return f"{run_dir}@step={step}"
        raise APIError(404, f"The model {name!r} does not exist", param="model", code="model_not_found")

    def _job_of(self, name: str) -> tuple[dict | None, int | None]:
        if not name.startswith("ft:"):
            return None, None
        base_name, step = name, None
        if CKPT in name:
            base_name, _, tail = name.rpartition(CKPT)
            if not tail.isdigit():
                return None, None
            step = int(tail)
        job = self.db.get_job(base_name.rsplit(":", 1)[-1])
        if job is None or fine_tuned_name(job["model"], job["suffix"], job["id"]) != base_name:
            return None, None
        if step is None and job["status"] != "succeeded":
            return None, None
        if step is not None and checkpoint_name(base_name, step) != name:
            return None, None
        return job, step

    def app_for(self, name: str) -> FastAPI:
        """The serving app of ``name``, loaded on first use (blocking: call it off the event loop)."""
        source = self.source(name)
        with self._lock:
            app = self._apps.get(name)
            if app is not None:
                self._apps.move_to_end(name)
                return app
            app = _serving_app(name, source, self.max_request_bytes)
            self._apps[name] = app
            while len(self._apps) > self.max_loaded:
                _, old = self._apps.popitem(last=False)
                _stop(old)
            return app

    def close(self) -> None:
        with self._lock:
            for app in self._apps.values():
                _stop(app)
            self._apps.clear()


def _has_checkpoint(run_dir: Path, step: int) -> bool:
    from agentrft.jobs.store import DB_NAME, RunStore

    if not (run_dir / DB_NAME).is_file():
        return False
    with RunStore(run_dir) as store:
        return any(c["step"] == step and c["exists"] for c in store.checkpoints())


def _serving_app(name: str, source: str, max_request_bytes: int) -> FastAPI:
    from agentrft.errors import AgentRFTError
    from agentrft.jobs.trained import load_any_model
    from agentrft.models.chat_format import get_chat_format
    from agentrft.rollout.hf_sampler import HFSampler
    from agentrft.serving.app import create_app, start_engine

    try:
        loaded = load_any_model(source)
    except AgentRFTError as e:
        raise APIError(500, f"model {name!r} cannot be loaded: {e}", kind="server_error") from None
    cf = get_chat_format(loaded.tokenizer, loaded.chat_format)
    sampler = HFSampler(loaded.model, pad_token_id=loaded.tokenizer.pad_token_id, max_batch_size=8,
                        prefix_cache_tokens=8192, cpu_matmul=loaded.cpu_matmul)
    app = create_app(sampler, cf, ServerSettings(model_name=name, max_request_bytes=max_request_bytes))
    start_engine(app)
    return app


def _stop(app: FastAPI) -> None:
    from agentrft.serving.app import stop_engine

    stop_engine(app)


class _Forward(Response):
    """Hand a request whose body was already read to another ASGI app (the model's serving app)."""

    def __init__(self, app: FastAPI, body: bytes) -> None:
        super().__init__()
        self.target, self.body_bytes = app, body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": self.body_bytes, "more_body": False}
            return await receive()

        await self.target(scope, replay, send)


@router.get("/v1/models")
async def list_models(request: Request) -> dict:
    return {"object": "list", "data": request.app.state.catalog.cards()}


@router.get("/v1/models/{model_id:path}")
async def get_model(model_id: str, request: Request) -> dict:
    catalog: ModelCatalog = request.app.state.catalog
    catalog.source(model_id)
    for card in catalog.cards():
        if card["id"] == model_id:
            return card
    return model_card(model_id, catalog.created) | {"owned_by": "agentrft"}  # a checkpoint


@router.post("/v1/chat/completions")
async def chat_completions(request: Request) -> Response:
    catalog: ModelCatalog = request.app.state.catalog
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > catalog.max_request_bytes:
            raise APIError(413, f"the request body is larger than this server's limit of "
                                f"{byte_size(catalog.max_request_bytes)}", code="request_too_large")
    try:
        model = json.loads(bytes(body)).get("model")
    except (ValueError, AttributeError, RecursionError):
        model = None
    if not isinstance(model, str):
        raise APIError(400, "the body must be a JSON object with a 'model' string", param="model")
    app = await asyncio.get_running_loop().run_in_executor(None, catalog.app_for, model)
    return _Forward(app, bytes(body))
