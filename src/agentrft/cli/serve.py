"""Use the trained agent: ``agentrft export`` (a plain Hugging Face folder) and ``agentrft serve``."""

from __future__ import annotations

import time
from pathlib import Path

import click

from agentrft.cli.common import chat_format_option, fail, load_model_and_format
from agentrft.errors import AgentRFTError
from agentrft.serving.protocol import ServerSettings


@click.command("export")
@click.argument("run_dir")
@click.option("--out", type=click.Path(file_okay=False), required=True, help="New (or empty) folder to write.")
@click.option("--dtype", type=click.Choice(["float32", "bfloat16", "float16"]), default="float32", show_default=True)
def export_cmd(run_dir: str, out: str, dtype: str) -> None:
    """Write RUN_DIR's model (RUN_DIR@step=N: that checkpoint) as a plain Hugging Face folder, LoRA merged.

    transformers and vLLM load the folder with no agentrft code; its chat template renders what the run
    trained on. ``--model FOLDER`` loads it back here.
    """
    from agentrft.jobs.trained import export_run

    try:
        folder = export_run(run_dir, out, dtype=dtype)
    except AgentRFTError as e:
        fail(e)
    click.echo(f"wrote {folder}")


@click.command("serve")
@click.option("--model", default="smollm2-135m", show_default=True,
              help="Bundled model name, HF model folder (an export), or a run directory (RUN_DIR[@step=N]).")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=8000, show_default=True)
@click.option("--served-name", default=None, help="The name clients pass as `model` (default: the --model text).")
@chat_format_option
@click.option("--max-batch-size", type=int, default=8, show_default=True,
              help="Most sequences decoded together (waiting requests with the same settings are batched).")
@click.option("--default-max-tokens", type=int, default=512, show_default=True,
              help="Completion length limit when a request sets no max_tokens.")
@click.option("--max-request-bytes", type=int, default=ServerSettings.max_request_bytes, show_default=True,
              help="Largest request body; a larger one gets 413 before it is read.")
@click.option("--max-queued-requests", type=int, default=ServerSettings.max_queued_requests, show_default=True,
              help="Requests being read, rendered or waiting for the sampler at once; one more gets 429.")
@click.option("--enable-lora", is_flag=True,
              help="Allow LoRA adapters to be loaded at runtime (POST /v1/load_lora_adapter, vLLM's API).")
@click.option("--lora-root", type=click.Path(file_okay=False), default=None,
              help="With --enable-lora: the folder adapters may be loaded from (lora_path must lie inside it).")
@click.option("--max-loras", type=int, default=8, show_default=True, help="Most adapters loaded at once.")
@click.option("--home", type=click.Path(file_okay=False), default=None,
              help="Where the model registry is, for --model NAME (default: $AGENTRFT_HOME or ~/.agentrft).")
@click.option("--request-log", type=click.Path(dir_okay=False), default=None,
              help="Append each request and its response to this JSONL file (off by default), as --privacy says.")
@click.option("--privacy", type=click.Choice(["full", "redacted", "none"]), default="redacted", show_default=True,
              help="With --request-log: log bodies as they are, redacted (emails, phones, cards, IBANs, API keys), "
                   "or not at all (docs/privacy.md).")
def serve_cmd(model: str, host: str, port: int, served_name: str | None, chat_format: str, max_batch_size: int,
              default_max_tokens: int, max_request_bytes: int, max_queued_requests: int, enable_lora: bool,
              lora_root: str | None, max_loras: int, home: str | None, request_log: str | None,
              privacy: str) -> None:
    """Serve MODEL behind an OpenAI-compatible API: GET /v1/models, POST /v1/chat/completions (tools included),
    POST /v1/completions (token ids and logprobs, vLLM's fields) and, with --enable-lora, LoRA hot-swap.

    MODEL may be a registry alias (`agentrft promote RUN --as NAME`): its current target is served, and a
    promotion or rollback of NAME is picked up within a second, without a restart."""
    import uvicorn

    from agentrft.jobs.audit import AUDIT_NAME, AuditLog
    from agentrft.jobs.registry_store import load_registered, resolve_alias
    from agentrft.models.chat_format import get_chat_format
    from agentrft.rollout.hf_sampler import HFSampler
    from agentrft.serving import create_app
    from agentrft.serving.alias import find_alias, serve_alias

    try:
        if min(max_batch_size, default_max_tokens, max_request_bytes, max_queued_requests) < 1:
            raise AgentRFTError("--max-batch-size, --default-max-tokens, --max-request-bytes and "
                                "--max-queued-requests must be >= 1")
        if enable_lora and not lora_root:
            raise AgentRFTError("--enable-lora needs --lora-root DIR: the folder adapters may be loaded from")
        if lora_root and not enable_lora:
            raise AgentRFTError("--lora-root only applies with --enable-lora")
        if lora_root and not Path(lora_root).is_dir():
            raise AgentRFTError(f"--lora-root {lora_root}: not a folder")
        if max_loras < 1:
            raise AgentRFTError("--max-loras must be >= 1")
        t0 = time.perf_counter()
        registry = find_alias(model, home)
        if registry is not None and enable_lora:
            raise AgentRFTError(f"{model!r} is a registry alias, served whole and switched on promotion; "
                                "--enable-lora applies to a fixed model")

        def load(target) -> tuple:  # a registry entry, or the --model text
            loaded = (load_registered(registry, target) if registry is not None
                      else load_model_and_format(target, chat_format)[0])
            sampler = HFSampler(loaded.model, pad_token_id=loaded.tokenizer.pad_token_id,
                                max_batch_size=max_batch_size, prefix_cache_tokens=8192, cpu_matmul=loaded.cpu_matmul)
            return loaded, sampler, get_chat_format(loaded.tokenizer, loaded.chat_format if chat_format == "auto"
                                                    else chat_format)

        entry = resolve_alias(registry, model)[1] if registry is not None else None
        loaded, sampler, cf = load(entry or model)
        settings = ServerSettings(model_name=served_name or model, max_batch_size=max_batch_size,
                                  default_max_tokens=default_max_tokens, max_request_bytes=max_request_bytes,
                                  max_queued_requests=max_queued_requests)
        app = create_app(sampler, cf, settings)
        if entry is not None:
            serve_alias(app, registry, model, entry, lambda target: load(target)[1:])
            AuditLog(registry.parent / AUDIT_NAME).append("serve", subject=model, details={
                "weights_sha256": entry.weights_sha256, "run_dir": entry.run_dir, "step": entry.step,
                "served_name": settings.model_name, "host": host, "port": port})
        if enable_lora:
            from agentrft.serving.adapters import enable_lora as allow_adapters

            allow_adapters(app, loaded.model, lora_root, max_adapters=max_loras)
        if request_log:
            from agentrft.serving.request_log import add_request_log

            add_request_log(app, request_log, privacy)
    except AgentRFTError as e:
        fail(e)
    click.echo(f"loaded {loaded.description} in {time.perf_counter() - t0:.1f} s (chat format {cf.name})")
    if entry is not None:
        click.echo(f"alias {model!r} -> {entry.weights_sha256[:12]}; following promotions and rollbacks")
    click.echo(f"serving {settings.model_name!r} at http://{host}:{port}/v1")
    if enable_lora:
        click.echo(f"LoRA adapters may be loaded from {Path(lora_root).resolve()}")
    if request_log:
        click.echo(f"logging requests to {request_log} (privacy: {privacy})")
    uvicorn.run(app, host=host, port=port, log_level="info")
