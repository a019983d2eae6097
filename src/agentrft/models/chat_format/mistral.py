"""The Mistral chat format (v3 tokenizers: Mistral-7B-Instruct-v0.3, Mistral-Nemo).

``<s>[AVAILABLE_TOOLS][{tool schemas}][/AVAILABLE_TOOLS][INST]{system}\\n\\n{user}[/INST]``,
an answer ``{text}</s>``, tool calls ``[TOOL_CALLS][{"name": ..., "arguments": {...},
"id": "<9 alphanumerics>"}, ...]</s>``, each result
``[TOOL_RESULTS]{"content": ..., "call_id": ...}[/TOOL_RESULTS]``, and no
generation prompt: the assistant turn starts right after ``[/INST]`` or
``[/TOOL_RESULTS]``. This is the token sequence Mistral's reference tokenizer
(``mistral-common``, ``InstructTokenizerV3``) builds. SentencePiece tokenizers
(v0.3) start every encoded piece with ``▁``, which reads as a space after each
control token (``[INST] {user}``, ``[TOOL_CALLS] [...]``) as in Mistral's
published v0.3 template; Tekken (Nemo) has none. :data:`MISTRAL_V3_CHAT_TEMPLATE`
and :data:`MISTRAL_TEKKEN_CHAT_TEMPLATE` differ only there, and the format picks
one by the tokenizer.

Departures from mistral-common, each so that a conversation's rendering only
grows as it goes on (prefix-preserving, which turn-by-turn token records need):
the tool schemas and the system prompt go with the *first* user message
(mistral-common: the last one, which moves them whenever a user message is
added); the two agree for conversations with one user message, which is what an
agent rollout is. An assistant message with both text and calls renders the
calls only (mistral-common refuses it; Mistral's HF template drops the text).
Call ids that are not 9 alphanumerics (Mistral's requirement) are mapped to 9
hex digits of their SHA-256, the same way in the call and in its result.
Results are JSON-decoded when they are JSON (as mistral-common does), so
``"5"`` is written ``{"content": 5, ...}`` and ``"Paris"`` ``{"content": "Paris", ...}``.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from typing import TYPE_CHECKING, Any, Sequence

from agentrft.errors import ConfigError
from agentrft.models.chat_format.base import ParsedAssistant, _special_token_id, message_text
from agentrft.models.chat_format.json_tool_calls import parse_json_calls
from agentrft.models.chat_format.template import TemplateChatFormat
from agentrft.types import Message

if TYPE_CHECKING:  # pragma: no cover - typing only
    from transformers import PreTrainedTokenizerBase

__all__ = [
    "MISTRAL_TEKKEN_CHAT_TEMPLATE",
    "MISTRAL_V3_CHAT_TEMPLATE",
    "TOOL_CALLS",
    "MistralChatFormat",
    "mistral_call_id",
    "mistral_variant",
]

TOOL_CALLS = "[TOOL_CALLS]"
_CONTROL_TOKENS = ("[INST]", "[/INST]", TOOL_CALLS, "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]", "[TOOL_RESULTS]",
                   "[/TOOL_RESULTS]")

_TEMPLATE_BODY = r"""
{%- if messages[0]["role"] == "system" %}
    {%- set system_message = messages[0]["content"] %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
    {%- set loop_messages = messages %}
{%- endif %}
{%- if not tools is defined %}
    {%- set tools = none %}
{%- endif %}

{#- This block checks for alternating user/assistant messages, skipping tool calling messages #}
{%- set ns = namespace(index=0, first_user=true) %}
{%- for message in loop_messages %}
    {%- if not (message.role == "tool" or message.role == "tool_results" or message.tool_calls) %}
        {%- if (message["role"] == "user") != (ns.index % 2 == 0) %}
            {{- raise_exception("After the optional system message, conversation roles must alternate user/assistant/user/assistant/...") }}
        {%- endif %}
        {%- set ns.index = ns.index + 1 %}
    {%- endif %}
{%- endfor %}

{{- bos_token }}
{%- for message in loop_messages %}
    {%- if message["role"] == "user" %}
        {#- agentrft: tools and system prompt with the first user message (mistral-common: the last) #}
        {%- if ns.first_user and tools %}
            {{- "[AVAILABLE_TOOLS]" + sp + (tools | tojson) + "[/AVAILABLE_TOOLS]" }}
        {%- endif %}
        {%- if ns.first_user and system_message %}
            {{- "[INST]" + sp + system_message + "\n\n" + message["content"] + "[/INST]" }}
        {%- else %}
            {{- "[INST]" + sp + message["content"] + "[/INST]" }}
        {%- endif %}
        {%- set ns.first_user = false %}
    {%- elif message.tool_calls %}
        {{- "[TOOL_CALLS]" + sp + "[" }}
        {%- for tool_call in message.tool_calls %}
            {%- set out = tool_call.function | tojson %}
            {{- out[:-1] }}
            {%- if tool_call.id is defined %}
                {{- ', "id": "' + tool_call.id + '"' }}
            {%- endif %}
            {{- "}" }}
            {%- if not loop.last %}
                {{- ", " }}
            {%- endif %}
        {%- endfor %}
        {{- "]" + eos_token }}
    {%- elif message["role"] == "assistant" %}
        {{- sp + message["content"].rstrip(" ") + eos_token }}
    {%- elif message["role"] == "tool_results" or message["role"] == "tool" %}
        {#- the content is the JSON text of the result (agentrft encodes it as mistral-common does) #}
        {{- "[TOOL_RESULTS]" + sp + '{"content": ' + message.content|string + ', "call_id": "' + message.tool_call_id + '"}[/TOOL_RESULTS]' }}
    {%- else %}
        {{- raise_exception("Only user and assistant roles are supported, with the exception of an initial optional system message!") }}
    {%- endif %}
{%- endfor %}
"""

MISTRAL_V3_CHAT_TEMPLATE = '{%- set sp = " " %}' + _TEMPLATE_BODY
"""Mistral v3 for SentencePiece tokenizers (Mistral-7B-Instruct-v0.3): a space after each control token."""
MISTRAL_TEKKEN_CHAT_TEMPLATE = '{%- set sp = "" %}' + _TEMPLATE_BODY
"""Mistral v3 for Tekken tokenizers (Mistral-Nemo): text right after each control token."""

_MISTRAL_ID = re.compile(r"[A-Za-z0-9]{9}")


def mistral_call_id(call_id: str) -> str:
    """``call_id`` if it is 9 alphanumerics (what Mistral models write and read), else 9 hex digits of its SHA-256."""
    return call_id if _MISTRAL_ID.fullmatch(call_id) else hashlib.sha256(call_id.encode()).hexdigest()[:9]


def mistral_variant(tokenizer: "PreTrainedTokenizerBase") -> str:
    """``v3`` for SentencePiece tokenizers (text pieces start with ``▁``), else ``tekken``."""
    pieces = tokenizer.convert_ids_to_tokens(tokenizer.encode("a", add_special_tokens=False))
    return "v3" if pieces and pieces[0].startswith("\u2581") else "tekken"


def _result_json(content: str) -> str:
    """A tool result as mistral-common writes it: its JSON value when it is JSON, else a JSON string."""
    try:
        value: Any = json.loads(content)
    except (ValueError, RecursionError):  # JSONDecodeError, or a number/nesting past Python's limits
        value = content
    return json.dumps(value, ensure_ascii=False)


def _mistral_message(message: Message) -> Message:
    """``message`` with Mistral-shaped call ids and a JSON-encoded tool result."""
    role = message.get("role")
    if role in ("tool", "tool_results"):
        return {**message, "content": _result_json(message_text(message.get("content"))),
                "tool_call_id": mistral_call_id(str(message.get("tool_call_id") or ""))}
    if role == "assistant" and message.get("tool_calls"):
        calls = [{**c, "id": mistral_call_id(str(c["id"]))} if c.get("id") else c for c in message["tool_calls"]]
        return {**message, "tool_calls": calls}
    return message


class MistralChatFormat(TemplateChatFormat):
    """Mistral v3 turns and ``[TOOL_CALLS]`` JSON arrays; the v3/Tekken spacing is picked from the tokenizer.

    Stops at ``</s>``. Parsed calls keep the ``id`` the model wrote (a random
    9-character one when it wrote none), so results quote it back.
    """

    name = "mistral"

    def __init__(self, tokenizer: "PreTrainedTokenizerBase", variant: str | None = None) -> None:
        missing = [t for t in _CONTROL_TOKENS if _special_token_id(tokenizer, t) is None]
        if missing:
            raise ConfigError(f"the mistral chat format needs Mistral's v3 control tokens; this tokenizer lacks "
                              f"{', '.join(missing)}")
        self.variant = variant or mistral_variant(tokenizer)
        if self.variant not in ("v3", "tekken"):
            raise ConfigError(f"unknown mistral variant {self.variant!r} (v3 or tekken)")
        super().__init__(tokenizer, MISTRAL_V3_CHAT_TEMPLATE if self.variant == "v3" else MISTRAL_TEKKEN_CHAT_TEMPLATE)

    def _text(self, messages: Sequence[Message], tools: Sequence[dict] | None, add_generation_prompt: bool) -> str:
        return super()._text([_mistral_message(m) for m in messages], tools, add_generation_prompt)

    def _parse_text(self, text: str) -> ParsedAssistant:
        head, *regions = text.split(TOOL_CALLS)
        parsed = ParsedAssistant(head.strip())
        rests = [parsed.content]
        number = 1
        for region in regions:
            found = parse_json_calls(region, first_number=number)
            if found.attempts == 0:
                found.errors.append(f"tool call {number}: expected a JSON array of calls after {TOOL_CALLS}")
                found.malformed.append(TOOL_CALLS + region)
                found.attempts, found.rest = 1, ""
            for call, obj in zip(found.calls, found.objects):
                given = obj.get("id")
                call.id = given if isinstance(given, str) and given else uuid.uuid4().hex[:9]
            parsed.tool_calls += found.calls
            parsed.parse_errors += found.errors
            parsed.malformed += found.malformed
            rests.append(found.rest)
            number += found.attempts
        parsed.content = "\n".join(r for r in rests if r)
        return parsed
