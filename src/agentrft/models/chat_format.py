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

Two formats implement the :class:`ChatFormat` protocol:

* :class:`HermesChatFormat` — ChatML turns plus Hermes/Qwen-style tool use:
  tool schemas as JSON lines in ``<tools>`` in the system turn, calls as
  ``<tool_call>{"name", "arguments"}</tool_call>`` blocks, results as
  ``<tool_response>`` blocks in one ``tool`` turn. Needed because SmolLM2's own
  template is ChatML *without* tool support. ``render`` is defined as the
  concatenation of independently tokenised pieces split at special tokens
  (and after ``assistant\\n``), which is what makes incremental rendering exact.
  That equals tokenising the whole string, except when an assistant body
  starts with whitespace that BPE would merge with the ``\\n`` before it
  (``"  hi"``, ``"\\n\\nhi"``): sampled tokens must stay as sampled, so the
  boundary after ``assistant\\n`` is kept on purpose.
* :class:`TemplateChatFormat` — the tokenizer's own Jinja chat template (for
  models whose template supports tools). Incremental pieces are obtained by
  prefix difference of rendered strings; a template that is not
  prefix-preserving (e.g. one that rewrites earlier turns) is rejected with
  :class:`TemplateNotPrefixPreservingError` instead of silently corrupting the
  token record.

Parsing is forgiving by design: a malformed ``<tool_call>`` block never raises;
it becomes one entry of ``ParsedAssistant.parse_errors`` (shown to the model as
a tool error by the rollout loop) while the well-formed calls around it are
still executed.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, Sequence, runtime_checkable

from agentrft.errors import ConfigError
from agentrft.types import Message, ToolCall

if TYPE_CHECKING:  # pragma: no cover - typing only
    from transformers import PreTrainedTokenizerBase

__all__ = [
    "HERMES_CHAT_TEMPLATE",
    "ChatFormat",
    "HermesChatFormat",
    "ParsedAssistant",
    "TemplateChatFormat",
    "TemplateNotPrefixPreservingError",
    "format_tool_call",
    "get_chat_format",
    "parse_tool_calls",
    "template_supports_tools",
]

TOOL_CALL_OPEN, TOOL_CALL_CLOSE = "<tool_call>", "</tool_call>"
IM_START, IM_END = "<|im_start|>", "<|im_end|>"


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
    """What the rollout loop needs from a chat format (all token ids are plain ints)."""

    stop_token_ids: tuple[int, ...]  # end-of-turn id(s): sampling stops after one of these

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


# -- message helpers (shared by both formats) ----------------------------------------


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


def format_tool_call(call: ToolCall) -> str:
    """The canonical Hermes text of one call (what :func:`parse_tool_calls` reads back)."""
    payload = json.dumps({"name": call.name, "arguments": call.arguments}, ensure_ascii=False)
    return f"{TOOL_CALL_OPEN}\n{payload}\n{TOOL_CALL_CLOSE}"


_JSON_TYPE = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", int: "a number",
              float: "a number", type(None): "null"}


def _json_type(value: Any) -> str:
    return _JSON_TYPE.get(type(value), type(value).__name__)


def _parse_call_body(body: str) -> ToolCall | str:
    """A :class:`ToolCall`, or the reason the block is malformed."""
    text = body.strip()
    if not text:
        return "empty <tool_call> block"
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        return f"invalid JSON: {e.msg} at char {e.pos}"
    if not isinstance(obj, dict):
        return f'expected a JSON object {{"name": ..., "arguments": {{...}}}}, got {_json_type(obj)}'
    name = obj.get("name")
    if not isinstance(name, str) or not name.strip():
        return 'missing "name" (a non-empty string)' if name is None else f'"name" must be a non-empty string, got {_json_type(name)}'
    args = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(args, str):  # some models emit the OpenAI wire form: arguments as a JSON string
        try:
            args = json.loads(args) if args.strip() else {}
        except json.JSONDecodeError as e:
            return f"arguments of {name!r} is a string but not valid JSON: {e.msg} at char {e.pos}"
    if args is None:
        args = {}
    if not isinstance(args, dict):
        return f"arguments of {name!r} must be a JSON object, got {_json_type(args)}"
    return ToolCall(name=name.strip(), arguments=args)


def parse_tool_calls(text: str) -> ParsedAssistant:
    """Split assistant text into content and ``<tool_call>`` blocks (in order, = parallel calls).

    Never raises: each malformed block (bad JSON, missing name, non-object
    arguments, unclosed tag) yields one ``parse_errors`` entry
    ``"tool call N: <reason>"`` where N counts all blocks from 1.
    Content is the text outside the blocks, stripped.
    """
    outside: list[str] = []
    calls: list[ToolCall] = []
    errors: list[str] = []
    malformed: list[str] = []
    pos, n = 0, 0
    while True:
        start = text.find(TOOL_CALL_OPEN, pos)
        if start < 0:
            outside.append(text[pos:])
            break
        outside.append(text[pos:start])
        n += 1
        body_start = start + len(TOOL_CALL_OPEN)
        close = text.find(TOOL_CALL_CLOSE, body_start)
        reopen = text.find(TOOL_CALL_OPEN, body_start)
        if close < 0 or 0 <= reopen < close:
            end = reopen if reopen >= 0 else len(text)
            errors.append(f"tool call {n}: unclosed {TOOL_CALL_OPEN} tag (expected {TOOL_CALL_CLOSE})")
            malformed.append(text[start:end])
            pos = end
            continue
        result = _parse_call_body(text[body_start:close])
        pos = close + len(TOOL_CALL_CLOSE)
        if isinstance(result, ToolCall):
            calls.append(result)
        else:
            errors.append(f"tool call {n}: {result}")
            malformed.append(text[start:pos])
    content = "\n".join(s.strip() for s in outside if s.strip())
    return ParsedAssistant(content=content, tool_calls=calls, parse_errors=errors, malformed=malformed)


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
    """What both formats share: encoding, decoding, parsing and assistant messages."""

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
        return parse_tool_calls(_strip_end_markers(text, self._end_markers()))

    def assistant_message(self, parsed: ParsedAssistant) -> Message:
        msg: Message = {"role": "assistant", "content": parsed.content}
        if parsed.tool_calls:
            msg["tool_calls"] = [c.to_openai() for c in parsed.tool_calls]
        return msg


# -- Hermes (ChatML + <tool_call>) -------------------------------------------------------

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


# -- the tokenizer's own template ---------------------------------------------------------


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


# -- choosing -----------------------------------------------------------------------------

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
