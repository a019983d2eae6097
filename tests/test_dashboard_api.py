"""The dashboard's JSON API on real runs: two tiny RFT runs trained here, and a synthetic 10,000-trajectory run.

The app (the dashboard routers over a :class:`DirectoryRunIndex`) is served by uvicorn in a thread and read
with httpx; every figure is checked against what :class:`RunStore` holds for the same run.
"""

from __future__ import annotations

import copy
import math
import sys
import time
from pathlib import Path

import httpx
import pytest

from agentrft.config import load_config
from agentrft.jobs.store import RunStore

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import dashboard as bench  # noqa: E402

TINY_RFT = {
    "method": "rft", "model": "smollm2-135m", "data": {"env": "toy"}, "lora": {"enabled": False},
    "training": {"max_steps": 3, "batch_size": 2, "eval_interval": 2, "eval_samples": 2, "checkpoint_interval": 1},
    "rft": {"group_size": 4}, "optim": {"learning_rate": 0.01, "micro_batch_size": 8},
    "rollout": {"max_turns": 1, "max_new_tokens": 10, "temperature": 0.7},
}
BIG = 10_000
pytestmark = pytest.mark.slow


def build_runs(root: Path, tiny_model) -> Path:
    """``root/rft-a`` and ``root/rft-b`` (real tiny RFT runs, 3 steps; rft-b stored with ``privacy.store:
    redacted``) and ``root/big`` (10,000 trajectories)."""
    from agentrft.train.runner import run_job

    model, tok = tiny_model
    for name, seed, store in (("rft-a", 0, "full"), ("rft-b", 1, "redacted")):
        cfg = load_config({**TINY_RFT, "seed": seed, "out_dir": str(root / name), "privacy": {"store": store}})
        run_job(cfg, model=copy.deepcopy(model), tokenizer=tok, log=lambda s: None)
    bench.write_synthetic_run(root / "big", BIG, steps=50, tokens=40)
    (root / "not-a-run").mkdir()
    return root


@pytest.fixture(scope="module")
def runs_root(tmp_path_factory, tiny_model) -> Path:
    return build_runs(tmp_path_factory.mktemp("runs"), tiny_model)


@pytest.fixture(scope="module")
def api(runs_root):
    from agentrft.platform.dashboard import create_app
    from agentrft.platform.runs import DirectoryRunIndex
    from agentrft.serving import serve_in_background

    with serve_in_background(create_app(DirectoryRunIndex(runs_root))) as v1:
        with httpx.Client(base_url=v1.removesuffix("/v1"), timeout=60) as client:
            yield client


def _nan_to_none(x):
    return None if x is None or math.isnan(x) else x


def test_runs_list_shows_every_run_with_progress(api, runs_root):
    body = api.get("/dashboard/api/runs").json()
    runs = {r["id"]: r for r in body["data"]}
    assert set(runs) == {"rft-a", "rft-b", "big"}
    a = runs["rft-a"]
    with RunStore(runs_root / "rft-a") as store:
        frame = store.metrics_frame("train")
    assert a["status"] == "completed" and a["method"] == "rft" and a["model"] == "smollm2-135m"
    assert a["latest_step"] == 3 and a["total_steps"] == 3
    assert a["latest_reward"] == pytest.approx(frame[3]["reward_mean"])
    assert runs["big"]["latest_step"] == 50


def test_one_run_has_its_config_lineage_checkpoints_and_events(api, runs_root):
    body = api.get("/dashboard/api/runs/rft-a").json()
    with RunStore(runs_root / "rft-a") as store:
        run, ckpts, events = store.get_run(), store.checkpoints(), store.events()
    assert body["config"] == run["resolved_config"]
    assert body["lineage"]["dataset"] == run["dataset_hash"] and body["lineage"]["all"] == run["hashes"]
    assert [(c["step"], c["metric"], c["is_best"], c["exists"]) for c in body["checkpoints"]] == [
        (c["step"], c["metric"], c["is_best"], c["exists"]) for c in ckpts]
    assert "tool:timeout" in body["error_filters"] and "grader:sample_parse_error" in body["error_filters"]
    page = api.get("/dashboard/api/runs/rft-a/events", params={"limit": 2}).json()
    assert page["total"] == len(events) and [e["id"] for e in page["data"]] == [e["id"] for e in events[::-1][:2]]
    rest = api.get("/dashboard/api/runs/rft-a/events", params={"limit": 100, "offset": 2}).json()
    assert [e["id"] for e in rest["data"]] == [e["id"] for e in events[::-1][2:]]


def test_metric_series_equal_the_store_and_poll_from_a_step(api, runs_root):
    body = api.get("/dashboard/api/runs/rft-a/metrics").json()
    with RunStore(runs_root / "rft-a") as store:
        rows = store.metrics()
    assert rows
    for r in rows:
        split = body["splits"][r["split"]]
        assert split["series"][r["name"]][split["steps"].index(r["step"])] == pytest.approx(_nan_to_none(r["value"]))
    assert body["splits"]["train"]["steps"] == [1, 2, 3] and body["splits"]["validation"]["steps"] == [2, 3]
    names = body["splits"]["train"]["series"]
    for name in ("reward_mean", "reward/even_share", "sampling_s", "grading_s", "training_s", "clip_fraction",
                 "approx_kl", "entropy", "tool_calls_per_rollout"):
        assert name in names, name
    later = api.get("/dashboard/api/runs/rft-a/metrics", params={"since_step": 3}).json()
    assert later["splits"]["train"]["steps"] == [3] and later["splits"]["validation"]["steps"] == [3]


def test_trajectories_of_a_real_run_carry_grade_advantage_and_tokens(api, runs_root):
    with RunStore(runs_root / "rft-a") as store:
        stored = store.trajectories(step=2)
    page = api.get("/dashboard/api/runs/rft-a/trajectories",
                   params={"step": 2, "split": "train", "sort": "id", "order": "asc"}).json()
    assert page["total"] == len(stored) == 8
    assert [t["task_id"] for t in page["data"]] == [t["task_id"] for t in stored]
    assert [t["reward"] for t in page["data"]] == pytest.approx([t["reward"] for t in stored])
    assert all("token_ids" not in t and "messages" not in t for t in page["data"])  # summaries only
    first = page["data"][0]
    one = api.get(f"/dashboard/api/runs/rft-a/trajectories/{first['id']}").json()
    rec = stored[0]
    assert one["grade"]["sub_rewards"] == rec["grade"]["sub_rewards"] and "even_share" in one["grade"]["sub_rewards"]
    assert one["tokens"]["ids"] == rec["token_ids"] and one["tokens"]["kinds"] == rec["token_kinds"]
    assert one["tokens"]["logprobs"] == rec["logprobs"]
    assert one["tokens"]["decode_error"] is None and len(one["tokens"]["text"]) == len(rec["token_ids"])
    assert "".join(one["tokens"]["text"]).count("Say something about") == 1  # the toy task's prompt, decoded
    # RFT stores each trajectory's advantage; the token view puts it on the sampled tokens only
    assert isinstance(rec["advantage"], float) and one["advantage"] == pytest.approx(rec["advantage"])
    for kind, adv in zip(one["tokens"]["kinds"], one["tokens"]["advantages"]):
        assert (adv == pytest.approx(rec["advantage"])) if kind == "sampled" else adv is None
    assert one["tokens"]["withheld"] is None
    private = api.get("/dashboard/api/runs/rft-b/trajectories", params={"limit": 1}).json()["data"][0]
    withheld = api.get(f"/dashboard/api/runs/rft-b/trajectories/{private['id']}").json()["tokens"]
    assert withheld["withheld"] == "redacted" and withheld["ids"] == []  # the page says why, not "Tokens (0)"
    val = api.get("/dashboard/api/runs/rft-a/trajectories", params={"split": "validation"}).json()
    assert val["total"] == 4 and {t["step"] for t in val["data"]} == {2, 3}
    assert all(t["advantage"] is None for t in val["data"])


def test_big_run_pages_filters_and_sorts_in_sql(api, runs_root):
    with RunStore(runs_root / "big") as store:
        every = store.trajectories(split=None)
    assert len(every) == BIG
    url = "/dashboard/api/runs/big/trajectories"
    t0 = time.perf_counter()
    page = api.get(url).json()
    assert time.perf_counter() - t0 < 1.0
    assert page["total"] == BIG and len(page["data"]) == 50 and page["has_more"]
    ids = [t["id"] for t in page["data"]]
    assert ids == sorted(ids, reverse=True)
    second = api.get(url, params={"offset": 50}).json()
    assert second["data"][0]["id"] == ids[-1] - 1
    last = api.get(url, params={"offset": BIG - 10, "limit": 50}).json()
    assert len(last["data"]) == 10 and not last["has_more"]

    # reward range, sorted by reward ascending
    page = api.get(url, params={"reward_min": 0.4, "reward_max": 0.9, "sort": "reward", "order": "asc", "limit": 200}).json()
    expected = sorted(r["reward"] for r in every if 0.4 <= r["reward"] <= 0.9)
    assert page["total"] == len(expected)
    assert [t["reward"] for t in page["data"]] == pytest.approx(expected[:200])

    # tool error kind: the summary's counts agree with the records
    timeouts = [r for r in every if any((c["error"] or {}).get("kind") == "timeout" for c in r["tool_calls"])]
    page = api.get(url, params={"error": "tool:timeout", "limit": 200}).json()
    assert page["total"] is None and page["has_more"] == (len(timeouts) > 200)
    counted = api.get(url, params={"error": "tool:timeout", "count": "true", "limit": 1}).json()
    assert counted["total"] == len(timeouts) > 0
    assert all("tool:timeout" in t["errors"] and t["tool_errors"] >= 1 for t in page["data"])

    # grader and rollout (sampler) failures
    parse = sum(r["grade"]["metadata"]["errors"]["sample_parse_error"] for r in every)
    assert api.get(url, params={"error": "grader:sample_parse_error", "count": 1}).json()["total"] == parse
    sampler = sum(1 for r in every if r["errors"])
    assert api.get(url, params={"error": "rollout:sampler", "count": 1}).json()["total"] == sampler
    failing = sum(1 for r in every if r["errors"] or r["grade"]["metadata"]["errors"]["sample_parse_error"]
                  or any(c["error"] for c in r["tool_calls"]))
    assert api.get(url, params={"error": "any", "count": 1}).json()["total"] == failing

    # split and step
    val = [r for r in every if r["split"] == "validation"]
    page = api.get(url, params={"split": "validation", "limit": 200}).json()
    assert page["total"] == len(val) and {t["split"] for t in page["data"]} == {"validation"}
    assert api.get(url, params={"step": 7}).json()["total"] == sum(1 for r in every if r["step"] == 7)


def test_one_trajectory_of_the_big_run_has_its_tool_calls(api, runs_root):
    with RunStore(runs_root / "big") as store:
        every = store.trajectories(split=None)
    page = api.get("/dashboard/api/runs/big/trajectories", params={"error": "tool:invalid_arguments", "limit": 1}).json()
    tid = page["data"][0]["id"]
    t0 = time.perf_counter()
    one = api.get(f"/dashboard/api/runs/big/trajectories/{tid}").json()
    assert time.perf_counter() - t0 < 1.0
    rec = next(r for r in every if r["trace_id"] == one["trace_id"])
    assert one["tool_calls"] == rec["tool_calls"] and one["messages"] == rec["messages"]
    bad = next(c for c in one["tool_calls"] if c["error"])
    assert bad["error"]["kind"] == "invalid_arguments" and bad["result"] == rec["tool_calls"][one["tool_calls"].index(bad)]["result"]
    assert one["grade"]["sub_rewards"] == rec["grade"]["sub_rewards"]
    assert "tool:invalid_arguments" in one["error_labels"]


def test_unknown_ids_and_bad_parameters_are_openai_errors(api):
    for path in ("/dashboard/api/runs/nope", "/dashboard/api/runs/..%2Fbig", "/dashboard/api/runs/not-a-run",
                 "/dashboard/api/runs/%2E%2E/metrics", "/dashboard/api/runs/rft-a/trajectories/999999",
                 "/dashboard/api/runs/rft-a/trajectories/..%2F1", "/dashboard/api/runs/../../etc/passwd",
                 "/dashboard/static/../routes.py", "/dashboard/static/%2E%2E/routes.py"):
        r = api.get(path)
        assert r.status_code == 404, path
        err = r.json()["error"]
        assert set(err) == {"message", "type", "param", "code"}, path
    r = api.get("/dashboard/api/runs/big/trajectories", params={"error": "tool:nonsense"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "error"
    r = api.get("/dashboard/api/runs/big/trajectories", params={"limit": "many"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "limit"
    r = api.get("/dashboard/api/runs/big/trajectories", params={"sort": "data"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "sort"


def test_page_and_static_files_are_served(api):
    page = api.get("/dashboard")
    assert page.status_code == 200 and "app.js" in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert api.get("/", follow_redirects=False).headers["location"] == "/dashboard"
    js = api.get("/dashboard/static/app.js")
    assert js.status_code == 200 and "javascript" in js.headers["content-type"]
    assert "uPlot" in api.get("/dashboard/static/vendor/uPlot.iife.min.js").text


def test_the_dashboard_never_writes_a_run(runs_root, api):
    db = runs_root / "big" / "run.db"
    before = db.stat().st_mtime_ns, db.stat().st_size
    api.get("/dashboard/api/runs/big/trajectories", params={"split": "train"})
    api.get("/dashboard/api/runs/big/metrics")
    assert (db.stat().st_mtime_ns, db.stat().st_size) == before


def test_token_advantages_follow_per_turn_credit():
    from agentrft.platform.dashboard.queries import token_advantages

    kinds = ["prompt", "sampled", "sampled", "env", "sampled", "env"]
    assert token_advantages(kinds, [0.5, -1.0]) == [None, 0.5, 0.5, None, -1.0, None]
    assert token_advantages(kinds, 2.0) == [None, 2.0, 2.0, None, 2.0, None]
    assert token_advantages(kinds, None) == [None] * 6
