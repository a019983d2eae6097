"""The trainer's own policy, served to its rollout workers: token ids in, token ids and logprobs out, over HTTP.

With ``sampler.backend: local`` and ``runtime.backend: ray`` the policy lives
in the trainer's process and the rollouts in Ray workers, so the workers need
a way to sample from it. :class:`LoopbackServer` serves the trainer's own
:class:`~agentrft.rollout.sampler.Sampler` object (the ``HFSampler`` over the
model being trained) at ``POST /v1/completions``; each worker drives it with
the same :class:`~agentrft.rollout.openai_compat_sampler.OpenAICompatSampler`
it would point at vLLM. The sampler reads the live parameters, so an update is
sampled from at once, with nothing to push.

Why not ``agentrft serve``'s app (:mod:`agentrft.serving`): the runtime sits
below ``train`` and ``serving`` in the layers (docs/architecture.md), and this
endpoint needs none of the server's chat rendering, streaming, adapters or
back-pressure. It speaks exactly the subset of the completions body that
:class:`OpenAICompatSampler` sends (``prompt`` as id lists, ``max_tokens``,
``temperature``, ``top_p``, ``seed``, ``stop_token_ids``; the answer's
``token_ids`` and ``logprobs.token_logprobs``), and batches requests with the
same engine (:class:`~agentrft.rollout.batching.BatchingGenerator`, seeded
requests alone): a request draws what it would draw from ``agentrft serve``
over the same weights.

The engine's worker thread is the only caller of the sampler, so sampling is
serialised; :meth:`LoopbackServer.wait_idle` returns once no request is being
served, which the runtime calls before a step trains (a request of a worker
that was killed mid-rollout may still be decoding). A random bearer token
guards the port: it binds 127.0.0.1 for a local cluster, the node's address
for a remote one.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import secrets
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from agentrft.rollout.batching import BatchingGenerator
from agentrft.rollout.sampler import Completion, Sampler
from agentrft.tools.base import run_sync

__all__ = ["LoopbackServer", "SamplerEndpoint"]

SERVED_NAME = "policy"
"""The ``model`` the workers request from a loopback server."""


@dataclass(frozen=True)
class SamplerEndpoint:
    """Where a rollout worker samples: an OpenAI-compatible completions server, as its client needs it."""

    url: str
    model: str
    max_context: int
    """Tokens per sequence (given, so a worker does not ask the server for it)."""
    api_key: str | None = None
    timeout_s: float = 600.0


class LoopbackServer:
    """``POST /v1/completions`` over ``sampler`` on ``host`` (an ephemeral port), with a bearer token."""

    def __init__(self, sampler: Sampler, host: str = "127.0.0.1", max_batch_size: int = 16,
                 timeout_s: float = 600.0) -> None:
        self.engine = BatchingGenerator(sampler, sampler.max_context, max_batch_size=max_batch_size)
        self.token = secrets.token_hex(16)
        self.timeout_s = timeout_s
        self._busy = 0
        self._idle = threading.Condition()
        self._http = ThreadingHTTPServer((host, 0), _handler(self))
        self._http.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def endpoint(self) -> SamplerEndpoint:
        host, port = self._http.server_address[:2]
        return SamplerEndpoint(f"http://{host}:{port}/v1", SERVED_NAME, self.engine.max_context, self.token,
                               self.timeout_s)

    def start(self) -> "LoopbackServer":
        self.engine.start()
        self._thread = threading.Thread(target=self._http.serve_forever, name="agentrft-loopback", daemon=True)
        self._thread.start()
        return self

    def wait_idle(self, timeout_s: float | None = None) -> bool:
        """Wait until no request is being served; False if one still is after ``timeout_s``."""
        with self._idle:
            return self._idle.wait_for(lambda: self._busy == 0, timeout_s)

    def close(self) -> None:
        if self._thread is not None:
            self._http.shutdown()
            self._thread.join()
            self._thread = None
        self._http.server_close()
        self.engine.stop()

    def complete(self, body: dict[str, Any]) -> dict[str, Any]:
        """The completions answer to ``body``; each prompt is its own engine job, as ``agentrft serve`` does."""
        with self._idle:
            self._busy += 1
        try:
            prompts = body["prompt"]
            kwargs = dict(n=1, max_new_tokens=int(body["max_tokens"]), temperature=float(body.get("temperature", 1.0)),
                          top_p=float(body.get("top_p", 1.0)), seed=body.get("seed"),
                          stop_token_ids=tuple(body.get("stop_token_ids") or ()))

            async def ask() -> list[list[Completion]]:
                return await asyncio.gather(*(self.engine.generate(list(p), **kwargs) for p in prompts))

            answers = run_sync(ask())
        finally:
            with self._idle:
                self._busy -= 1
                self._idle.notify_all()
        return {"object": "text_completion", "model": body.get("model"), "choices": [
            {"index": i, "token_ids": c.token_ids, "finish_reason": c.finish_reason,
             "logprobs": {"token_logprobs": c.logprobs}} for i, (c,) in enumerate(answers)]}


def _handler(server: LoopbackServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive: each worker's client reuses its connections

        def do_POST(self) -> None:  # noqa: N802 (http.server's name)
            if self.path != "/v1/completions":
                return self._send(404, {"error": {"message": f"no route {self.path}"}})
            given = self.headers.get("Authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {server.token}".encode()):
                return self._send(401, {"error": {"message": "a bearer token is required"}})
            try:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                answer = server.complete(body)
            except (KeyError, TypeError, ValueError) as e:
                return self._send(400, {"error": {"message": f"{type(e).__name__}: {e}"}})
            except Exception as e:  # the sampler failed: this request's rollouts record it
                return self._send(500, {"error": {"message": f"generation failed: {type(e).__name__}: {e}"}})
            self._send(200, answer)

        def _send(self, status: int, payload: dict) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:  # quiet: one line per request otherwise
            pass

    return Handler
