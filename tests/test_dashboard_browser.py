"""The dashboard in headless Chromium (Debian's package, driven by Playwright): charts and the trajectory
viewer show the run's actual values, two runs overlay, the API key field is sent, nothing renders as HTML.

Chromium is never downloaded here: ``make test`` installs the ``chromium`` package, and a missing one fails.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from agentrft.jobs.store import RunStore

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def chromium_path() -> str:
    path = shutil.which("chromium")
    if path is None:
        pytest.fail("chromium is not installed: `make test` installs it (Debian package chromium; "
                    "or apt-get install chromium)", pytrace=False)
    return path


@pytest.fixture(scope="module")
def runs_root(tmp_path_factory, tiny_model) -> Path:
    from test_dashboard_api import build_runs

    root = build_runs(tmp_path_factory.mktemp("runs"), tiny_model)
    _add_hostile_trajectory(root / "big")
    return root


def _add_hostile_trajectory(run_dir: Path) -> None:
    """A trajectory whose tool result and answer are HTML/script: they must show as text."""
    import random

    import dashboard as bench

    rec = bench.synthetic_record(random.Random(7), 51, 1, 0, 40)
    rec["trace_id"] = "hostile"
    rec["tool_calls"] = [{"id": "call_x", "name": "search", "arguments": {"q": "<b>x</b>"}, "turn": 0,
                          "result": "<img src=x onerror=\"window.pwned=1\"><script>window.pwned=2</script>",
                          "error": None, "latency_s": 0.25}]
    rec["messages"].append({"role": "assistant", "content": "<script>window.pwned=3</script>"})
    with RunStore(run_dir) as store:
        store.log_trajectories(51, [rec])


@pytest.fixture(scope="module")
def server(runs_root):
    from agentrft.platform.dashboard import create_app
    from agentrft.platform.runs import DirectoryRunIndex
    from agentrft.serving import serve_in_background

    with serve_in_background(create_app(DirectoryRunIndex(runs_root))) as v1:
        yield v1.removesuffix("/v1")


@pytest.fixture(scope="module")
def browser(chromium_path):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium_path, args=["--no-sandbox"])
        yield b
        b.close()


@pytest.fixture
def page(browser):
    page = browser.new_page(viewport={"width": 1400, "height": 1100})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    # a 401 is the key test's own doing (Chromium logs every failed fetch); anything else is a bug
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" and "401" not in m.text else None)
    yield page
    page.close()
    assert not errors, errors


def _chart(page, chart_id: str) -> dict:
    return page.evaluate("""(id) => {
        const u = window.dashboard.charts[id];
        const card = document.querySelector(`[data-chart="${id}"]`);
        return {labels: u ? u.series.slice(1).map(s => s.label) : [], data: u ? u.data : [],
                points: card.dataset.points, last: card.dataset.last,
                empty: card.querySelector(".chart-empty").hidden ? null : card.querySelector(".chart-empty").textContent};
    }""", chart_id)


def test_runs_list_and_run_charts_show_the_runs_values(page, server, runs_root, tmp_path):
    page.goto(f"{server}/dashboard")
    page.wait_for_selector("#runs-table[data-count='3']")
    row = page.locator("#runs-table tr[data-run='rft-a']")
    with RunStore(runs_root / "rft-a") as store:
        train = store.metrics_frame("train")
        val = store.metrics_frame("validation")
    assert f"{train[3]['reward_mean']:.3f}" in row.inner_text() and "3 / 3" in row.inner_text()

    row.locator("a").click()
    page.wait_for_selector("#charts[data-loaded]")
    reward = _chart(page, "reward")
    assert reward["data"][0] == [1, 2, 3] and reward["labels"] == ["train", "validation"]
    assert reward["data"][1] == pytest.approx([train[s]["reward_mean"] for s in (1, 2, 3)])
    assert reward["data"][2] == pytest.approx([None, val[2]["reward_mean"], val[3]["reward_mean"]])
    sub = _chart(page, "sub_rewards")
    assert sub["labels"] == ["even_share"] and float(sub["last"]) == pytest.approx(train[3]["reward/even_share"])
    step_time = _chart(page, "step_time")
    assert step_time["labels"] == ["sampling", "grading", "training", "whole step"]
    assert step_time["data"][3] == pytest.approx([train[s]["training_s"] for s in (1, 2, 3)])
    assert _chart(page, "clip_fraction")["points"] == "3"
    # a chart this method never logs says so instead of staying blank
    assert "logs none of reward_accuracy" in _chart(page, "preference")["empty"]
    page.wait_for_selector("#traj-table[data-loaded]")
    assert page.locator("#traj-table").get_attribute("data-total") == str(24 + 4)  # 3 steps x 8, 2 evals x 2
    assert "even_share" in page.locator("#config").inner_text() or "toy" in page.locator("#config").inner_text()
    page.screenshot(path=str(tmp_path / "dashboard-run.png"), full_page=False)


def test_two_runs_overlay_on_the_same_charts(page, server, runs_root):
    page.goto(f"{server}/dashboard#/runs/rft-a")
    page.wait_for_selector("#charts[data-loaded]")
    page.wait_for_selector("#overlay option[value='rft-b']", state="attached")
    page.select_option("#overlay", "rft-b")
    page.wait_for_selector("[data-chart='reward'][data-runs='2']")  # the page's CSP allows no eval: selectors
    reward = _chart(page, "reward")
    with RunStore(runs_root / "rft-b") as store:
        b = store.metrics_frame("train")
    assert reward["labels"] == ["train · rft-a", "validation · rft-a", "train · rft-b", "validation · rft-b"]
    assert reward["data"][3] == pytest.approx([b[s]["reward_mean"] for s in (1, 2, 3)])
    page.select_option("#overlay", "")
    page.wait_for_selector("[data-chart='reward'][data-runs='1']")


def test_trajectory_viewer_shows_tokens_tool_results_and_sub_rewards(page, server, runs_root, tmp_path):
    # a real RFT trajectory: token kinds coloured, logprob and advantage on each sampled token
    with RunStore(runs_root / "rft-a") as store:
        rec = store.trajectories(step=1)[0]
    page.goto(f"{server}/dashboard#/runs/rft-a")
    page.wait_for_selector("#traj-table[data-loaded]")
    page.select_option("#traj-filters select[name=sort]", "id")
    page.select_option("#traj-filters select[name=order]", "asc")
    page.click("#traj-filters button[type=submit]")
    page.wait_for_selector("#traj-table tbody tr:first-child[data-id='1']")
    page.locator("#traj-table tbody tr[data-id='1'] a").click()
    page.wait_for_selector("#trajectory[data-loaded]")
    spans = page.locator("#tokens .tok")
    assert spans.count() == len(rec["token_ids"])
    i_sampled = rec["token_kinds"].index("sampled")
    i_prompt = rec["token_kinds"].index("prompt")
    colour = "(i) => getComputedStyle(document.querySelector(`#tokens .tok[data-i='${i}']`)).backgroundColor"
    assert page.evaluate(colour, i_sampled) == "rgb(209, 240, 216)"  # --tok-sampled
    assert page.evaluate(colour, i_prompt) == "rgb(238, 242, 246)"  # --tok-prompt
    title = spans.nth(i_sampled).get_attribute("title")
    assert f"logprob {rec['logprobs'][i_sampled]:.4f}" in title and f"advantage {rec['advantage']:.4f}" in title
    assert "Say something about" in page.locator("#tokens").inner_text()  # decoded with the run's tokenizer
    sub = page.locator("#sub-rewards tr[data-name='even_share'] td").inner_text()
    assert float(sub) == pytest.approx(rec["grade"]["sub_rewards"]["even_share"], abs=1e-4)
    page.screenshot(path=str(tmp_path / "dashboard-trajectory.png"), full_page=False)


def test_a_tool_call_its_error_and_an_env_token_colour(page, server, runs_root):
    with RunStore(runs_root / "big") as store:
        recs = [r for r in store.trajectories(split=None) if any(c["error"] for c in r["tool_calls"])]
    page.goto(f"{server}/dashboard#/runs/big")
    page.wait_for_selector("#traj-table[data-loaded]")
    page.select_option("#traj-filters select[name=error]", "tool:timeout")
    page.click("#traj-filters button[type=submit]")
    page.wait_for_selector("#traj-table[data-total='']")  # an error filter does not count unless asked
    rows = page.locator("#traj-table tbody tr")
    assert rows.count() == 50 and all("tool:timeout" in rows.nth(i).inner_text() for i in range(rows.count()))
    page.locator("#traj-table tbody tr a").first.click()
    page.wait_for_selector("#trajectory[data-loaded]")
    tid = int(page.locator("#trajectory").get_attribute("data-id"))
    body = page.evaluate("(u) => fetch(u).then(r => r.json())", f"/dashboard/api/runs/big/trajectories/{tid}")
    rec = next(r for r in recs if r["trace_id"] == body["trace_id"])
    timeout = next(c for c in rec["tool_calls"] if c["error"] and c["error"]["kind"] == "timeout")
    assert timeout["result"] in page.locator("#tool-calls").inner_text()
    assert f"timeout: {timeout['error']['message']}" in page.locator("#tool-calls").inner_text()
    i_env = rec["token_kinds"].index("env")
    colour = "(i) => getComputedStyle(document.querySelector(`#tokens .tok[data-i='${i}']`)).backgroundColor"
    assert page.evaluate(colour, i_env) == "rgb(253, 231, 199)"  # --tok-env


def test_untrusted_text_is_shown_as_text(page, server):
    page.goto(f"{server}/dashboard#/runs/big")
    page.wait_for_selector("#traj-table[data-loaded]")
    page.fill("#traj-filters input[name=step]", "51")
    page.click("#traj-filters button[type=submit]")
    page.wait_for_selector("#traj-table[data-total='1']")
    page.locator("#traj-table tbody tr a").first.click()
    page.wait_for_selector("#trajectory[data-loaded]")
    assert "<script>window.pwned=2</script>" in page.locator("#tool-calls").inner_text()
    assert "<script>window.pwned=3</script>" in page.locator("#conversation").inner_text()
    assert page.evaluate("window.pwned") is None
    assert page.locator("#view img, #view script").count() == 0


def test_the_key_field_sends_a_bearer_key_and_a_401_asks_for_it(page, server):
    seen: list[str | None] = []
    page.route("**/dashboard/api/**", lambda route: (
        seen.append(route.request.headers.get("authorization")),
        route.fulfill(status=401, content_type="application/json", body=json.dumps(
            {"error": {"message": "missing key", "type": "invalid_request_error", "param": None, "code": None}}))
        if route.request.headers.get("authorization") != "Bearer sk-test" else route.continue_()))
    page.goto(f"{server}/dashboard")
    page.wait_for_selector("#key-prompt:not([hidden])")
    page.fill("#api-key", "sk-test")
    page.click("#key-form button")
    page.wait_for_selector("#runs-table[data-count='3']")
    assert page.locator("#key-prompt").is_hidden()
    assert seen[0] is None and seen[-1] == "Bearer sk-test"
    assert page.evaluate("localStorage.getItem('agentrft.dashboard.key')") == "sk-test"


def test_charts_of_a_running_run_update_as_steps_land(page, server, runs_root):
    """A run whose status is ``running`` is polled: a step written to its store after the page opened shows up
    on the charts without a reload (the runs list last: this adds a fourth run)."""
    live = runs_root / "live"
    shutil.copytree(runs_root / "rft-a", live)
    with RunStore(live) as store:
        step3 = store.metrics_frame("train")[3]
        store.discard_after(2)
        store.set_status("running")
    page.goto(f"{server}/dashboard#/runs/live")
    page.wait_for_selector("#charts[data-loaded]")
    page.wait_for_selector("[data-chart='reward'][data-points='2']")
    with RunStore(live) as store:
        store.log_metrics(3, step3, split="train")
    page.wait_for_selector("[data-chart='reward'][data-points='3']", timeout=15_000)
    assert _chart(page, "reward")["data"][1][-1] == pytest.approx(step3["reward_mean"])
