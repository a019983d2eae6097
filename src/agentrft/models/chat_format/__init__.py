"""Chat formats: OpenAI-style conversations <-> token ids, and tool calls <-> text.

Token fidelity ("tokens in, tokens out", see docs/architecture.md): a rollout
never re-tokenises a conversation. It appends token pieces turn by turn:

    prompt_tokens(first messages, tools)          # ... <|im_start|>assistant\\n
    + sampled ids                                 # exactly as the policy produced them
    + turn_end_tokens(sampled ids)                # "\\n" (or "<|im_end|>\\n" if truncated)
    + followup_tokens(tool / user messages)       # ... <|im_start|>assistant\\n
    + ...

and for canonical assistant turns (``assistant_tokens``) this equals
``render(all messages)``. The conformance tests check that identity, and that
``render`` equals tokenising the whole conversation string at once, so that a
model trained on our records sees what it would see at inference.

Formats, one module each, all implementing :class:`ChatFormat` (``base``):

* :class:`HermesChatFormat` (``hermes``) — ChatML turns plus Hermes/Qwen-style
  tool use, for models whose own template has no tools (SmolLM2).
* :class:`TemplateChatFormat` (``template``) — the tokenizer's own Jinja chat
  template, for models whose template supports tools.

Both parse tool calls as ``<tool_call>`` JSON blocks (``hermes_tool_calls``).
:func:`get_chat_format` picks one by name (``chat_format`` in the config).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from agentrft.errors import ConfigError
from agentrft.models.chat_format.base import (
    ChatFormat,
    ParsedAssistant,
    TemplateNotPrefixPreservingError,
    message_text,
    message_tool_calls,
    normalize_tool_schema,
)
from agentrft.models.chat_format.hermes import (
    HERMES_CHAT_TEMPLATE,
    HERMES_TOOLS_POSTAMBLE,
    HERMES_TOOLS_PREAMBLE,
    HermesChatFormat,
    hermes_tools_block,
)
from agentrft.models.chat_format.hermes_tool_calls import (
    TOOL_CALL_CLOSE,
    TOOL_CALL_OPEN,
    format_tool_call,
    parse_tool_calls,
)
from agentrft.models.chat_format.template import TemplateChatFormat, template_supports_tools

if TYPE_CHECKING:  # pragma: no cover - typing only
    from transformers import PreTrainedTokenizerBase

__all__ = [
    "CHAT_FORMATS",
    "HERMES_CHAT_TEMPLATE",
    "HERMES_TOOLS_POSTAMBLE",
    "HERMES_TOOLS_PREAMBLE",
    "TOOL_CALL_CLOSE",
    "TOOL_CALL_OPEN",
    "ChatFormat",
    "HermesChatFormat",
    "ParsedAssistant",
    "TemplateChatFormat",
    "TemplateNotPrefixPreservingError",
    "format_tool_call",
    "get_chat_format",
    "hermes_tools_block",
    "message_text",
    "message_tool_calls",
    "normalize_tool_schema",
    "parse_tool_calls",
    "template_supports_tools",
]

CHAT_FORMATS = ("auto", "hermes", "template")


def get_chat_format(tokenizer: "PreTrainedTokenizerBase", name: str = "auto") -> HermesChatFormat | TemplateChatFormat:
    """``hermes`` | ``template`` | ``auto`` (the model's template if it supports tools, else hermes)."""
    if name == "auto":
        name = "template" if template_supports_tools(getattr(tokenizer, "chat_template", None)) else "hermes"
    if name == "hermes":
        return HermesChatFormat(tokenizer)
    if name == "template":
        return TemplateChatFormat(tokenizer)
    raise ConfigError(f"unknown chat format {name!r}; choose one of {', '.join(CHAT_FORMATS)}")
