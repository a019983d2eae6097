"""The server's batching engine: :class:`BatchingGenerator` and its errors, re-exported from where they live.

The engine is shared with the rollout collectors, which sit below serving in
the layers (docs/architecture.md), so it lives in
:mod:`agentrft.rollout.batching`; this module keeps the serving import path
(``from agentrft.serving.engine import BatchingGenerator``) and, like it, loads
no web framework.
"""

from __future__ import annotations

from agentrft.rollout.batching import BatchingGenerator, GenerationCancelled, QueueFull

__all__ = ["BatchingGenerator", "GenerationCancelled", "QueueFull"]
