"""RFT step time on one GPU: agentrft's trainer with vLLM sampling (LoRA hot-swap) against TRL's GRPOTrainer
with vLLM (colocate mode), on the same job. Untested on a GPU so far: see bench/gpu/README.md.

The job is ``bench/grpo_vs_trl.py``'s (the bundled SmolLM2-135M, "What is A+B?", group 4, 16 completions per
step, 64 new tokens at temperature 1, PPO-clip 0.2 with token-mean aggregation, learning rate 1e-5 constant,
beta 0, the same seed), with two changes that a GPU run needs: LoRA (r 16, alpha 32, every projection) instead
of full fine-tuning, because the trainer pushes its weights to vLLM as a LoRA adapter after each update; and
bfloat16 weights on CUDA.

Arms, each in its own child process (``--worker agentrft|trl``):

* ``agentrft``: ``vllm serve`` started by this script on 127.0.0.1 (runtime LoRA loading,
  ``--logprobs-mode processed_logprobs``), the trainer on the same GPU with ``sampler.backend: vllm``; after
  each update the adapter is pushed (``POST /v1/load_lora_adapter``) and the next rollouts request it. The
  script checks the hot-swap: every step's ``policy_version`` is the number of updates before it, and the
  server lists the run's adapter.
* ``trl``: ``GRPOTrainer`` with ``use_vllm=True, vllm_mode="colocate"`` and a PEFT LoRA of the same shape
  (TRL merges the adapter into vLLM's weights after each step).

Reported: seconds per step (median over steps 2..N: step 1 pays start-up), the ratio TRL / agentrft (> 1:
agentrft is faster), reward per step, and the peak GPU memory of each arm (``torch.cuda.max_memory_allocated``;
vLLM's own reservation is set by ``--gpu-memory-utilization``, the same fraction for both arms).

    python bench/gpu/vllm_vs_trl.py --json bench/results/gpu_vllm_vs_trl.json
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # bench/: the job of grpo_vs_trl.py

from grpo_vs_trl import COMPLETIONS_PER_STEP, GROUP, LR, MAX_NEW_TOKENS, SEED, addition_reward, make_rows  # noqa: E402

STEPS = 8
LORA_R = 16
GPU_MEMORY_UTILIZATION = 0.35
ADAPTER = "addition-rft"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(url: str, proc: subprocess.Popen, timeout_s: float = 600.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"vllm serve exited with {proc.returncode} before it answered {url}")
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(2)
    raise TimeoutError(f"vllm serve did not answer {url} within {timeout_s:.0f} s")


def start_vllm(model_dir: Path, lora_root: Path, port: int, log_path: Path) -> subprocess.Popen:
    env = {**os.environ, "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True"}
    cmd = ["vllm", "serve", str(model_dir), "--host", "127.0.0.1", "--port", str(port),
           "--enable-lora", "--max-lora-rank", str(LORA_R), "--max-loras", "2",
           "--logprobs-mode", "processed_logprobs", "--gpu-memory-utilization", str(GPU_MEMORY_UTILIZATION),
           "--max-model-len", "1024", "--seed", str(SEED)]
    proc = subprocess.Popen(cmd, env=env, stdout=log_path.open("w"), stderr=subprocess.STDOUT)
    _wait_for(f"http://127.0.0.1:{port}/v1/models", proc)
    return proc


def agentrft_job(out: Path, port: int) -> dict:
    """The agentrft arm's training config (a CPU test loads it, so a renamed key fails there first)."""
    return {
        "method": "rft", "model": "smollm2-135m", "seed": SEED, "out_dir": str(out / "run"),
        "data": {"env": "grpo_vs_trl:env_spec"},
        "lora": {"enabled": True, "r": LORA_R, "alpha": 2 * LORA_R},
        "training": {"max_steps": STEPS, "batch_size": COMPLETIONS_PER_STEP // GROUP, "eval_samples": 0,
                     "checkpoint_interval": 10_000, "keep_best_k": 1, "device": "cuda", "dtype": "bfloat16"},
        "rft": {"group_size": GROUP, "advantage": "grpo", "loss": "ppo_clip", "aggregation": "token_mean",
                "beta": 0.0, "clip_eps_low": 0.2, "clip_eps_high": 0.2, "filter_zero_variance": False},
        "optim": {"learning_rate": LR, "micro_batch_size": COMPLETIONS_PER_STEP, "warmup_steps": 0},
        "rollout": {"max_turns": 1, "max_new_tokens": MAX_NEW_TOKENS, "temperature": 1.0, "max_total_tokens": 512},
        "sampler": {"backend": "vllm", "url": f"http://127.0.0.1:{port}/v1", "model": ADAPTER,
                    "sync_dir": str(out / "run" / "sync")},
    }


def run_agentrft(out: Path) -> dict:
    import torch

    from agentrft.config import load_config
    from agentrft.jobs.store import RunStore
    from agentrft.models.loading import resolve_model
    from agentrft.train.runner import run_job

    model_dir = resolve_model("smollm2-135m")
    port = _free_port()
    proc = start_vllm(model_dir, out, port, out / "vllm.log")
    try:
        cfg = load_config(agentrft_job(out, port))
        torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        run_job(cfg, log=lambda line: None)
        wall = time.perf_counter() - t0
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=10) as r:
            served = [m["id"] for m in json.load(r)["data"]]
        frame = RunStore(out / "run").metrics_frame("train")
        steps = [frame[s] for s in sorted(frame)]
        versions = [int(m.get("policy_version", -1)) for m in steps]
        return {
            "step_s": [m["step_time_s"] for m in steps],
            "sampling_s": [m["sampling_s"] for m in steps],
            "training_s": [m["training_s"] for m in steps],
            "reward_mean": [m["reward_mean"] for m in steps],
            "policy_versions": versions,
            "hot_swap_ok": versions == list(range(len(steps))) and ADAPTER in served,
            "served_models": served,
            "wall_s": wall,
            "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20,
        }
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def run_trl(out: Path) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from agentrft.models.chat_format import get_chat_format
    from agentrft.models.loading import load_tokenizer, resolve_model

    torch.manual_seed(SEED)
    model_dir = resolve_model("smollm2-135m")
    tokenizer = load_tokenizer("smollm2-135m")
    chat = get_chat_format(tokenizer)
    data = Dataset.from_list([{"prompt": chat.render_text(r["messages"], None, add_generation_prompt=True),
                               "answer": r["answer"]} for r in make_rows()])

    def reward(completions, answer, **_) -> list[float]:
        return [addition_reward(c[0]["content"] if isinstance(c, list) else c, a) for c, a in zip(completions, answer)]

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.t0, self.steps = 0.0, []

        def on_step_begin(self, args, state, control, **kw):
            torch.cuda.synchronize()
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            torch.cuda.synchronize()
            self.steps.append(time.perf_counter() - self.t0)

    timer = StepTimer()
    args = GRPOConfig(
        output_dir=str(out / "trl"), bf16=True, seed=SEED, data_seed=SEED,
        per_device_train_batch_size=COMPLETIONS_PER_STEP, gradient_accumulation_steps=1, num_generations=GROUP,
        max_completion_length=MAX_NEW_TOKENS, temperature=1.0, top_p=1.0, max_steps=STEPS, learning_rate=LR,
        lr_scheduler_type="constant", warmup_steps=0, beta=0.0, epsilon=0.2, loss_type="dapo", num_iterations=1,
        logging_steps=1, save_strategy="no", report_to=[], disable_tqdm=True,
        use_vllm=True, vllm_mode="colocate", vllm_gpu_memory_utilization=GPU_MEMORY_UTILIZATION,
    )
    peft = LoraConfig(r=LORA_R, lora_alpha=2 * LORA_R, lora_dropout=0.0, task_type="CAUSAL_LM",
                      target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    torch.cuda.reset_peak_memory_stats()
    trainer = GRPOTrainer(model=str(model_dir), reward_funcs=reward, args=args, train_dataset=data,
                          processing_class=tokenizer, callbacks=[timer], peft_config=peft)
    t0 = time.perf_counter()
    trainer.train()
    logs = [h for h in trainer.state.log_history if "reward" in h]
    return {"step_s": timer.steps, "reward_mean": [h["reward"] for h in logs], "wall_s": time.perf_counter() - t0,
            "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20}


def _median_after_first(xs: list[float]) -> float | None:
    return statistics.median(xs[1:]) if len(xs) > 1 else (xs[0] if xs else None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--worker", choices=("agentrft", "trl"))
    ap.add_argument("--out")
    ap.add_argument("--arms", default="agentrft,trl")
    ap.add_argument("--json")
    a = ap.parse_args()
    if a.worker:  # a child: one arm, its result as JSON on the last line of stdout
        out = Path(a.out)
        out.mkdir(parents=True, exist_ok=True)
        result = run_agentrft(out) if a.worker == "agentrft" else run_trl(out)
        print(json.dumps(result))
        return
    results = {}
    with tempfile.TemporaryDirectory(prefix="gpu-bench-") as tmp:
        for arm in a.arms.split(","):
            proc = subprocess.run([sys.executable, __file__, "--worker", arm, "--out", str(Path(tmp) / arm)],
                                  capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(HERE.parent)})
            if proc.returncode != 0:
                results[arm] = {"error": proc.stderr[-4000:]}
                continue
            results[arm] = json.loads(proc.stdout.strip().splitlines()[-1])
            results[arm]["median_step_s"] = _median_after_first(results[arm]["step_s"])
    ours, theirs = (results.get(k, {}).get("median_step_s") for k in ("agentrft", "trl"))
    summary = {"steps": STEPS, "arms": results, "trl_over_agentrft": theirs / ours if ours and theirs else None}
    try:
        import torch

        summary["device"] = torch.cuda.get_device_name(0)
    except Exception as e:  # no CUDA here: the arms' errors say so
        summary["device"] = f"unavailable ({type(e).__name__})"
    print(json.dumps(summary, indent=2))
    if a.json:
        Path(a.json).write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
