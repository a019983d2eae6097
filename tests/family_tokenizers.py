"""Tiny stand-ins for each model family's tokenizer, built in memory (no hub download).

Each is a BPE trained in a fraction of a second on a few strings, with its family's
pre-tokenisation — the Llama 3, Qwen2 and Tekken split regexes over bytes
(byte-level, as the real ones), or SentencePiece-style ``▁`` words with byte
fallback for Mistral v0.3 — its family's special and added tokens, and the
family's chat template from agentrft. What the chat formats depend on is the same
as with the real tokenizers: which strings are single special tokens, and how
text between them is split; the merges and vocabulary size are not.
"""

from __future__ import annotations

import functools
import json

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from agentrft.models.chat_format.llama3 import LLAMA3_CHAT_TEMPLATE
from agentrft.models.chat_format.mistral import MISTRAL_TEKKEN_CHAT_TEMPLATE, MISTRAL_V3_CHAT_TEMPLATE
from agentrft.models.chat_format.qwen import QWEN3_CHAT_TEMPLATE, QWEN25_CHAT_TEMPLATE

__all__ = ["FAMILIES", "family_tokenizer"]

# Pre-tokenisation regexes of the real tokenizers (tokenizer.json of each family).
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+")
TEKKEN_SPLIT = (r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
                r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"
                r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")

_QWEN_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
_MISTRAL_SPECIAL = ["<unk>", "<s>", "</s>", "[INST]", "[/INST]", "[TOOL_CALLS]", "[AVAILABLE_TOOLS]",
                    "[/AVAILABLE_TOOLS]", "[TOOL_RESULTS]", "[/TOOL_RESULTS]"]

# family -> (pre-tokenisation, special tokens, added non-special tokens, bos, eos, chat template)
SPECS: dict[str, tuple[str, list[str], list[str], str | None, str, str]] = {
    "qwen2.5": (QWEN2_SPLIT, _QWEN_SPECIAL, ["<tool_call>", "</tool_call>"], None, "<|im_end|>",
                QWEN25_CHAT_TEMPLATE),
    "qwen3": (QWEN2_SPLIT, _QWEN_SPECIAL,
              ["<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>", "<think>", "</think>"],
              None, "<|im_end|>", QWEN3_CHAT_TEMPLATE),
    "llama3": (LLAMA3_SPLIT, ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                              "<|eom_id|>", "<|eot_id|>", "<|python_tag|>", "<|finetune_right_pad_id|>"],
               [], "<|begin_of_text|>", "<|eot_id|>", LLAMA3_CHAT_TEMPLATE),
    "mistral-v3": ("sentencepiece", _MISTRAL_SPECIAL, [], "<s>", "</s>", MISTRAL_V3_CHAT_TEMPLATE),
    "mistral-tekken": (TEKKEN_SPLIT, _MISTRAL_SPECIAL, [], "<s>", "</s>", MISTRAL_TEKKEN_CHAT_TEMPLATE),
}
FAMILIES = tuple(SPECS)

_CORPUS = [
    "You are a helpful assistant. Answer the question, then stop.",
    "What is 2+3? The answer is 5. Search the web for the capital of Japan: Tokyo.",
    '{"name": "add", "arguments": {"a": 2, "b": 3}}; {"name": "search", "parameters": {"q": "x"}}',
    '[{"type": "function", "function": {"name": "add", "description": "Add two integers.", "parameters": '
    '{"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a", "b"]}}}]',
    '{"content": "5", "call_id": "c1b2c3d4e"}\n\n# Tools\n\nYou may call one or more functions.',
    "system\nuser\nassistant\nipython\ntool\n\n<tools>\n</tools>\n<tool_response>\n</tool_response>",
    "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\nEnvironment: ipython\n",
]


@functools.lru_cache(maxsize=None)
def _backend(family: str) -> str:
    """The trained backend tokenizer as JSON (cached; each test gets its own wrapper)."""
    split, special, added, _bos, _eos, _template = SPECS[family]
    if split == "sentencepiece":
        tok = Tokenizer(models.BPE(unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True)
        tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
        trainer = trainers.BpeTrainer(vocab_size=700, special_tokens=special, show_progress=False)
    else:
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(split), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=700, special_tokens=special, show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_CORPUS, trainer)
    if split == "sentencepiece":  # SentencePiece's <0xNN> byte pieces: vocabulary for unseen characters
        state = json.loads(tok.to_str())
        vocab = state["model"]["vocab"]
        for b in range(256):
            vocab.setdefault(f"<0x{b:02X}>", len(vocab))
        state["model"]["byte_fallback"] = True
        tok = Tokenizer.from_str(json.dumps(state))
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in added])
    return tok.to_str()


def family_tokenizer(family: str) -> PreTrainedTokenizerFast:
    """A fresh tiny tokenizer of ``family`` (one of :data:`FAMILIES`) with that family's chat template."""
    _split, _special, _added, bos, eos, template = SPECS[family]
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(_backend(family)), bos_token=bos,
                                  eos_token=eos, pad_token=eos)
    tok.chat_template = template
    return tok
