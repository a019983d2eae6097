"""The app: the engine, the routers and the error handlers put together; and serving it in a background thread.

:func:`create_app` builds the :class:`~agentrft.serving.engine.BatchingGenerator`
over the sampler, puts what the handlers read on ``app.state`` (``engine``,
``chat_format``, ``settings``, ``max_context``, ``created``, ``preparing``),
renders every error as OpenAI's error JSON, runs the engine's worker and the
one tokenizer thread (``tokenizer_thread``: all tokenizer work, so the
tokenizer is never used from two threads and the event loop stays free) for
the app's lifespan, and includes the routers (``adapters``, whose ``GET /v1/models`` adds the loaded LoRA
adapters to the ``models`` listing and so comes first, then ``models``, ``chat`` and ``completions``).
Routers added later read the same ``app.state``.
"""

from __future__ import annotations

import contextlib
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from agentrft.errors import AgentRFTError
from agentrft.models.chat_format import ChatFormat
from agentrft.rollout.sampler import Sampler
from agentrft.serving import adapters, chat, completions, models
from agentrft.serving.engine import BatchingGenerator
from agentrft.serving.protocol import APIError, ServerSettings


def create_app(sampler: Sampler, chat_format: ChatFormat, settings: ServerSettings) -> FastAPI:
    """The FastAPI app serving ``sampler`` under ``settings.model_name`` (the worker runs during its lifespan)."""
    max_context = min(settings.max_context or sampler.max_context, sampler.max_context)
    app = FastAPI(title="agentrft", lifespan=_engine_running)
    app.state.engine = BatchingGenerator(sampler, max_context, settings.max_batch_size, settings.batch_window_s,
                                         max_queued=settings.max_queued_requests)
    app.state.chat_format = chat_format
    app.state.settings = settings
    app.state.max_context = max_context
    app.state.created = int(time.time())
    app.state.preparing = 0  # chat completion requests being read or rendered right now
    add_error_handlers(app)
    app.include_router(adapters.router)
    app.include_router(models.router)
    app.include_router(chat.router)
    app.include_router(completions.router)
    return app


def start_engine(app: FastAPI) -> None:
    """Start the app's sampler worker and tokenizer thread: what its lifespan does, for an app that another
    app forwards requests to (the platform's models, loaded on first use) and so never gets a lifespan."""
    app.state.tokenizer_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="agentrft-tokenizer")
    app.state.engine.start()


def stop_engine(app: FastAPI) -> None:
    app.state.engine.stop()
    app.state.tokenizer_thread.shutdown(wait=False, cancel_futures=True)


@contextlib.asynccontextmanager
async def _engine_running(app: FastAPI):
    start_engine(app)
    try:
        yield
    finally:
        stop_engine(app)


def add_error_handlers(app: FastAPI) -> None:
    """Render :class:`APIError` and Starlette's own errors as OpenAI's error JSON."""
    app.add_exception_handler(APIError, _api_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)


async def _api_error(request: Request, e: APIError) -> JSONResponse:
    return JSONResponse(status_code=e.status, content=e.body(), headers=e.headers)


async def _http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
    """Starlette's own errors (an unknown path, a wrong method) in OpenAI's error JSON too."""
    return await _api_error(request, APIError(e.status_code, str(e.detail)))


@contextlib.contextmanager
def serve_in_background(app: FastAPI, host: str = "127.0.0.1", start_timeout_s: float = 20.0):
    """Serve ``app`` with uvicorn on a free port of ``host`` in a daemon thread; yields its ``/v1`` base URL.

    For tests, benchmarks and notebooks (``agentrft serve`` runs uvicorn in the foreground). The server
    and its sampler worker stop when the block exits.
    """
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host=host, port=0, log_level="warning", lifespan="on"))
    failure: list[BaseException] = []

    def run() -> None:
        try:
            server.run()
        except SystemExit as e:  # uvicorn exits when it cannot start (e.g. cannot bind): the cause, for the caller
            failure.append(e.__context__ or e)

    thread = threading.Thread(target=run, name="agentrft-uvicorn", daemon=True)
    thread.start()
    deadline = time.time() + start_timeout_s
    while not server.started:
        if not thread.is_alive() or time.time() > deadline:
            server.should_exit = True
            why = f": {failure[0]}" if failure else f" within {start_timeout_s:.0f} s"
            raise AgentRFTError(f"the server did not start on {host}{why}")
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://{host}:{port}/v1"
    finally:
        server.should_exit = True
        thread.join(timeout=start_timeout_s)
