"""Chat-format conformance: incremental == whole rendering == whole-string tokenisation; parse(render(x)) == x."""

from __future__ import annotations

import json

import pytest

from agentrft.errors import ConfigError
from agentrft.models.chat_format import (
    ChatFormat,
    HermesChatFormat,
    ParsedAssistant,
    TemplateChatFormat,
    TemplateNotPrefixPreservingError,
    get_chat_format,
    parse_tool_calls,
)
from agentrft.types import ToolCall

ADD = {"type": "function", "function": {"name": "add", "description": "Add two integers.",
       "parameters": {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
                      "required": ["a", "b"]}}}
SEARCH = {"type": "function", "function": {"name": "search", "description": "Søg på nettet — 検索",
          "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}}}


def calls_msg(*calls: ToolCall, content: str = "") -> dict:
    return {"role": "assistant", "content": content, "tool_calls": [c.to_openai() for c in calls]}


def tool_msg(call_id: str, content: str) -> dict:
    return {"role": "tool", "tool_call_id": call_id, "content": content}


C1 = ToolCall("add", {"a": 2, "b": 3}, id="c1")
C2 = ToolCall("search", {"q": "日本の首都 🗼", "filters": {"lang": ["ja", "en"], "safe": True, "n": None}}, id="c2")
C3 = ToolCall("add", {"a": -1.5, "b": 1e3}, id="c3")

CONVERSATIONS = {
    "plain": ([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi!"},
               {"role": "assistant", "content": "Hello. How can I help?"}], None),
    "tools_no_system": ([{"role": "user", "content": "2+3?"}, calls_msg(C1), tool_msg("c1", "5"),
                         {"role": "assistant", "content": "5"}], [ADD]),
    "parallel_calls_unicode": ([{"role": "system", "content": "Tu es un agent. Réponds en français."},
                                {"role": "user", "content": "Cherche « Tokyo » et ajoute 😀"},
                                calls_msg(C2, C1, C3, content="Je vais chercher."),
                                tool_msg("c2", '{"results": ["東京"]}'), tool_msg("c1", "5"), tool_msg("c3", "998.5"),
                                {"role": "assistant", "content": "Tokyo → 東京 ✓"}], [ADD, SEARCH]),
    "multi_turn_user_followups": ([{"role": "system", "content": ""}, {"role": "user", "content": ""},
                                   calls_msg(C1), tool_msg("c1", ""), {"role": "assistant", "content": "Done."},
                                   {"role": "user", "content": "  spaced\n\nlines  \t"},
                                   {"role": "assistant", "content": "ok\nline2"}], [ADD]),
    "ends_with_tool_result": ([{"role": "user", "content": "sum"}, calls_msg(C1, content="Calling."),
                               tool_msg("c1", "error: <|endoftext|> is not a number")], [ADD]),
    "content_parts_and_digits": ([{"role": "user", "content": [{"type": "text", "text": "12345 + "},
                                                              {"type": "text", "text": "67890"}]},
                                  {"role": "assistant", "content": "80235"}], None),
}

# A small Qwen-style ChatML template that supports tools (hand-written for tests).
TOOL_TEMPLATE = """
{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0].role == 'system' %}{{- messages[0].content + '\n\n' }}{%- endif %}
    {{- '# Tools\n<tools>' }}
    {%- for t in tools %}{{- '\n' + (t | tojson) }}{%- endfor %}
    {{- '\n</tools><|im_end|>\n' }}
{%- elif messages[0].role == 'system' %}
    {{- '<|im_start|>system\n' + messages[0].content + '<|im_end|>\n' }}
{%- endif %}
{%- for m in messages %}
    {%- if m.role == 'system' and loop.first %}
    {%- elif m.role == 'assistant' %}
        {{- '<|im_start|>assistant\n' + m.content }}
        {%- for tc in m.tool_calls or [] %}
            {%- if m.content or not loop.first %}{{- '\n' }}{%- endif %}
            {{- '<tool_call>\n{"name": "' + tc.function.name + '", "arguments": ' + (tc.function.arguments | tojson) + '}\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\n' }}
    {%- elif m.role == 'tool' %}
        {%- if loop.first or loop.previtem.role != 'tool' %}{{- '<|im_start|>user' }}{%- endif %}
        {{- '\n<tool_response>\n' + m.content + '\n</tool_response>' }}
        {%- if loop.last or loop.nextitem.role != 'tool' %}{{- '<|im_end|>\n' }}{%- endif %}
    {%- else %}
        {{- '<|im_start|>' + m.role + '\n' + m.content + '<|im_end|>\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}{%- endif %}
"""

# Like Qwen3: earlier assistant turns are rewritten (content hidden) -> not prefix-preserving.
REWRITING_TEMPLATE = """{%- for m in messages %}<|im_start|>{{ m.role }}
{% if m.role == 'assistant' and not loop.last %}(hidden){% else %}{{ m.content }}{% endif %}<|im_end|>
{% endfor %}{%- if add_generation_prompt %}<|im_start|>assistant
{% endif %}"""


@pytest.fixture(scope="module")
def hermes(tokenizer):
    return HermesChatFormat(tokenizer)


@pytest.fixture(scope="module")
def templated(tokenizer):
    return TemplateChatFormat(tokenizer, chat_template=TOOL_TEMPLATE)


def incremental(cf, messages: list[dict], tools) -> list[int]:
    """Build the token record the way the rollout loop does, using canonical assistant tokens."""
    first = next(i for i, m in enumerate(messages) if m["role"] == "assistant")
    ids = cf.prompt_tokens(messages[:first], tools)
    i = first
    while i < len(messages):
        sampled = cf.assistant_tokens(messages[i])
        ids += sampled + cf.turn_end_tokens(sampled)
        j = i + 1
        while j < len(messages) and messages[j]["role"] != "assistant":
            j += 1
        if j > i + 1:
            ids += cf.followup_tokens(messages[i + 1 : j])
        i = j
    return ids


def ends_open(messages) -> bool:
    return messages[-1]["role"] != "assistant"


@pytest.mark.parametrize("name", sorted(CONVERSATIONS))
def test_hermes_pieces_tokenise_like_the_whole_string(hermes, tokenizer, name):
    messages, tools = CONVERSATIONS[name]
    for gen in (False, True):
        text = hermes.render_text(messages, tools, add_generation_prompt=gen)
        assert hermes.render(messages, tools, gen) == tokenizer(text, add_special_tokens=False)["input_ids"]
        assert hermes.decode(hermes.render(messages, tools, gen)) == text


@pytest.mark.parametrize("fmt", ["hermes", "templated"])
@pytest.mark.parametrize("name", sorted(CONVERSATIONS))
def test_incremental_equals_render(request, fmt, name):
    cf = request.getfixturevalue(fmt)
    messages, tools = CONVERSATIONS[name]
    assert incremental(cf, messages, tools) == cf.render(messages, tools, add_generation_prompt=ends_open(messages))


def test_sampling_boundary_is_kept_even_where_bpe_would_merge(hermes, tokenizer):
    # "\n" + "  hi" would merge into other tokens if tokenised as one string; the record keeps the
    # boundary where sampling starts, and render() (the reference) agrees with the incremental record.
    conv = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "  hi"}]
    assert incremental(hermes, conv, None) == hermes.render(conv)
    assert hermes.render(conv) != tokenizer(hermes.render_text(conv), add_special_tokens=False)["input_ids"]
    assert hermes.decode(hermes.render(conv)) == hermes.render_text(conv)


def test_hermes_exact_text_of_tool_turns(hermes):
    messages, tools = CONVERSATIONS["tools_no_system"]
    text = hermes.render_text(messages + [{"role": "user", "content": "thanks"}], tools, add_generation_prompt=True)
    assert text.startswith("<|im_start|>system\n# Tools\n\nYou may call one or more functions")
    assert "<tools>\n" + json.dumps(ADD) + "\n</tools>" in text
    assert text.endswith(
        "<|im_start|>user\n2+3?<|im_end|>\n"
        '<|im_start|>assistant\n<tool_call>\n{"name": "add", "arguments": {"a": 2, "b": 3}}\n</tool_call><|im_end|>\n'
        "<|im_start|>tool\n<tool_response>\n5\n</tool_response><|im_end|>\n"
        "<|im_start|>assistant\n5<|im_end|>\n<|im_start|>user\nthanks<|im_end|>\n<|im_start|>assistant\n"
    )
    grouped = hermes.render_text([tool_msg("a", "x"), tool_msg("b", "y")])
    assert grouped == "<|im_start|>tool\n<tool_response>\nx\n</tool_response>\n<tool_response>\ny\n</tool_response><|im_end|>\n"


def test_stop_and_turn_end_tokens(hermes, tokenizer):
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    newline = tokenizer("\n", add_special_tokens=False)["input_ids"]
    assert hermes.stop_token_ids == (im_end,)
    assert hermes.turn_end_tokens([5, 6, im_end]) == newline
    assert hermes.turn_end_tokens([5, 6]) == [im_end, *newline]  # truncated turn gets closed
    assert hermes.turn_end_tokens([]) == [im_end, *newline]
    assert hermes.followup_tokens([]) == tokenizer("<|im_start|>assistant\n", add_special_tokens=False)["input_ids"]
    assert hermes.assistant_tokens({"role": "assistant", "content": "hi"})[-1] == im_end


@pytest.mark.parametrize("fmt", ["hermes", "templated"])
@pytest.mark.parametrize("calls,content", [
    ([C1], ""),
    ([C2, C1, C3], "Je vais chercher 😀 d'abord."),
    ([ToolCall("noop", {})], "x"),
    ([ToolCall("deep", {"a": {"b": {"c": [1, {"d": "é\n\"quoted\"\t"}]}}, "e": []})], ""),
])
def test_parse_of_render_round_trips(request, fmt, calls, content):
    cf = request.getfixturevalue(fmt)
    sampled = cf.assistant_tokens(calls_msg(*calls, content=content))
    parsed = cf.parse_assistant(cf.decode(sampled))  # decoded text still ends with <|im_end|>
    assert parsed.parse_errors == []
    assert parsed.content == content
    assert [(c.name, c.arguments) for c in parsed.tool_calls] == [(c.name, c.arguments) for c in calls]
    # the message built from the parse renders back to exactly the sampled tokens
    assert cf.assistant_tokens(cf.assistant_message(parsed)) == sampled


def test_plain_answer_parses_to_content_only(hermes):
    parsed = hermes.parse_assistant(hermes.decode(hermes.assistant_tokens({"role": "assistant", "content": " 5 "})))
    assert parsed == ParsedAssistant(content="5")
    assert hermes.assistant_message(parsed) == {"role": "assistant", "content": "5"}


def test_malformed_calls_become_errors_and_good_calls_survive():
    text = (
        "Let me try.\n"
        '<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_call>\n'
        '<tool_call>\n{"name": "add", "arguments": {"a": 1 "b": 2}}\n</tool_call>\n'
        '<tool_call>\n{"arguments": {}}\n</tool_call>\n'
        '<tool_call>\n{"name": "add", "arguments": [1, 2]}\n</tool_call>\n'
        '<tool_call>\n{"name": "search", "arguments": "{\\"q\\": \\"x\\"}"}\n</tool_call>\n'
        '<tool_call>\n["add"]\n</tool_call>\n'
        '<tool_call>\n{"name": "add", "arguments": {"a": 3'
    )
    parsed = parse_tool_calls(text)
    assert [(c.name, c.arguments) for c in parsed.tool_calls] == [("add", {"a": 1, "b": 2}), ("search", {"q": "x"})]
    assert parsed.content == "Let me try."
    assert len(parsed.parse_errors) == len(parsed.malformed) == 5
    e2, e3, e4, e6, e7 = parsed.parse_errors
    assert e2.startswith("tool call 2: invalid JSON: Expecting ',' delimiter at char ")
    assert e3 == 'tool call 3: missing "name" (a non-empty string)'
    assert e4 == "tool call 4: arguments of 'add' must be a JSON object, got an array"
    assert e6.startswith("tool call 6: expected a JSON object")
    assert e7 == "tool call 7: unclosed <tool_call> tag (expected </tool_call>)"
    assert parsed.malformed[0].startswith("<tool_call>") and '"a": 1 "b"' in parsed.malformed[0]
    assert parsed.malformed[-1].endswith('"a": 3')


def test_unclosed_call_followed_by_a_good_one():
    parsed = parse_tool_calls('<tool_call>{"name": "a"\n<tool_call>{"name": "b", "arguments": {"x": 1}}</tool_call>')
    assert [c.name for c in parsed.tool_calls] == ["b"]
    assert parsed.parse_errors == ["tool call 1: unclosed <tool_call> tag (expected </tool_call>)"]


def test_assistant_message_is_openai_shaped(hermes):
    parsed = parse_tool_calls('ok <tool_call>{"name": "search", "arguments": {"q": "東京"}}</tool_call>')
    msg = hermes.assistant_message(parsed)
    assert msg["role"] == "assistant" and msg["content"] == "ok"
    (tc,) = msg["tool_calls"]
    assert tc["type"] == "function" and tc["id"] == parsed.tool_calls[0].id
    assert json.loads(tc["function"]["arguments"]) == {"q": "東京"}
    assert ToolCall.from_openai(tc).arguments == {"q": "東京"}


def test_unknown_role_is_rejected(hermes):
    with pytest.raises(ValueError, match="unsupported message role 'robot'"):
        hermes.render([{"role": "robot", "content": "beep"}])


def test_template_format_probes_stop_token_and_renders_tools(templated, tokenizer):
    assert isinstance(templated, ChatFormat)
    assert templated.stop_token_ids == (tokenizer.convert_tokens_to_ids("<|im_end|>"),)
    messages, tools = CONVERSATIONS["parallel_calls_unicode"]
    text = templated.render_text(messages, tools)
    assert text.startswith("<|im_start|>system\nTu es un agent.")
    assert "# Tools\n<tools>\n" + json.dumps(ADD) + "\n" + json.dumps(SEARCH, ensure_ascii=False) + "\n</tools>" in text
    assert "Je vais chercher.\n<tool_call>\n" in text
    assert "<|im_start|>user\n<tool_response>\n{\"results\": [\"東京\"]}\n</tool_response>\n<tool_response>\n5\n" in text
    templated.check_prefix_preserving(messages, tools)  # does not raise


def test_get_chat_format_choices(tokenizer):
    assert isinstance(get_chat_format(tokenizer), HermesChatFormat)  # SmolLM2's template has no tools
    assert isinstance(get_chat_format(tokenizer, "hermes"), HermesChatFormat)
    with pytest.raises(ConfigError, match="unknown chat format 'chatml'.*auto, hermes, template"):
        get_chat_format(tokenizer, "chatml")
    with pytest.raises(ConfigError, match="does not render tools"):
        get_chat_format(tokenizer, "template").prompt_tokens([{"role": "user", "content": "x"}], [ADD])


def test_auto_picks_template_when_it_supports_tools():
    from agentrft.models.loading import load_tokenizer

    tok = load_tokenizer("smollm2-135m")  # own copy: the session tokenizer must not be mutated
    tok.chat_template = TOOL_TEMPLATE
    cf = get_chat_format(tok)
    assert isinstance(cf, TemplateChatFormat)
    assert cf.prompt_tokens([{"role": "user", "content": "x"}], [ADD]) == TemplateChatFormat(
        tok, chat_template=TOOL_TEMPLATE).render([{"role": "user", "content": "x"}], [ADD], True)


def test_rewriting_template_is_rejected(tokenizer):
    cf = TemplateChatFormat(tokenizer, chat_template=REWRITING_TEMPLATE)
    conv = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}]
    with pytest.raises(TemplateNotPrefixPreservingError, match="assistant message 1"):
        cf.check_prefix_preserving(conv)
    with pytest.raises(TemplateNotPrefixPreservingError, match="use chat_format: hermes"):
        cf.followup_tokens([{"role": "user", "content": "c"}])


def test_both_formats_satisfy_the_chat_format_protocol(hermes, templated):
    assert {"name", "stop_token_ids"} <= set(ChatFormat.__annotations__)
    for fmt, name in ((hermes, "hermes"), (templated, "template")):
        assert isinstance(fmt, ChatFormat)
        assert fmt.name == name and fmt.stop_token_ids
    nameless = type("Nameless", (), {k: getattr(hermes, k) for k in dir(ChatFormat) if not k.startswith("_")})()
    assert not isinstance(nameless, ChatFormat)
