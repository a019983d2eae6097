"""OpenAI function schemas from Python signatures and docstrings; FunctionTool and SchemaOnlyTool."""

from __future__ import annotations

import enum
import json
from typing import Annotated, Literal, Optional

import pytest
from jsonschema import Draft202012Validator
from pydantic import BaseModel

from agentrft.errors import ToolDefinitionError
from agentrft.tools import FunctionTool, SchemaOnlyTool, Tool, ToolContext, ToolFailure, function_schema, run_sync, tool
from agentrft.tools.schema import describe_schema_error, parse_docstring
from agentrft.types import ToolErrorKind

CTX = ToolContext(trace_id="trace-1", call_id="call-1", turn=2, item={"answer": 42})


def search(query: str, limit: int = 5, exact: bool = False, min_score: float = 0.5) -> list[str]:
    """Search the document store.

    Returns matching titles.

    Args:
        query: words to look for;
            may span several lines.
        limit (int): at most this many results.

    Returns:
        The titles.
    """
    return []


def params(fn) -> dict:
    return function_schema(fn)["function"]["parameters"]


def test_schema_from_signature_types_defaults_and_docstring():
    schema = function_schema(search)
    assert schema["type"] == "function"
    fn = schema["function"]
    assert fn["name"] == "search"
    assert fn["description"] == "Search the document store.\n\nReturns matching titles."
    p = fn["parameters"]
    assert p["type"] == "object" and p["additionalProperties"] is False
    assert p["required"] == ["query"]
    assert p["properties"] == {
        "query": {"type": "string", "description": "words to look for; may span several lines."},
        "limit": {"type": "integer", "description": "at most this many results.", "default": 5},
        "exact": {"type": "boolean", "default": False},
        "min_score": {"type": "number", "default": 0.5},
    }


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


def shapes(
    a: Optional[int],
    b: str | None,
    mode: Literal["fast", "slow"],
    maybe_mode: Literal["x", "y"] | None,
    color: Color,
    ids: list[int],
    tags: dict[str, float],
    either: int | str,
    pair: tuple[int, str],
    note: Annotated[str, "a free-text note"] = "",
) -> None:
    """Exercise the type mapping."""


def test_optional_literal_enum_list_dict_union_tuple():
    p = params(shapes)
    props = p["properties"]
    assert props["a"] == {"type": ["integer", "null"]}
    assert props["b"] == {"type": ["string", "null"]}
    assert props["mode"] == {"type": "string", "enum": ["fast", "slow"]}
    assert props["maybe_mode"] == {"type": ["string", "null"], "enum": ["x", "y", None]}
    assert props["color"] == {"type": "string", "enum": ["red", "blue"]}
    assert props["ids"] == {"type": "array", "items": {"type": "integer"}}
    assert props["tags"] == {"type": "object", "additionalProperties": {"type": "number"}}
    assert props["either"] == {"anyOf": [{"type": "integer"}, {"type": "string"}]}
    assert props["pair"]["prefixItems"] == [{"type": "integer"}, {"type": "string"}]
    assert props["note"] == {"type": "string", "description": "a free-text note", "default": ""}
    # Optional without a default is still required: the Python call needs it.
    assert p["required"] == ["a", "b", "mode", "maybe_mode", "color", "ids", "tags", "either", "pair"]

    v = Draft202012Validator(p)
    good = {"a": None, "b": "s", "mode": "fast", "maybe_mode": None, "color": "blue", "ids": [1, 2],
            "tags": {"x": 1.5}, "either": "s", "pair": [1, "a"]}
    assert list(v.iter_errors(good)) == []
    for key, bad in [("mode", "medium"), ("maybe_mode", "z"), ("color", "green"), ("ids", [1, "2"]),
                     ("tags", {"x": "high"}), ("pair", [1, 2]), ("a", "3")]:
        assert list(v.iter_errors({**good, key: bad})), key


class Address(BaseModel):
    city: str
    zip: str | None = None


class Customer(BaseModel):
    """A customer record."""

    name: str
    address: Address


def create_customer(customer: Customer, color: Color = Color.RED) -> dict:
    """Create a customer.

    Args:
        customer: who to create.
    """
    return {"type": type(customer).__name__, "city": customer.address.city, "color": color}


def test_pydantic_model_params_schema_validation_and_conversion():
    p = params(create_customer)
    prop = p["properties"]["customer"]
    assert prop["type"] == "object" and prop["description"] == "who to create."
    assert set(prop["required"]) == {"name", "address"}
    # The nested model is a $ref resolved against the parameters root.
    assert "Address" in p["$defs"] and prop["properties"]["address"] == {"$ref": "#/$defs/Address"}
    assert p["properties"]["color"] == {"type": "string", "enum": ["red", "blue"], "default": "red"}

    v = Draft202012Validator(p)
    ok = {"customer": {"name": "Ada", "address": {"city": "London"}}, "color": "blue"}
    assert list(v.iter_errors(ok)) == []
    assert list(v.iter_errors({"customer": {"name": "Ada", "address": {"zip": "1"}}}))

    # The function receives the model instance and the Enum member, not the JSON.
    out = run_sync(FunctionTool(create_customer).acall(ok, CTX))
    assert json.loads(out) == {"type": "Customer", "city": "London", "color": "blue"}


def test_missing_type_hint_names_function_and_parameter():
    def lookup(ticker: str, year) -> str:
        return ticker

    with pytest.raises(ToolDefinitionError, match=r"lookup.*'year'.*no type hint"):
        function_schema(lookup)
    with pytest.raises(ToolDefinitionError, match=r"lookup.*'year'"):
        tool(lookup)  # reported at definition time
    def total(*values: int) -> int:
        return sum(values)

    with pytest.raises(ToolDefinitionError, match=r"total.*'values'.*keyword"):
        function_schema(total)


def test_tool_decorator_bare_and_with_name():
    @tool
    def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    @tool(name="multiply", description="Multiply two integers.")
    def mul(a: int, b: int) -> int:
        return a * b

    assert add(2, 3) == 5 and mul(2, 3) == 6  # still plain functions
    assert function_schema(add)["function"]["name"] == "add"
    fn = function_schema(mul)["function"]
    assert fn["name"] == "multiply" and fn["description"] == "Multiply two integers."
    assert FunctionTool(mul).name == "multiply"
    assert FunctionTool(add, name="plus").name == "plus"
    with pytest.raises(ToolDefinitionError, match="not valid"):
        tool(name="has space")(add)
    with pytest.raises(ToolDefinitionError, match="not valid"):
        FunctionTool(lambda x: x)  # "<lambda>" is no tool name


class Shop:
    def price(self, item: str, qty: int = 1) -> float:
        """Price of an item."""
        return 2.5 * qty


def test_self_is_skipped_for_methods():
    for fn in (Shop.price, Shop().price):
        p = params(fn)
        assert list(p["properties"]) == ["item", "qty"] and p["required"] == ["item"]
    assert run_sync(FunctionTool(Shop().price).acall({"item": "pen", "qty": 2}, CTX)) == "5.0"


def test_function_tool_runs_sync_and_async_and_converts_results():
    def greet(name: str) -> str:
        return f"hello {name}"

    async def info(ctx: ToolContext, key: str) -> dict:
        """The context parameter is injected, not part of the schema."""
        return {"key": key, "trace": ctx.trace_id, "answer": ctx.item["answer"], "none": None}

    def nothing() -> None:
        return None

    g, i, n = FunctionTool(greet), FunctionTool(info), FunctionTool(nothing)
    assert all(isinstance(t, Tool) and t.has_implementation for t in (g, i, n))
    assert run_sync(g.acall({"name": "Ada"}, CTX)) == "hello Ada"  # str as is, not JSON-quoted
    assert list(i.schema()["function"]["parameters"]["properties"]) == ["key"]
    assert json.loads(run_sync(i.acall({"key": "k"}, CTX))) == {"key": "k", "trace": "trace-1", "answer": 42, "none": None}
    assert run_sync(n.acall({}, CTX)) == "null"

    # Called directly (without the executor), bad arguments are still typed failures.
    with pytest.raises(ToolFailure) as e:
        run_sync(g.acall({"name": "Ada", "extra": 1}, CTX))
    assert e.value.kind == ToolErrorKind.INVALID_ARGUMENTS and "extra" in e.value.message
    with pytest.raises(ToolFailure, match="'name' is a required property"):
        run_sync(g.acall({}, CTX))


def test_schema_is_a_copy():
    t = FunctionTool(search)
    t.schema()["function"]["name"] = "mutated"
    assert t.schema()["function"]["name"] == "search"


def test_schema_only_tool():
    flat = {"type": "function", "name": "refund", "description": "Refund an order",
            "parameters": {"type": "object", "properties": {"order_id": {"type": "string"}}}}
    t = SchemaOnlyTool(flat)
    assert isinstance(t, Tool) and t.has_implementation is False and t.name == "refund"
    assert t.schema() == {"type": "function", "function": {k: v for k, v in flat.items() if k != "type"}}
    with pytest.raises(ToolFailure):
        run_sync(t.acall({"order_id": "A1"}, CTX))
    with pytest.raises(ToolDefinitionError):
        SchemaOnlyTool({"type": "function", "function": {"description": "no name"}})


def test_parse_docstring_sections():
    doc = """Summary line.

    Args:
        x (int): first
            continued.
        y: second
    Raises:
        ValueError: not an argument
    """
    assert parse_docstring(doc) == ("Summary line.", {"x": "first continued.", "y": "second"})
    assert parse_docstring("") == ("", {})


def test_decorating_after_a_first_schema_is_not_served_stale():
    def lookup(key: str) -> str:
        """Look up."""
        return key

    assert function_schema(lookup)["function"]["name"] == "lookup"
    tool(name="find")(lookup)
    assert function_schema(lookup)["function"]["name"] == "find"


def test_describe_schema_error_names_the_path_only_below_the_top():
    validator = Draft202012Validator({"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]})
    (top,) = validator.iter_errors({})
    (nested,) = validator.iter_errors({"q": 3})
    assert describe_schema_error(top) == "'q' is a required property"
    assert describe_schema_error(nested) == "3 is not of type 'string' (at $.q)"
