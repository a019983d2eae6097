"""Models: loading (bundled SmolLM2, local HF folders, tiny test models) and chat formats.

Chat formats turn OpenAI-style conversations into token ids and parse sampled
tokens back into assistant messages with tool calls; loaders give
``(model, tokenizer)`` pairs. Importing this package is cheap: torch and
transformers are only imported when a model or tokenizer is actually loaded.
"""

from agentrft.models.chat_format import (
    ChatFormat,
    HermesChatFormat,
    ParsedAssistant,
    TemplateChatFormat,
    get_chat_format,
    parse_tool_calls,
)
from agentrft.models.loading import (
    available_models,
    load_model,
    load_tokenizer,
    make_tiny_model,
    resolve_model,
    save_tiny_model,
)

__all__ = [
    "ChatFormat",
    "HermesChatFormat",
    "ParsedAssistant",
    "TemplateChatFormat",
    "available_models",
    "get_chat_format",
    "load_model",
    "load_tokenizer",
    "make_tiny_model",
    "parse_tool_calls",
    "resolve_model",
    "save_tiny_model",
]
