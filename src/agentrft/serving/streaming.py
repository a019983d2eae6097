"""``stream: true``: server-sent ``chat.completion.chunk`` events as the tokens are sampled.

The engine puts each sampled token on the request's queue as the sampler's
decode loop produces it (a batch mate's tokens never reach another request's
stream); :func:`stream_events` turns them into events. Text is sent once it is
safe: not a partial UTF-8 character, not possibly the start of a ``stop``
string, and, when tools are offered, not from the first ``<tool_call>`` on (a
call is sent whole, as one ``tool_calls`` delta, once the turn has ended and
parsed; a malformed one arrives as content). The deltas add up to the
non-streamed response, except that the text before a tool call may keep
whitespace the parsed ``content`` strips. ``stream_options.include_usage``
adds the usage chunk. A failure after the headers are sent is an error event,
as OpenAI sends it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from typing import Any, AsyncIterator, Sequence

from agentrft.models.chat_format import TOOL_CALL_OPEN
from agentrft.serving.engine import BatchingGenerator
from agentrft.serving.protocol import (APIError, chunk_choice, completion_chunk, completion_choice, first_stop,
                                       token_usage)

logger = logging.getLogger(__name__)


def _held_back(text: str, markers: Sequence[str]) -> int:
    """Length of the longest end of ``text`` that is the start of one of ``markers`` (it may still become one)."""
    best = 0
    for marker in markers:
        for k in range(min(len(marker) - 1, len(text)), best, -1):
            if text.endswith(marker[:k]):
                best = k
                break
    return best


class _StreamedChoice:
    """One choice of a streamed response: its tokens so far, and the part of their text already sent."""

    def __init__(self, chat_format, stops: Sequence[str], parse_tools: bool) -> None:
        self.chat_format, self.stops, self.parse_tools = chat_format, list(stops), parse_tools
        self.ids: list[int] = []
        self.sent = ""
        self.closed = False  # end of turn, a stop string or a tool call: no more text streams

    def push(self, token: int) -> str:
        """The content delta this token makes safe to send ("" when none)."""
        if self.closed:
            return ""
        if token in self.chat_format.stop_token_ids:
            self.closed = True
            return ""
        self.ids.append(token)
        text = self.chat_format.decode(self.ids)
        safe = len(text.rstrip("\ufffd"))  # a partial UTF-8 character decodes as U+FFFD until it completes
        if self.stops:
            cut = first_stop(text, self.stops)
            if cut is not None:
                safe, self.closed = min(safe, cut), True
            else:
                safe = min(safe, len(text) - _held_back(text, self.stops))
        if self.parse_tools:
            at = text.find(TOOL_CALL_OPEN)
            if at >= 0:
                safe, self.closed = min(safe, at), True
            else:
                safe = min(safe, len(text) - _held_back(text, [TOOL_CALL_OPEN]))
            safe = len(text[:safe].rstrip())  # whitespace waits for more text: parsed content is stripped
        if safe > len(self.sent) and text.startswith(self.sent):
            delta, self.sent = text[len(self.sent) : safe], text[:safe]
            return delta
        return ""

    def finish(self, choice: dict) -> list[dict]:
        """The last deltas of this choice, given its whole (non-streamed) ``choice``: the rest of the content,
        the tool calls, the finish reason."""
        index, message = choice["index"], choice["message"]
        content = message.get("content") or ""
        deltas: list[dict] = []
        if len(content) > len(self.sent) and content.startswith(self.sent):
            deltas.append(chunk_choice(index, {"content": content[len(self.sent) :]}))
        if message.get("tool_calls"):
            calls = [{"index": k, **call} for k, call in enumerate(message["tool_calls"])]
            deltas.append(chunk_choice(index, {"tool_calls": calls}))
        deltas.append(chunk_choice(index, {}, choice["finish_reason"]))
        return deltas


def _sse(body: dict) -> str:
    return f"data: {json.dumps(body)}\n\n"


async def stream_events(engine: BatchingGenerator, chat_format, model_name: str, prompt: list[int],
                        generation: dict[str, Any], stops: list[str], parse_tools: bool,
                        include_usage: bool) -> AsyncIterator[str]:
    """Server-sent events: a role chunk per choice, content deltas as tokens come, then each choice's end.

    ``generation`` holds the keyword arguments of :meth:`BatchingGenerator.generate`.
    """
    completion_id, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())

    def event(choices: list[dict], usage: dict | None = None) -> str:
        return _sse(completion_chunk(completion_id, created, model_name, choices, include_usage=include_usage,
                                     usage=usage))

    n = generation["n"]
    states = [_StreamedChoice(chat_format, stops, parse_tools) for _ in range(n)]
    tokens: asyncio.Queue = asyncio.Queue()
    task = asyncio.ensure_future(engine.generate(prompt, stream=tokens, **generation))
    try:
        for i in range(n):
            yield event([chunk_choice(i, {"role": "assistant", "content": ""})])
        while True:
            getter = asyncio.ensure_future(tokens.get())
            await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
            if not getter.done():
                getter.cancel()
                break
            choice, token = getter.result()
            if delta := states[choice].push(token):
                yield event([chunk_choice(choice, {"content": delta})])
        while not tokens.empty():  # the engine hands every token over before the result
            choice, token = tokens.get_nowait()
            if delta := states[choice].push(token):
                yield event([chunk_choice(choice, {"content": delta})])
        try:
            completions = task.result()
        except Exception as e:  # the headers are sent: the error goes in the stream, as OpenAI's does
            logger.exception("streamed chat completion failed")
            yield _sse(APIError(500, f"generation failed: {type(e).__name__}: {e}", kind="server_error").body())
            return
        n_completion = 0
        for i, comp in enumerate(completions):
            whole, count = completion_choice(i, comp, chat_format, parse_tools, stops)
            n_completion += count
            for delta in states[i].finish(whole):
                yield event([delta])
        if include_usage:
            yield event([], usage=token_usage(len(prompt), n_completion))
        yield "data: [DONE]\n\n"
    finally:
        task.cancel()  # the client went away first: a request still waiting is dropped from the queue
