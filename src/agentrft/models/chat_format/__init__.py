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
* :class:`QwenChatFormat` (``qwen``), :class:`Llama3ChatFormat` (``llama3``),
  :class:`MistralChatFormat` (``mistral``) — a model family's own template (a
  module constant, through the ``template`` machinery) and tool-call syntax.

Hermes, template and qwen parse tool calls as ``<tool_call>`` JSON blocks
(``hermes_tool_calls``); llama3 and mistral as bare JSON (``json_tool_calls``).
:func:`get_chat_format` picks one by name (``chat_format`` in the config);
``auto`` recognises a family by its special tokens (:func:`detect_chat_format`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from agentrft.errors import ConfigError
from agentrft.models.chat_format.base import (
    ChatFormat,
    ParsedAssistant,
    TemplateNotPrefixPreservingError,
    _special_token_id,
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
from agentrft.models.chat_format.llama3 import LLAMA3_CHAT_TEMPLATE, Llama3ChatFormat
from agentrft.models.chat_format.mistral import (
    MISTRAL_TEKKEN_CHAT_TEMPLATE,
    MISTRAL_V3_CHAT_TEMPLATE,
    MistralChatFormat,
)
from agentrft.models.chat_format.qwen import QWEN3_CHAT_TEMPLATE, QWEN25_CHAT_TEMPLATE, QwenChatFormat
from agentrft.models.chat_format.template import TemplateChatFormat, template_supports_tools

if TYPE_CHECKING:  # pragma: no cover - typing only
    from transformers import PreTrainedTokenizerBase

__all__ = [
    "CHAT_FORMATS",
    "FAMILY_MARKERS",
    "HERMES_CHAT_TEMPLATE",
    "HERMES_TOOLS_POSTAMBLE",
    "HERMES_TOOLS_PREAMBLE",
    "LLAMA3_CHAT_TEMPLATE",
    "MISTRAL_TEKKEN_CHAT_TEMPLATE",
    "MISTRAL_V3_CHAT_TEMPLATE",
    "QWEN25_CHAT_TEMPLATE",
    "QWEN3_CHAT_TEMPLATE",
    "TOOL_CALL_CLOSE",
    "TOOL_CALL_OPEN",
    "ChatFormat",
    "HermesChatFormat",
    "Llama3ChatFormat",
    "MistralChatFormat",
    "ParsedAssistant",
    "QwenChatFormat",
    "TemplateChatFormat",
    "TemplateNotPrefixPreservingError",
    "detect_chat_format",
    "format_tool_call",
    "get_chat_format",
    "hermes_tools_block",
    "message_text",
    "message_tool_calls",
    "normalize_tool_schema",
    "parse_tool_calls",
    "template_supports_tools",
]

CHAT_FORMATS = ("auto", "hermes", "template", "qwen", "llama3", "mistral")

_FORMATS: dict[str, Callable[["PreTrainedTokenizerBase"], ChatFormat]] = {
    "hermes": HermesChatFormat,
    "template": TemplateChatFormat,
    "qwen": QwenChatFormat,
    "llama3": Llama3ChatFormat,
    "mistral": MistralChatFormat,
}

# A family is recognised by tokens that are single special (or added) tokens of its vocabulary, in this order.
FAMILY_MARKERS: dict[str, tuple[str, ...]] = {
    "llama3": ("<|start_header_id|>", "<|eot_id|>"),
    "mistral": ("[INST]", "[TOOL_CALLS]"),
    "qwen": ("<|im_start|>", "<|im_end|>", "<tool_call>"),
}


def detect_chat_format(tokenizer: "PreTrainedTokenizerBase") -> str:
    """The format ``auto`` resolves to: the first family in :data:`FAMILY_MARKERS` whose marker tokens are
    all single tokens of the tokenizer; else ``template`` when its own template renders tools; else ``hermes``."""
    for name, markers in FAMILY_MARKERS.items():
        if all(_special_token_id(tokenizer, m) is not None for m in markers):
            return name
    return "template" if template_supports_tools(getattr(tokenizer, "chat_template", None)) else "hermes"


def get_chat_format(tokenizer: "PreTrainedTokenizerBase", name: str = "auto") -> ChatFormat:
    """A chat format by name (one of :data:`CHAT_FORMATS`); ``auto`` = :func:`detect_chat_format`."""
    if name == "auto":
        name = detect_chat_format(tokenizer)
    if name not in _FORMATS:
        raise ConfigError(f"unknown chat format {name!r}; choose one of {', '.join(CHAT_FORMATS)}")
    return _FORMATS[name](tokenizer)
