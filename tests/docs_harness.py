"""Run the code blocks of README.md and docs/*.md, so that the documentation cannot drift from the code.

What it does: every fenced ``bash``/``sh``/``shell``/``console`` and ``python`` block of a page runs, in
page order, in one scratch working directory per page, on the tiny random model instead of the bundled
one. ``agentrft ...`` command lines run in this process through click (importing torch once, not once per
command: a subprocess costs ~10 s of imports on a busy 2-core machine); other shell commands run in
bash; python blocks run in one namespace per page, like the cells of a notebook. A command that exits
non-zero, or a python block that raises, is a failure naming the page, the line and the output.

Why a harness instead of hand-copied tests: a renamed flag, a moved function or a changed config key
breaks the page that shows it, and the page is what users copy. The rules, and the ``<!-- docs-test: ...
-->`` markers that adapt a block (skip it with a reason, replace text, set up files, run a server in the
background), are described for writers in docs/contributing.md ("How the docs are tested").
"""

from __future__ import annotations

import ast
import contextlib
import io
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

REPO = Path(__file__).resolve().parents[1]
SHELL_LANGS = frozenset({"bash", "sh", "shell", "console"})
PYTHON_LANGS = frozenset({"python"})
LINKED_INTO_WORKDIR = ("examples", "bench", ".venv")
"""Repository folders the pages refer to by relative path; linked (read-only use) into each work dir."""

COMMAND_TIMEOUT_S = 300
SERVER_START_TIMEOUT_S = 240
OUTPUT_TAIL_LINES = 40


def doc_pages() -> list[Path]:
    """The pages whose blocks run: README.md and every docs/*.md."""
    return [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


# -- markers -------------------------------------------------------------------------------------------


class MarkerError(ValueError):
    """A ``docs-test`` marker that is malformed, unknown, or not in front of a block."""


@dataclass(frozen=True)
class Directive:
    """One ``<!-- docs-test: NAME ARGS -->`` marker (a multi-line ``setup`` keeps its lines as ``body``)."""

    name: str
    args: tuple[str, ...] = ()
    options: dict[str, str] = field(default_factory=dict)
    body: str = ""
    line: int = 0


# name -> (number of positional arguments allowed, required options, allowed options)
_DIRECTIVES: dict[str, tuple[tuple[int, int], frozenset[str], frozenset[str]]] = {
    "skip": ((0, 1), frozenset({"reason"}), frozenset({"reason"})),
    "parse-only": ((0, 1), frozenset({"reason"}), frozenset({"reason"})),
    "synopsis": ((0, 0), frozenset(), frozenset()),
    "background": ((1, 1), frozenset({"port"}), frozenset({"port"})),
    "replace": ((2, 2), frozenset(), frozenset()),
    "env": ((0, 0), frozenset(), frozenset()),  # NAME=VALUE pairs, checked below
    "setup": ((0, 0), frozenset(), frozenset()),
    "expect": ((1, 1), frozenset(), frozenset()),
    "file": ((1, 1), frozenset(), frozenset()),
}


def parse_directive(text: str, line: int) -> Directive:
    """``text`` is what stands between ``docs-test:`` and ``-->``."""
    head, _, body = text.strip("\n").partition("\n")
    try:
        tokens = shlex.split(head)
    except ValueError as e:
        raise MarkerError(f"line {line}: cannot split the marker {head!r}: {e}") from None
    if not tokens:
        raise MarkerError(f"line {line}: empty docs-test marker")
    name, rest = tokens[0], tokens[1:]
    if name not in _DIRECTIVES:
        raise MarkerError(f"line {line}: unknown docs-test marker {name!r} (known: {', '.join(_DIRECTIVES)})")
    (lo, hi), required, allowed = _DIRECTIVES[name]
    if name == "env":
        if not rest or not all(re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", t) for t in rest):
            raise MarkerError(f"line {line}: env takes NAME=VALUE pairs, got {rest}")
        return Directive(name, options=dict(t.split("=", 1) for t in rest), line=line)
    options = {}
    args = []
    for t in rest:
        key, eq, value = t.partition("=")
        if eq and key in allowed:
            options[key] = value
        else:
            args.append(t)
    if not lo <= len(args) <= hi:
        raise MarkerError(f"line {line}: {name} takes {lo}-{hi} quoted argument(s), got {args}")
    missing = required - set(options)
    if missing:
        raise MarkerError(f"line {line}: {name} needs {', '.join(sorted(k + '=' for k in missing))}")
    if name == "background" and not options["port"].isdigit():
        raise MarkerError(f"line {line}: background port must be a number, got {options['port']!r}")
    if (name == "setup") != bool(body.strip()):
        raise MarkerError(f"line {line}: " + ("setup needs its code on the lines after 'setup'" if name == "setup"
                                              else f"{name} is a one-line marker"))
    return Directive(name, tuple(args), options, body, line)


@dataclass
class Block:
    """A fenced code block of a page, with the markers written right before it."""

    page: Path
    line: int  # of the opening fence, 1-based
    lang: str
    code: str
    directives: list[Directive] = field(default_factory=list)

    @property
    def where(self) -> str:
        try:
            return f"{self.page.relative_to(REPO)}:{self.line}"
        except ValueError:
            return f"{self.page}:{self.line}"

    @property
    def runs(self) -> bool:
        return self.lang in SHELL_LANGS or self.lang in PYTHON_LANGS

    def directive(self, name: str) -> list[Directive]:
        return [d for d in self.directives if d.name == name]

    @property
    def skip_reason(self) -> str | None:
        """Why the whole block does not run (``skip`` without a command prefix), or None."""
        return next((d.options["reason"] for d in self.directive("skip") if not d.args), None)


_MARKER_START = re.compile(r"^\s*<!--\s*docs-test:(.*)$")
_FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>`{3,}|~{3,})(?P<lang>[^\s`]*)")


def parse_page(text: str, page: Path) -> list[Block]:
    """Every fenced block of a markdown page with its markers; markers not followed by a block are errors."""
    lines = text.split("\n")
    blocks: list[Block] = []
    pending: list[Directive] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        marker = _MARKER_START.match(line)
        if marker:
            start = i
            chunk = marker.group(1)
            while "-->" not in chunk:
                i += 1
                if i == len(lines):
                    raise MarkerError(f"{page}:{start + 1}: docs-test marker is never closed with -->")
                chunk += "\n" + lines[i]
            inner, _, after = chunk.partition("-->")
            if after.strip():
                raise MarkerError(f"{page}:{i + 1}: text after a docs-test marker's --> on the same line")
            try:
                pending.append(parse_directive(inner, start + 1))
            except MarkerError as e:
                raise MarkerError(f"{page}:{e}") from None
            i += 1
            continue
        fence = _FENCE.match(line)
        if fence:
            indent, ticks, lang = fence.group("indent"), fence.group("fence"), fence.group("lang").lower()
            opening = i + 1  # 1-based line of the opening fence
            body = []
            i += 1
            while i < len(lines) and not lines[i].strip().startswith(ticks):
                body.append(lines[i][len(indent):] if lines[i].startswith(indent) else lines[i].lstrip())
                i += 1
            block = Block(page, opening, lang, "\n".join(body), pending)
            if pending and not block.runs and any(d.name != "file" for d in pending):
                raise MarkerError(f"{block.where}: docs-test markers before a ```{lang or '(plain)'} block, "
                                  "which the harness does not run (only `file` applies to it)")
            blocks.append(block)
            pending = []
            i += 1
            continue
        if pending and line.strip():
            raise MarkerError(f"{page}:{pending[0].line}: docs-test marker is not followed by a code block")
        i += 1
    if pending:
        raise MarkerError(f"{page}:{pending[0].line}: docs-test marker at the end of the page")
    return blocks


# -- splitting a shell block into commands -------------------------------------------------------------


@dataclass
class Command:
    text: str
    line: int  # 1-based, in the page

    @property
    def first_line(self) -> str:
        return self.text.split("\n", 1)[0]


def _complete(text: str) -> bool:
    """True when ``text`` is a whole command: no trailing backslash, no open quote."""
    if text.rstrip().endswith("\\"):
        return False
    try:
        shlex.split(text, comments=True)
    except ValueError:
        return False
    return True


_HEREDOC = re.compile(r"<<-?\s*(['\"]?)(\w+)\1")


def split_commands(code: str, lang: str, first_line: int) -> list[Command]:
    """The commands of a shell block: continuation lines, multi-line quotes and heredocs joined; comment and
    blank lines dropped. In a ``console`` block only ``$ `` lines (and their continuations) are commands."""
    lines = code.split("\n")
    commands = []
    i = 0
    while i < len(lines):
        raw = lines[i]
        start = i
        if lang == "console":
            if not raw.startswith("$ "):
                i += 1
                continue
            raw = raw[2:]
        if not raw.strip() or raw.lstrip().startswith("#"):
            i += 1
            continue
        text = raw
        heredoc = _HEREDOC.search(raw)
        while not _complete(text) and i + 1 < len(lines):
            i += 1
            text += "\n" + lines[i]
        if heredoc:
            end = heredoc.group(2)
            while i + 1 < len(lines):
                i += 1
                text += "\n" + lines[i]
                if lines[i].strip() == end:
                    break
        commands.append(Command(text, first_line + 1 + start))
        i += 1
    return commands


# -- making documented commands cheap ------------------------------------------------------------------


def _set_option(argv: list[str], flag: str, value: Callable[[str | None], str | None]) -> list[str]:
    """Give ``flag`` the value ``value(current)`` (current is None when absent; a None result leaves it)."""
    out = list(argv)
    for i, tok in enumerate(out):
        if tok == flag and i + 1 < len(out):
            new = value(out[i + 1])
            if new is not None:
                out[i + 1] = new
            return out
        if tok.startswith(flag + "="):
            new = value(tok.split("=", 1)[1])
            if new is not None:
                out[i] = f"{flag}={new}"
            return out
    new = value(None)
    return out + [flag, new] if new is not None else out


def _at_most(n: int) -> Callable[[str | None], str]:
    return lambda cur: str(n) if cur is None or not cur.isdigit() or int(cur) > n else cur


TRAIN_OVERRIDES = ("training.max_steps=1", "training.batch_size=1", "training.eval_samples=1",
                   "rollout.max_new_tokens=16")
"""Appended to every ``agentrft train``: one step on one task (or demonstration, or pair), a one-row eval,
short turns."""


def cheapen(argv: list[str]) -> list[str]:
    """The documented ``agentrft`` command made cheap enough for the test suite (docs/contributing.md).

    ``argv`` starts after ``agentrft``. Only values change, and options are added; a documented flag is
    always kept, so a renamed flag still fails.
    """
    cmd = argv[:2]
    if cmd[:1] == ["eval"] or cmd == ["grader", "variance"]:
        argv = _set_option(argv, "--limit", _at_most(2))
        argv = _set_option(argv, "--samples", lambda cur: None if cur is None else _at_most(2)(cur))
        argv = _set_option(argv, "--max-new-tokens", _at_most(16))
    elif cmd[:1] == ["rollout"]:
        argv = _set_option(argv, "--max-new-tokens", _at_most(16))
    elif cmd[:1] == ["train"]:
        argv = argv + [x for o in TRAIN_OVERRIDES for x in ("--set", o)]
    elif cmd[:1] == ["quickstart"]:
        for flag in ("--test-tasks", "--sft-steps", "--rft-steps"):
            argv = _set_option(argv, flag, _at_most(2 if flag == "--test-tasks" else 1))
    return argv


def desynopsise(text: str) -> str:
    """A synopsis as commands: ``[--x a|b]`` -> ``--x a`` (brackets dropped, first alternative kept); an
    indented line continues the command above it."""
    text = re.sub(r"\n[ \t]+(?=\S)", " ", text)
    text = text.replace("[", "").replace("]", "")
    return re.sub(r"(\S+?)\|\S+", lambda m: m.group(1), text)


_SHELL_OPERATORS = frozenset({"|", "||", "&", "&&", ";", ">", ">>", "<", "<<", "(", ")"})


def _plain_argv(text: str) -> list[str] | None:
    """``text`` split into words, or None when it uses the shell (pipes, redirections, ``$``, globs...)."""
    text = text.replace("\\\n", "")  # a continuation line joins the next, as in bash
    lexer = shlex.shlex(text, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    lexer.commenters = "#"
    try:
        words = list(lexer)
    except ValueError:
        return None
    if any(w in _SHELL_OPERATORS for w in words) or "$" in text or "`" in text:
        return None
    return words


# -- running a page --------------------------------------------------------------------------------------


@dataclass
class Outcome:
    """What running a page did: failures (each names the page line), skipped blocks and commands."""

    failures: list[str] = field(default_factory=list)
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    seconds: list[tuple[str, float]] = field(default_factory=list)
    """(where and command, wall seconds) of every command and python block that ran."""

    def report(self) -> str:
        return "\n\n".join(self.failures)


def _tail(text: str, n: int = OUTPUT_TAIL_LINES) -> str:
    lines = text.rstrip().split("\n")
    cut = lines[-n:]
    return ("    ...\n" if len(lines) > n else "") + "\n".join("    " + x for x in cut)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


class PageRunner:
    """Runs the blocks of one page in ``workdir``; background servers are stopped by :meth:`close`."""

    def __init__(self, workdir: Path, env: dict[str, str]):
        self.workdir = workdir
        self.env = dict(env)  # added to os.environ for this page's commands
        self.namespace: dict[str, Any] = {"__name__": "__main__"}
        self.outcome = Outcome()
        self.ports: dict[int, int] = {}
        self._servers: list[tuple[str, subprocess.Popen, Path]] = []
        for name in LINKED_INTO_WORKDIR:
            link = workdir / name
            if (REPO / name).exists() and not link.exists():
                link.symlink_to(REPO / name)

    # -- environment of the commands

    @contextlib.contextmanager
    def _entered(self, extra_env: dict[str, str]) -> Iterator[None]:
        """cwd, sys.path and os.environ as a command of this page sees them; restored afterwards."""
        old_cwd, old_path, old_env = os.getcwd(), list(sys.path), dict(os.environ)
        os.chdir(self.workdir)
        sys.path.insert(0, str(self.workdir))
        os.environ.update(self.env)
        os.environ.update(extra_env)
        try:
            yield
        finally:
            os.chdir(old_cwd)
            sys.path[:] = old_path
            os.environ.clear()
            os.environ.update(old_env)

    def _subprocess_env(self, extra_env: dict[str, str]) -> dict[str, str]:
        env = {**os.environ, **self.env, **extra_env}
        env["PATH"] = f"{REPO / '.venv' / 'bin'}{os.pathsep}{env.get('PATH', '')}"
        return env

    # -- blocks

    def run_page(self, blocks: list[Block]) -> Outcome:
        self._assign_ports(blocks)
        try:
            for block in blocks:
                if block.runs:
                    self.run_block(block)
                else:
                    self._write_files(block)
        finally:
            self.close()
        return self.outcome

    def _assign_ports(self, blocks: list[Block]) -> None:
        """Each documented ``background`` port is served on a free one: rewritten throughout the page."""
        for block in blocks:
            for d in block.directive("background"):
                self.ports.setdefault(int(d.options["port"]), free_port())

    def _localise(self, text: str) -> str:
        for documented, actual in self.ports.items():
            text = re.sub(rf"(?<=:){documented}\b", str(actual), text)
            text = re.sub(rf"(--port[ =]){documented}\b", rf"\g<1>{actual}", text)
        return text

    def _write_files(self, block: Block) -> None:
        for d in block.directive("file"):
            path = self.workdir / d.args[0]
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(self._localise(block.code) + "\n")
            self.outcome.ran.append(f"{block.where} (written to {d.args[0]})")

    def _code(self, block: Block) -> str:
        code = block.code
        for d in block.directive("replace"):
            old, new = d.args
            if old not in code:
                self._fail(block.where, f"marker `replace {old!r} ...` (line {d.line}) matches nothing in the "
                                        "block: update the marker with the block")
            code = code.replace(old, new)
        return self._localise(code)

    def run_block(self, block: Block) -> None:
        if block.skip_reason is not None:
            self.outcome.skipped.append(f"{block.where}: {block.skip_reason}")
            return
        self._write_files(block)
        env = {k: v for d in block.directive("env") for k, v in d.options.items()}
        output: list[str] = []
        failures_before = len(self.outcome.failures)
        for setup in block.directive("setup"):
            self._run_code(block, self._localise(setup.body), setup.line, env, output, label="setup")
        self._run_code(block, self._code(block), block.line, env, output)
        if len(self.outcome.failures) == failures_before:
            for d in block.directive("expect"):
                if d.args[0] not in "".join(output):
                    self._fail(block.where, f"expected {d.args[0]!r} in the block's output (marker line {d.line}); "
                                            f"it printed:\n{_tail(''.join(output))}")
        self.outcome.ran.append(block.where)

    def _run_code(self, block: Block, code: str, line: int, env: dict[str, str], output: list[str],
                  label: str = "") -> None:
        if block.lang in PYTHON_LANGS:
            t0 = time.perf_counter()
            ok, text = self.run_python(code, f"{block.where}{' ' + label if label else ''}", env)
            self.outcome.seconds.append((f"{block.where} python {label}", time.perf_counter() - t0))
            output.append(text)
            if not ok:
                self._fail(block.where, f"python {label or 'block'} raised:\n{_tail(text)}")
            return
        lang = "bash" if label else block.lang  # a setup body is always plain shell
        if block.directive("synopsis") and not label:
            code = desynopsise(code)
        commands = split_commands(code, lang, line)
        if not label:
            for d in block.directives:
                if d.name in ("skip", "parse-only", "background") and d.args and \
                        not any(c.text.startswith(d.args[0]) for c in commands):
                    self._fail(block.where, f"marker `{d.name} {d.args[0]!r}` (line {d.line}) matches no command of "
                                            "the block: update the marker with the block")
        for command in commands:
            self.run_shell_command(block, command, env, output)

    def run_shell_command(self, block: Block, command: Command, env: dict[str, str], output: list[str]) -> None:
        t0 = time.perf_counter()
        try:
            self._run_shell_command(block, command, env, output)
        finally:
            self.outcome.seconds.append((f"{block.page.name}:{command.line} {command.first_line[:60]}",
                                         time.perf_counter() - t0))

    def _run_shell_command(self, block: Block, command: Command, env: dict[str, str], output: list[str]) -> None:
        where = f"{block.page.relative_to(REPO) if block.page.is_relative_to(REPO) else block.page}:{command.line}"
        text = command.text
        if any(text.startswith(d.args[0]) for d in block.directive("skip") if d.args):
            reason = next(d.options["reason"] for d in block.directive("skip") if d.args and text.startswith(d.args[0]))
            self.outcome.skipped.append(f"{where} `{command.first_line}`: {reason}")
            return
        parse_only = bool(block.directive("synopsis")) or any(
            not d.args or text.startswith(d.args[0]) for d in block.directive("parse-only"))
        background = next((d for d in block.directive("background") if text.startswith(d.args[0])), None)
        if background is not None:
            self.start_server(where, text, self.ports[int(background.options["port"])], env)
            return
        argv = _plain_argv(text)
        if argv and argv[0] == "agentrft":
            if parse_only:
                ok, out = self.run_cli(argv[1:] + ["--help"], env)
                if not ok:
                    self._fail(where, f"`{command.first_line}` does not parse:\n{_tail(out)}")
                return
            ok, out = self.run_cli(cheapen(argv[1:]), env)
            output.append(out)
            if not ok:
                self._fail(where, f"`{command.first_line}` failed (run as `agentrft {shlex.join(cheapen(argv[1:]))}`)"
                                  f":\n{_tail(out)}")
            return
        if parse_only:
            self._fail(where, f"parse-only applies to agentrft commands, not to `{command.first_line}`")
            return
        if argv and len(argv) == 3 and Path(argv[0]).name in ("python", "python3") and argv[1] == "-c":
            ok, out = self.run_python(argv[2], where, env)
        else:
            ok, out = self.run_bash(text, env)
        output.append(out)
        if not ok:
            self._fail(where, f"`{command.first_line}` failed:\n{_tail(out)}")

    # -- the three ways a command runs

    def run_cli(self, args: list[str], env: dict[str, str]) -> tuple[bool, str]:
        """``agentrft ARGS`` in this process (the click group behind the console script)."""
        from click.testing import CliRunner

        from agentrft.cli import main

        with self._entered(env):
            result = CliRunner().invoke(main, args, prog_name="agentrft", catch_exceptions=True)
        out = result.output
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            out += "".join(traceback.format_exception(*result.exc_info))
        return result.exit_code == 0, out

    def run_python(self, code: str, where: str, env: dict[str, str]) -> tuple[bool, str]:
        """Python code in the page's namespace; top-level ``await`` allowed (run with asyncio)."""
        import asyncio

        buf = io.StringIO()
        with self._entered(env), contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
            try:
                compiled = compile(code, where, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
                result = eval(compiled, self.namespace)  # noqa: S307 - the documentation's own code
                if asyncio.iscoroutine(result):
                    asyncio.run(result)
            except BaseException:  # a SystemExit or KeyboardInterrupt from a block is its failure too
                buf.write(traceback.format_exc())
                return False, buf.getvalue()
        return True, buf.getvalue()

    def run_bash(self, text: str, env: dict[str, str]) -> tuple[bool, str]:
        try:
            proc = subprocess.run(["bash", "-c", text], cwd=self.workdir, env=self._subprocess_env(env),
                                  capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)
        except subprocess.TimeoutExpired as e:
            return False, f"timed out after {COMMAND_TIMEOUT_S} s\n{e.stdout or ''}{e.stderr or ''}"
        return proc.returncode == 0, proc.stdout + proc.stderr + (
            f"\n(exit code {proc.returncode})" if proc.returncode else "")

    def start_server(self, where: str, text: str, port: int, env: dict[str, str]) -> None:
        """Start ``text`` in its own process group; wait until it accepts connections on ``port``."""
        log = self.workdir / f".server-{port}.log"
        proc = subprocess.Popen(["bash", "-c", "exec " + text], cwd=self.workdir, env=self._subprocess_env(env),
                                stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
        self._servers.append((where, proc, log))
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while time.monotonic() < deadline:
            if _port_open(port):
                return
            if proc.poll() is not None:
                self._fail(where, f"`{text.splitlines()[0]}` exited ({proc.returncode}) before listening on port "
                                  f"{port}:\n{_tail(log.read_text())}")
                return
            time.sleep(0.2)
        self._fail(where, f"`{text.splitlines()[0]}` did not listen on port {port} within "
                          f"{SERVER_START_TIMEOUT_S} s:\n{_tail(log.read_text())}")

    def close(self) -> None:
        """Stop the page's background servers (SIGTERM to each one's process group, SIGKILL after 10 s)."""
        for _, proc, _ in self._servers:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
        self._servers = []

    def _fail(self, where: str, message: str) -> None:
        self.outcome.failures.append(f"{where}: {message}")


def run_markdown(text: str, page: Path, workdir: Path, env: dict[str, str]) -> Outcome:
    """Parse ``text`` (a page's markdown) and run its blocks in ``workdir``."""
    return PageRunner(workdir, env).run_page(parse_page(text, page))


# -- the tiny model in place of the bundled one ----------------------------------------------------------


def make_tiny_model_cache(cache_dir: Path) -> Path:
    """An agentrft model cache whose ``smollm2-135m`` is the tiny random model (docs/contributing.md).

    Pointing ``AGENTRFT_CACHE_DIR`` at it makes every block that names or defaults to the bundled model
    (``--model smollm2-135m``, a config's ``model:``, ``load_any_model("smollm2-135m")``) load the tiny one.
    The cache marker is the real one (``loading._marker``), so the loader takes the folder as current.
    """
    import json

    from agentrft.models import loading

    bundled = loading._BUNDLED[loading.DEFAULT_MODEL]
    folder = cache_dir / "models" / bundled.name
    loading.save_tiny_model(folder)
    (folder / loading._MARKER_FILE).write_text(json.dumps(loading._marker(bundled)))
    return cache_dir
