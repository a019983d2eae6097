"""``agentrft serve --model NAME`` for a registry alias: serve what NAME points at, follow it without a restart.

:func:`serve_alias` attaches an :class:`AliasWatcher` to an app built by
:func:`~agentrft.serving.app.create_app` over the alias's current model. While
the app runs, the watcher polls the alias file's signature (inode, mtime, size:
every promotion and rollback renames a new file into place, see
:mod:`agentrft.jobs.registry_store`) every ``poll_s`` seconds. When the alias
points at other weights, it loads them on its own thread -- the server keeps
answering with the old model meanwhile -- and swaps the engine's sampler (and
the chat format) under the engine's ``weights_lock``. The worker holds that lock
for each whole batch, so a batch being decoded finishes on the old weights and
the next one starts on the new; no request sees half of each. A target that
fails to load is logged and the old model kept.

The served name stays NAME (``GET /v1/models``, ``model`` in responses); every response names the weights
serving when it started in the ``x-agentrft-weights-sha256`` header (and the alias in ``x-agentrft-alias``). A
request that was in flight while the target switched may have been decoded on the previous weights: its response
also carries ``x-agentrft-weights-switched: 1``. (Naming the exact weights of each batch would need the engine to
report them per request; the header is for watching a switch happen, the audit log for what was promoted when.)

Departure from LoRA hot-swap (:mod:`~agentrft.serving.adapters`): the whole model is replaced, not an adapter
beside it, because a promoted target may be a full fine-tune or another base model.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from pathlib import Path
from typing import Any, Callable

from fastapi import FastAPI

from agentrft.jobs.registry_store import RegistryEntry, RegistryError, alias_path, alias_signature, registry_root, \
    resolve_alias
from agentrft.models.chat_format import ChatFormat
from agentrft.rollout.sampler import Sampler

__all__ = ["WEIGHTS_HEADER", "AliasWatcher", "find_alias", "serve_alias"]

logger = logging.getLogger(__name__)

WEIGHTS_HEADER = "x-agentrft-weights-sha256"
ALIAS_HEADER = "x-agentrft-alias"
SWITCHED_HEADER = "x-agentrft-weights-switched"
Loader = Callable[[RegistryEntry], tuple[Sampler, ChatFormat]]
_UNREAD = (-1, -1, -1)


def find_alias(model: str, home: str | Path | None = None) -> Path | None:
    """The registry root when ``model`` names an alias there (and is not an existing path), else None."""
    if Path(model).expanduser().exists():
        return None
    root = registry_root(home)
    try:
        return root if alias_path(root, model).is_file() else None
    except RegistryError:  # not an alias-shaped name: a bundled model or a folder
        return None


class AliasWatcher:
    """Keeps an app serving whatever its alias points at (see the module docstring)."""

    def __init__(self, app: FastAPI, root: Path, name: str, entry: RegistryEntry, load: Loader,
                 poll_s: float = 1.0) -> None:
        self.app, self.root, self.name, self.entry = app, root, name, entry
        self.load = load
        self.poll_s = poll_s
        self.switches = 0
        """Targets switched to since the server started."""
        self._signature: tuple[int, int, int] | None = _UNREAD  # first check reads the alias whatever it says
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def weights_sha256(self) -> str:
        return self.entry.weights_sha256

    def check(self) -> bool:
        """Read the alias if its file changed; switch when it points at other weights. True when it switched."""
        signature = alias_signature(self.root, self.name)
        if signature == self._signature:
            return False
        self._signature = signature
        if signature is None:
            logger.warning("alias %r is gone from %s; still serving %s", self.name, self.root, self.weights_sha256[:12])
            return False
        try:
            _, entry = resolve_alias(self.root, self.name)
        except RegistryError as e:
            logger.error("alias %r unreadable (%s); still serving %s", self.name, e, self.weights_sha256[:12])
            return False
        if entry.weights_sha256 == self.entry.weights_sha256:
            return False
        try:
            sampler, chat_format = self.load(entry)
        except Exception as e:  # noqa: BLE001 - a bad target must not take the server down
            logger.error("cannot load %s for alias %r (%s: %s); still serving %s", entry.weights_sha256[:12],
                         self.name, type(e).__name__, e, self.weights_sha256[:12])
            return False
        self._swap(entry, sampler, chat_format)
        return True

    def _swap(self, entry: RegistryEntry, sampler: Sampler, chat_format: ChatFormat) -> None:
        engine = self.app.state.engine
        with engine.weights_lock:  # held by the worker for each whole batch: this waits for the one running
            old = engine.sampler
            engine.sampler = sampler
            self.app.state.chat_format = chat_format
            previous, self.entry = self.entry, entry
            self.switches += 1
        old.release()
        logger.info("alias %r: now serving %s (was %s)", self.name, entry.weights_sha256[:12],
                    previous.weights_sha256[:12])

    def start(self) -> None:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._watch, name="agentrft-alias", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None

    def _watch(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                self.check()
            except Exception:  # noqa: BLE001 - keep watching; the next change gets another try
                logger.exception("alias %r: checking for a new target failed", self.name)


class _WeightsHeader:
    """ASGI middleware: name the weights now serving in every response's headers."""

    def __init__(self, app: Any, watcher: AliasWatcher) -> None:
        self.app, self.watcher = app, watcher

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        switches = self.watcher.switches

        async def send_with_header(message: dict) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += [(WEIGHTS_HEADER.encode(), self.watcher.weights_sha256.encode()),
                            (ALIAS_HEADER.encode(), self.watcher.name.encode())]
                if self.watcher.switches != switches:  # decoded before or after the switch: cannot tell here
                    headers.append((SWITCHED_HEADER.encode(), b"1"))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_header)


def serve_alias(app: FastAPI, root: Path, name: str, entry: RegistryEntry, load: Loader,
                poll_s: float = 1.0) -> AliasWatcher:
    """Make ``app`` (serving ``entry``'s model) follow alias ``name`` of the registry at ``root``: the watcher
    runs for the app's lifespan; ``load(entry)`` builds a sampler and chat format for a new target."""
    watcher = AliasWatcher(app, root, name, entry, load, poll_s)
    app.state.alias = watcher
    app.add_middleware(_WeightsHeader, watcher=watcher)
    inner = app.router.lifespan_context

    @contextlib.asynccontextmanager
    async def lifespan(a: FastAPI):
        async with inner(a) as state:
            watcher.start()
            try:
                yield state
            finally:
                watcher.stop()

    app.router.lifespan_context = lifespan
    return watcher
