"""Shared pytest fixtures.

The real SmolLM2 tokenizer and a tiny random Llama model that uses it are
built once per session (first run ever: ~5 s to extract the tokenizer from the
bundled GGUF into the agentrft cache; afterwards well under a second), so tests
see real token ids while model forward passes cost milliseconds.
"""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tokenizer():
    """SmolLM2's tokenizer (vocab 49152, ChatML special tokens, pad token set). Do not mutate it."""
    from agentrft.models.loading import load_tokenizer

    return load_tokenizer("smollm2-135m")


@pytest.fixture(scope="session")
def tiny_model():
    """``(model, tokenizer)``: a 2-layer random Llama (seed 0, eval mode) with SmolLM2's tokenizer.

    Session-wide: tests that train or change it must work on a copy (``copy.deepcopy(model)``).
    """
    from agentrft.models.loading import make_tiny_model

    return make_tiny_model(seed=0)
