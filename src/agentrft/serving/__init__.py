"""An OpenAI-compatible chat completions server over the local sampler (``agentrft serve``).

A trained agent is served as it was trained: requests are rendered with the
episode loop's own functions and sampled through the
:class:`~agentrft.rollout.sampler.Sampler` seam
(:class:`~agentrft.rollout.hf_sampler.HFSampler` in production, a scripted
double in tests), and the sampled turn is parsed back into ``content`` and
``tool_calls``. See docs/serving.md.

Modules:

* :mod:`~agentrft.serving.protocol` — the OpenAI wire format: request model and validation, errors,
  response and chunk bodies (no web framework);
* :mod:`~agentrft.serving.engine` — :class:`BatchingGenerator`, the one worker thread that owns the sampler
  and batches compatible waiting requests (no web framework);
* :mod:`~agentrft.serving.streaming` — ``stream: true``: chunk events, text sent only once it is safe;
* :mod:`~agentrft.serving.chat` and :mod:`~agentrft.serving.models` — the routers;
* :mod:`~agentrft.serving.app` — :func:`create_app` and :func:`serve_in_background`.

The app-level names are imported on first use (PEP 562 module ``__getattr__``), so importing
:mod:`agentrft.serving.engine` or :mod:`agentrft.serving.protocol` alone does not load FastAPI.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from agentrft.serving.engine import BatchingGenerator
from agentrft.serving.protocol import APIError, ServerSettings

if TYPE_CHECKING:
    from agentrft.serving.app import create_app, serve_in_background

__all__ = ["APIError", "BatchingGenerator", "ServerSettings", "create_app", "serve_in_background"]

_FROM_APP = ("create_app", "serve_in_background")


def __getattr__(name: str):
    if name in _FROM_APP:
        from agentrft.serving import app

        return vars(app)[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
