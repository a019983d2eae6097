"""Environments: methods as tools bound to per-rollout state, lifecycle hooks, extra tools."""

from __future__ import annotations

import pytest

from agentrft.errors import ToolDefinitionError
from agentrft.tools import (
    Environment,
    FunctionEnvironment,
    FunctionTool,
    SchemaOnlyTool,
    Tool,
    ToolExecutor,
    ToolLimits,
    run_sync,
    tool,
)
from agentrft.types import ToolCall, ToolErrorKind


class Cart(Environment):
    """A shopping cart: state that must not leak between rollouts."""

    log: list[str] = []  # class-level on purpose: records lifecycle calls across instances

    def setup(self, row: dict) -> None:
        self.items: list[str] = list(row.get("start", []))
        self.customer = row["customer"]
        Cart.log.append(f"setup:{self.customer}")

    def close(self) -> None:
        Cart.log.append(f"close:{self.customer}")

    def add(self, item: str) -> int:
        """Add an item to the cart.

        Args:
            item: the product name.
        """
        self.items.append(item)
        return len(self.items)

    def contents(self) -> list[str]:
        """List the cart."""
        return self.items

    @tool(name="checkout", description="Pay and finish.")
    def pay(self) -> str:
        self.done = True
        return f"{self.customer} paid for {len(self.items)} items"

    @staticmethod
    def currency() -> str:
        """The shop's currency."""
        return "EUR"

    def _total(self) -> int:  # private helper: not a tool
        return len(self.items)

    @property
    def size(self) -> int:  # properties are not tools
        return len(self.items)


def started(env: Environment, row: dict) -> Environment:
    run_sync(env.asetup(row))
    return env


def test_public_methods_are_tools_in_definition_order():
    env = started(Cart(), {"customer": "ada"})
    tools = env.tools()
    assert [t.name for t in tools] == ["add", "contents", "checkout", "currency"]
    assert all(isinstance(t, Tool) and t.has_implementation for t in tools)
    add = tools[0].schema()["function"]
    assert add["description"] == "Add an item to the cart."
    assert add["parameters"]["properties"] == {"item": {"type": "string", "description": "the product name."}}
    assert tools[2].schema()["function"]["description"] == "Pay and finish."


def test_method_tools_see_their_own_instance_state():
    a = started(Cart(), {"customer": "ada"})
    b = started(Cart(), {"customer": "bob", "start": ["tea"]})
    ea = ToolExecutor(a.tools(), ToolLimits())
    eb = ToolExecutor(b.tools(), ToolLimits())
    ea.execute([ToolCall("add", {"item": "pen"})], turn=1)
    ea.execute([ToolCall("add", {"item": "ink"})], turn=2)
    (rb,) = eb.execute([ToolCall("add", {"item": "cup"})], turn=1)
    assert rb.result == "2"
    assert a.items == ["pen", "ink"] and b.items == ["tea", "cup"]
    (ca,) = ea.execute([ToolCall("contents", {})], turn=3)
    assert ca.result == '["pen", "ink"]'


def test_setup_receives_the_row_close_is_called_and_done_ends_the_episode():
    Cart.log.clear()
    env = started(Cart(), {"customer": "cy", "start": ["a", "b"]})
    assert env.items == ["a", "b"] and not env.done
    (rec,) = ToolExecutor(env.tools(), ToolLimits()).execute([ToolCall("checkout", {})], turn=1)
    assert rec.result == "cy paid for 2 items"
    assert env.done and not Cart().done  # per instance, the class default stays False
    run_sync(env.aclose())
    assert Cart.log == ["setup:cy", "close:cy"]


def test_async_lifecycle_overrides_are_used():
    class Session(Environment):
        async def asetup(self, row: dict) -> None:
            self.session = f"session-for-{row['id']}"

        async def aclose(self) -> None:
            self.session = None

        async def whoami(self) -> str:
            """Which session this rollout uses."""
            return self.session

    env = Session()
    run_sync(env.asetup({"id": "r7"}))
    (rec,) = ToolExecutor(env.tools(), ToolLimits()).execute([ToolCall("whoami", {})], turn=1)
    assert rec.result == "session-for-r7"
    run_sync(env.aclose())
    assert env.session is None


def test_extra_tools_hook_and_duplicate_names():
    refund = SchemaOnlyTool({"type": "function", "function": {"name": "refund", "parameters": {"type": "object"}}})

    class WithExtras(Environment):
        def lookup(self, key: str) -> str:
            """Look up a key."""
            return key.upper()

        def extra_tools(self):
            return [refund]

    assert [t.name for t in WithExtras().tools()] == ["lookup", "refund"]

    class Clash(WithExtras):
        def extra_tools(self):
            return [SchemaOnlyTool({"type": "function", "name": "lookup", "parameters": {"type": "object"}})]

    with pytest.raises(ToolDefinitionError, match="two tools named 'lookup'"):
        Clash().tools()


def test_unhinted_public_method_is_reported():
    class Sloppy(Environment):
        def helper(self, x):
            return x

    with pytest.raises(ToolDefinitionError, match=r"Sloppy.helper.*'x'.*no type hint"):
        Sloppy().tools()


def test_from_tools_with_functions_and_tool_objects():
    def square(x: int) -> int:
        """Square a number."""
        return x * x

    async def shout(text: str) -> str:
        """Upper-case text."""
        return text.upper()

    env = Environment.from_tools([square, FunctionTool(shout, name="yell")])
    assert isinstance(env, FunctionEnvironment)
    assert [t.name for t in env.tools()] == ["square", "yell"]
    run_sync(env.asetup({"id": "x"}))  # default lifecycle: no-ops
    recs = ToolExecutor(env.tools(), ToolLimits()).execute(
        [ToolCall("square", {"x": 7}), ToolCall("yell", {"text": "hi"}), ToolCall("square", {"x": "7"})], turn=1
    )
    assert [r.result for r in recs[:2]] == ["49", "HI"]
    assert recs[2].error.kind == ToolErrorKind.INVALID_ARGUMENTS
    run_sync(env.aclose())
