"""GRPO step throughput: agentrft's RFT against TRL's GRPOTrainer on one identical job, one script.

The job (issue 4): the bundled SmolLM2-135M, 64 rows "What is A+B? Answer with
just the number." (random two-digit A and B, seeded), reward 1 if the right
number appears in the answer, else 0.2 if any number does, else 0; group 4,
16 completions per step (4 prompts x 4), at most 64 new tokens at temperature
1, full fine-tuning in float32 on the CPU, beta = 0 (no reference model),
learning rate 1e-5 with a constant schedule, PPO-clip eps 0.2 with token-mean
loss aggregation (TRL's ``dapo`` loss type), 5 optimizer steps, the same seed.
Each framework batches its own way: TRL trains its 16 completions as one
batch; agentrft samples them as one batch and trains them in micro-batches of
8 whose losses are weighted to the same update (less activation memory).

Three arms, each in its own child process (``--worker trl|agentrft``), so
peak RSS is that arm's alone and none warms caches for another:

* ``agentrft``, as the ``agentrft`` command runs it: on tcmalloc where it is
  installed (``agentrft.allocator``; ``make`` installs it),
* ``trl``, as TRL's users run it: the C library's malloc,
* ``trl_tcmalloc``: TRL on agentrft's allocator, to show what the allocator
  alone is worth to it.

The parent alternates them ``--repeats`` times (``--arms`` picks a subset)
and reports medians:

* seconds per step (median over all steps of all repeats; TRL's step is timed
  by a trainer callback, ours is the runner's ``step_time_s``: both include
  generation, reward and the update),
* the ratio TRL / agentrft for both TRL arms (> 1: agentrft is faster),
* peak RSS of each child (``ru_maxrss``), overall and over steps 1-4 (our
  runner writes a checkpoint after the last step; TRL here saves none),
* generated tokens per second of step time, and per second of generation
  (TRL's ``model.generate`` is timed by wrapping it),
* agentrft's training FLOP/s as a fraction of the fp32 matmul peak measured
  in the same process (a 2048^3 product, best of 5, through MKL
  (``torch.mm``) and through oneDNN; the higher of the two counts as the
  peak: agentrft's linear layers run on oneDNN where it is faster,
  ``training.cpu_matmul``; TRL runs stock PyTorch). The FLOPs are the work
  the update needs, as the trainer ran it: 6 x decoder parameters x the
  decoder's tokens (a shared prompt prefix once, padding not counted: the
  runner's ``decoder_tokens`` metric) plus 6 x head parameters x trained
  positions (the head runs on those only). Reported over all steps and over
  steps 3-5: steps 1-2 also pay one-time costs (the optimizer's state is
  allocated in step 1; the first steps fault in the process's new memory).

    .venv/bin/pip install -e '.[bench]'      # TRL is a bench-only extra
    .venv/bin/python bench/grpo_vs_trl.py --json bench/results/grpo_vs_trl.json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SYSTEM = "You are a helpful assistant."
QUESTION = "What is {a}+{b}? Answer with just the number."
ROWS = 64
GROUP = 4
COMPLETIONS_PER_STEP = 16
MAX_NEW_TOKENS = 64
STEPS = 5
MICRO_BATCH = 8  # agentrft's training micro-batch (see agentrft_config)
LR = 1e-5
SEED = 0

_NUMBER = re.compile(r"-?\d+")


def make_rows(n: int = ROWS, seed: int = SEED) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        rows.append({"id": f"add-{i}", "answer": str(a + b),
                     "messages": [{"role": "system", "content": SYSTEM},
                                  {"role": "user", "content": QUESTION.format(a=a, b=b)}]})
    return rows


def addition_reward(text: str, answer: str) -> float:
    """1 if the right number appears, 0.2 if some number does, else 0."""
    numbers = _NUMBER.findall(text)
    if answer in numbers:
        return 1.0
    return 0.2 if numbers else 0.0


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


# -- agentrft ------------------------------------------------------------------------


def env_spec():
    """The addition task as an agentrft environment (no tools: single-turn rollouts)."""
    from agentrft.tools.environment import Environment, EnvSpec
    from agentrft.types import Grade

    rows = make_rows()

    def grade(traj, row) -> Grade:
        r = addition_reward(traj.output_text, row["answer"])
        return Grade(reward=r, sub_rewards={"addition": r})

    return EnvSpec(name="addition", description="What is A+B? (benchmark)", splits=("train", "validation"),
                   load_split=lambda split: [dict(r) for r in rows], make_env=lambda row: Environment(), grade=grade)


def agentrft_config(out: Path, model: str = "smollm2-135m"):
    """The job above as an agentrft RFT config (full fine-tuning, no validation evals)."""
    from agentrft.config import load_config

    return load_config({
        "method": "rft", "model": model, "seed": SEED, "out_dir": str(out / "run"),
        "data": {"env": "grpo_vs_trl:env_spec"},
        "lora": {"enabled": False},
        "training": {"max_steps": STEPS, "batch_size": COMPLETIONS_PER_STEP // GROUP, "eval_samples": 0,
                     "checkpoint_interval": 10_000, "keep_best_k": 1},
        "rft": {"group_size": GROUP, "advantage": "grpo", "loss": "ppo_clip", "aggregation": "token_mean",
                "beta": 0.0, "clip_eps_low": 0.2, "clip_eps_high": 0.2,
                "filter_zero_variance": False},  # TRL trains zero-advantage groups too: same work
        # the 16 completions are sampled in one batch and trained in micro-batches of 8 with the loss weighted
        # so the update equals one batch of 16's: same job, less memory (measured on tcmalloc, 5 steps: peak RSS
        # 4,646 / 3,810 / 3,431 MB at micro-batches of 16 / 8 / 4; training steps 3-5: 3.4 / 3.2 / 3.8 s)
        "optim": {"learning_rate": LR, "micro_batch_size": MICRO_BATCH, "warmup_steps": 0},
        "rollout": {"max_turns": 1, "max_new_tokens": MAX_NEW_TOKENS, "temperature": 1.0, "max_total_tokens": 512},
    })


def run_agentrft(out: Path) -> dict:
    import torch

    from agentrft import allocator

    from agentrft.jobs.store import RunStore
    from agentrft.machine import cpu_model, matmul_peak_flops
    from agentrft.models.onednn import uses_onednn
    from agentrft.train.runner import run_job

    torch.manual_seed(SEED)
    cfg = agentrft_config(out)
    t0 = time.perf_counter()
    rss_after_step: list[float] = []

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)
        if line.startswith("step "):
            rss_after_step.append(peak_rss_mb())

    result = run_job(cfg, log=log)
    wall = time.perf_counter() - t0
    frame = RunStore(result.run_dir).metrics_frame("train")
    steps = [frame[k] for k in sorted(frame)]
    model = result.policy.model
    n_params = sum(p.numel() for p in model.parameters())
    head = model.get_output_embeddings().weight.numel()
    flops, padded_flops = [], []
    for m in steps:
        # the decoder's tokens as the trainer ran them: a shared prefix once, no padding (decoder_positions
        # counts the padding too); the head runs on the trained positions only
        head_flops = 6 * head * m["trained_rollouts"] * m["sampled_tokens_mean"]
        flops.append(6 * (n_params - head) * m["decoder_tokens"] + head_flops)
        padded_flops.append(6 * (n_params - head) * m["decoder_positions"] + head_flops)
    peaks = matmul_peak_flops()
    peak = max(peaks.values())  # the machine's best fp32 product, whichever library reaches it
    train_flops = sum(flops) / sum(m["training_s"] for m in steps)
    steady = slice(2, None)  # steps 3..: step 1 allocates the optimizer state, steps 1-2 grow the heap
    steady_flops = sum(flops[steady]) / sum(m["training_s"] for m in steps[steady])
    gen_tokens = [m["sampled_tokens_mean"] * COMPLETIONS_PER_STEP for m in steps]
    return {
        "step_s": [m["step_time_s"] for m in steps],
        "sampling_s": [m["sampling_s"] for m in steps],
        "training_s": [m["training_s"] for m in steps],
        "generated_tokens": gen_tokens,
        "generated_tokens_per_step_s": sum(gen_tokens) / sum(m["step_time_s"] for m in steps),
        "generated_tokens_per_generation_s": sum(gen_tokens) / sum(m["sampling_s"] for m in steps),
        "reward_mean": [m["reward_mean"] for m in steps],
        "train_flops_per_s": train_flops,
        "train_flops_per_s_steps_3_on": steady_flops,
        "padding_fraction": 1 - sum(m["decoder_tokens"] for m in steps) / sum(m["decoder_positions"] for m in steps),
        "decoder_tokens": [m["decoder_tokens"] for m in steps],
        "decoder_positions": [m["decoder_positions"] for m in steps],
        "cpu": cpu_model(),
        "matmul_peak_flops_per_s": peak,
        "matmul_peak_flops_per_s_by_library": peaks,
        "linear_layers": "onednn" if uses_onednn(model) else "mkl",
        "train_fraction_of_peak": train_flops / peak,
        "train_fraction_of_peak_steps_3_on": steady_flops / peak,
        "allocator": allocator.active(),
        "params": n_params,
        "wall_s": wall,
        "peak_rss_mb": peak_rss_mb(),
        # the runner writes a checkpoint after the last step (TRL here saves none): compare steps 1..N-1 too
        "peak_rss_mb_before_last_step": rss_after_step[-2] if len(rss_after_step) >= 2 else None,
    }


# -- TRL -------------------------------------------------------------------------------


def run_trl(out: Path) -> dict:
    import torch

    from agentrft import allocator
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from agentrft.models.loading import load_model

    torch.manual_seed(SEED)
    from agentrft.models.chat_format import get_chat_format

    model, tokenizer = load_model("smollm2-135m")
    rows = make_rows()
    # The same prompt text agentrft samples from (its chat format, no tools), so both see identical tokens.
    chat = get_chat_format(tokenizer)
    data = Dataset.from_list([{"prompt": chat.render_text(r["messages"], None, add_generation_prompt=True),
                               "answer": r["answer"]} for r in rows])

    def reward(completions, answer, **_) -> list[float]:
        return [addition_reward(c[0]["content"] if isinstance(c, list) else c, a) for c, a in zip(completions, answer)]

    gen_time = [0.0]
    generate = model.generate

    def timed_generate(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return generate(*args, **kwargs)
        finally:
            gen_time[0] += time.perf_counter() - t0

    model.generate = timed_generate

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.t0 = 0.0
            self.steps: list[float] = []
            self.gen: list[float] = []
            self.rss: list[float] = []

        def on_step_begin(self, args, state, control, **kw):
            gen_time[0] = 0.0
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            self.steps.append(time.perf_counter() - self.t0)
            self.gen.append(gen_time[0])
            self.rss.append(peak_rss_mb())

    timer = StepTimer()
    args = GRPOConfig(
        output_dir=str(out / "trl"), use_cpu=True, bf16=False, fp16=False, seed=SEED, data_seed=SEED,
        per_device_train_batch_size=COMPLETIONS_PER_STEP, gradient_accumulation_steps=1, num_generations=GROUP,
        max_completion_length=MAX_NEW_TOKENS, temperature=1.0, top_p=1.0, max_steps=STEPS, learning_rate=LR,
        lr_scheduler_type="constant", warmup_steps=0, beta=0.0, epsilon=0.2, loss_type="dapo", num_iterations=1,
        logging_steps=1, save_strategy="no", report_to=[], disable_tqdm=True, dataloader_num_workers=0,
    )
    trainer = GRPOTrainer(model=model, reward_funcs=reward, args=args, train_dataset=data,
                          processing_class=tokenizer, callbacks=[timer])
    t0 = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - t0
    logs = [h for h in trainer.state.log_history if "completions/mean_length" in h]
    gen_tokens = [h["completions/mean_length"] * COMPLETIONS_PER_STEP for h in logs]
    return {
        "step_s": timer.steps,
        "generation_s": timer.gen,
        "generated_tokens": gen_tokens,
        "generated_tokens_per_step_s": sum(gen_tokens) / sum(timer.steps),
        "generated_tokens_per_generation_s": sum(gen_tokens) / sum(timer.gen) if sum(timer.gen) > 0 else None,
        "reward_mean": [h.get("reward") for h in logs],
        "wall_s": wall,
        "peak_rss_mb": peak_rss_mb(),
        "peak_rss_mb_before_last_step": timer.rss[-2] if len(timer.rss) >= 2 else None,
        "allocator": allocator.active(),
    }


# -- parent ---------------------------------------------------------------------------


ARMS = {
    "agentrft": ("agentrft", "auto"),  # as the agentrft command runs: on tcmalloc where installed
    "trl": ("trl", "system"),  # TRL as its users run it: the C library's malloc
    "trl_tcmalloc": ("trl", "auto"),  # TRL on agentrft's allocator: what the allocator alone is worth
}


def run_worker(arm: str) -> dict:
    """Run one arm in a fresh child process and return its JSON report."""
    from agentrft.allocator import ALLOCATOR_ENV, preload_environ

    framework, alloc = ARMS[arm]
    with tempfile.TemporaryDirectory(prefix=f"bench-{arm}-") as tmp:
        report = Path(tmp) / "report.json"
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]),
               ALLOCATOR_ENV: alloc}
        env = preload_environ(env) or env
        proc = subprocess.run([sys.executable, __file__, "--worker", framework, "--report", str(report)], env=env)
        if proc.returncode != 0:
            raise SystemExit(f"the {arm} worker failed with exit code {proc.returncode}")
        return json.loads(report.read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", dest="json_out", default=None, help="write the report here")
    ap.add_argument("--repeats", type=int, default=2, help="runs of each arm, alternated")
    ap.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated subset of {', '.join(ARMS)}")
    ap.add_argument("--worker", choices=("trl", "agentrft"), help=argparse.SUPPRESS)
    ap.add_argument("--report", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.worker:
        with tempfile.TemporaryDirectory(prefix="bench-out-") as tmp:
            result = (run_trl if args.worker == "trl" else run_agentrft)(Path(tmp))
        Path(args.report).write_text(json.dumps(result))
        return

    import torch
    import trl

    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        raise SystemExit(f"unknown arms {unknown}; choose from {', '.join(ARMS)}")
    runs: dict[str, list[dict]] = {a: [] for a in arms}
    for i in range(args.repeats):
        for arm in arms if i % 2 == 0 else arms[::-1]:
            print(f"[bench] repeat {i + 1}/{args.repeats}: {arm}", file=sys.stderr, flush=True)
            runs[arm].append(run_worker(arm))

    def median_of(name: str, key: str) -> float | None:
        if not runs.get(name):
            return None
        return statistics.median(v for r in runs[name] for v in (r[key] if isinstance(r[key], list) else [r[key]]))

    def peak_of(name: str, key: str) -> float | None:
        return max(r[key] for r in runs[name]) if runs.get(name) else None

    def ratio(a: float | None, b: float | None) -> float | None:
        return a / b if a is not None and b is not None else None

    ours = median_of("agentrft", "step_s")
    summary = {
        "job": {"model": "smollm2-135m", "rows": ROWS, "group": GROUP, "completions_per_step": COMPLETIONS_PER_STEP,
                "max_new_tokens": MAX_NEW_TOKENS, "steps": STEPS, "lr": LR, "beta": 0.0, "dtype": "float32",
                "full_fine_tuning": True, "agentrft_micro_batch": MICRO_BATCH, "device": "cpu",
                "torch_threads": torch.get_num_threads(), "repeats": args.repeats},
        "versions": {"torch": torch.__version__, "trl": trl.__version__},
        "allocators": {arm: sorted({r["allocator"] for r in runs[arm]}) for arm in arms},
        "agentrft_step_s_median": ours,
        "trl_step_s_median": median_of("trl", "step_s"),
        "trl_tcmalloc_step_s_median": median_of("trl_tcmalloc", "step_s"),
        "speedup_vs_trl": ratio(median_of("trl", "step_s"), ours),
        "speedup_vs_trl_tcmalloc": ratio(median_of("trl_tcmalloc", "step_s"), ours),
        "agentrft_peak_rss_mb": peak_of("agentrft", "peak_rss_mb"),
        "trl_peak_rss_mb": peak_of("trl", "peak_rss_mb"),
        "trl_tcmalloc_peak_rss_mb": peak_of("trl_tcmalloc", "peak_rss_mb"),
        "agentrft_peak_rss_mb_steps_1_to_4": peak_of("agentrft", "peak_rss_mb_before_last_step"),
        "trl_peak_rss_mb_steps_1_to_4": peak_of("trl", "peak_rss_mb_before_last_step"),
        "trl_tcmalloc_peak_rss_mb_steps_1_to_4": peak_of("trl_tcmalloc", "peak_rss_mb_before_last_step"),
        "agentrft_generated_tokens_per_s": median_of("agentrft", "generated_tokens_per_step_s"),
        "trl_generated_tokens_per_s": median_of("trl", "generated_tokens_per_step_s"),
        "agentrft_sampling_tokens_per_s": median_of("agentrft", "generated_tokens_per_generation_s"),
        "trl_generation_tokens_per_s": median_of("trl", "generated_tokens_per_generation_s"),
        "agentrft_sampling_s_median": median_of("agentrft", "sampling_s"),
        "agentrft_training_s_median": median_of("agentrft", "training_s"),
        "trl_generation_s_median": median_of("trl", "generation_s"),
        "agentrft_train_fraction_of_matmul_peak": median_of("agentrft", "train_fraction_of_peak"),
        "agentrft_train_fraction_of_matmul_peak_steps_3_on": median_of("agentrft", "train_fraction_of_peak_steps_3_on"),
        "agentrft_padding_fraction": median_of("agentrft", "padding_fraction"),
        "matmul_peak_gflops": ratio(median_of("agentrft", "matmul_peak_flops_per_s"), 1e9),
        "matmul_peak_gflops_by_library": {lib: statistics.median(r["matmul_peak_flops_per_s_by_library"][lib]
                                                                 for r in runs["agentrft"]) / 1e9
                                          for lib in runs["agentrft"][0]["matmul_peak_flops_per_s_by_library"]}
                                         if runs.get("agentrft") else None,
        "agentrft_linear_layers": runs["agentrft"][0]["linear_layers"] if runs.get("agentrft") else None,
        "cpu": runs["agentrft"][0]["cpu"] if runs.get("agentrft") else None,
        "runs": runs,
    }
    print(json.dumps({k: v for k, v in summary.items() if k != "runs"}, indent=2))
    if args.json_out:
        Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_out).write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
