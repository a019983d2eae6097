"""The tokenizer's own Jinja chat template as a chat format (for models whose template supports tools).

Incremental token pieces are obtained by prefix difference of rendered
strings; a template that is not prefix-preserving (e.g. one that rewrites
earlier turns) is rejected with :class:`TemplateNotPrefixPreservingError`
instead of silently corrupting the token record.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Sequence

from agentrft.errors import ConfigError
from agentrft.models.chat_format.base import (
    ParsedAssistant,
    TemplateNotPrefixPreservingError,
    _added_ids,
    _TokenizerFormat,
    message_text,
    message_tool_calls,
    normalize_tool_schema,
)
from agentrft.models.chat_format.hermes_tool_calls import parse_tool_calls
from agentrft.types import Message

if TYPE_CHECKING:  # pragma: no cover - typing only
    from transformers import PreTrainedTokenizerBase

__all__ = ["TemplateChatFormat", "template_supports_tools"]


def _template_source(template: Any) -> str | None:
    if isinstance(template, dict):  # named templates (older tokenizers): prefer the tool-use one
        return template.get("tool_use") or template.get("default")
    return template or None


def template_supports_tools(template: Any) -> bool:
    """Whether a Jinja chat template renders tool schemas (it references ``tools``)."""
    src = _template_source(template)
    return bool(src) and re.search(r"\btools\b", src) is not None


def _template_messages(messages: Sequence[Message]) -> list[Message]:
    """Copies shaped the way HF chat templates expect: text content, arguments as objects."""
    out = []
    for m in messages:
        m = dict(m)
        m["content"] = message_text(m.get("content"))
        if m.get("tool_calls"):
            calls = []
            for raw, call in zip(m["tool_calls"], message_tool_calls(m)):
                entry = {"type": "function", "function": {"name": call.name, "arguments": call.arguments}}
                if raw.get("id"):  # never invent ids: a random id would make renderings differ
                    entry["id"] = raw["id"]
                calls.append(entry)
            m["tool_calls"] = calls
        out.append(m)
    return out


class TemplateChatFormat(_TokenizerFormat):
    """The tokenizer's own chat template (``apply_chat_template(tools=...)``).

    Pieces come from prefix differences of rendered strings; at construction
    the template is probed with a tiny conversation to find the generation
    prompt and the end-of-turn token (the first special token after an
    assistant message's content). Tool calls are parsed as Hermes
    ``<tool_call>`` blocks, the convention of the tool-capable templates this
    targets (Qwen2.5/3, Hermes). ``render`` tokenises the whole rendered string.
    """

    name = "template"
    _PROBE = [{"role": "user", "content": "Hi."}]
    _PROBE_REPLY = {"role": "assistant", "content": "Hello."}
    _SENTINEL = "AGENTRFT-PROBE-CONTENT"

    def __init__(self, tokenizer: "PreTrainedTokenizerBase", chat_template: str | None = None) -> None:
        super().__init__(tokenizer)
        template = _template_source(chat_template or getattr(tokenizer, "chat_template", None))
        if not template:
            raise ConfigError("chat_format 'template' needs a tokenizer with a chat template (or use 'hermes')")
        self.chat_template: str = template
        self.supports_tools = template_supports_tools(template)

        without = self._text(self._PROBE, None, False)
        self._generation_prefix_probe = self._text(self._PROBE, None, True)
        if not self._generation_prefix_probe.startswith(without):
            raise TemplateNotPrefixPreservingError("the chat template's generation prompt rewrites the conversation")
        probe = self._text([*self._PROBE, {"role": "assistant", "content": self._SENTINEL}], None, False)
        if not probe.startswith(self._generation_prefix_probe) or self._SENTINEL not in probe:
            raise TemplateNotPrefixPreservingError(
                "the chat template renders an assistant message differently from its generation prompt")
        after = probe[probe.index(self._SENTINEL) + len(self._SENTINEL):]
        after_ids = self._encode(after)
        special = set(tokenizer.all_special_ids) | _added_ids(tokenizer)
        if not after_ids or after_ids[0] not in special:
            raise ConfigError(f"cannot find the end-of-turn token in the chat template (text after an "
                              f"assistant message: {after!r}); use chat_format: hermes")
        self.stop_token_ids = (after_ids[0],)
        self._end_of_turn_text = after
        self._after_end_of_turn = after_ids[1:]
        self._followup_base = [*self._PROBE, self._PROBE_REPLY]
        self._followup_prefix = self._text(self._followup_base, None, False)

    def _text(self, messages: Sequence[Message], tools: Sequence[dict] | None, add_generation_prompt: bool) -> str:
        return self.tokenizer.apply_chat_template(
            _template_messages(messages),
            tools=[normalize_tool_schema(t) for t in tools] if tools else None,
            chat_template=self.chat_template,
            add_generation_prompt=add_generation_prompt,
            tokenize=False,
        )

    def render_text(self, messages: list[Message], tools: list[dict] | None = None,
                    add_generation_prompt: bool = False) -> str:
        if tools and not self.supports_tools:
            raise ConfigError("this chat template does not render tools; use chat_format: hermes")
        return self._text(messages, tools, add_generation_prompt)

    def render(self, messages: list[Message], tools: list[dict] | None = None,
               add_generation_prompt: bool = False) -> list[int]:
        return self._encode(self.render_text(messages, tools, add_generation_prompt))

    def prompt_tokens(self, messages: list[Message], tools: list[dict] | None = None) -> list[int]:
        return self.render(messages, tools, add_generation_prompt=True)

    def followup_tokens(self, messages: list[Message]) -> list[int]:
        full = self._text([*self._followup_base, *messages], None, True)
        if not full.startswith(self._followup_prefix):
            raise TemplateNotPrefixPreservingError(
                "the chat template renders earlier turns differently once these messages follow "
                f"(roles {[m.get('role') for m in messages]}); incremental token records would be wrong — "
                "use chat_format: hermes")
        return self._encode(full[len(self._followup_prefix):])

    def assistant_tokens(self, message: Message) -> list[int]:
        full = self._text([*self._PROBE, message], None, False)
        if not full.startswith(self._generation_prefix_probe) or not full.endswith(self._end_of_turn_text):
            raise TemplateNotPrefixPreservingError("the chat template wraps this assistant message unexpectedly")
        body = full[len(self._generation_prefix_probe): len(full) - len(self._end_of_turn_text)]
        return self._encode(body) + [self.stop_token_ids[0]]

    def _parse_text(self, text: str) -> ParsedAssistant:
        return parse_tool_calls(text)

    def check_prefix_preserving(self, messages: list[Message], tools: list[dict] | None = None) -> None:
        """Raise :class:`TemplateNotPrefixPreservingError` unless every assistant turn of
        ``messages`` starts and ends at a prefix of the full rendering (what incremental records need)."""
        full = self._text(messages, tools, False)
        for i, m in enumerate(messages):
            if m.get("role") != "assistant":
                continue
            for upto, gen, where in ((i, True, "before"), (i + 1, False, "after")):
                if not full.startswith(self._text(messages[:upto], tools, gen)):
                    raise TemplateNotPrefixPreservingError(
                        f"the chat template is not prefix-preserving for this conversation: the rendering {where} "
                        f"assistant message {i} is not a prefix of the whole conversation (the template rewrites "
                        "earlier turns, e.g. drops reasoning); use chat_format: hermes")
