"""Shared pytest fixtures.

The real SmolLM2 tokenizer and a tiny random Llama model that uses it are
built once per session (first run ever: ~5 s to extract the tokenizer from the
bundled GGUF into the agentrft cache; afterwards well under a second), so tests
see real token ids while model forward passes cost milliseconds.
"""

from __future__ import annotations

import contextlib

import pytest


@pytest.fixture(scope="session", autouse=True)
def agentrft_home(tmp_path_factory):
    """``$AGENTRFT_HOME`` (the audit log, :mod:`agentrft.jobs.audit`) is a per-session folder, so the suite
    never writes to ``~/.agentrft``; child processes inherit it."""
    with pytest.MonkeyPatch.context() as mp:
        home = tmp_path_factory.mktemp("agentrft_home")
        mp.setenv("AGENTRFT_HOME", str(home))
        yield home


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


@pytest.fixture(scope="session")
def openai_server():
    """``with openai_server(app) as client``: ``app`` served by uvicorn on 127.0.0.1 (a free port) in a
    thread, and an official ``openai.OpenAI`` client pointed at it (no retries)."""

    @contextlib.contextmanager
    def serve(app):
        import openai

        from agentrft.serving import serve_in_background

        with serve_in_background(app) as base_url:
            yield openai.OpenAI(base_url=base_url, api_key="x", max_retries=0, timeout=60)

    return serve
