"""LoRA hot-swap on ``agentrft serve``: vLLM's ``/v1/load_lora_adapter`` and ``/v1/unload_lora_adapter``.

A trainer that pushes its weights as LoRA adapters (each checkpoint's
``adapter/`` folder: ``adapter_config.json`` + ``adapter_model.safetensors``,
peft's ``save_pretrained`` layout) can point a running server at a new one
without restarting it. The endpoints and bodies are vLLM's, so the same client
code drives either server:

* ``POST /v1/load_lora_adapter`` ``{"lora_name": ..., "lora_path": ...}`` (and vLLM's
  ``load_inplace: true`` to replace an adapter already loaded under that name): 200 with a plain-text
  ``Success: ...``; 400 when the name is taken, the path is not an adapter folder under the server's
  ``--lora-root`` or does not fit the model;
* ``POST /v1/unload_lora_adapter`` ``{"lora_name": ...}``: 200, or 404 for a name not loaded;
* ``GET /v1/models`` lists the served model, then each adapter (``parent``: the served model, ``root``: its
  folder); a completion request with ``model: <lora_name>`` samples with that adapter.

Departure from vLLM, on purpose: ``lora_path`` must resolve (symlinks followed) to a folder inside the
operator's ``--lora-root``; a client string is never a free file path. vLLM loads whatever path it is given.

How the swap works: the adapters are peft adapters loaded side by side into the served model
(``PeftModel.load_adapter``); the engine batches only requests naming the same adapter, and before each
batch its worker thread calls :meth:`LoraAdapters.select` under the engine's ``weights_lock``, which makes
that adapter the active one (or turns adapters off for the served model) and releases the sampler's
weight-derived state (fused weights, prefix cache) when the choice changed. Loading and unloading take the
same lock, so a batch never samples from half-swapped weights. Switching between adapters rebuilds the
fused decoding weights (one probe per projection), so interleaving adapters request by request costs that
rebuild each time; a server busy with one adapter pays it once.
"""

from __future__ import annotations

import asyncio
import threading
import time
import warnings
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agentrft.serving import models
from agentrft.serving.protocol import APIError, model_card, parse_json_body

router = APIRouter()

MAX_NAME_CHARS = 128


class LoadLoRAAdapterRequest(BaseModel):
    """vLLM's body for ``POST /v1/load_lora_adapter``."""

    model_config = ConfigDict(extra="forbid")
    lora_name: str = Field(min_length=1, max_length=MAX_NAME_CHARS)
    lora_path: str = Field(min_length=1, max_length=4096)
    load_inplace: bool = False


class UnloadLoRAAdapterRequest(BaseModel):
    """vLLM's body for ``POST /v1/unload_lora_adapter`` (``lora_int_id`` is accepted and unused)."""

    model_config = ConfigDict(extra="forbid")
    lora_name: str = Field(min_length=1, max_length=MAX_NAME_CHARS)
    lora_int_id: int | None = None


class LoraAdapters:
    """The adapters loaded into one served model, and which one its weights compute right now.

    ``model`` is the model the sampler samples from: a plain transformers model, whose modules gain LoRA
    layers on the first load (peft injects them in place, so the sampler's reference stays valid), or a
    peft model already (a served run directory: its own adapters are what the served name means).
    """

    def __init__(self, model, sampler, lora_root: str | Path, max_adapters: int = 8) -> None:
        root = Path(lora_root)
        if not root.is_dir():
            raise ValueError(f"--lora-root {lora_root}: not a folder")
        self.root = root.resolve()
        self.sampler = sampler
        self.max_adapters = max_adapters
        self._model = model
        self._peft = model if hasattr(model, "peft_config") else None
        self._own = list(self._peft.active_adapters) if self._peft is not None else []  # the served model's
        self.loaded: dict[str, tuple[str, Path, int]] = {}
        """lora_name -> (peft adapter name, folder, when it was loaded)."""
        self._current: str | None | bool = False  # what the weights compute now; False: unknown (rebuild)
        self._counter = 0
        self._lock = threading.Lock()  # guards ``loaded`` between the handlers and the worker

    # -- on the engine's worker thread, under its weights_lock -------------------------------------

    def select(self, lora_name: str | None) -> None:
        """Make the weights compute ``lora_name`` (None: the served model as loaded)."""
        if lora_name == self._current:
            return
        with self._lock:
            if lora_name is not None and lora_name not in self.loaded:
                raise AdapterNotLoaded(lora_name)
            internal = self.loaded[lora_name][0] if lora_name is not None else None
        if self._peft is not None:
            if internal is not None:
                self._peft.base_model.enable_adapter_layers()
                self._peft.set_adapter(internal)
            elif self._own:
                self._peft.base_model.enable_adapter_layers()
                if len(self._own) == 1:
                    self._peft.set_adapter(self._own[0])
                else:
                    self._peft.base_model.set_adapter(self._own)
            else:
                self._peft.base_model.disable_adapter_layers()
        self.sampler.release()  # fused weights and prefix cache were built for the other weights
        self._current = lora_name

    # -- from the handlers, under the engine's weights_lock (see :func:`_under_weights_lock`) ----

    def resolve(self, lora_path: str) -> Path:
        """``lora_path`` (relative to the root, or absolute) as an adapter folder inside the root; 400 if not."""
        raw = Path(lora_path)
        folder = (raw if raw.is_absolute() else self.root / raw).resolve()
        if not folder.is_relative_to(self.root):
            raise APIError(400, f"lora_path {lora_path!r} is outside this server's --lora-root; give a folder "
                                "inside it (relative paths are taken from it)", param="lora_path")
        if not (folder / "adapter_config.json").is_file():
            raise APIError(400, f"lora_path {lora_path!r} is not a LoRA adapter folder (no adapter_config.json)",
                           param="lora_path")
        return folder

    def load(self, req: LoadLoRAAdapterRequest, served_name: str) -> None:
        if req.lora_name == served_name:
            raise APIError(400, f"lora_name {req.lora_name!r} is the served model's name", param="lora_name")
        folder = self.resolve(req.lora_path)
        with self._lock:
            replaced = self.loaded.get(req.lora_name)
            if replaced is not None and not req.load_inplace:
                raise APIError(400, f"The lora adapter {req.lora_name!r} has already been loaded.",
                               param="lora_name")
            if replaced is None and len(self.loaded) >= self.max_adapters:
                raise APIError(400, f"{self.max_adapters} adapters are loaded already (--max-loras); unload one "
                                    "first", param="lora_name")
        self._counter += 1
        internal = f"served_lora_{self._counter}"  # peft module keys: the client's name may hold any character
        try:
            if self._peft is None:
                from peft import PeftModel

                self._peft = PeftModel.from_pretrained(self._model, str(folder), adapter_name=internal)
            else:
                self._peft.load_adapter(str(folder), adapter_name=internal)
        except Exception as e:  # a config or tensor that does not fit this model
            raise APIError(400, f"cannot load {req.lora_path!r} onto the served model: {type(e).__name__}: {e}",
                           param="lora_path") from None
        self._peft.eval()
        with self._lock:
            self.loaded[req.lora_name] = (internal, folder, int(time.time()))
        if replaced is not None:
            self._delete(replaced[0])
        self._current = False  # peft may have changed the active adapter: select again before the next batch

    def unload(self, lora_name: str) -> None:
        with self._lock:
            entry = self.loaded.pop(lora_name, None)
        if entry is None:
            raise APIError(404, f"The lora adapter {lora_name!r} cannot be found.", param="lora_name",
                           code="model_not_found")
        self._delete(entry[0])
        self._current = False

    def _delete(self, internal: str) -> None:
        with warnings.catch_warnings():  # "adapter ... was active which is now deleted": select() sets it anew
            warnings.simplefilter("ignore", UserWarning)
            self._peft.delete_adapter(internal)

    def cards(self, parent: str) -> list[dict]:
        """The adapters as ``GET /v1/models`` lists them (vLLM's shape: ``parent`` and ``root``)."""
        with self._lock:
            items = sorted(self.loaded.items(), key=lambda kv: kv[1][2])
        return [{**model_card(name, created), "parent": parent, "root": str(folder)}
                for name, (_, folder, created) in items]

    def __contains__(self, lora_name: str) -> bool:
        with self._lock:
            return lora_name in self.loaded


class AdapterNotLoaded(LookupError):
    """A request named an adapter that is not (or no longer) loaded."""

    def __init__(self, lora_name: str) -> None:
        super().__init__(f"The lora adapter {lora_name!r} is not loaded")
        self.lora_name = lora_name


def enable_lora(app: FastAPI, model, lora_root: str | Path, max_adapters: int = 8) -> LoraAdapters:
    """Turn on LoRA hot-swap for ``app`` (built by :func:`~agentrft.serving.app.create_app` over a sampler that
    samples from ``model``): adapters may be loaded from folders inside ``lora_root``."""
    adapters = LoraAdapters(model, app.state.engine.sampler, lora_root, max_adapters)
    app.state.adapters = adapters
    app.state.engine.select_weights = adapters.select
    return adapters


def adapter_for(state: Any, model_name: str) -> str | None:
    """The adapter a request's ``model`` names (None: the served model); 404 ``model_not_found`` otherwise."""
    if model_name == state.settings.model_name:
        return None
    adapters: LoraAdapters | None = getattr(state, "adapters", None)
    if adapters is not None and model_name in adapters:
        return model_name
    raise APIError(404, f"The model {model_name!r} does not exist; this server serves "
                        f"{state.settings.model_name!r}" + (" and the adapters in GET /v1/models" if adapters else ""),
                   param="model", code="model_not_found")


def _adapters(request: Request) -> LoraAdapters:
    adapters = getattr(request.app.state, "adapters", None)
    if adapters is None:
        raise APIError(404, "LoRA adapters are not enabled on this server (start it with --enable-lora "
                            "--lora-root DIR)", code="lora_not_enabled")
    return adapters


async def _body(request: Request, model: type[BaseModel]) -> Any:
    body = parse_json_body(await request.body())
    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object")
    try:
        return model.model_validate(body)
    except ValidationError as e:
        err = e.errors()[0]
        param = ".".join(str(p) for p in err["loc"]) or None
        raise APIError(400, f"invalid value for {param}: {err['msg']}", param=param) from None


async def _under_weights_lock(request: Request, fn, *args) -> None:
    """Run ``fn`` off the event loop, holding the engine's weights lock (between batches)."""
    engine = request.app.state.engine

    def locked() -> None:
        with engine.weights_lock:
            fn(*args)

    await asyncio.get_running_loop().run_in_executor(None, locked)


@router.post("/v1/load_lora_adapter")
async def load_lora_adapter(request: Request) -> PlainTextResponse:
    adapters = _adapters(request)
    req = await _body(request, LoadLoRAAdapterRequest)
    await _under_weights_lock(request, adapters.load, req, request.app.state.settings.model_name)
    return PlainTextResponse(f"Success: LoRA adapter '{req.lora_name}' added successfully.")


@router.post("/v1/unload_lora_adapter")
async def unload_lora_adapter(request: Request) -> PlainTextResponse:
    adapters = _adapters(request)
    req = await _body(request, UnloadLoRAAdapterRequest)
    await _under_weights_lock(request, adapters.unload, req.lora_name)
    return PlainTextResponse(f"Success: LoRA adapter '{req.lora_name}' removed successfully.")


@router.get("/v1/models")
async def list_models(request: Request) -> dict:
    """The served model (:func:`agentrft.serving.models.list_models`), with its context length, then the adapters
    (this route is matched before that one)."""
    state = request.app.state
    listing = await models.list_models(request)
    listing["data"] = [{**card, "max_model_len": state.max_context} for card in listing["data"]]
    adapters: LoraAdapters | None = getattr(state, "adapters", None)
    if adapters is not None:
        listing["data"] += [{**card, "max_model_len": state.max_context}
                            for card in adapters.cards(state.settings.model_name)]
    return listing


@router.get("/v1/models/{model_id:path}")
async def get_model(model_id: str, request: Request) -> dict:
    state = request.app.state
    adapters: LoraAdapters | None = getattr(state, "adapters", None)
    if adapters is not None and model_id in adapters:
        return next(c for c in adapters.cards(state.settings.model_name) if c["id"] == model_id)
    return await models.get_model(model_id, request)
