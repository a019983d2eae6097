"""The Hermes chat format: ChatML turns plus Hermes/Qwen-style tool use.

Tool schemas go as JSON lines in ``<tools>`` in the system turn, calls as
``<tool_call>{"name", "arguments"}</tool_call>`` blocks
(:mod:`~agentrft.models.chat_format.hermes_tool_calls`), results as
``<tool_response>`` blocks in one ``tool`` turn. Needed because SmolLM2's own
template is ChatML *without* tool support.

``render`` is defined as the concatenation of independently tokenised pieces
split at special tokens (and after ``assistant\\n``), which is what makes
incremental rendering exact. That equals tokenising the whole string, except
when an assistant body starts with whitespace that BPE would merge with the
``\\n`` before it (``"  hi"``, ``"\\n\\nhi"``): sampled tokens must stay as
sampled, so the boundary after ``assistant\\n`` is kept on purpose.

:data:`HERMES_CHAT_TEMPLATE` is the same format as a Jinja chat template, for
exported model folders.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Sequence

from agentrft.errors import ConfigError
from agentrft.models.chat_format.base import (
    ParsedAssistant,
    _special_token_id,
    _TokenizerFormat,
    message_text,
    message_tool_calls,
    normalize_tool_schema,
)
from agentrft.models.chat_format.hermes_tool_calls import format_tool_call, parse_tool_calls
from agentrft.types import Message

if TYPE_CHECKING:  # pragma: no cover - typing only
    from transformers import PreTrainedTokenizerBase

__all__ = [
    "HERMES_CHAT_TEMPLATE",
    "HERMES_TOOLS_POSTAMBLE",
    "HERMES_TOOLS_PREAMBLE",
    "IM_END",
    "IM_START",
    "HermesChatFormat",
    "hermes_tools_block",
]

IM_START, IM_END = "<|im_start|>", "<|im_end|>"

HERMES_TOOLS_PREAMBLE = (
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n"
)
HERMES_TOOLS_POSTAMBLE = (
    "\n</tools>\n\nFor each function call, return a json object with function name and arguments "
    "within <tool_call></tool_call> XML tags:\n<tool_call>\n"
    '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>'
)


def hermes_tools_block(tools: Sequence[dict]) -> str:
    """The system-prompt section that lists tool schemas (one JSON object per line)."""
    lines = "\n".join(json.dumps(normalize_tool_schema(t), ensure_ascii=False) for t in tools)
    return HERMES_TOOLS_PREAMBLE + lines + HERMES_TOOLS_POSTAMBLE


def _jinja_literal(text: str) -> str:
    """``text`` as a Jinja string literal (JSON escapes are valid Jinja escapes)."""
    return json.dumps(text)


HERMES_CHAT_TEMPLATE = (
    "{%- macro text(content) -%}{%- if content is string -%}{{- content -}}{%- elif content -%}"
    "{%- for part in content -%}{%- if part is string -%}{{- part -}}{%- else -%}{{- part.text -}}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}{%- endmacro -%}"
    "{%- set ns = namespace(start=0) -%}"
    "{%- if tools -%}"
    "{{- '<|im_start|>system\\n' -}}"
    "{%- if messages and messages[0].role in ['system', 'developer'] -%}"
    "{%- set system = text(messages[0].content) -%}"
    "{%- if system -%}{{- system + '\\n\\n' -}}{%- endif -%}"
    "{%- set ns.start = 1 -%}"
    "{%- endif -%}"
    "{{- " + _jinja_literal(HERMES_TOOLS_PREAMBLE) + " -}}"
    "{%- for tool in tools -%}{%- if not loop.first -%}{{- '\\n' -}}{%- endif -%}"
    "{%- if tool.function is defined -%}{{- tool | tojson -}}"
    "{%- else -%}{{- {'type': 'function', 'function': tool} | tojson -}}{%- endif -%}{%- endfor -%}"
    "{{- " + _jinja_literal(HERMES_TOOLS_POSTAMBLE + "<|im_end|>\n") + " -}}"
    "{%- endif -%}"
    "{%- for message in messages[ns.start:] -%}"
    "{%- if message.role == 'tool' -%}"
    "{%- if loop.first or loop.previtem.role != 'tool' -%}{{- '<|im_start|>tool\\n' -}}{%- else -%}{{- '\\n' -}}{%- endif -%}"
    "{{- '<tool_response>\\n' + text(message.content) + '\\n</tool_response>' -}}"
    "{%- if loop.last or loop.nextitem.role != 'tool' -%}{{- '<|im_end|>\\n' -}}{%- endif -%}"
    "{%- elif message.role == 'assistant' -%}"
    "{%- set content = text(message.content) -%}"
    "{{- '<|im_start|>assistant\\n' + content -}}"
    "{%- for call in message.tool_calls or [] -%}"
    "{%- if content or not loop.first -%}{{- '\\n' -}}{%- endif -%}"
    "{%- set fn = call.function if call.function is defined else call -%}"
    "{{- '<tool_call>\\n{\"name\": ' + (fn.name | tojson) + ', \"arguments\": ' -}}"
    "{%- if fn.arguments is string -%}{{- fn.arguments -}}{%- else -%}{{- fn.arguments | tojson -}}{%- endif -%}"
    "{{- '}\\n</tool_call>' -}}"
    "{%- endfor -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- elif message.role in ['system', 'developer', 'user'] -%}"
    "{{- '<|im_start|>' + ('system' if message.role == 'developer' else message.role) + '\\n' "
    "+ text(message.content) + '<|im_end|>\\n' -}}"
    "{%- else -%}{{- raise_exception('unsupported message role ' + message.role) -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)
"""The Hermes format as a Jinja chat template, for exported model folders (``agentrft export``): with it,
``tokenizer.apply_chat_template`` (transformers, vLLM) renders the same text as :meth:`HermesChatFormat.render_text`
(tested), so a model trained in this format is prompted the same way outside agentrft."""



class HermesChatFormat(_TokenizerFormat):
    """ChatML with Hermes-style tool calls, for tokenizers that have ``<|im_start|>``/``<|im_end|>``.

    Exact text (``{}`` = fields)::

        <|im_start|>system\\n{system content}\\n\\n{tools block}<|im_end|>\\n
        <|im_start|>user\\n{content}<|im_end|>\\n
        <|im_start|>assistant\\n{content}\\n<tool_call>\\n{call json}\\n</tool_call>\\n<tool_call>...<|im_end|>\\n
        <|im_start|>tool\\n<tool_response>\\n{result 1}\\n</tool_response>\\n<tool_response>\\n{result 2}\\n</tool_response><|im_end|>\\n
        <|im_start|>assistant\\n

    The system turn exists when the conversation starts with one or tools are
    given (the tools block alone then). ``{content}\\n`` before the calls is
    omitted when the content is empty; consecutive ``tool`` messages form one
    turn. Token pieces are split at every special token and after
    ``assistant\\n`` (where sampling starts), and tokenised independently.
    """

    name = "hermes"

    def __init__(self, tokenizer: "PreTrainedTokenizerBase") -> None:
        super().__init__(tokenizer)
        start, end = _special_token_id(tokenizer, IM_START), _special_token_id(tokenizer, IM_END)
        if start is None or end is None:
            raise ConfigError(
                f"the hermes chat format needs {IM_START} and {IM_END} as special tokens of the tokenizer; "
                "this tokenizer lacks them (use chat_format: template if its chat template supports tools)"
            )
        self.stop_token_ids = (end,)
        self._after_end_of_turn = self._encode("\n")
        self._generation_prompt = [start, *self._encode("assistant\n")]

    # The text of a conversation as pieces; tokens = each piece tokenised on its own.
    def _turn_pieces(self, role: str, text: str) -> list[str]:
        return [IM_START, f"{role}\n{text}", IM_END, "\n"]

    def _assistant_body(self, message: Message) -> str:
        content = message_text(message.get("content"))
        parts = ([content] if content else []) + [format_tool_call(c) for c in message_tool_calls(message)]
        return "\n".join(parts)

    def _pieces(self, messages: Sequence[Message], tools: Sequence[dict] | None, start: bool) -> list[str]:
        pieces: list[str] = []
        msgs = list(messages)
        if start and tools:
            first_is_system = bool(msgs) and msgs[0].get("role") in ("system", "developer")
            system = message_text(msgs[0].get("content")) if first_is_system else ""
            pieces += self._turn_pieces("system", "\n\n".join(p for p in (system, hermes_tools_block(tools)) if p))
            msgs = msgs[1:] if first_is_system else msgs
        i = 0
        while i < len(msgs):
            m = msgs[i]
            role = m.get("role")
            if role == "tool":
                results = []
                while i < len(msgs) and msgs[i].get("role") == "tool":
                    results.append(f"<tool_response>\n{message_text(msgs[i].get('content'))}\n</tool_response>")
                    i += 1
                pieces += self._turn_pieces("tool", "\n".join(results))
                continue
            if role == "assistant":
                pieces += [IM_START, "assistant\n", self._assistant_body(m), IM_END, "\n"]
            elif role in ("system", "developer", "user"):
                pieces += self._turn_pieces("system" if role == "developer" else role, message_text(m.get("content")))
            else:
                raise ValueError(f"unsupported message role {role!r} (system, user, assistant or tool)")
            i += 1
        return pieces

    def render_text(self, messages: list[Message], tools: list[dict] | None = None,
                    add_generation_prompt: bool = False) -> str:
        """The conversation as one string (tokenising it gives :meth:`render`)."""
        pieces = self._pieces(messages, tools, start=True)
        return "".join(pieces) + (IM_START + "assistant\n" if add_generation_prompt else "")

    def render(self, messages: list[Message], tools: list[dict] | None = None,
               add_generation_prompt: bool = False) -> list[int]:
        ids = self._encode_pieces(self._pieces(messages, tools, start=True))
        return ids + (list(self._generation_prompt) if add_generation_prompt else [])

    def prompt_tokens(self, messages: list[Message], tools: list[dict] | None = None) -> list[int]:
        return self.render(messages, tools, add_generation_prompt=True)

    def followup_tokens(self, messages: list[Message]) -> list[int]:
        return self._encode_pieces(self._pieces(messages, None, start=False)) + list(self._generation_prompt)

    def assistant_tokens(self, message: Message) -> list[int]:
        return self._encode(self._assistant_body(message)) + [self.stop_token_ids[0]]

    def _parse_text(self, text: str) -> ParsedAssistant:
        return parse_tool_calls(text)
