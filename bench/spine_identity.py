"""The same tiny-model jobs on two code versions: every per-step metric and every stored token id must match.

Three jobs on the tiny random model (seed 0): RFT on the toy environment (a tool, 2 turns), SFT on the
finance environment's logged demonstrations with micro-batch 1 (the quickstart's SFT shape) and RFT on
finance (multi-turn tool use). Run it once per checkout and compare the two ``metrics.json``::

    git worktree add /tmp/old <commit>
    PYTHONPATH=/tmp/old/src .venv/bin/python bench/spine_identity.py /tmp/spine-old
    PYTHONPATH=src          .venv/bin/python bench/spine_identity.py /tmp/spine-new
    .venv/bin/python bench/spine_identity.py --compare /tmp/spine-old /tmp/spine-new

Timing metrics (``*_s``) are left out; a renamed metric shows as such.
"""
import json, sys, copy
from agentrft.config import load_config
from agentrft.jobs.store import RunStore
from agentrft.models.loading import make_tiny_model
from agentrft.train.runner import run_job

if sys.argv[1] == "--compare":
    a, b = (json.load(open(f"{d}/metrics.json")) for d in sys.argv[2:4])
    same = True
    for job in a:
        if job.endswith("_tokens"):
            ok = a[job] == b.get(job)
            same &= ok
            print(f"{job}: {len(a[job])} trajectories, token ids {'identical' if ok else 'DIFFER'}")
            continue
        for step in a[job]:
            diff = {m: (v, b[job].get(step, {}).get(m)) for m, v in a[job][step].items() if v != b[job].get(step, {}).get(m)}
            same &= not diff
            print(f"{job} step {step}: {'identical' if not diff else diff}")
    sys.exit(0 if same else 1)
out = sys.argv[1]
model, tok = make_tiny_model(seed=0)
res = {}
jobs = {
 "rft_toy": {"method": "rft", "model": "unused", "data": {"env": "toy"}, "lora": {"r": 4},
             "training": {"max_steps": 3, "batch_size": 2, "eval_interval": 3, "eval_samples": 2},
             "rft": {"group_size": 4}, "optim": {"learning_rate": 1e-2},
             "rollout": {"max_turns": 2, "max_new_tokens": 12, "temperature": 1.0}},
 "sft_fin": {"method": "sft", "model": "unused", "data": {"env": "finance", "demonstrations": "logged", "limit_train": 4, "limit_eval": 1},
             "lora": {"r": 4}, "training": {"max_steps": 2, "batch_size": 2, "eval_interval": 2, "eval_samples": 1},
             "optim": {"learning_rate": 1e-3, "micro_batch_size": 1}, "rollout": {"max_turns": 2, "max_new_tokens": 8}},
 "rft_fin": {"method": "rft", "model": "unused", "data": {"env": "finance", "limit_eval": 1}, "lora": {"r": 4},
             "training": {"max_steps": 2, "batch_size": 2, "eval_interval": 2, "eval_samples": 1},
             "rft": {"group_size": 4}, "optim": {"learning_rate": 1e-3},
             "rollout": {"max_turns": 3, "max_new_tokens": 16, "temperature": 1.0}},
}
for name, c in jobs.items():
    cfg = load_config({**c, "out_dir": f"{out}/{name}", "training": {**c["training"], "cpu_matmul": "mkl"}})
    run_job(cfg, model=copy.deepcopy(model), tokenizer=tok, log=lambda s: None)
    with RunStore(f"{out}/{name}") as s:
        frame = s.metrics_frame("train")
        res[name] = {str(k): {m: v for m, v in row.items() if not m.endswith("_s") and not m.endswith("_s_mean") and m not in ("no_signal", "no_signal_steps")} for k, row in frame.items()}
        res[name + "_tokens"] = [t["token_ids"] for t in s.trajectories()]
json.dump(res, open(f"{out}/metrics.json", "w"), sort_keys=True)
print("done")
