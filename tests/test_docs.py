"""The documentation runs: every shell and python block of README.md and docs/*.md, on the tiny model.

One test per page runs its blocks in order in a scratch folder (tests/docs_harness.py; the rules and the
``<!-- docs-test: ... -->`` markers are in docs/contributing.md). The quick tests check the markers of
every page and that the harness itself catches a renamed flag, a failing block and a stale marker.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from docs_harness import REPO, MarkerError, doc_pages, make_tiny_model_cache, parse_page, run_markdown

PAGES = doc_pages()


def _page_id(page: Path) -> str:
    return str(page.relative_to(REPO))


@pytest.fixture(scope="module")
def docs_env(tmp_path_factory) -> dict[str, str]:
    """Environment of every documented command: the model cache whose ``smollm2-135m`` is the tiny model."""
    cache = make_tiny_model_cache(tmp_path_factory.mktemp("tiny-model-cache"))
    return {"AGENTRFT_CACHE_DIR": str(cache), "TOKENIZERS_PARALLELISM": "false"}


# -- the harness itself (seconds) ----------------------------------------------------------------------------


@pytest.mark.parametrize("page", PAGES, ids=_page_id)
def test_markers_parse_and_every_skip_has_a_reason(page):
    blocks = parse_page(page.read_text(), page)
    for block in blocks:
        for d in block.directive("skip") + block.directive("parse-only"):
            assert d.options["reason"].strip(), f"{block.where}: a {d.name} marker needs a reason"


def run_snippet(markdown: str, tmp_path: Path, env: dict[str, str] | None = None):
    page = tmp_path / "page.md"
    page.write_text(markdown)
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    return run_markdown(markdown, page, work, env or {})


def test_a_renamed_flag_fails_the_page(tmp_path):
    outcome = run_snippet("Measure:\n\n```bash\nagentrft eval --no-such-flag --out out/x\n```\n", tmp_path)
    assert len(outcome.failures) == 1
    assert "page.md:4" in outcome.failures[0] and "No such option '--no-such-flag'" in outcome.failures[0]


def test_a_renamed_flag_fails_a_parse_only_block_and_a_synopsis(tmp_path):
    outcome = run_snippet(
        '<!-- docs-test: parse-only reason="heavy" -->\n```bash\nagentrft quickstart --no-such-flag 3\n```\n\n'
        "<!-- docs-test: synopsis -->\n```bash\nagentrft export RUN --out DIR [--dtypes float32|bfloat16]\n```\n"
        "<!-- docs-test: synopsis -->\n```bash\nagentrft export RUN --out DIR [--dtype float32|bfloat16]\n```\n",
        tmp_path)
    assert len(outcome.failures) == 2, outcome.report()
    assert "No such option '--no-such-flag'" in outcome.failures[0]
    assert "No such option '--dtypes'" in outcome.failures[1]


def test_a_python_block_that_raises_and_a_failing_shell_command_are_reported(tmp_path):
    outcome = run_snippet("```python\nfrom agentrft import no_such_name\n```\n\n```sh\nfalse\n```\n", tmp_path)
    assert [f.split(":")[1] for f in outcome.failures] == ["1", "6"], outcome.report()
    assert "no_such_name" in outcome.failures[0]


def test_markers_are_checked(tmp_path):
    page = tmp_path / "p.md"
    for bad in ('<!-- docs-test: skip -->\n```bash\nls\n```\n',                 # no reason
                '<!-- docs-test: skipp reason="x" -->\n```bash\nls\n```\n',     # unknown marker
                '<!-- docs-test: skip reason="x" -->\nSome text.\n```bash\nls\n```\n',  # not before a block
                '<!-- docs-test: skip reason="x" -->\n```json\n{}\n```\n'):     # a block that never runs
        with pytest.raises(MarkerError):
            parse_page(bad, page)
    outcome = run_snippet('<!-- docs-test: replace "--limit 32" "--limit 2" -->\n```bash\necho hi\n```\n', tmp_path)
    assert "matches nothing" in outcome.report()
    outcome = run_snippet('<!-- docs-test: skip "agentrft train" reason="x" -->\n```bash\necho hi\n```\n', tmp_path)
    assert "matches no command" in outcome.report()


def test_shell_blocks_split_into_commands_as_bash_would(tmp_path):
    outcome = run_snippet(
        "```bash\n"
        "# a comment line\n"
        "echo one \\\n"
        "  two > out.txt      # a trailing comment\n"
        "cat > cfg.yaml <<'EOF'\n"
        "a: 1\n"
        "EOF\n"
        "python -c \"import pathlib; pathlib.Path('py.txt').write_text('three')\"\n"
        "agentrft tasks --env toy --split validation \\\n"
        "  --limit 1 --out toy.jsonl\n"
        "echo '{\"a\":\n"
        "  1}' > quoted.txt\n"
        "```\n"
        "<!-- docs-test: expect \"one two\" -->\n```console\n$ cat out.txt\none two\n```\n", tmp_path)
    assert not outcome.failures, outcome.report()
    work = tmp_path / "work"
    assert (work / "cfg.yaml").read_text() == "a: 1\n"
    assert (work / "py.txt").read_text() == "three"
    assert len((work / "toy.jsonl").read_text().splitlines()) == 1
    assert (work / "quoted.txt").read_text() == '{"a":\n  1}\n'


# -- the pages (minutes) -------------------------------------------------------------------------------------


NEEDS_BUBBLEWRAP = {"sandbox.md", "env-coding.md"}
"""Pages whose blocks run code in the sandbox: skipped, as tests/test_sandbox.py is, where bwrap cannot run."""


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("page", PAGES, ids=_page_id)
def test_page_runs_as_written(page, docs_env, tmp_path):
    from agentrft.tools.sandbox import bwrap_available

    if page.name in NEEDS_BUBBLEWRAP and not bwrap_available():
        pytest.skip("bubblewrap unavailable (apt-get install bubblewrap)")
    outcome = run_markdown(page.read_text(), page, tmp_path, docs_env)
    assert not outcome.failures, (f"{len(outcome.failures)} block(s) of {_page_id(page)} fail as written "
                                  f"(docs/contributing.md says how the docs are tested):\n\n{outcome.report()}")


def test_a_tools_yaml_written_as_a_bare_list_is_told_the_keys(tmp_path):
    """docs/tools-endpoints.md once showed tools.yaml as a bare list; the error must say what the file holds."""
    from agentrft.envs.external import load_tools_config
    from agentrft.errors import ConfigError

    path = tmp_path / "tools.yaml"
    path.write_text("- name: lookup\n  server_url: http://127.0.0.1:8765/\n")
    with pytest.raises(ConfigError, match="expected a mapping with 'endpoints' and/or 'mcp_servers'.*under 'endpoints:'"):
        load_tools_config(path)
