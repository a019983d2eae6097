"""Trained runs as models: a run directory works wherever a model name goes.

``agentrft eval --model runs/rft``, ``agentrft serve --model runs/rft`` and
``agentrft export runs/rft`` all come through :func:`load_any_model`, which
accepts

* a bundled model name or a Hugging Face model folder (as
  :func:`agentrft.models.loading.load_model`);
* a run directory written by ``agentrft train`` (it has ``run.db``): the base
  model and LoRA are rebuilt exactly as the run built them, from the resolved
  config stored in ``run.db`` (:func:`agentrft.models.policy.build_policy`),
  then the latest valid checkpoint's weights are restored (verified against its
  manifest, falling back to the newest valid one like ``--resume`` does);
* ``RUN_DIR@step=N``: the checkpoint of step N instead of the latest (retention
  keeps the latest and the ``keep_best_k`` best, so not every step is on disk).

Why not teach ``models.loading.load_model`` about runs: rebuilding a run needs
its stored config and the checkpoint reader, which belong with the other
run-directory code here (``jobs`` sits above ``models`` in the import order,
docs/architecture.md), so ``load_model`` only names this loader in its error.

:func:`export_run` writes a plain Hugging Face folder: LoRA merged into the
weights (peft ``merge_and_unload``), the tokenizer, and a chat template that
renders exactly what the run trained on (for the Hermes format, the Jinja
rendition :data:`agentrft.models.chat_format.HERMES_CHAT_TEMPLATE`), so
transformers and vLLM load it with no agentrft code. ``agentrft_export.json``
records where it came from and its chat format, which :func:`load_any_model`
honours when the folder is loaded back.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agentrft.errors import ConfigError, ModelNotFoundError
from agentrft.jobs.store import DB_NAME, RunStore

__all__ = ["EXPORT_INFO", "LoadedModel", "export_run", "is_run_dir", "load_any_model", "load_run", "run_config",
           "split_model_spec"]

EXPORT_INFO = "agentrft_export.json"
EXPORT_DTYPES = ("float32", "bfloat16", "float16")
_STEP_SUFFIX = re.compile(r"^(?P<path>.+)@step=(?P<step>\d+)$")


@dataclass
class LoadedModel:
    """A model ready for inference and where it came from."""

    model: Any  # transformers causal LM in eval mode (a peft model for LoRA runs, merged after export)
    tokenizer: Any
    chat_format: str
    """``auto`` | ``hermes`` | ``template``: the run's (or export's) chat format, ``auto`` for other folders."""
    description: str
    """One line for logs: what was loaded (bundled model, folder, or run + step + base model)."""
    run_dir: Path | None = None
    step: int | None = None
    cpu_matmul: str = "auto"
    """The float32 CPU matmul library to sample with: a run's own (``training.cpu_matmul``), so its
    evals compute as the run did; ``auto`` for other models."""


def split_model_spec(spec: str | os.PathLike[str]) -> tuple[str, int | None]:
    """``"runs/rft@step=5"`` -> ``("runs/rft", 5)``; anything else -> ``(spec, None)``.

    An existing path whose name happens to contain ``@step=`` is taken literally.
    """
    text = str(spec)
    m = _STEP_SUFFIX.match(text)
    if m is None or Path(text).expanduser().exists():
        return text, None
    return m.group("path"), int(m.group("step"))


def is_run_dir(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a run directory (holds the run store ``run.db``)."""
    return (Path(path).expanduser() / DB_NAME).is_file()


def run_config(run_dir: str | os.PathLike[str]):
    """The run's resolved :class:`~agentrft.config.JobConfig`, as stored in ``run.db`` when it started."""
    from agentrft.config import load_config, migrate_stored

    with RunStore(Path(run_dir).expanduser()) as store:
        run = store.get_run()
    if run is None:
        raise ConfigError(f"{run_dir} has a run store but no run record (the run never got past its start)")
    try:
        return load_config(migrate_stored(run["resolved_config"]))
    except ConfigError as e:
        raise ConfigError(f"the config stored in {Path(run_dir) / DB_NAME} no longer validates: {e}") from None


def load_run(run_dir: str | os.PathLike[str], *, step: int | None = None, device: str | None = None,
             plain_linear: bool = False) -> LoadedModel:
    """Rebuild a run's model (base + LoRA as configured) and restore its latest (or ``step``'s) checkpoint.

    ``device`` (``cpu`` | ``cuda`` | ``auto``) overrides the run's ``training.device``, e.g. to serve a
    GPU-trained run on a CPU; the dtype then follows the device as in training (``auto``).
    ``plain_linear`` keeps ``nn.Linear`` layers even where the run routed them through oneDNN (export
    and merging need stock modules).
    """
    from agentrft.jobs.checkpoint import load_checkpoint, load_latest_checkpoint, restore_checkpoint
    from agentrft.models.policy import build_policy

    run_dir = Path(run_dir).expanduser()
    cfg = run_config(run_dir)
    info = load_checkpoint(run_dir, step) if step is not None else load_latest_checkpoint(run_dir)
    if info is None:
        raise ConfigError(f"{run_dir} is a run directory but has no checkpoint yet (training writes one every "
                          "training.checkpoint_interval steps and at the end); nothing to load")
    if device is not None and device != cfg.training.device:
        cfg.training.device, cfg.training.dtype = device, "auto"
    if plain_linear:
        cfg.training.cpu_matmul = "mkl"
    try:
        policy = build_policy(cfg)
    except ModelNotFoundError as e:
        raise ModelNotFoundError(f"run {run_dir} was trained from base model {cfg.model!r}, which cannot be "
                                 f"loaded here: {e}") from None
    restore_checkpoint(info, policy.model, None, None, restore_rng=False)
    model = policy.model
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    lora = "LoRA" if policy.is_lora else "full fine-tune"
    return LoadedModel(model, policy.tokenizer, cfg.chat_format,
                       f"run {run_dir} ({cfg.method.value}, {lora}) step {info.step}, base model {cfg.model}",
                       run_dir=run_dir, step=info.step, cpu_matmul=cfg.training.cpu_matmul)


def load_any_model(spec: str | os.PathLike[str], *, device: str | None = None) -> LoadedModel:
    """A bundled model name, a Hugging Face folder (an export included), a run directory, or ``RUN_DIR@step=N``."""
    path_text, step = split_model_spec(spec)
    path = Path(path_text).expanduser()
    if is_run_dir(path):
        return load_run(path, step=step, device=device)
    if step is not None:
        raise ConfigError(f"{spec!r}: @step=N selects a checkpoint of a run directory, but {path_text!r} is not "
                          f"one (no {DB_NAME})")
    if path.is_dir() and not (path / "config.json").is_file() and (path / "checkpoints").is_dir():
        raise ModelNotFoundError(f"{path} has checkpoints/ but no {DB_NAME}: not a complete run directory "
                                 "(nor a Hugging Face model folder with config.json)")
    from agentrft.models.loading import load_model

    if device in (None, "auto"):
        import torch

        device = "cuda" if device == "auto" and torch.cuda.is_available() else "cpu"
    model, tokenizer = load_model(path_text, device=device)
    chat_format, description = "auto", f"model {path_text}"
    info_file = path / EXPORT_INFO
    if info_file.is_file():
        try:
            info = json.loads(info_file.read_text())
            chat_format = info["chat_format"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ModelNotFoundError(f"{info_file} is unreadable ({e}); delete it to load {path} as a plain "
                                     "Hugging Face folder") from None
        description = f"export {path_text} of run {info.get('run_dir')} step {info.get('step')}"
    return LoadedModel(model, tokenizer, chat_format, description)


def _umask() -> int:
    """The process's umask (reading it means setting it: set back at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def export_run(spec: str | os.PathLike[str], out: str | os.PathLike[str], *, dtype: str = "float32") -> Path:
    """Write the run's model (``RUN_DIR`` or ``RUN_DIR@step=N``) as a plain Hugging Face folder at ``out``.

    LoRA is merged into the base weights; the tokenizer is saved with the chat template the run used
    (the Hermes template when the run's format resolved to ``hermes``, a family's template as trained for
    ``qwen``/``llama3``/``mistral``). ``out`` must not exist or be
    empty; the folder is written to a temporary sibling and renamed, so it appears complete or not at all.
    """
    import torch

    from agentrft.models.chat_format import HERMES_CHAT_TEMPLATE, TemplateChatFormat, get_chat_format

    path_text, step = split_model_spec(spec)
    if not is_run_dir(path_text):
        raise ConfigError(f"export needs a run directory (with {DB_NAME}), got {str(spec)!r}")
    out = Path(out).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"export target {out} exists and is not an empty folder; choose another --out")
    if dtype not in EXPORT_DTYPES:  # checked before the (slow) load
        raise ConfigError(f"export dtype must be one of {', '.join(EXPORT_DTYPES)}, got {dtype!r}")

    loaded = load_run(path_text, step=step, device="cpu", plain_linear=True)
    model = loaded.model
    if hasattr(model, "merge_and_unload"):  # a peft model: fold B @ A * scale into each adapted weight
        model = model.merge_and_unload()
    model.to(dtype=getattr(torch, dtype))
    tokenizer = loaded.tokenizer
    cf = get_chat_format(tokenizer, loaded.chat_format)
    chat_format = cf.name
    if chat_format == "hermes":
        tokenizer.chat_template = HERMES_CHAT_TEMPLATE
    elif isinstance(cf, TemplateChatFormat):  # a family's template as trained (qwen, llama3, mistral, template)
        tokenizer.chat_template = cf.chat_template

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        (tmp / EXPORT_INFO).write_text(json.dumps({
            "run_dir": str(loaded.run_dir), "step": loaded.step, "chat_format": chat_format, "dtype": dtype,
            "exported_at": time.time(), "source": loaded.description,
        }, indent=1))
        # mkdtemp makes the folder 0700 and safetensors writes the weights 0600, whatever the umask: the
        # export is a plain folder like any other, with the modes the user's umask gives
        mask = _umask()
        for path in [tmp, *tmp.rglob("*")]:
            path.chmod((0o777 if path.is_dir() else 0o666) & ~mask)
        if out.exists():
            out.rmdir()  # empty (checked above)
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
