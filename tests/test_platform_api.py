"""The platform's files, fine-tuning jobs and models API, driven by the official ``openai`` SDK against a real
uvicorn server on 127.0.0.1, on the tiny model: a supervised and a reinforcement job run to ``succeeded`` and
their models answer chat completions with tools."""

from __future__ import annotations

import json
import os
from pathlib import Path

import httpx
import openai
import pytest

from platform_support import (SIMILARITY_GRADER, SMALL_RFT, SMALL_SFT, jsonl, served_platform, supervised_rows,
                              task_rows, wait_for, wait_for_checkpoints)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    from agentrft.models.loading import save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("model") / "tiny")


@pytest.fixture(scope="module")
def platform(tmp_path_factory, tiny_dir):
    """One server for the module, with an API key; yields (app, client, key, base_url)."""
    from agentrft.platform.db import PlatformDB
    from agentrft.platform.keys import create_key

    home = tmp_path_factory.mktemp("home")
    key = create_key(PlatformDB(home), "tests")
    with served_platform(home, tiny_dir) as (app, base_url):
        client = openai.OpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=60)
        yield app, client, key, base_url


def test_a_supervised_job_runs_to_succeeded_and_its_model_chats_with_tools(platform):
    app, client, _, _ = platform
    f = client.files.create(file=jsonl(supervised_rows()), purpose="fine-tune")
    assert f.status == "processed" and f.purpose == "fine-tune" and f.bytes > 0
    assert client.files.retrieve(f.id).filename == "data.jsonl"
    assert json.loads(client.files.content(f.id).text.splitlines()[0]) == supervised_rows()[0]
    assert f.id in [x.id for x in client.files.list().data]

    job = client.fine_tuning.jobs.create(
        model="tiny", training_file=f.id, suffix="weather", seed=7, metadata={"team": "tests"},
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1, "batch_size": 2}}},
        extra_body={"agentrft": {"config": SMALL_SFT}})
    assert job.status in ("queued", "running") and job.seed == 7 and job.metadata == {"team": "tests"}
    done = wait_for(client, job.id, ("succeeded", "failed"))
    assert done.status == "succeeded", done.error
    assert done.fine_tuned_model == f"ft:tiny:weather:{job.id}" and done.finished_at and done.trained_tokens > 0
    assert job.id in [j.id for j in client.fine_tuning.jobs.list(limit=10).data]

    events = client.fine_tuning.jobs.list_events(job.id, limit=100).data
    messages = [e.message for e in events]
    assert any(m.startswith("Created fine-tuning job") for m in messages)
    assert any("successfully completed" in m for m in messages)
    metrics = [e for e in events if e.type == "metrics"]
    assert sorted(e.data["step"] for e in metrics) == [1, 2]
    first_page = client.fine_tuning.jobs.list_events(job.id, limit=2)
    second = client.fine_tuning.jobs.list_events(job.id, limit=2, after=first_page.data[-1].id)
    assert first_page.has_more and [e.id for e in second.data] == [e.id for e in events[2:4]]

    ckpts = client.fine_tuning.jobs.checkpoints.list(job.id).data
    assert [c.step_number for c in ckpts] == [2]  # without evals retention keeps the latest only
    assert ckpts[0].fine_tuned_model_checkpoint == f"{done.fine_tuned_model}:ckpt-step-2"
    assert ckpts[0].metrics.train_loss is not None

    assert done.fine_tuned_model in [m.id for m in client.models.list().data]
    reply = client.chat.completions.create(
        model=done.fine_tuned_model, messages=[{"role": "user", "content": "Weather in Oslo?"}],
        tools=[supervised_rows()[0]["tools"][0]], max_tokens=8, temperature=0)
    assert reply.model == done.fine_tuned_model and reply.choices[0].finish_reason in ("stop", "length", "tool_calls")
    at_checkpoint = client.chat.completions.create(
        model=ckpts[0].fine_tuned_model_checkpoint, messages=[{"role": "user", "content": "Weather in Oslo?"}],
        max_tokens=4, temperature=0)
    assert at_checkpoint.model == ckpts[0].fine_tuned_model_checkpoint

    # the job's copy of its data survives deleting the upload
    assert client.files.delete(f.id).deleted
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(f.id)


def test_a_reinforcement_job_runs_to_succeeded(platform):
    app, client, _, _ = platform
    train = client.files.create(file=jsonl(task_rows()), purpose="fine-tune")
    valid = client.files.create(file=jsonl(task_rows(2)), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(
        model="tiny", training_file=train.id, validation_file=valid.id, seed=3,
        method={"type": "reinforcement", "reinforcement": {
            "grader": SIMILARITY_GRADER,
            "hyperparameters": {"batch_size": 2, "compute_multiplier": 1, "eval_interval": 1, "eval_samples": 2,
                                "learning_rate_multiplier": 2.0}}},
        extra_body={"agentrft": {"config": SMALL_RFT}})
    done = wait_for(client, job.id, ("succeeded", "failed"))
    assert done.status == "succeeded", done.error
    assert done.method.type == "reinforcement"
    run_dir = Path(app.state.db.get_job(job.id)["config"]["out_dir"])
    from agentrft.jobs.store import RunStore

    with RunStore(run_dir) as store:
        assert store.get_run()["resolved_config"]["optim"]["learning_rate"] == pytest.approx(2e-4)
        rewards = [m["value"] for m in store.metrics(name="reward_mean", split="train")]
    metric_events = [e for e in client.fine_tuning.jobs.list_events(job.id, limit=100).data if e.type == "metrics"]
    assert sorted(e.data["reward_mean"] for e in metric_events) == sorted(rewards)
    ckpts = client.fine_tuning.jobs.checkpoints.list(job.id).data
    assert [c.step_number for c in ckpts] == [2, 1] and ckpts[0].metrics.valid_mean_reward is not None
    with pytest.raises(openai.NotFoundError):  # a checkpoint name of a step retention never kept
        client.chat.completions.create(model=f"ft:tiny::{job.id}:ckpt-step-9", max_tokens=2,
                                       messages=[{"role": "user", "content": "hi"}])


def test_an_invalid_file_is_reported_at_upload_and_refused_at_job_creation(platform):
    _, client, _, _ = platform
    bad = jsonl([{"messages": [{"role": "user", "content": "hi"}]}, {"messages": [{"role": "robot", "content": "x"}]}])
    bad.seek(0, 2)
    bad.write(b"{not json\n")
    bad.seek(0)
    f = client.files.create(file=bad, purpose="fine-tune")
    assert f.status == "error"
    assert "line 2" in f.status_details and "robot" in f.status_details and "line 3" in f.status_details
    with pytest.raises(openai.BadRequestError) as e:
        client.fine_tuning.jobs.create(model="tiny", training_file=f.id, method={"type": "supervised"})
    assert e.value.body["param"] == "training_file" and "line 2" in e.value.body["message"]
    tasks = client.files.create(file=jsonl(task_rows()), purpose="fine-tune")
    with pytest.raises(openai.BadRequestError, match="supervised format"):
        client.fine_tuning.jobs.create(model="tiny", training_file=tasks.id, method={"type": "supervised"})


@pytest.mark.parametrize("body, param", [
    ({"training_file": "file-x"}, "model"),
    ({"model": "tiny"}, "training_file"),
    ({"model": "gpt-9", "training_file": "FILE"}, "model"),
    ({"model": "tiny", "training_file": "FILE", "method": {"type": "magic"}}, "method.type"),
    ({"model": "tiny", "training_file": "FILE", "method": {"type": "reinforcement", "reinforcement": {
        "grader": SIMILARITY_GRADER, "hyperparameters": {"reasoning_effort": "high"}}}},
     "method.reinforcement.hyperparameters.reasoning_effort"),
    ({"model": "tiny", "training_file": "FILE", "method": {"type": "reinforcement", "reinforcement": {}}},
     "method.reinforcement.grader"),
    ({"model": "tiny", "training_file": "FILE", "suffix": "no spaces allowed"}, "suffix"),
    ({"model": "tiny", "training_file": "FILE", "agentrft": {"config": {"data": {"train_file": "/etc/passwd"}}}},
     "agentrft.config.data"),
    ({"model": "tiny", "training_file": "FILE", "agentrft": {"env": "os:system"}}, "agentrft.env"),
    ({"model": "tiny", "training_file": "FILE", "agentrft": {"config": {"training": {"max_steps": -1}}}}, "method"),
])
def test_malformed_job_bodies_get_openai_400s_and_create_nothing(platform, body, param):
    app, client, _, _ = platform
    supervised = client.files.create(file=jsonl(supervised_rows()), purpose="fine-tune")
    body = json.loads(json.dumps(body).replace('"FILE"', json.dumps(supervised.id)))
    before = len(app.state.db.list_jobs(None, 1000)[0])
    with pytest.raises(openai.BadRequestError) as e:  # the SDK's own POST: bodies its typed create would refuse
        client.post("/fine_tuning/jobs", body=body, cast_to=object)
    assert e.value.status_code == 400 and e.value.body["param"] == param, e.value.body
    assert len(app.state.db.list_jobs(None, 1000)[0]) == before


def test_raw_malformed_bodies(platform):
    _, _, key, base_url = platform
    headers = {"Authorization": f"Bearer {key}"}
    r = httpx.post(f"{base_url}/fine_tuning/jobs", content=b"{nope", headers=headers)
    assert r.status_code == 400 and set(r.json()["error"]) == {"message", "type", "param", "code"}
    r = httpx.get(f"{base_url}/fine_tuning/jobs", params={"limit": "many"}, headers=headers)
    assert r.status_code == 400 and r.json()["error"]["param"] == "limit"
    r = httpx.post(f"{base_url}/files", content=b"plain", headers=headers)
    assert r.status_code == 400
    r = httpx.get(f"{base_url}/fine_tuning/jobs/ftjob-nope", headers=headers)
    assert r.status_code == 404 and r.json()["error"]["code"] == "fine_tuning_job_not_found"


def test_a_wrong_or_missing_key_gets_401_and_changes_nothing(platform):
    app, client, _, base_url = platform
    files_before, jobs_before = len(app.state.db.list_files()), len(app.state.db.list_jobs(None, 1000)[0])
    for bad_key in ("sk-wrong", ""):
        wrong = openai.OpenAI(base_url=base_url, api_key=bad_key or "x", max_retries=0,
                              default_headers={} if bad_key else {"Authorization": ""})
        with pytest.raises(openai.AuthenticationError):
            wrong.files.create(file=jsonl(supervised_rows()), purpose="fine-tune")
        with pytest.raises(openai.AuthenticationError):
            wrong.fine_tuning.jobs.create(model="tiny", training_file="file-x")
        with pytest.raises(openai.AuthenticationError):
            wrong.models.list()
    assert len(app.state.db.list_files()) == files_before
    assert len(app.state.db.list_jobs(None, 1000)[0]) == jobs_before
    assert httpx.get(base_url.removesuffix("/v1") + "/health").status_code == 200


def test_cancel_stops_the_worker_and_keeps_the_last_checkpoint_loadable(platform):
    app, client, _, _ = platform
    f = client.files.create(file=jsonl(supervised_rows()), purpose="fine-tune")
    long = {"training": {"max_steps": 500, "batch_size": 2, "checkpoint_interval": 1}}
    job = client.fine_tuning.jobs.create(model="tiny", training_file=f.id, method={"type": "supervised"},
                                         extra_body={"agentrft": {"config": long}})
    run_dir = Path(app.state.db.get_job(job.id)["config"]["out_dir"])
    wait_for_checkpoints(run_dir, 2)
    pid = app.state.db.get_job(job.id)["worker_pid"]
    cancelled = client.fine_tuning.jobs.cancel(job.id)
    assert cancelled.status == "cancelled"
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    from agentrft.jobs.trained import load_run

    loaded = load_run(run_dir)
    assert loaded.step >= 2
    with pytest.raises(openai.BadRequestError):
        client.fine_tuning.jobs.cancel(job.id)


def test_pause_and_resume_continue_from_the_checkpoint(platform):
    app, client, _, _ = platform
    f = client.files.create(file=jsonl(supervised_rows()), purpose="fine-tune")
    cfg = {"training": {"max_steps": 6, "batch_size": 2, "checkpoint_interval": 1}}
    job = client.fine_tuning.jobs.create(model="tiny", training_file=f.id, method={"type": "supervised"},
                                         extra_body={"agentrft": {"config": cfg}})
    run_dir = Path(app.state.db.get_job(job.id)["config"]["out_dir"])
    wait_for_checkpoints(run_dir, 1)
    paused = client.fine_tuning.jobs.pause(job.id)
    assert paused.status == "paused", paused
    assert app.state.db.get_job(job.id)["worker_pid"] is None
    resumed = client.fine_tuning.jobs.resume(job.id)
    assert resumed.status in ("queued", "running")
    done = wait_for(client, job.id, ("succeeded", "failed"))
    assert done.status == "succeeded", done.error
    messages = [e.message for e in client.fine_tuning.jobs.list_events(job.id, limit=100).data]
    assert any("paused" in m for m in messages) and any("resumed the run from its latest checkpoint" in m
                                                       for m in messages)
    from agentrft.jobs.store import RunStore

    with RunStore(run_dir) as store:
        assert sorted(store.metrics_frame("train")) == [1, 2, 3, 4, 5, 6]


def test_the_dashboard_shows_the_servers_jobs_behind_the_key(platform):
    """The page and its static files load without a key (they hold no run data); the run data needs one,
    and lists the jobs by job id with the run's own metrics."""
    app, client, key, base_url = platform
    root = base_url.removesuffix("/v1")
    page = httpx.get(f"{root}/dashboard")
    assert page.status_code == 200 and "<html" in page.text.lower()
    assert httpx.get(f"{root}/", follow_redirects=False).headers["location"] == "/dashboard"
    assert httpx.get(f"{root}/dashboard/api/runs").status_code == 401
    assert httpx.get(f"{root}/dashboard/api/runs", headers={"Authorization": "Bearer sk-wrong"}).status_code == 401
    f = client.files.create(file=jsonl(supervised_rows()), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(model="tiny", training_file=f.id, method={"type": "supervised"},
                                         extra_body={"agentrft": {"config": SMALL_SFT}})
    assert wait_for(client, job.id, ("succeeded", "failed")).status == "succeeded"
    succeeded = app.state.db.jobs_with_status("succeeded")
    runs = httpx.get(f"{root}/dashboard/api/runs", headers={"Authorization": f"Bearer {key}"}).json()
    listed = {r["id"]: r for r in (runs["data"] if isinstance(runs, dict) else runs)}
    for row in succeeded:
        assert listed[row["id"]]["status"] == "succeeded" and listed[row["id"]]["run_status"] == "completed"
    metrics = httpx.get(f"{root}/dashboard/api/runs/{job.id}/metrics", headers={"Authorization": f"Bearer {key}"})
    assert metrics.status_code == 200 and "loss" in metrics.text


def test_a_key_may_have_only_so_many_jobs_queued_or_running(platform):
    """SubmissionLimits.max_concurrent_jobs_per_key (2): the third active job of one key is a 429; another
    key (created while the server runs) is not held up; a job over the server's rollout limits is a 400."""
    from agentrft.platform.keys import create_key

    app, client, _, base_url = platform
    key = create_key(app.state.db, "busy")
    busy = openai.OpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=60)
    f = busy.files.create(file=jsonl(supervised_rows()), purpose="fine-tune")
    long = {"agentrft": {"config": {"training": {"max_steps": 500, "batch_size": 2}}}}
    jobs = [busy.fine_tuning.jobs.create(model="tiny", training_file=f.id, method={"type": "supervised"},
                                         extra_body=long) for _ in range(2)]
    with pytest.raises(openai.RateLimitError, match="max_concurrent_jobs_per_key"):
        busy.fine_tuning.jobs.create(model="tiny", training_file=f.id, method={"type": "supervised"})
    other = client.fine_tuning.jobs.create(model="tiny", training_file=f.id, method={"type": "supervised"},
                                           extra_body=long)
    for job in jobs + [other]:
        assert client.fine_tuning.jobs.cancel(job.id).status == "cancelled"
    tasks = busy.files.create(file=jsonl(task_rows()), purpose="fine-tune")
    with pytest.raises(openai.BadRequestError, match="max_n"):
        busy.fine_tuning.jobs.create(model="tiny", training_file=tasks.id, method={
            "type": "reinforcement", "reinforcement": {"grader": SIMILARITY_GRADER,
                                                       "hyperparameters": {"compute_multiplier": 8}}})
