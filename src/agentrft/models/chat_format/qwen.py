"""The Qwen2.5 / Qwen3 chat format: Qwen's own chat templates, Hermes ``<tool_call>`` blocks.

Both generations write ChatML turns (``<|im_start|>role\\n...<|im_end|>\\n``),
list tool schemas as JSON lines in ``<tools>`` in the system turn, call tools
with ``<tool_call>{"name", "arguments"}</tool_call>`` blocks and return results
as ``<tool_response>`` blocks in one ``user`` turn. Rendering goes through
:class:`~agentrft.models.chat_format.template.TemplateChatFormat` (prefix
differences of the rendered text) with the templates below instead of the
tokenizer's own copy, so a format resolves the same way everywhere.

:data:`QWEN25_CHAT_TEMPLATE` is Qwen2.5-Instruct's template as published
(default system prompt "You are Qwen, ..." included). :data:`QWEN3_CHAT_TEMPLATE`
is Qwen3's with one change, because the published one is not prefix-preserving:
it drops the ``<think>`` block of assistant turns before the last user query and
adds an empty ``<think>\\n\\n</think>\\n\\n`` to the final turn only, so earlier
turns render differently once a conversation goes on, and token records built
turn by turn would disagree with the whole rendering. Here an assistant turn
renders its ``<think>`` block exactly when the message carries one
(``reasoning_content``, or ``<think>...</think>`` in its content), wherever it
stands. A thinking Qwen3 turn ``<think>\\n{r}\\n</think>\\n\\n{answer}`` therefore
parses to ``content={answer}, reasoning_content={r}`` and renders back to the
same text. Thinking is on (the published default; ``enable_thinking`` is not passed).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from agentrft.errors import ConfigError
from agentrft.models.chat_format.base import ParsedAssistant, _special_token_id
from agentrft.models.chat_format.hermes_tool_calls import parse_tool_calls
from agentrft.models.chat_format.template import TemplateChatFormat
from agentrft.types import Message

if TYPE_CHECKING:  # pragma: no cover - typing only
    from transformers import PreTrainedTokenizerBase

__all__ = ["QWEN25_CHAT_TEMPLATE", "QWEN3_CHAT_TEMPLATE", "ParsedReasoning", "QwenChatFormat", "qwen_variant",
           "split_reasoning"]

QWEN25_CHAT_TEMPLATE = r"""{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}
    {%- endif %}
    {{- "\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>" }}
    {%- for tool in tools %}
        {{- "\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}
    {%- else %}
        {{- '<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>' + '\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\n<tool_call>\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n<tool_response>\n' }}
        {{- message.content }}
        {{- '\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
{%- endif %}
"""
"""Qwen2.5-Instruct's chat template, as published."""

QWEN3_CHAT_TEMPLATE = r"""{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0].role == 'system' %}
        {{- messages[0].content + '\n\n' }}
    {%- endif %}
    {{- "# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>" }}
    {%- for tool in tools %}
        {{- "\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n" }}
{%- else %}
    {%- if messages[0].role == 'system' %}
        {{- '<|im_start|>system\n' + messages[0].content + '<|im_end|>\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if message.content is string %}
        {%- set content = message.content %}
    {%- else %}
        {%- set content = '' %}
    {%- endif %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) %}
        {{- '<|im_start|>' + message.role + '\n' + content + '<|im_end|>' + '\n' }}
    {%- elif message.role == "assistant" %}
        {#- agentrft: the <think> block is rendered exactly when the message has one (published: by position) #}
        {%- set reasoning_content = none %}
        {%- if message.reasoning_content is string %}
            {%- set reasoning_content = message.reasoning_content %}
        {%- elif '</think>' in content %}
            {%- set reasoning_content = content.split('</think>')[0].rstrip('\n').split('<think>')[-1].lstrip('\n') %}
            {%- set content = content.split('</think>')[-1].lstrip('\n') %}
        {%- endif %}
        {%- if reasoning_content is string %}
            {{- '<|im_start|>' + message.role + '\n<think>\n' + reasoning_content.strip('\n') + '\n</think>\n\n' + content.lstrip('\n') }}
        {%- else %}
            {{- '<|im_start|>' + message.role + '\n' + content }}
        {%- endif %}
        {%- if message.tool_calls %}
            {%- for tool_call in message.tool_calls %}
                {%- if (loop.first and content) or (not loop.first) %}
                    {{- '\n' }}
                {%- endif %}
                {%- if tool_call.function %}
                    {%- set tool_call = tool_call.function %}
                {%- endif %}
                {{- '<tool_call>\n{"name": "' }}
                {{- tool_call.name }}
                {{- '", "arguments": ' }}
                {%- if tool_call.arguments is string %}
                    {{- tool_call.arguments }}
                {%- else %}
                    {{- tool_call.arguments | tojson }}
                {%- endif %}
                {{- '}\n</tool_call>' }}
            {%- endfor %}
        {%- endif %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == "tool" %}
        {%- if loop.first or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n<tool_response>\n' }}
        {{- content }}
        {{- '\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
    {%- if enable_thinking is defined and enable_thinking is false %}
        {{- '<think>\n\n</think>\n\n' }}
    {%- endif %}
{%- endif %}
"""
"""Qwen3's chat template with a position-independent ``<think>`` block (see the module docstring)."""

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


@dataclass
class ParsedReasoning(ParsedAssistant):
    """A parsed Qwen3 turn: ``reasoning`` is its ``<think>`` block's text (``None`` when it has none)."""

    reasoning: str | None = None


def qwen_variant(tokenizer: "PreTrainedTokenizerBase") -> str:
    """``qwen3`` when ``<think>`` is one token of the vocabulary, else ``qwen2.5``."""
    return "qwen3" if _special_token_id(tokenizer, THINK_OPEN) is not None else "qwen2.5"


def split_reasoning(text: str) -> tuple[str | None, str]:
    """``(reasoning, rest)`` of a Qwen3 turn split at its first ``</think>`` (``None`` when there is none), trimmed
    of newlines as Qwen3's template trims them."""
    if THINK_CLOSE not in text:
        return None, text
    head, _, rest = text.partition(THINK_CLOSE)
    return head.rstrip("\n").split(THINK_OPEN)[-1].strip("\n"), rest.lstrip("\n")


class QwenChatFormat(TemplateChatFormat):
    """Qwen2.5 / Qwen3 turns and ``<tool_call>`` blocks; the generation is picked from the tokenizer.

    Stops at ``<|im_end|>`` (and ``<|endoftext|>``, which Qwen's generation
    config also stops at). Qwen3 turns keep their ``<think>`` block as
    ``reasoning_content`` on the assistant message.
    """

    name = "qwen"

    def __init__(self, tokenizer: "PreTrainedTokenizerBase", variant: str | None = None) -> None:
        missing = [t for t in ("<|im_start|>", "<|im_end|>") if _special_token_id(tokenizer, t) is None]
        if missing:
            raise ConfigError(f"the qwen chat format needs {' and '.join(missing)} as special tokens of the tokenizer")
        self.variant = variant or qwen_variant(tokenizer)
        if self.variant not in ("qwen2.5", "qwen3"):
            raise ConfigError(f"unknown qwen variant {self.variant!r} (qwen2.5 or qwen3)")
        super().__init__(tokenizer, QWEN3_CHAT_TEMPLATE if self.variant == "qwen3" else QWEN25_CHAT_TEMPLATE)
        end_of_text = _special_token_id(tokenizer, "<|endoftext|>")
        if end_of_text is not None and end_of_text not in self.stop_token_ids:
            self.stop_token_ids = (*self.stop_token_ids, end_of_text)

    def _parse_text(self, text: str) -> ParsedAssistant:
        if self.variant != "qwen3":
            return parse_tool_calls(text)
        reasoning, rest = split_reasoning(text)
        parsed = parse_tool_calls(rest)
        return ParsedReasoning(parsed.content, parsed.tool_calls, parsed.parse_errors, parsed.malformed, reasoning)

    def assistant_message(self, parsed: ParsedAssistant) -> Message:
        msg = super().assistant_message(parsed)
        if isinstance(parsed, ParsedReasoning) and parsed.reasoning is not None:
            msg["reasoning_content"] = parsed.reasoning
        return msg
