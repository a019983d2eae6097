"""``agentrft dashboard RUNS_DIR``: the web dashboard alone, over the run directories under RUNS_DIR.

The same page and API as ``agentrft server`` shows at ``/dashboard`` (:mod:`agentrft.platform.dashboard`),
without the fine-tuning API: every folder directly under RUNS_DIR that holds a ``run.db`` is a run, read
read-only, so it can watch runs that are training right now. It has no keys, so it serves 127.0.0.1 only
(another address is refused; ``agentrft server`` serves the same dashboard behind API keys).
"""

from __future__ import annotations

from pathlib import Path

import click


@click.command("dashboard")
@click.argument("runs_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=8000, show_default=True)
def dashboard_cmd(runs_dir: Path, host: str, port: int) -> None:
    """Serve the web dashboard of the runs under RUNS_DIR (each a folder with run.db) at http://HOST:PORT/dashboard."""
    import uvicorn

    from agentrft.cli.common import fail
    from agentrft.errors import ConfigError
    from agentrft.platform.dashboard import create_app
    from agentrft.platform.keys import check_bind
    from agentrft.platform.runs import DirectoryRunIndex

    try:
        check_bind(host, None)  # no keys here: loopback only (agentrft server has keys)
    except ConfigError as e:
        fail(e)
    index = DirectoryRunIndex(runs_dir)
    app = create_app(index)
    click.echo(f"{len(index.list_runs())} run(s) under {runs_dir}; dashboard at http://{host}:{port}/dashboard")
    uvicorn.run(app, host=host, port=port, log_level="warning")
