"""The shape of the code, checked: module size, import direction, no import circles, declared seams, no history.

Why tests: each of these drifted once it was only a convention (a 941-line
module, an import circle through a private helper, callers probing a sampler
with ``hasattr``, comments naming internal milestones). docs/architecture.md
describes the layers this test enforces.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "agentrft"
MAX_LINES = 600

# Lower layers never import from higher ones; a package may import from its own layer or below.
LAYERS: dict[str, int] = {
    "agentrft.types": 0, "agentrft.errors": 0, "agentrft.allocator": 0, "agentrft.trust": 0,
    "agentrft.algo": 1, "agentrft.datasets": 1,
    "agentrft.config": 2, "agentrft.config_sections": 2,
    "agentrft.models": 3, "agentrft.tools": 3, "agentrft.graders": 3, "agentrft.machine": 3, "agentrft.privacy": 3,
    "agentrft.rollout": 4,
    "agentrft.envs": 5, "agentrft.evaluation": 5,
    "agentrft.jobs": 6, "agentrft.runtime": 6,
    "agentrft.train": 7,
    "agentrft.serving": 8, "agentrft.quickstart": 9,
    "agentrft.platform": 9, "agentrft.governance": 9,
    "agentrft.cli": 10,
}


def _modules() -> dict[str, Path]:
    out = {}
    for path in SRC.rglob("*.py"):
        parts = path.relative_to(SRC.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


MODULES = _modules()


def _in_type_checking(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return True
    return False


def _imports(name: str, path: Path, typing_too: bool = False) -> set[str]:
    """The agentrft modules ``name`` imports at run time (module level or inside functions), and with
    ``typing_too`` also those it imports for annotations only (``if TYPE_CHECKING:``)."""
    tree = ast.parse(path.read_text())
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if not typing_too and _in_type_checking(node, parents):
            continue
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("agentrft"))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            if not base.startswith("agentrft"):
                continue
            for alias in node.names:  # "from agentrft.x import y": y may be a submodule
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in MODULES else base)
    return {m for m in found if m in MODULES and m != name}


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}
TYPED_GRAPH = {name: _imports(name, path, typing_too=True) for name, path in MODULES.items()}


def _layer(module: str) -> int | None:
    for prefix in sorted(LAYERS, key=len, reverse=True):
        if module == prefix or module.startswith(prefix + "."):
            return LAYERS[prefix]
    return None


def test_every_module_is_shorter_than_the_limit():
    long = {str(p.relative_to(ROOT)): n for p in SRC.rglob("*.py") if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"split these modules along their seams (a package, not a longer file): {long}"


def test_every_top_level_module_has_a_layer():
    tops = {".".join(m.split(".")[:2]) for m in MODULES if m != "agentrft"}
    assert tops <= set(LAYERS), f"give these a layer in LAYERS (and docs/architecture.md): {tops - set(LAYERS)}"


def test_no_module_imports_from_a_layer_above_it():
    upward = sorted(f"{a} -> {b}" for a, deps in GRAPH.items() for b in deps
                    if _layer(a) is not None and _layer(b) is not None and _layer(b) > _layer(a))
    assert not upward, "imports that run up the layers:\n" + "\n".join(upward)


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def _without_package_reexports(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """A package ``__init__`` importing its own submodules to re-export them is not a dependency of theirs."""
    return {a: {b for b in deps if not (MODULES[a].name == "__init__.py" and b.startswith(a + "."))}
            for a, deps in graph.items()}


def test_there_is_no_import_circle():
    """Annotation-only imports count too: a circle hidden behind ``TYPE_CHECKING`` is still one to untangle."""
    cycles = _cycles(_without_package_reexports(TYPED_GRAPH))
    assert not cycles, f"import circles: {cycles}"


def test_the_circle_check_finds_a_circle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


SAMPLER_PROBE = re.compile(r"(hasattr|getattr)\(\s*[\w.]*sampler\b|inspect\.signature\(\s*[\w.]*sampler")


def test_no_caller_probes_a_sampler_for_what_it_can_do():
    hits = [f"{p.relative_to(ROOT)}:{i}" for p in SRC.rglob("*.py")
            for i, line in enumerate(p.read_text().splitlines(), 1) if SAMPLER_PROBE.search(line)]
    assert not hits, f"the Sampler protocol declares these abilities; call them: {hits}"
    assert SAMPLER_PROBE.search('if hasattr(ctx.sampler, "release"):')  # the pattern catches the old probe


def test_samplers_satisfy_the_declared_protocol(tiny_model):
    from agentrft.rollout.hf_sampler import HFSampler
    from agentrft.rollout.sampler import Sampler, ScriptedSampler

    model, tok = tiny_model
    assert isinstance(HFSampler(model, pad_token_id=tok.pad_token_id), Sampler)
    assert isinstance(ScriptedSampler([]), Sampler)

    class GenerateOnly:
        def generate(self, prompts, params, on_token=None):
            return []

    assert not isinstance(GenerateOnly(), Sampler)


MILESTONE = re.compile(r"\bstops? [0-9]+\b|stop-[0-9]+|since stop", re.IGNORECASE)


@pytest.mark.parametrize("root", ["src", "docs", "README.md"])
def test_code_and_docs_name_no_internal_milestones(root):
    base = ROOT / root
    files = [base] if base.is_file() else [p for p in base.rglob("*") if p.suffix in (".py", ".md")]
    hits = [f"{p.relative_to(ROOT)}:{i}: {line.strip()[:80]}" for p in files
            for i, line in enumerate(p.read_text().splitlines(), 1) if MILESTONE.search(line)]
    assert not hits, "say what is (history goes to CHANGELOG.md, by date and commit):\n" + "\n".join(hits)


def test_changelog_is_keyed_by_date_and_commit():
    text = (ROOT / "CHANGELOG.md").read_text()
    assert re.search(r"^## \d{4}-\d{2}-\d{2}", text, re.MULTILINE)
    assert re.search(r"\b[0-9a-f]{7}\b", text)
