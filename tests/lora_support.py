"""``agentrft serve`` over a tiny model's base weights with LoRA hot-swap: the server that remote-sampler tests
train against (tests/test_remote_sampler_training.py, test_async_rft.py, test_ray_runtime.py)."""

from __future__ import annotations

from pathlib import Path

from agentrft.models.chat_format import get_chat_format
from agentrft.models.loading import load_model
from agentrft.rollout.hf_sampler import HFSampler
from agentrft.serving import ServerSettings, create_app
from agentrft.serving.adapters import enable_lora


def lora_server_app(model_dir: str | Path, lora_root: Path):
    """The app of ``agentrft serve --model MODEL_DIR --served-name base --enable-lora --lora-root LORA_ROOT``
    (serve it with :func:`agentrft.serving.serve_in_background`)."""
    model, tok = load_model(str(model_dir))
    app = create_app(HFSampler(model, pad_token_id=tok.pad_token_id), get_chat_format(tok, "hermes"),
                     ServerSettings(model_name="base", max_context=1024))
    enable_lora(app, model, lora_root)
    return app
