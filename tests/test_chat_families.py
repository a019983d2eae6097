"""Chat-format conformance for each model family (Qwen2.5, Qwen3, Llama 3.x, Mistral v3 and Tekken).

The same properties as test_chat_format.py, on tiny in-memory tokenizers that carry each family's special
tokens and pre-tokenisation (family_tokenizers.py): incremental pieces == whole rendering == tokenising the
whole string; parse(render(x)) == x; malformed calls are typed errors; a rollout through run_episodes
with a tiny model on each tokenizer keeps a parallel call to two schema-only tools as its output.
"""

from __future__ import annotations

import functools
import json

import pytest
from family_tokenizers import FAMILIES, family_tokenizer
from test_chat_format import ADD, C1, C2, C3, CONVERSATIONS, calls_msg, ends_open, incremental, tool_msg

from agentrft.errors import ConfigError
from agentrft.models.chat_format import (
    ChatFormat,
    Llama3ChatFormat,
    MistralChatFormat,
    QwenChatFormat,
    detect_chat_format,
    get_chat_format,
)
from agentrft.models.chat_format.qwen import ParsedReasoning
from agentrft.rollout.episode import run_episodes
from agentrft.rollout.sampler import ScriptedSampler
from agentrft.types import StopReason, ToolCall, ToolErrorKind

# family -> (format name, class, variant)
EXPECTED = {
    "qwen2.5": ("qwen", QwenChatFormat, "qwen2.5"),
    "qwen3": ("qwen", QwenChatFormat, "qwen3"),
    "llama3": ("llama3", Llama3ChatFormat, None),
    "mistral-v3": ("mistral", MistralChatFormat, "v3"),
    "mistral-tekken": ("mistral", MistralChatFormat, "tekken"),
}
DROPS_TEXT_WITH_CALLS = {"llama3", "mistral-v3", "mistral-tekken"}  # as their published templates do


@functools.cache
def fmt(family: str) -> ChatFormat:
    return get_chat_format(family_tokenizer(family), EXPECTED[family][0])


def mistral_ids(*calls: ToolCall) -> list[ToolCall]:
    """The calls with ids as Mistral models write them (9 alphanumerics: "c1" -> "0000000c1"), so ids round-trip."""
    return [ToolCall(c.name, c.arguments, id=c.id.replace("_", "").rjust(9, "0")[-9:]) for c in calls]


@pytest.mark.parametrize("family", FAMILIES)
def test_auto_detects_the_family(family):
    name, cls, variant = EXPECTED[family]
    tok = family_tokenizer(family)
    assert detect_chat_format(tok) == name
    cf = get_chat_format(tok)
    assert type(cf) is cls and cf.name == name and isinstance(cf, ChatFormat)
    assert getattr(cf, "variant", None) == variant
    assert tok.convert_ids_to_tokens(cf.stop_token_ids[0]) == {"qwen": "<|im_end|>", "llama3": "<|eot_id|>",
                                                              "mistral": "</s>"}[name]


def test_smollm2_still_resolves_to_hermes(tokenizer):
    assert detect_chat_format(tokenizer) == "hermes"
    assert get_chat_format(tokenizer).name == "hermes"
    for name in ("llama3", "mistral"):  # qwen only needs ChatML's tokens, which SmolLM2 has
        with pytest.raises(ConfigError, match=f"the {name} chat format needs"):
            get_chat_format(tokenizer, name)


@pytest.mark.parametrize("conversation", sorted(CONVERSATIONS))
@pytest.mark.parametrize("family", FAMILIES)
def test_incremental_equals_render_equals_whole_string(family, conversation):
    cf = fmt(family)
    messages, tools = CONVERSATIONS[conversation]
    gen = ends_open(messages)
    rendered = cf.render(messages, tools, add_generation_prompt=gen)
    text = cf.render_text(messages, tools, add_generation_prompt=gen)
    assert incremental(cf, messages, tools) == rendered
    assert rendered == cf.tokenizer(text, add_special_tokens=False)["input_ids"]
    assert cf.decode(rendered) == text
    cf.check_prefix_preserving(messages, tools)


ROUND_TRIPS = {
    "single": ([C1], ""),
    "parallel": ([C2, C1, C3], ""),
    "no_arguments": ([ToolCall("noop", {})], ""),
    "deep": ([ToolCall("deep", {"a": {"b": {"c": [1, {"d": "é\n\"quoted\"\t"}]}}, "e": []})], ""),
    "text_answer": ([], "Tokyo → 東京 ✓ 80235"),
    "multiline_answer": ([], "ok\nline2"),
}


@pytest.mark.parametrize("case", sorted(ROUND_TRIPS))
@pytest.mark.parametrize("family", FAMILIES)
def test_parse_of_render_round_trips(family, case):
    cf = fmt(family)
    calls, content = ROUND_TRIPS[case]
    calls = mistral_ids(*calls)
    sampled = cf.assistant_tokens(calls_msg(*calls, content=content))
    assert sampled[-1] == cf.stop_token_ids[0]
    parsed = cf.parse_assistant(cf.decode(sampled))  # decoded text still ends with the end-of-turn token
    assert parsed.parse_errors == [] and parsed.malformed == []
    assert parsed.content == content
    assert [(c.name, c.arguments) for c in parsed.tool_calls] == [(c.name, c.arguments) for c in calls]
    if family.startswith("mistral"):
        assert [c.id for c in parsed.tool_calls] == [c.id for c in calls]
    assert cf.assistant_tokens(cf.assistant_message(parsed)) == sampled


@pytest.mark.parametrize("family", FAMILIES)
def test_text_next_to_calls(family):
    cf = fmt(family)
    msg = calls_msg(*mistral_ids(C1), content="Let me add.")
    text = cf.decode(cf.assistant_tokens(msg))
    parsed = cf.parse_assistant(text)
    assert [c.name for c in parsed.tool_calls] == ["add"]
    assert ("Let me add." in text) == (family not in DROPS_TEXT_WITH_CALLS)
    assert parsed.content == ("" if family in DROPS_TEXT_WITH_CALLS else "Let me add.")


def test_qwen_exact_text():
    conv = [{"role": "user", "content": "2+3?"}, calls_msg(C1, C3), tool_msg("c1", "5"), tool_msg("c3", "998.5"),
            {"role": "assistant", "content": "5"}]
    tail = ('<|im_start|>user\n2+3?<|im_end|>\n<|im_start|>assistant\n<tool_call>\n{"name": "add", "arguments": '
            '{"a": 2, "b": 3}}\n</tool_call>\n<tool_call>\n{"name": "add", "arguments": {"a": -1.5, "b": 1000.0}}\n'
            "</tool_call><|im_end|>\n<|im_start|>user\n<tool_response>\n5\n</tool_response>\n<tool_response>\n"
            "998.5\n</tool_response><|im_end|>\n<|im_start|>assistant\n5<|im_end|>\n")
    q25, q3 = fmt("qwen2.5").render_text(conv, [ADD]), fmt("qwen3").render_text(conv, [ADD])
    assert q25.startswith("<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant."
                          "\n\n# Tools\n\nYou may call one or more functions")
    assert q3.startswith("<|im_start|>system\n# Tools\n\nYou may call one or more functions")
    assert "<tools>\n" + json.dumps(ADD) + "\n</tools>" in q25 and q25.endswith(tail) and q3.endswith(tail)


def test_llama3_exact_text():
    conv = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": " 2+3? "}, calls_msg(C1, C3),
            tool_msg("c1", "5"), tool_msg("c3", '{"sum": 998.5}'), {"role": "assistant", "content": "5"}]
    text = fmt("llama3").render_text(conv, [ADD], add_generation_prompt=False)
    assert text.startswith("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nEnvironment: ipython\n"
                           "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\nBe brief.<|eot_id|>"
                           "<|start_header_id|>user<|end_header_id|>\n\nGiven the following functions")
    assert json.dumps(ADD, indent=4) + "\n\n2+3?<|eot_id|>" in text
    assert text.endswith(
        '<|start_header_id|>assistant<|end_header_id|>\n\n{"name": "add", "parameters": {"a": 2, "b": 3}}; '
        '{"name": "add", "parameters": {"a": -1.5, "b": 1000.0}}<|eot_id|>'
        '<|start_header_id|>ipython<|end_header_id|>\n\n"5"<|eot_id|>'
        '<|start_header_id|>ipython<|end_header_id|>\n\n"{\\"sum\\": 998.5}"<|eot_id|>'
        "<|start_header_id|>assistant<|end_header_id|>\n\n5<|eot_id|>")


@pytest.mark.parametrize("family,space", [("mistral-tekken", ""), ("mistral-v3", " ")])
def test_mistral_exact_text(family, space):
    a, b = mistral_ids(C1, C2)
    conv = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+3?"}, calls_msg(a, b),
            tool_msg(a.id, "5"), tool_msg(b.id, "Tokyo"), {"role": "assistant", "content": "5"},
            {"role": "user", "content": "thanks"}, {"role": "assistant", "content": "ok"}]
    text = fmt(family).render_text(conv, [ADD])
    s = space
    assert text == (
        f"<s>[AVAILABLE_TOOLS]{s}[{json.dumps(ADD)}][/AVAILABLE_TOOLS][INST]{s}Be brief.\n\n2+3?[/INST]"
        f'[TOOL_CALLS]{s}[{{"name": "add", "arguments": {{"a": 2, "b": 3}}, "id": "{a.id}"}}, '
        f'{{"name": "search", "arguments": {json.dumps(b.arguments, ensure_ascii=False)}, "id": "{b.id}"}}]</s>'
        f'[TOOL_RESULTS]{s}{{"content": 5, "call_id": "{a.id}"}}[/TOOL_RESULTS]'
        f'[TOOL_RESULTS]{s}{{"content": "Tokyo", "call_id": "{b.id}"}}[/TOOL_RESULTS]'
        f"{s}5</s>[INST]{s}thanks[/INST]{s}ok</s>")
    assert a.id == "0000000c1" and len(b.id) == 9


def test_mistral_ids_that_are_not_nine_alphanumerics_are_mapped_consistently():
    cf = fmt("mistral-tekken")
    text = cf.render_text([{"role": "user", "content": "x"}, calls_msg(C1), tool_msg("c1", "5")], [ADD])
    (call_id,) = {part.split('"')[0] for part in text.split('"id": "')[1:]}
    assert len(call_id) == 9 and call_id.isalnum() and f'"call_id": "{call_id}"' in text


def test_qwen3_thinking_turns_keep_their_think_block():
    cf = fmt("qwen3")
    think_call = ('<think>\nI should add.\n</think>\n\n<tool_call>\n{"name": "add", "arguments": {"a": 2, "b": 3}}'
                  "\n</tool_call><|im_end|>")
    empty_think = "<think>\n\n</think>\n\n5<|im_end|>"
    first, second = cf.parse_assistant(think_call), cf.parse_assistant(empty_think)
    assert isinstance(first, ParsedReasoning) and first.reasoning == "I should add." and first.content == ""
    assert second.reasoning == "" and second.content == "5" and second.tool_calls == []
    no_think = cf.parse_assistant("5<|im_end|>")
    assert no_think.reasoning is None and "reasoning_content" not in cf.assistant_message(no_think)
    turns = [cf.assistant_message(first), cf.assistant_message(second)]
    assert turns[0]["reasoning_content"] == "I should add."
    for parsed_text, msg in zip((think_call, empty_think), turns):  # canonical tokens are the sampled text
        assert cf.assistant_tokens(msg) == cf.tokenizer(parsed_text, add_special_tokens=False)["input_ids"]
    # Earlier turns keep their reasoning after a new user query (the published template would drop it).
    call_id = turns[0]["tool_calls"][0]["id"]
    conv = [{"role": "user", "content": "2+3?"}, turns[0], tool_msg(call_id, "5"), turns[1],
            {"role": "user", "content": "and 3+4?"}, {"role": "assistant", "content": "7"}]
    assert incremental(cf, conv, [ADD]) == cf.render(conv, [ADD])
    assert cf.render_text(conv, [ADD]).count("<think>") == 2


def test_qwen_malformed_calls_are_errors():
    parsed = fmt("qwen3").parse_assistant(
        '<tool_call>\n{"name": "add", "arguments": {"a": 1 "b": 2}}\n</tool_call>\n<tool_call>\n{"arguments": {}}\n'
        '</tool_call>\n<tool_call>\n{"name": "add", "arguments": [1]}\n</tool_call>\n'
        '<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_call><|im_end|>')
    assert [c.arguments for c in parsed.tool_calls] == [{"a": 1, "b": 2}]
    assert parsed.parse_errors[0].startswith("tool call 1: invalid JSON: Expecting ',' delimiter")
    assert parsed.parse_errors[1:] == ['tool call 2: missing "name" (a non-empty string)',
                                       "tool call 3: arguments of 'add' must be a JSON object, got an array"]


def test_llama3_parsing():
    cf = fmt("llama3")
    parsed = cf.parse_assistant('<|python_tag|>{"name": "add", "parameters": {"a": 1, "b": 2}};'
                                '\n{"name": "search", "arguments": {"q": "x"}}\n{"name": "noop"}<|eom_id|>')
    assert [(c.name, c.arguments) for c in parsed.tool_calls] == [("add", {"a": 1, "b": 2}), ("search", {"q": "x"}),
                                                                  ("noop", {})]
    assert parsed.parse_errors == [] and parsed.content == ""
    json_answer = cf.parse_assistant('{"answer": 5}<|eot_id|>')  # names no tool: an answer, not a call
    assert json_answer.content == '{"answer": 5}' and not json_answer.tool_calls and not json_answer.parse_errors
    assert cf.parse_assistant("I think {x} is 5.<|eot_id|>").content == "I think {x} is 5."
    trailing = cf.parse_assistant('{"name": "add", "parameters": {"a": 1, "b": 2}}\nThat adds them.')
    assert [c.name for c in trailing.tool_calls] == ["add"] and trailing.content == "That adds them."


def test_llama3_malformed_calls_are_errors():
    cf = fmt("llama3")
    parsed = cf.parse_assistant(
        '{"name": "add", "parameters": {"a": 1 "b": 2}}; {"parameters": {}}\n{"name": "add", "parameters": [1]}; '
        '{"name": "add", "parameters": {"a": 1, "b": 2}}; {"name": "add", "parameters": {"a": 3<|eot_id|>')
    assert [c.arguments for c in parsed.tool_calls] == [{"a": 1, "b": 2}]
    e1, e2, e3, e5 = parsed.parse_errors
    assert e1.startswith("tool call 1: invalid JSON: Expecting ',' delimiter at char ")
    assert e2 == 'tool call 2: missing "name" (a non-empty string)'
    assert e3 == "tool call 3: arguments of 'add' must be a JSON object, got an array"
    assert e5.startswith("tool call 5: invalid JSON")
    assert parsed.malformed[0] == '{"name": "add", "parameters": {"a": 1 "b": 2}}'
    assert parsed.malformed[-1] == '{"name": "add", "parameters": {"a": 3'
    builtin = cf.parse_assistant('<|python_tag|>brave_search.call(query="x")<|eom_id|>')
    assert builtin.parse_errors == ["tool call 1: expected a JSON tool call after <|python_tag|> "
                                    "(built-in tools are not supported)"] and not builtin.tool_calls


@pytest.mark.parametrize("family", ["mistral-v3", "mistral-tekken"])
def test_mistral_parsing_and_malformed_calls(family):
    cf = fmt(family)
    parsed = cf.parse_assistant('[TOOL_CALLS] [{"name": "add", "arguments": {"a": 1, "b": 2}, "id": "abcDEF123"}, '
                                '{"arguments": {}}, {"name": "add", "arguments": "[1]"}, {"name": "noop"}]</s>')
    assert [(c.name, c.id) for c in parsed.tool_calls][0] == ("add", "abcDEF123")
    assert [c.name for c in parsed.tool_calls] == ["add", "noop"]
    generated = parsed.tool_calls[1].id
    assert len(generated) == 9 and generated.isalnum()  # the model wrote no id: one is made up
    assert parsed.parse_errors == ['tool call 2: missing "name" (a non-empty string)',
                                   "tool call 3: arguments of 'add' must be a JSON object, got an array"]
    assert parsed.malformed == ['{"arguments": {}}', '{"name": "add", "arguments": "[1]"}']
    broken = cf.parse_assistant('Sure.[TOOL_CALLS][{"name": "add", "arguments": {"a": 1,}}]</s>')
    assert broken.content == "Sure." and not broken.tool_calls
    assert broken.parse_errors[0].startswith("tool call 1: invalid JSON: Expecting property name")
    empty = cf.parse_assistant("[TOOL_CALLS]")  # truncated right after the marker
    assert empty.parse_errors == ["tool call 1: expected a JSON array of calls after [TOOL_CALLS]"]
    two = cf.parse_assistant('[TOOL_CALLS][{"name": "a"}][TOOL_CALLS][{"name": "b", "arguments": 1}]')
    assert [c.name for c in two.tool_calls] == ["a"]
    assert two.parse_errors == ["tool call 2: arguments of 'b' must be a JSON object, got a number"]


REFUND = {"type": "function", "function": {"name": "refund", "description": "Refund an order",
          "parameters": {"type": "object", "properties": {"order_id": {"type": "string"}}, "required": ["order_id"]}}}
NOTIFY = {"type": "function", "function": {"name": "notify", "description": "Tell the customer",
          "parameters": {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}}}
ROW = {"id": "r1", "tools": [REFUND, NOTIFY],
       "messages": [{"role": "system", "content": "You are a support agent."},
                    {"role": "user", "content": "Refund order A1 and tell me."}]}


def tiny_model(vocab_size: int):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=2048)
    return LlamaForCausalLM(config).eval()


@pytest.mark.parametrize("family", FAMILIES)
def test_rollout_keeps_a_parallel_call_to_schema_only_tools(family):
    import torch

    cf = fmt(family)
    calls = mistral_ids(ToolCall("refund", {"order_id": "A1"}, id="c1"),
                        ToolCall("notify", {"text": "Refunded A1 ✓"}, id="c2"))
    sampled = cf.assistant_tokens(calls_msg(*calls))
    sampler = ScriptedSampler([list(sampled)])
    (traj,) = run_episodes([ROW], lambda row: None, sampler, cf)

    assert traj.stop_reason == StopReason.TOOL_CALLS_OUTPUT and traj.turns == 1
    assert [(t["function"]["name"], json.loads(t["function"]["arguments"])) for t in traj.output_tools] == [
        ("refund", {"order_id": "A1"}), ("notify", {"text": "Refunded A1 ✓"})]
    assert traj.token_ids == cf.render(traj.messages, ROW["tools"])  # the record is the whole rendering
    assert traj.token_kinds.count("sampled") == len(sampled)
    # the record is valid input for a model on this tokenizer: score the sampled tokens with it
    model = tiny_model(len(cf.tokenizer))
    with torch.no_grad():
        logits = model(torch.tensor([traj.token_ids])).logits[0]
    n_prompt = traj.token_kinds.index("sampled")
    logprobs = torch.log_softmax(logits[n_prompt - 1: n_prompt - 1 + len(sampled)], -1)
    picked = logprobs.gather(1, torch.tensor(sampled)[:, None])
    assert torch.isfinite(picked).all() and picked.shape == (len(sampled), 1)


@pytest.mark.parametrize("family", FAMILIES)
def test_rollout_records_a_malformed_call_as_a_parse_error(family):
    cf = fmt(family)
    bad = {"qwen": '<tool_call>\n{"name": "refund", "arguments": {"order_id": }}\n</tool_call>',
           "llama3": '{"name": "refund", "parameters": {"order_id": }}',
           "mistral": '[TOOL_CALLS][{"name": "refund", "arguments": {"order_id": }}]'}[cf.name]
    bad_ids = cf.tokenizer(bad, add_special_tokens=False)["input_ids"] + [cf.stop_token_ids[0]]
    answer = cf.assistant_tokens({"role": "assistant", "content": "Done."})
    (traj,) = run_episodes([ROW], lambda row: None, ScriptedSampler([bad_ids, list(answer)]), cf)
    assert traj.stop_reason == StopReason.ANSWER and traj.turns == 2
    (rec,) = traj.tool_calls
    assert rec.error is not None and rec.error.kind == ToolErrorKind.PARSE_ERROR
    assert traj.output_text == "Done."
