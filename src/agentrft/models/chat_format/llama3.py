"""The Llama 3.x chat format (3.1, 3.2, 3.3): header turns, JSON tool calls, ``ipython`` results.

Turns are ``<|start_header_id|>role<|end_header_id|>\\n\\n{text}<|eot_id|>`` after
``<|begin_of_text|>``; the system turn always states the knowledge cutoff and a
date; tool schemas go (indented JSON) into the first user turn; a tool call is
the assistant's whole message, ``{"name": ..., "parameters": {...}}``; a result
is an ``ipython`` turn. Rendering goes through
:class:`~agentrft.models.chat_format.template.TemplateChatFormat` (prefix
differences) with :data:`LLAMA3_CHAT_TEMPLATE`.

The template is Llama 3.1's published one (3.2 and 3.3 write the same turns
and calls) with these changes: parallel calls are rendered, joined by ``"; "`` (the published template
raises on more than one call; ``"; "`` is the separator vLLM's ``llama3_json``
parser reads), the date is fixed at its default "26 Jul 2024" (3.2's template
reads today's date, which would make renderings depend on the day), and the
built-in tools (``builtin_tools``: ``<|python_tag|>name.call(...)``) are left
out. Like the published template, an assistant message that has tool calls
renders only the calls (its text is dropped), user and assistant text is
trimmed, and a tool result is written with ``tojson`` (a string result appears
quoted: ``"5"``), which is what Llama models see when served with their own
template.

Parsing (:meth:`Llama3ChatFormat._parse_text`) follows the published
convention: a turn is tool calls when it starts with ``<|python_tag|>`` or with
a JSON object naming a tool (``name``, ``parameters`` or ``arguments``); objects
may be separated by ``;`` or newlines, and text after them is content.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from agentrft.errors import ConfigError
from agentrft.models.chat_format.base import ParsedAssistant, _special_token_id
from agentrft.models.chat_format.json_tool_calls import parse_json_calls
from agentrft.models.chat_format.template import TemplateChatFormat

if TYPE_CHECKING:  # pragma: no cover - typing only
    from transformers import PreTrainedTokenizerBase

__all__ = ["LLAMA3_CHAT_TEMPLATE", "LLAMA3_CALL_SEPARATOR", "PYTHON_TAG", "Llama3ChatFormat"]

PYTHON_TAG = "<|python_tag|>"
LLAMA3_CALL_SEPARATOR = "; "

LLAMA3_CHAT_TEMPLATE = r"""{{- bos_token }}
{%- if custom_tools is defined %}
    {%- set tools = custom_tools %}
{%- endif %}
{%- if not tools_in_user_message is defined %}
    {%- set tools_in_user_message = true %}
{%- endif %}
{%- if not date_string is defined %}
    {%- set date_string = "26 Jul 2024" %}
{%- endif %}
{%- if not tools is defined %}
    {%- set tools = none %}
{%- endif %}

{#- This block extracts the system message, so we can slot it into the right place. #}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}

{#- System message #}
{{- "<|start_header_id|>system<|end_header_id|>\n\n" }}
{%- if tools is not none %}
    {{- "Environment: ipython\n" }}
{%- endif %}
{{- "Cutting Knowledge Date: December 2023\n" }}
{{- "Today Date: " + date_string + "\n\n" }}
{%- if tools is not none and not tools_in_user_message %}
    {{- "You have access to the following functions. To call a function, please respond with JSON for a function call." }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\n\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\n\n" }}
    {%- endfor %}
{%- endif %}
{{- system_message }}
{{- "<|eot_id|>" }}

{#- Custom tools are passed in a user message with some extra guidance #}
{%- if tools_in_user_message and not tools is none %}
    {#- Extract the first user message so we can plug it in here #}
    {%- if messages | length != 0 %}
        {%- set first_user_message = messages[0]['content']|trim %}
        {%- set messages = messages[1:] %}
    {%- else %}
        {{- raise_exception("Cannot put tools in the first user message when there's no first user message!") }}
    {%- endif %}
    {{- '<|start_header_id|>user<|end_header_id|>\n\n' -}}
    {{- "Given the following functions, please respond with a JSON for a function call " }}
    {{- "with its proper arguments that best answers the given prompt.\n\n" }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\n\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\n\n" }}
    {%- endfor %}
    {{- first_user_message + "<|eot_id|>"}}
{%- endif %}

{%- for message in messages %}
    {%- if not (message.role == 'ipython' or message.role == 'tool' or message.tool_calls) %}
        {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' }}
    {%- elif message.tool_calls %}
        {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' -}}
        {#- agentrft: parallel calls joined by "; " (published: one call only) #}
        {%- for call in message.tool_calls %}
            {%- set tool_call = call.function if call.function is defined else call %}
            {%- if not loop.first %}
                {{- "; " }}
            {%- endif %}
            {{- '{"name": "' + tool_call.name + '", ' }}
            {{- '"parameters": ' }}
            {{- tool_call.arguments | tojson }}
            {{- "}" }}
        {%- endfor %}
        {{- "<|eot_id|>" }}
    {%- elif message.role == "tool" or message.role == "ipython" %}
        {{- "<|start_header_id|>ipython<|end_header_id|>\n\n" }}
        {%- if message.content is mapping or message.content is iterable %}
            {{- message.content | tojson }}
        {%- else %}
            {{- message.content }}
        {%- endif %}
        {{- "<|eot_id|>" }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}
{%- endif %}
"""
"""Llama 3.1's chat template with parallel calls and a fixed date (see the module docstring)."""

_CALL_KEYS = ("name", "parameters", "arguments")


def _starts_a_call(text: str) -> bool:
    """Whether text that starts with ``{`` opens a tool call rather than a JSON answer."""
    try:
        obj, _ = json.JSONDecoder().raw_decode(text)
    except (ValueError, RecursionError):  # JSONDecodeError, or a number/nesting past Python's limits
        return True  # broken JSON where a call would be: report it
    return not isinstance(obj, dict) or any(k in obj for k in _CALL_KEYS)


class Llama3ChatFormat(TemplateChatFormat):
    """Llama 3.x turns, JSON tool calls and ``ipython`` results.

    Stops at ``<|eot_id|>``, and at ``<|eom_id|>`` / ``<|end_of_text|>`` (Llama
    3.1's generation config stops at all three); a turn is closed with ``<|eot_id|>``.
    """

    name = "llama3"

    def __init__(self, tokenizer: "PreTrainedTokenizerBase") -> None:
        needed = ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")
        missing = [t for t in needed if _special_token_id(tokenizer, t) is None]
        if missing:
            raise ConfigError(f"the llama3 chat format needs {', '.join(missing)} as special tokens of the tokenizer")
        super().__init__(tokenizer, LLAMA3_CHAT_TEMPLATE)
        for extra in ("<|eom_id|>", "<|end_of_text|>"):
            token_id = _special_token_id(tokenizer, extra)
            if token_id is not None and token_id not in self.stop_token_ids:
                self.stop_token_ids = (*self.stop_token_ids, token_id)

    def _parse_text(self, text: str) -> ParsedAssistant:
        body = text.strip()
        tagged = body.startswith(PYTHON_TAG)
        if tagged:
            body = body[len(PYTHON_TAG):].lstrip()
        if not tagged and not (body.startswith("{") and _starts_a_call(body)):
            return ParsedAssistant(content=body)
        if tagged and not body.startswith(("{", "[")):
            return ParsedAssistant("", parse_errors=[f"tool call 1: expected a JSON tool call after {PYTHON_TAG} "
                                                     "(built-in tools are not supported)"], malformed=[text.strip()])
        found = parse_json_calls(body)
        return ParsedAssistant(found.rest, found.calls, found.errors, found.malformed)
