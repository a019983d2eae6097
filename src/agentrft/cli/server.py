"""The platform server: ``agentrft server`` and ``agentrft server-key create``."""

from __future__ import annotations

from pathlib import Path

import click

from agentrft.cli.common import fail
from agentrft.errors import AgentRFTError, ConfigError


@click.command("server")
@click.option("--home", type=click.Path(file_okay=False), default="agentrft-platform", show_default=True,
              help="Where platform.db, uploaded files and job directories live.")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind; any but loopback needs an API key (server-key create, or AGENTRFT_API_KEYS).")
@click.option("--port", type=int, default=8000, show_default=True)
@click.option("--concurrency", type=int, default=1, show_default=True, help="Jobs trained at once.")
@click.option("--model", "models", multiple=True, metavar="NAME=PATH",
              help="Offer a local Hugging Face model folder under NAME (repeatable); smollm2-135m is always offered.")
@click.option("--allow-egress", multiple=True, metavar="URL_PATTERN",
              help="Where submitted graders, tool endpoints and MCP servers may connect, e.g. "
                   "https://tools.example.com (repeatable; default: nowhere).")
@click.option("--allow-loopback-egress", is_flag=True,
              help="Let allowed patterns resolve to this machine (tool servers on 127.0.0.1).")
@click.option("--allow-private-egress", is_flag=True, help="Let allowed patterns resolve to private addresses.")
@click.option("--max-loaded-models", type=int, default=1, show_default=True,
              help="Models kept in memory for chat completions.")
def server_cmd(home: str, host: str, port: int, concurrency: int, models: tuple[str, ...], allow_egress: tuple[str, ...],
               allow_loopback_egress: bool, allow_private_egress: bool, max_loaded_models: int) -> None:
    """Serve the OpenAI-compatible fine-tuning API (files, jobs, graders, models, chat) and the dashboard."""
    import uvicorn

    from agentrft.platform.app import BUNDLED_MODEL, PlatformSettings, create_platform_app
    from agentrft.platform.keys import check_bind
    from agentrft.trust import EgressPolicy

    try:
        if min(concurrency, max_loaded_models) < 1:
            raise ConfigError("--concurrency and --max-loaded-models must be >= 1")
        base = {BUNDLED_MODEL: BUNDLED_MODEL}
        for item in models:
            name, sep, path = item.partition("=")
            if not sep or not name or not Path(path).is_dir():
                raise ConfigError(f"--model {item!r}: expected NAME=PATH with PATH a model folder")
            base[name] = str(Path(path).resolve())
        try:
            egress = EgressPolicy(allow=allow_egress, allow_loopback=allow_loopback_egress,
                                  allow_private=allow_private_egress)
        except ValueError as e:
            raise ConfigError(f"--allow-egress: {e}") from None
        settings = PlatformSettings(home=Path(home).resolve(), base_models=base, concurrency=concurrency,
                                    egress=egress, max_loaded_models=max_loaded_models)
        app = create_platform_app(settings)
        check_bind(host, app.state.keys)
    except AgentRFTError as e:
        fail(e)
    auth = "API keys required" if app.state.keys.enabled else "no API key (loopback only)"
    click.echo(f"agentrft platform at http://{host}:{port}/v1 ({auth}); dashboard at http://{host}:{port}/dashboard; "
               f"home {settings.home}")
    uvicorn.run(app, host=host, port=port, log_level="info")


@click.group("server-key")
def server_key() -> None:
    """API keys of the platform server."""


@server_key.command("create")
@click.option("--home", type=click.Path(file_okay=False), default="agentrft-platform", show_default=True)
@click.option("--name", default="default", show_default=True, help="A label for the key (who holds it).")
def create_key_cmd(home: str, name: str) -> None:
    """Make a key: printed once, only its hash is stored in HOME/platform.db."""
    from agentrft.platform.db import PlatformDB
    from agentrft.platform.keys import create_key

    db = PlatformDB(Path(home))
    click.echo(create_key(db, name))
