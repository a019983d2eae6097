"""Checkpoints: exact resume (weights, AdamW, scheduler, RNG), tied weights, LoRA, corruption
fallback, best-k retention, leftover clean-up, and survival of ``kill -9`` during writes."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch
from safetensors import safe_open

from agentrft.errors import AgentRFTError
from agentrft.jobs.checkpoint import (
    CheckpointError,
    load_latest_checkpoint,
    params_hash,
    restore_checkpoint,
    save_checkpoint,
)

# -- tiny models ---------------------------------------------------------------------


def mlp(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))


def optim_for(model: torch.nn.Module):
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 4))
    return opt, sched


def train_steps(model, opt, sched, n: int) -> None:
    """Steps whose data come from all three RNGs, so a wrong RNG restore changes the weights."""
    for _ in range(n):
        x = torch.randn(5, 8) + float(np.random.rand()) + random.random()
        loss = (model(x) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()


def tiny_llama(seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    return LlamaForCausalLM(cfg)


def lm_steps(model, opt, n: int) -> None:
    for _ in range(n):
        ids = torch.randint(0, 100, (2, 12))
        loss = model(input_ids=ids, labels=ids).loss
        opt.zero_grad()
        loss.backward()
        opt.step()


def rng_draws() -> tuple:
    return torch.rand(4).tolist(), np.random.rand(4).tolist(), [random.random() for _ in range(4)]


def assert_same_params(a: torch.nn.Module, b: torch.nn.Module) -> None:
    pa, pb = dict(a.named_parameters()), dict(b.named_parameters())
    assert pa.keys() == pb.keys()
    for k in pa:
        assert torch.equal(pa[k], pb[k]), k


# -- exact resume ----------------------------------------------------------------------


def test_save_load_restore_continues_exactly(tmp_path):
    random.seed(1)
    np.random.seed(1)
    model = mlp(0)
    opt, sched = optim_for(model)
    train_steps(model, opt, sched, 2)
    path = save_checkpoint(tmp_path, 2, model, opt, sched, trainer_state={"step": 2, "cursor": 17, "epoch": 0},
                           metric=0.5)
    assert path == tmp_path / "checkpoints" / "step-000002"
    assert (tmp_path / "checkpoints" / "latest").read_text().strip() == "step-000002"
    saved_hash = params_hash(model)

    train_steps(model, opt, sched, 3)  # the uninterrupted run
    after = rng_draws()

    other = mlp(123)  # a fresh process: different init, different RNG position
    assert params_hash(other) != saved_hash
    opt2, sched2 = optim_for(other)
    torch.manual_seed(999)
    np.random.seed(999)
    random.seed(999)
    info = load_latest_checkpoint(tmp_path)
    assert info is not None and info.step == 2 and info.metric == 0.5 and info.weights == "full" and not info.warnings
    state = restore_checkpoint(info, other, opt2, sched2)
    assert state == {"step": 2, "cursor": 17, "epoch": 0}
    assert params_hash(other) == saved_hash
    assert sched2.last_epoch == 2

    train_steps(other, opt2, sched2, 3)
    assert_same_params(model, other)  # bitwise: weights, AdamW moments, step counts, lr schedule, data RNG
    for s1, s2 in zip(opt.state_dict()["state"].values(), opt2.state_dict()["state"].values()):
        assert all(torch.equal(s1[k], s2[k]) for k in s1)
    assert sched.get_last_lr() == sched2.get_last_lr()
    assert rng_draws() == after


def test_rng_streams_continue_after_restore(tmp_path):
    torch.manual_seed(5)
    np.random.seed(5)
    random.seed(5)
    rng_draws()  # move away from the seeded position
    model = mlp(0)
    save_checkpoint(tmp_path, 1, model, None, trainer_state={})
    expected = rng_draws()
    rng_draws()
    restore_checkpoint(load_latest_checkpoint(tmp_path), model)
    assert rng_draws() == expected
    rng_draws()
    restore_checkpoint(load_latest_checkpoint(tmp_path), model, restore_rng=False)
    assert rng_draws() != expected


def test_full_finetune_with_tied_embeddings(tmp_path):
    model = tiny_llama(0)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    lm_steps(model, opt, 1)
    path = save_checkpoint(tmp_path, 1, model, opt, trainer_state={"step": 1})
    with safe_open(str(path / "model.safetensors"), "pt") as f:
        names = set(f.keys())
    assert "model.embed_tokens.weight" in names and "lm_head.weight" not in names  # the tied tensor once
    saved_hash = params_hash(model)
    ids = torch.arange(7).unsqueeze(0)
    with torch.no_grad():
        saved_logits = model(ids).logits
    lm_steps(model, opt, 2)  # the uninterrupted run

    other = tiny_llama(1)
    opt2 = torch.optim.AdamW(other.parameters(), lr=1e-2)
    restore_checkpoint(load_latest_checkpoint(tmp_path), other, opt2)
    assert other.lm_head.weight is other.model.embed_tokens.weight  # still tied
    assert params_hash(other) == saved_hash
    with torch.no_grad():
        assert torch.equal(other(ids).logits, saved_logits)
    lm_steps(other, opt2, 2)  # RNG restored too, so the same batches
    assert_same_params(model, other)


def test_frozen_parameters_are_not_saved(tmp_path):
    model = mlp(0)
    model[0].weight.requires_grad_(False)
    path = save_checkpoint(tmp_path, 1, model, None, trainer_state={})
    with safe_open(str(path / "model.safetensors"), "pt") as f:
        assert set(f.keys()) == {"0.bias", "2.weight", "2.bias"}
    other = mlp(0)  # same frozen base
    with torch.no_grad():
        other[2].weight.zero_()
    other[0].weight.requires_grad_(False)
    restore_checkpoint(load_latest_checkpoint(tmp_path), other)
    assert_same_params(model, other)


@pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning")  # raised inside peft
def test_lora_roundtrip(tmp_path):
    from peft import LoraConfig, get_peft_model

    def lora_model():
        cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
        return get_peft_model(tiny_llama(0), cfg)

    model = lora_model()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    lm_steps(model, opt, 2)  # lora_B leaves zero: the adapter now changes the output
    path = save_checkpoint(tmp_path, 2, model, opt, trainer_state={"step": 2})
    assert (path / "adapter" / "adapter_config.json").is_file()
    assert (path / "adapter" / "adapter_model.safetensors").is_file()
    assert not (path / "model.safetensors").exists()
    saved_hash = params_hash(model)
    ids = torch.arange(9).unsqueeze(0)
    with torch.no_grad():
        saved_logits = model(ids).logits
    lm_steps(model, opt, 2)  # the uninterrupted run

    other = lora_model()
    assert params_hash(other) != saved_hash
    opt2 = torch.optim.AdamW([p for p in other.parameters() if p.requires_grad], lr=1e-2)
    info = load_latest_checkpoint(tmp_path)
    assert info.weights == "lora"
    assert restore_checkpoint(info, other, opt2) == {"step": 2}
    assert params_hash(other) == saved_hash
    with torch.no_grad():
        assert torch.equal(other(ids).logits, saved_logits)
    lm_steps(other, opt2, 2)
    assert params_hash(other) == params_hash(model)

    with pytest.raises(CheckpointError, match="LoRA adapter"):
        restore_checkpoint(info, tiny_llama(0))


def test_restore_into_a_different_model_is_a_clear_error(tmp_path):
    save_checkpoint(tmp_path, 1, mlp(0), None, trainer_state={})
    info = load_latest_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match="does not fit"):
        restore_checkpoint(info, torch.nn.Sequential(torch.nn.Linear(8, 4)))
    with pytest.raises(CheckpointError, match="shape"):
        restore_checkpoint(info, torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4)))
    with pytest.raises(CheckpointError, match="optimizer"):
        restore_checkpoint(info, mlp(0), optim_for(mlp(0))[0])


def test_unserialisable_trainer_state_fails_before_writing(tmp_path):
    with pytest.raises(CheckpointError, match="JSON"):
        save_checkpoint(tmp_path, 1, mlp(0), None, trainer_state={"x": object()})
    assert load_latest_checkpoint(tmp_path) is None


# -- corruption and fallback -------------------------------------------------------------


def three_checkpoints(tmp_path) -> dict[int, str]:
    hashes = {}
    model = mlp(0)
    for step in (1, 2, 3):
        with torch.no_grad():
            model[0].weight.add_(1.0)
        save_checkpoint(tmp_path, step, model, None, trainer_state={"step": step}, metric=float(step), keep_best_k=5)
        hashes[step] = params_hash(model)
    return hashes


def _truncate(root):
    p = root / "step-000003" / "model.safetensors"
    p.write_bytes(p.read_bytes()[:100])


def _flip_a_byte(root):
    p = root / "step-000003" / "rng.pt"
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0xFF
    p.write_bytes(bytes(data))


def _drop_manifest(root):
    (root / "step-000003" / "MANIFEST.json").unlink()


def _drop_file(root):
    (root / "step-000003" / "rng.pt").unlink()


def _garbage_manifest(root):
    (root / "step-000003" / "MANIFEST.json").write_text("{not json")


def _drop_folder(root):
    import shutil

    shutil.rmtree(root / "step-000003")


@pytest.mark.parametrize("damage", [_truncate, _flip_a_byte, _drop_manifest, _drop_file, _garbage_manifest,
                                    _drop_folder])
def test_damaged_latest_falls_back_to_previous_valid(tmp_path, damage, caplog):
    hashes = three_checkpoints(tmp_path)
    damage(tmp_path / "checkpoints")
    info = load_latest_checkpoint(tmp_path)
    assert info is not None and info.step == 2
    assert info.warnings and "falling back to step-000002" in info.warnings[-1]
    assert "falling back" in caplog.text
    model = mlp(9)
    restore_checkpoint(info, model)
    assert params_hash(model) == hashes[2]


@pytest.mark.parametrize("pointer", ["garbage\x00\n", "../../etc", "step-000099", None])
def test_bad_or_missing_pointer_falls_back_to_newest_valid(tmp_path, pointer):
    three_checkpoints(tmp_path)
    latest = tmp_path / "checkpoints" / "latest"
    if pointer is None:
        latest.unlink()
    else:
        latest.write_text(pointer)
    info = load_latest_checkpoint(tmp_path)
    assert info.step == 3 and info.warnings


def test_pointer_wins_over_a_newer_uncommitted_folder(tmp_path):
    three_checkpoints(tmp_path)
    (tmp_path / "checkpoints" / "latest").write_text("step-000002\n")
    info = load_latest_checkpoint(tmp_path)
    assert info.step == 2 and not info.warnings


def test_all_damaged_raises_instead_of_returning_none(tmp_path):
    three_checkpoints(tmp_path)
    root = tmp_path / "checkpoints"
    for step in (1, 2, 3):
        (root / f"step-{step:06d}" / "MANIFEST.json").unlink()
    with pytest.raises(CheckpointError, match="none is valid") as e:
        load_latest_checkpoint(tmp_path)
    assert isinstance(e.value, AgentRFTError)
    assert "step-000001: no MANIFEST.json" in str(e.value)


def test_pointer_without_folders_raises(tmp_path):
    root = tmp_path / "checkpoints"
    root.mkdir()
    (root / "latest").write_text("step-000004\n")
    with pytest.raises(CheckpointError):
        load_latest_checkpoint(tmp_path)


def test_none_only_when_nothing_was_ever_committed(tmp_path):
    assert load_latest_checkpoint(tmp_path) is None  # no checkpoints/ at all
    (tmp_path / "checkpoints" / ".tmp-step-000001-1-abcd").mkdir(parents=True)  # a crash during the first save
    assert load_latest_checkpoint(tmp_path) is None


# -- retention, replacement, leftovers ------------------------------------------------------


def kept_steps(run_dir) -> list[int]:
    return sorted(int(p.name[5:]) for p in (run_dir / "checkpoints").iterdir() if p.name.startswith("step-"))


def test_best_k_retention_keeps_latest_and_best(tmp_path):
    model = mlp(0)
    metrics = {1: 0.1, 2: 0.5, 3: 0.3, 4: 0.9, 5: None, 6: 0.2, 7: 0.4}
    for step, m in metrics.items():
        save_checkpoint(tmp_path, step, model, None, trainer_state={}, metric=m, keep_best_k=2)
        assert step in kept_steps(tmp_path)
    assert kept_steps(tmp_path) == [2, 4, 7]
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith(".")]


def test_lower_is_better_and_k_zero(tmp_path):
    model = mlp(0)
    for step, m in {1: 3.0, 2: 1.0, 3: 2.0, 4: 5.0}.items():
        save_checkpoint(tmp_path / "a", step, model, None, trainer_state={}, metric=m, keep_best_k=1,
                        higher_is_better=False)
        save_checkpoint(tmp_path / "b", step, model, None, trainer_state={}, metric=m, keep_best_k=0)
    assert kept_steps(tmp_path / "a") == [2, 4]
    assert kept_steps(tmp_path / "b") == [4]


@pytest.mark.parametrize("atomic_exchange", [True, False])
def test_resaving_an_existing_step_replaces_it(tmp_path, monkeypatch, atomic_exchange):
    import agentrft.jobs.checkpoint as ckpt

    if not atomic_exchange:  # kernels / platforms without renameat2(RENAME_EXCHANGE)
        monkeypatch.setattr(ckpt, "_exchange", lambda a, b: False)
    model = mlp(0)
    save_checkpoint(tmp_path, 5, model, None, trainer_state={"v": 1})
    with torch.no_grad():
        model[0].weight.mul_(2)
    save_checkpoint(tmp_path, 5, model, None, trainer_state={"v": 2})
    info = load_latest_checkpoint(tmp_path)
    assert info.trainer_state == {"v": 2}
    other = mlp(1)
    restore_checkpoint(info, other)
    assert params_hash(other) == params_hash(model)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["latest", "step-000005"]


def test_leftovers_of_dead_processes_are_cleaned_at_next_save(tmp_path):
    dead = subprocess.Popen(["true"])
    dead.wait()
    root = tmp_path / "checkpoints"
    stale = root / f".tmp-step-000003-{dead.pid}-deadbeef"
    live = root / f".tmp-step-000003-{os.getppid()}-cafe"  # another live process: left alone
    trash = root / ".trash-step-000001-1-abcd"
    for d in (stale, live, trash):
        (d / "sub").mkdir(parents=True)
        (d / "sub" / "junk").write_bytes(b"x" * 10)
    (root / "latest.tmp").write_text("step-000001")
    save_checkpoint(tmp_path, 4, mlp(0), None, trainer_state={})
    assert sorted(p.name for p in root.iterdir()) == sorted(["latest", "step-000004", live.name])


def test_manifest_lists_every_file_with_size_and_sha256(tmp_path):
    import hashlib

    model = mlp(0)
    opt, sched = optim_for(model)
    path = save_checkpoint(tmp_path, 7, model, opt, sched, trainer_state={"cursor": 3})
    manifest = json.loads((path / "MANIFEST.json").read_text())
    files = {p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file()} - {"MANIFEST.json"}
    assert set(manifest["files"]) == files == {"model.safetensors", "optimizer.pt", "scheduler.pt", "rng.pt",
                                               "trainer_state.json"}
    for rel, meta in manifest["files"].items():
        data = (path / rel).read_bytes()
        assert meta == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    assert json.loads((path / "trainer_state.json").read_text())["trainer_state"] == {"cursor": 3}


# -- kill -9 during writes --------------------------------------------------------------------

WRITER = textwrap.dedent("""
    import sys, torch
    from agentrft.jobs.checkpoint import save_checkpoint

    model = torch.nn.Linear(1024, 512)  # 2 MB of weights + 4 MB of AdamW moments per checkpoint
    opt = torch.optim.AdamW(model.parameters())
    model(torch.randn(2, 1024)).sum().backward()
    opt.step()
    print("ready", flush=True)
    run_dir, step = sys.argv[1], int(sys.stdin.readline())
    while True:
        with torch.no_grad():  # the weights say which step they belong to
            model.weight.fill_(step)
            model.bias.fill_(-step)
        save_checkpoint(run_dir, step, model, opt, trainer_state={"step": step}, metric=float(step % 5),
                        keep_best_k=2)
        print("saved", step, flush=True)
        step += 1
""")


def expected_hash(step: int) -> str:
    m = torch.nn.Linear(1024, 512)
    with torch.no_grad():
        m.weight.fill_(step)
        m.bias.fill_(-step)
    return params_hash(m)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_kill_9_during_writes_always_leaves_a_loadable_checkpoint(tmp_path):
    rng = random.Random(1234)
    run_dir = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def spawn() -> subprocess.Popen:
        # Started one repetition early so that importing torch overlaps the previous writer.
        return subprocess.Popen([sys.executable, "-c", WRITER, str(run_dir)], env=env, stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    reps = 8
    committed = 0  # newest step a writer reported as saved
    kills_mid_write = 0
    waiting = spawn()
    try:
        for rep in range(reps):
            proc, waiting = waiting, (spawn() if rep + 1 < reps else None)
            info = load_latest_checkpoint(run_dir)
            start = info.step + 1 if info else 1  # like a resume
            try:
                assert proc.stdout.readline() == "ready\n", proc.stderr.read()
                proc.stdin.write(f"{start}\n")
                proc.stdin.flush()
                if rep == 0:  # make sure at least one save completes
                    assert proc.stdout.readline() == f"saved {start}\n"
                    committed = start
                time.sleep(rng.uniform(0.0, 0.3))
            finally:
                proc.kill()  # SIGKILL
                proc.wait()
            saved = [int(line.split()[1]) for line in proc.stdout.read().splitlines() if line.startswith("saved")]
            for f in (proc.stdin, proc.stdout, proc.stderr):
                f.close()
            committed = max([committed, *saved])
            kills_mid_write += any(p.name.startswith((".tmp-", ".trash-")) for p in (run_dir / "checkpoints").iterdir())

            info = load_latest_checkpoint(run_dir)
            assert info is not None
            assert not info.warnings  # `latest` always names a complete checkpoint
            assert info.step >= committed
            model = torch.nn.Linear(1024, 512)
            opt = torch.optim.AdamW(model.parameters())
            assert restore_checkpoint(info, model, opt)["step"] == info.step
            assert params_hash(model) == expected_hash(info.step)
            assert len(opt.state_dict()["state"]) == 2
            committed = info.step
    finally:
        if waiting is not None:
            waiting.kill()
            waiting.communicate()

    # The next save clears what the killed writers left behind.
    save_checkpoint(run_dir, committed + 1, torch.nn.Linear(2, 2), None, trainer_state={})
    assert not [p for p in (run_dir / "checkpoints").iterdir() if p.name.startswith(".")]
    print(f"kills that left a partial write behind: {kills_mid_write}/{reps}")
