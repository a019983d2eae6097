"""The platform: an OpenAI-compatible fine-tuning server (files, jobs, graders, models) and its web dashboard.

``agentrft server`` runs one process over a platform home directory: a SQLite table of files, jobs and
API keys beside the run directories of the jobs, a queue whose jobs run in worker subprocesses, the
OpenAI-compatible routes that the official ``openai`` SDK drives unchanged, and the dashboard that shows
each run while it trains. See docs/platform.md.
"""

from __future__ import annotations

from agentrft.platform.runs import DirectoryRunIndex, RunIndex, RunRef

__all__ = ["DirectoryRunIndex", "RunIndex", "RunRef"]
