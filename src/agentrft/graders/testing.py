"""Real local HTTP servers for testing graders offline (the doubles beside the judge and endpoint seams).

:class:`LocalJSONServer` is a real ``http.server`` on ``127.0.0.1`` (an
ephemeral port) in a daemon thread: requests travel through the same
sockets, SDK and retry logic as in production, only the answer is scripted.
:class:`ScriptedChatServer` speaks enough of the chat-completions API
(``POST /v1/chat/completions``) for the ``openai`` SDK, so ``score_model`` and
``label_model`` graders can be tested -- and their prompts inspected --
without a model. Every request is recorded in ``requests``.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

# handler(path, body, headers) -> (status, JSON-able body)
Handler = Callable[[str, Any, dict[str, str]], tuple[int, Any]]


class LocalJSONServer:
    """A JSON-over-HTTP server on 127.0.0.1; use as a context manager."""

    def __init__(self, handler: Handler):
        self.handler = handler
        self.requests: list[dict[str, Any]] = []
        outer = self

        class _Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                try:
                    body = json.loads(raw) if raw else None
                except json.JSONDecodeError:
                    body = raw.decode("utf-8", "replace")
                headers = {k.lower(): v for k, v in self.headers.items()}
                outer.requests.append({"path": self.path, "body": body, "headers": headers, "time": time.monotonic()})
                status, answer = outer.handler(self.path, body, headers)
                data = answer.encode() if isinstance(answer, str) else json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True, name="local-json-server"
        )

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> "LocalJSONServer":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._server.shutdown()
        self._server.server_close()


def chat_completion(content: str, model: str = "judge") -> dict[str, Any]:
    """A minimal chat-completions response body carrying ``content``."""
    return {
        "id": "chatcmpl-" + uuid.uuid4().hex[:12],
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }


class ScriptedChatServer(LocalJSONServer):
    """An OpenAI-compatible chat endpoint whose answers come from ``reply(request_body)``.

    ``reply`` returns the assistant text, or ``(status, body)`` to answer with
    an HTTP error. ``base_url`` is what :class:`agentrft.graders.JudgeConfig` wants.
    """

    def __init__(self, reply: Callable[[dict[str, Any]], str | tuple[int, Any]]):
        def handle(path: str, body: Any, headers: dict[str, str]) -> tuple[int, Any]:
            if not path.rstrip("/").endswith("/chat/completions"):
                return 404, {"error": {"message": f"no route {path}"}}
            answer = reply(body)
            if isinstance(answer, tuple):
                return answer
            return 200, chat_completion(answer, body.get("model", "judge"))

        super().__init__(handle)

    @property
    def base_url(self) -> str:
        return self.url + "/v1"
