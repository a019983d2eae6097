"""``GET /health``, ``GET /v1/models`` and ``GET /v1/models/{model_id}``: the one served model.

The handlers read ``settings`` and ``created`` (when the app was built) from
``request.app.state``, set by :func:`~agentrft.serving.app.create_app`.
"""

from __future__ import annotations

from fastapi import APIRouter, Request

from agentrft.serving.protocol import model_card, require_served_model

router = APIRouter()


@router.get("/health")
async def health() -> dict:
    return {"status": "ok"}


@router.get("/v1/models")
async def list_models(request: Request) -> dict:
    state = request.app.state
    return {"object": "list", "data": [model_card(state.settings.model_name, state.created)]}


@router.get("/v1/models/{model_id:path}")
async def get_model(model_id: str, request: Request) -> dict:
    state = request.app.state
    require_served_model(model_id, state.settings)
    return model_card(state.settings.model_name, state.created)
