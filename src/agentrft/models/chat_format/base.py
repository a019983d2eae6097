"""The chat-format contract and what every format shares.

A chat format turns OpenAI-style conversations into token ids and sampled
tokens back into assistant messages. :class:`ChatFormat` is the protocol the
rollout loop, the server and the CLI program against; :class:`_TokenizerFormat`
holds what formats built on a Hugging Face tokenizer have in common (encoding
text pieces, decoding with special tokens kept, closing a turn, stripping
end-of-turn markers before parsing, building the assistant message). The
message helpers read OpenAI messages the same way for every format: text
content only, tool-call arguments decoded to JSON objects.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, Sequence, runtime_checkable

from agentrft.errors import ConfigError
from agentrft.types import Message, ToolCall

if TYPE_CHECKING:  # pragma: no cover - typing only
    from transformers import PreTrainedTokenizerBase

__all__ = [
    "ChatFormat",
    "ParsedAssistant",
    "TemplateNotPrefixPreservingError",
    "message_text",
    "message_tool_calls",
    "normalize_tool_schema",
]


class TemplateNotPrefixPreservingError(ConfigError):
    """The chat template renders a conversation's prefix differently from the conversation itself.

    Incremental token records would then disagree with what the model sees
    when the full conversation is rendered; use ``chat_format: hermes``.
    """


@dataclass
class ParsedAssistant:
    """An assistant turn parsed from sampled text.

    ``parse_errors[i]`` describes a malformed tool-call block (1-based call
    number first) and ``malformed[i]`` is that block's raw text.
    """

    content: str
    tool_calls: list[ToolCall] = field(default_factory=list)
    parse_errors: list[str] = field(default_factory=list)
    malformed: list[str] = field(default_factory=list)


@runtime_checkable
class ChatFormat(Protocol):
    """What the rollout loop, the server and the CLI need from a chat format (all token ids are plain ints).

    ``isinstance(x, ChatFormat)`` checks that every member below exists.
    """

    name: str
    """The format's name as configured (``hermes``, ``template``): shown to users and saved with exported models."""
    stop_token_ids: tuple[int, ...]
    """End-of-turn id(s): sampling stops after one of these; the first one closes a truncated turn."""

    def prompt_tokens(self, messages: list[Message], tools: list[dict] | None = None) -> list[int]:
        """Initial messages (with tool schemas) plus the assistant generation prompt."""
        ...

    def turn_end_tokens(self, sampled_ids: Sequence[int]) -> list[int]:
        """Tokens that close an assistant turn after ``sampled_ids`` (adds the end-of-turn id if missing)."""
        ...

    def followup_tokens(self, messages: list[Message]) -> list[int]:
        """Messages after a closed assistant turn (tool results, user) plus the generation prompt."""
        ...

    def render(self, messages: list[Message], tools: list[dict] | None = None,
               add_generation_prompt: bool = False) -> list[int]:
        """The whole conversation at once: the conformance reference."""
        ...

    def render_text(self, messages: list[Message], tools: list[dict] | None = None,
                    add_generation_prompt: bool = False) -> str:
        """The whole conversation as one string (decoding :meth:`render` gives it back)."""
        ...

    def assistant_tokens(self, message: Message) -> list[int]:
        """Canonical tokens of an assistant message's body, ending with the end-of-turn id."""
        ...

    def parse_assistant(self, text: str) -> ParsedAssistant:
        """Content and tool calls of decoded sampled text; malformed calls become parse_errors."""
        ...

    def assistant_message(self, parsed: ParsedAssistant) -> Message:
        """OpenAI chat-format assistant message for a parsed turn."""
        ...

    def decode(self, ids: Sequence[int]) -> str:
        """Text of token ids, special tokens kept."""
        ...


# -- message helpers (shared by every format) -----------------------------------------


def message_text(content: Any) -> str:
    """Text of an OpenAI ``content`` field: ``None``, a string, or a list of text parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, str):
                parts.append(part)
            elif isinstance(part, dict) and part.get("type", "text") == "text":
                parts.append(str(part.get("text", "")))
            else:
                raise ValueError(f"unsupported content part {part!r}: only text parts are supported")
        return "".join(parts)
    raise ValueError(f"message content must be a string, a list of text parts or None, got {type(content).__name__}")


def message_tool_calls(message: Message) -> list[ToolCall]:
    """``tool_calls`` of an assistant message as :class:`ToolCall` objects (arguments decoded)."""
    calls = []
    for i, raw in enumerate(message.get("tool_calls") or [], start=1):
        try:
            calls.append(ToolCall.from_openai(raw))
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"assistant tool call {i} is not a valid OpenAI tool call ({e}): {raw!r}") from e
        if not isinstance(calls[-1].arguments, dict):
            raise ValueError(f"assistant tool call {i}: arguments must be a JSON object: {raw!r}")
    return calls


def normalize_tool_schema(tool: dict) -> dict:
    """OpenAI ``{"type": "function", "function": {...}}`` form (a bare function schema is wrapped)."""
    if "function" in tool:
        return tool
    if "name" in tool:
        return {"type": "function", "function": tool}
    raise ValueError(f"not an OpenAI function tool schema: {tool!r}")


def _strip_end_markers(text: str, markers: Sequence[str]) -> str:
    markers = [m for m in markers if m]
    changed = True
    while changed:
        changed = False
        for m in markers:
            if text.endswith(m):
                text, changed = text[: -len(m)], True
    return text


def _special_token_id(tokenizer: "PreTrainedTokenizerBase", token: str) -> int | None:
    ids = tokenizer.encode(token, add_special_tokens=False)
    return ids[0] if len(ids) == 1 and ids[0] in set(tokenizer.all_special_ids) | _added_ids(tokenizer) else None


def _added_ids(tokenizer: "PreTrainedTokenizerBase") -> set[int]:
    return {int(i) for i in getattr(tokenizer, "added_tokens_decoder", {})}


class _TokenizerFormat:
    """What every tokenizer-backed format shares: encoding, decoding, parsing and assistant messages.

    A subclass sets ``name``, ``stop_token_ids`` and ``_after_end_of_turn``,
    renders turns, and parses its tool-call syntax in :meth:`_parse_text`.
    """

    name: str = ""
    stop_token_ids: tuple[int, ...] = ()
    _after_end_of_turn: list[int]  # tokens after the end-of-turn id that close a turn (e.g. "\n")

    def __init__(self, tokenizer: "PreTrainedTokenizerBase") -> None:
        self.tokenizer = tokenizer

    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False)) if text else []

    def _encode_pieces(self, pieces: Sequence[str]) -> list[int]:
        nonempty = [p for p in pieces if p]
        if not nonempty:
            return []
        out: list[int] = []
        for ids in self.tokenizer(nonempty, add_special_tokens=False)["input_ids"]:
            out.extend(ids)
        return out

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=False, clean_up_tokenization_spaces=False)

    def turn_end_tokens(self, sampled_ids: Sequence[int]) -> list[int]:
        if sampled_ids and sampled_ids[-1] in self.stop_token_ids:
            return list(self._after_end_of_turn)
        return [self.stop_token_ids[0], *self._after_end_of_turn]

    def _end_markers(self) -> list[str]:
        ids = list(self.stop_token_ids)
        if self.tokenizer.eos_token_id is not None:
            ids.append(self.tokenizer.eos_token_id)
        return [self.tokenizer.convert_ids_to_tokens(i) for i in ids]

    def parse_assistant(self, text: str) -> ParsedAssistant:
        return self._parse_text(_strip_end_markers(text, self._end_markers()))

    def _parse_text(self, text: str) -> ParsedAssistant:
        """Content and tool calls of sampled text without its end markers, in the family's tool-call syntax."""
        raise NotImplementedError

    def assistant_message(self, parsed: ParsedAssistant) -> Message:
        msg: Message = {"role": "assistant", "content": parsed.content}
        if parsed.tool_calls:
            msg["tool_calls"] = [c.to_openai() for c in parsed.tool_calls]
        return msg

