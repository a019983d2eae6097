"""The files and fine-tuning jobs routes: each parses its input and calls one service method.

Paths and bodies are OpenAI's (``/v1/files``, ``/v1/fine_tuning/jobs/...``), so the official ``openai``
SDK drives them unchanged; the services read ``request.app.state.files`` and ``request.app.state.jobs``.
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from starlette.datastructures import UploadFile

from agentrft.platform.files import file_object
from agentrft.serving.protocol import APIError, parse_json_body

router = APIRouter()


async def _off_loop(fn, *args):
    """Service calls touch SQLite and files, and cancel/pause wait for a worker: never on the event loop."""
    return await asyncio.get_running_loop().run_in_executor(None, fn, *args)


# -- files -------------------------------------------------------------------------------
@router.post("/v1/files")
async def create_file(request: Request) -> dict:
    limits = request.app.state.limits
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limits.max_upload_bytes + (1 << 20):
        raise APIError(413, f"the upload is larger than this server's limit of {limits.max_upload_bytes} bytes",
                       param="file", code="file_too_large")
    try:
        form = await request.form(max_part_size=limits.max_upload_bytes)
    except Exception as e:  # not multipart, or a malformed one
        raise APIError(400, f"expected a multipart/form-data body with 'file' and 'purpose': {e}") from None
    upload, purpose = form.get("file"), form.get("purpose")
    if not isinstance(upload, UploadFile):
        raise APIError(400, "Missing required parameter: 'file'", param="file", code="missing_required_parameter")
    if not isinstance(purpose, str):
        raise APIError(400, "Missing required parameter: 'purpose'", param="purpose", code="missing_required_parameter")
    content = await upload.read()
    row = await _off_loop(request.app.state.files.create, upload.filename or "upload.jsonl", purpose, content)
    return file_object(row)


@router.get("/v1/files")
async def list_files(request: Request, purpose: str | None = None) -> dict:
    rows = await _off_loop(request.app.state.files.db.list_files, purpose)
    return {"object": "list", "data": [file_object(r) for r in rows], "has_more": False}


@router.get("/v1/files/{file_id}")
async def retrieve_file(file_id: str, request: Request) -> dict:
    return file_object(await _off_loop(request.app.state.files.get, file_id))


@router.get("/v1/files/{file_id}/content")
async def file_content(file_id: str, request: Request) -> Response:
    content = await _off_loop(request.app.state.files.content, file_id)
    return Response(content, media_type="application/jsonl")


@router.delete("/v1/files/{file_id}")
async def delete_file(file_id: str, request: Request) -> dict:
    return await _off_loop(request.app.state.files.delete, file_id)


# -- fine-tuning jobs -----------------------------------------------------------------------
@router.post("/v1/fine_tuning/jobs")
async def create_job(request: Request) -> JSONResponse:
    limit = request.app.state.limits.max_request_bytes
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > limit:
            raise APIError(413, f"the request body is larger than this server's limit of {limit} bytes",
                           code="request_too_large")
    body = parse_json_body(raw)
    return JSONResponse(await _off_loop(request.app.state.jobs.create, body, request.state.key_name))


@router.get("/v1/fine_tuning/jobs")
async def list_jobs(request: Request, after: str | None = None, limit: int = 20) -> dict:
    return await _off_loop(request.app.state.jobs.list, after, limit)


@router.get("/v1/fine_tuning/jobs/{job_id}")
async def retrieve_job(job_id: str, request: Request) -> dict:
    return await _off_loop(request.app.state.jobs.retrieve, job_id)


@router.post("/v1/fine_tuning/jobs/{job_id}/cancel")
async def cancel_job(job_id: str, request: Request) -> dict:
    return await _off_loop(request.app.state.jobs.cancel, job_id)


@router.post("/v1/fine_tuning/jobs/{job_id}/pause")
async def pause_job(job_id: str, request: Request) -> dict:
    return await _off_loop(request.app.state.jobs.pause, job_id)


@router.post("/v1/fine_tuning/jobs/{job_id}/resume")
async def resume_job(job_id: str, request: Request) -> dict:
    return await _off_loop(request.app.state.jobs.resume, job_id)


@router.get("/v1/fine_tuning/jobs/{job_id}/events")
async def job_events(job_id: str, request: Request, after: str | None = None, limit: int = 20) -> dict:
    return await _off_loop(request.app.state.jobs.events, job_id, after, limit)


@router.get("/v1/fine_tuning/jobs/{job_id}/checkpoints")
async def job_checkpoints(job_id: str, request: Request, after: str | None = None, limit: int = 10) -> dict:
    return await _off_loop(request.app.state.jobs.checkpoints, job_id, after, limit)
