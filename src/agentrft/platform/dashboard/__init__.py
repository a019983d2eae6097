"""The web dashboard: runs, live training charts, two runs overlaid, and a trajectory viewer.

``router`` is the JSON API under ``/dashboard/api`` (it shows run data: include it behind the server's
bearer-key dependency); ``page_router`` serves the page (``/dashboard``) and its static files, which hold no
run data. Both read ``app.state.run_index`` (:class:`~agentrft.platform.runs.RunIndex`). :func:`create_app`
is the dashboard alone (``agentrft dashboard RUNS_DIR``). See docs/dashboard.md.
"""

from __future__ import annotations

from agentrft.platform.dashboard.routes import create_app, page_router, router

__all__ = ["create_app", "page_router", "router"]
