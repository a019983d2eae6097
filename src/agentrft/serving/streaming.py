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

Decoding the tokens to text uses the tokenizer, so it runs on the app's one
tokenizer thread (``tokenizer_thread``), in one hop for all the tokens that
arrived together. A client that goes away cancels its job
(:class:`EventStream` does, however the response ends, even before the
events started), so its batch stops decoding for it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from concurrent.futures import Executor
from typing import AsyncIterator, Callable, Sequence

from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from agentrft.models.chat_format import TOOL_CALL_OPEN
from agentrft.rollout.sampler import Completion
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


class EventStream(StreamingResponse):
    """A ``text/event-stream`` response that calls ``on_close`` once it ends, however it ends: finished, failed,
    or cut short by the client (Starlette then cancels the response before the events may even have started,
    so the generator's own ``finally`` is not enough)."""

    def __init__(self, events: AsyncIterator[str], on_close: Callable[[], None]) -> None:
        super().__init__(events, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        self.on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.on_close()
            await self.body_iterator.aclose()


def _push(states: list[_StreamedChoice], tokens: list[tuple[int, int]]) -> list[dict]:
    """The content deltas (chunk choices) these ``(choice, token)`` make safe to send; on the tokenizer thread."""
    deltas = []
    for choice, token in tokens:
        if delta := states[choice].push(token):
            deltas.append(chunk_choice(choice, {"content": delta}))
    return deltas


def _finish(states: list[_StreamedChoice], completions: list[Completion], chat_format, parse_tools: bool,
            stops: Sequence[str]) -> tuple[list[dict], int]:
    """Each choice's last deltas, and the completion tokens they count; on the tokenizer thread."""
    deltas, n_completion = [], 0
    for i, comp in enumerate(completions):
        whole, count = completion_choice(i, comp, chat_format, parse_tools, stops)
        n_completion += count
        deltas.extend(states[i].finish(whole))
    return deltas, n_completion


def _drain(tokens: asyncio.Queue) -> list[tuple[int, int]]:
    items = []
    while not tokens.empty():
        items.append(tokens.get_nowait())
    return items


async def stream_events(engine: BatchingGenerator, job, tokens: asyncio.Queue, tokenizer_thread: Executor,
                        chat_format, model_name: str, n: int, n_prompt: int, stops: list[str], parse_tools: bool,
                        include_usage: bool) -> AsyncIterator[str]:
    """Server-sent events for ``job`` (submitted with ``stream=tokens``): a role chunk per choice, content
    deltas as tokens come, then each choice's end."""
    completion_id, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
    loop = asyncio.get_running_loop()

    def event(choices: list[dict], usage: dict | None = None) -> str:
        return _sse(completion_chunk(completion_id, created, model_name, choices, include_usage=include_usage,
                                     usage=usage))

    states = [_StreamedChoice(chat_format, stops, parse_tools) for _ in range(n)]
    task = asyncio.ensure_future(engine.result(job))
    getter: asyncio.Future | None = None
    try:
        for i in range(n):
            yield event([chunk_choice(i, {"role": "assistant", "content": ""})])
        while True:
            getter = asyncio.ensure_future(tokens.get())
            await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
            if not getter.done():
                break
            arrived = [getter.result(), *_drain(tokens)]
            for delta in await loop.run_in_executor(tokenizer_thread, _push, states, arrived):
                yield event([delta])
        # the engine hands every token over before the result
        for delta in await loop.run_in_executor(tokenizer_thread, _push, states, _drain(tokens)):
            yield event([delta])
        try:
            completions = task.result()
        except Exception as e:  # the headers are sent: the error goes in the stream, as OpenAI's does
            logger.exception("streamed chat completion failed")
            yield _sse(APIError(500, f"generation failed: {type(e).__name__}: {e}", kind="server_error").body())
            return
        deltas, n_completion = await loop.run_in_executor(tokenizer_thread, _finish, states, completions,
                                                          chat_format, parse_tools, stops)
        for delta in deltas:
            yield event([delta])
        if include_usage:
            yield event([], usage=token_usage(n_prompt, n_completion))
        yield "data: [DONE]\n\n"
    finally:
        if getter is not None:
            getter.cancel()
        task.cancel()
        engine.cancel(job)  # the client went away first: its job stops (a settled job is left as it is)
