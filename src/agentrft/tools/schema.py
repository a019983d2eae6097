"""Python functions as tools: OpenAI function schemas from type hints and docstrings.

What: :func:`tool` marks a function (or an environment method) as a tool and
optionally renames it; :func:`function_schema` builds its OpenAI function
schema; :class:`FunctionTool` wraps it in the :class:`~agentrft.tools.base.Tool`
protocol; :class:`SchemaOnlyTool` is a tool declared only by a schema (no
implementation: OpenAI RFT's function-calling mode, where the tool calls of an
assistant turn are themselves the rollout's output).

Why type hints + docstring: they are what a Python author writes anyway, so the
schema the model sees cannot drift from the code that runs. The docstring's
text before its first section is the tool's description; a Google-style
``Args:`` section gives each parameter's description::

    @tool
    def search(query: str, limit: int = 5, kind: Literal["news", "filings"] | None = None) -> list[dict]:
        \"\"\"Search the document store.

        Args:
            query: words to look for.
            limit: at most this many results.
        \"\"\"

gives ``{"type": "function", "function": {"name": "search", "description":
"Search the document store.", "parameters": {"type": "object", "properties":
{"query": {"type": "string", "description": "words to look for."}, "limit":
{"type": "integer", ..., "default": 5}, "kind": {"type": ["string", "null"],
"enum": ["news", "filings", null], "default": null}}, "required": ["query"],
"additionalProperties": false}}}``.

Types: ``str``/``int``/``float``/``bool``, ``X | None``/``Optional``, unions,
``list[T]``/``tuple``/``set``, ``dict[str, T]``, ``Literal[...]`` and ``Enum``
subclasses (``enum``), ``Any``; anything else pydantic can describe (pydantic
models, dataclasses, TypedDicts, datetimes) through pydantic's own JSON schema,
inlined, with nested definitions hoisted to ``parameters["$defs"]``. Parameters
with a default are optional. A parameter annotated :class:`ToolContext` is not
in the schema: it receives the call's context (trace id, task row).
Arguments are converted to the annotated types with pydantic before the call
(a JSON string becomes the ``Enum`` member, a JSON object the pydantic model).

Sync functions run in a daemon thread (:func:`~agentrft.tools.base.run_blocking`),
async ones are awaited; the result is shown to the model as a string: ``str``
as is, anything else JSON-encoded.
"""

from __future__ import annotations

import copy
import enum
import functools
import inspect
import json
import re
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal, TypeVar, Union, get_args, get_origin, overload

from jsonschema.exceptions import ValidationError as JSONSchemaValidationError
from pydantic import TypeAdapter, ValidationError
from pydantic_core import to_jsonable_python

from agentrft.errors import ToolDefinitionError
from agentrft.tools.base import ToolContext, ToolFailure, run_blocking
from agentrft.tools.http_endpoint import function_schema_name, normalize_function_schema
from agentrft.types import ToolErrorKind

__all__ = [
    "FunctionTool",
    "SchemaOnlyTool",
    "describe_schema_error",
    "function_schema",
    "parse_docstring",
    "result_text",
    "tool",
]

F = TypeVar("F", bound=Callable[..., Any])

TOOL_NAME_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # what OpenAI accepts as a function name
_META_ATTR = "__agentrft_tool__"
_PRIMITIVES: dict[Any, str] = {str: "string", int: "integer", float: "number", bool: "boolean"}
_SECTION = re.compile(
    r"^(Args|Arguments|Parameters|Params|Returns?|Yields?|Raises|Examples?|Notes?|Attributes|"
    r"See Also|Warnings?|References|Todo)\s*:\s*$",
    re.IGNORECASE,
)
_ARGS_SECTION = {"args", "arguments", "parameters", "params"}
_ARG_ENTRY = re.compile(r"^\*{0,2}(\w+)\s*(?:\([^)]*\))?\s*:\s*(.*)$")


@dataclass(frozen=True)
class _ToolMeta:
    name: str | None
    description: str | None


# -- the decorator ---------------------------------------------------------------
@overload
def tool(fn: F, /) -> F: ...
@overload
def tool(*, name: str | None = None, description: str | None = None) -> Callable[[F], F]: ...
def tool(fn: Callable[..., Any] | None = None, /, *, name: str | None = None, description: str | None = None) -> Any:
    """Mark ``fn`` as a tool; use bare (``@tool``) or with a custom ``name`` / ``description``.

    The function is returned unchanged (still callable, still a method when
    used in a class body). Missing type hints are reported here, at definition
    time; the full schema is built when the tool is bound (:class:`FunctionTool`),
    so hints may refer to names defined later in the module.
    """

    def mark(f: F) -> F:
        if name is not None:
            _check_name(name, f)
        _parameters(f, _signature(f), skip_first=False)  # raises ToolDefinitionError for a missing hint
        setattr(f, _META_ATTR, _ToolMeta(name, description))
        return f

    return mark(fn) if fn is not None else mark


def function_schema(fn: Callable[..., Any], *, name: str | None = None, description: str | None = None) -> dict[str, Any]:
    """OpenAI function schema ``{"type": "function", "function": {name, description, parameters}}`` of ``fn``."""
    return copy.deepcopy(_analyse(fn, name, description).schema)


# -- tools --------------------------------------------------------------------------
class FunctionTool:
    """A Python function (or bound method) as a :class:`~agentrft.tools.base.Tool`."""

    has_implementation = True

    def __init__(self, fn: Callable[..., Any], name: str | None = None, *, description: str | None = None):
        self.fn = fn
        self._spec = _analyse(fn, name, description)
        self.name = self._spec.name

    def schema(self) -> dict[str, Any]:
        return copy.deepcopy(self._spec.schema)

    async def acall(self, arguments: dict[str, Any], ctx: ToolContext) -> str:
        kwargs = self._spec.convert(arguments)
        if self._spec.context_param is not None:
            kwargs[self._spec.context_param] = ctx
        if self._spec.is_async:
            value = await self.fn(**kwargs)
        else:
            value = await run_blocking(self.fn, **kwargs)
            if inspect.isawaitable(value):  # a sync wrapper that returned a coroutine
                value = await value
        return result_text(value)

    def __repr__(self) -> str:
        return f"FunctionTool({self.name!r})"


class SchemaOnlyTool:
    """A tool the model may call but nothing implements: calling it ends the rollout.

    In OpenAI RFT's function-calling mode the assistant turn with the tool
    calls is the output that graders see; the rollout loop stops there
    (``StopReason.TOOL_CALLS_OUTPUT``) instead of executing anything. Accepts
    the chat (``{"type": "function", "function": {...}}``) and the Responses
    (flat) schema shapes.
    """

    has_implementation = False

    def __init__(self, schema: Mapping[str, Any]):
        name = function_schema_name(schema)
        if not name:
            raise ToolDefinitionError(f"a tool schema has no function name: {dict(schema)!r}")
        self.name = name
        self._schema = normalize_function_schema(schema)

    def schema(self) -> dict[str, Any]:
        return copy.deepcopy(self._schema)

    async def acall(self, arguments: dict[str, Any], ctx: ToolContext) -> str:
        raise ToolFailure(ToolErrorKind.TOOL_ERROR, f"tool {self.name!r} is declared by schema only and cannot run")

    def __repr__(self) -> str:
        return f"SchemaOnlyTool({self.name!r})"


def result_text(value: Any) -> str:
    """The text the model sees for a tool's return value: ``str`` as is, anything else as JSON."""
    if isinstance(value, str):
        return value
    try:
        return json.dumps(value, ensure_ascii=False, default=_jsonable)
    except (TypeError, ValueError):  # circular references and the like
        return str(value)


def describe_schema_error(error: JSONSchemaValidationError) -> str:
    """A JSON-schema validation error as the model sees it: ``message`` or ``message (at $.path)``.

    One wording for every schema check on tool arguments (the executor's
    ``parameters`` validation and the guardrails' argument policies), so the
    model learns one error shape.
    """
    return error.message if not error.absolute_path else f"{error.message} (at {error.json_path})"


def _jsonable(value: Any) -> Any:
    try:
        return to_jsonable_python(value)  # pydantic models, dataclasses, enums, datetimes, sets, bytes
    except Exception:
        return str(value)


# -- analysis -------------------------------------------------------------------------
@dataclass(frozen=True)
class _Param:
    name: str
    adapter: TypeAdapter[Any]
    required: bool


@dataclass(frozen=True)
class _Spec:
    """Everything about a function that does not depend on the instance it is bound to."""

    name: str
    schema: dict[str, Any]
    params: tuple[_Param, ...]
    context_param: str | None
    is_async: bool

    def convert(self, arguments: Mapping[str, Any]) -> dict[str, Any]:
        """JSON arguments -> keyword arguments of the annotated types, or ``ToolFailure(INVALID_ARGUMENTS)``."""
        if not isinstance(arguments, Mapping):
            raise ToolFailure(ToolErrorKind.INVALID_ARGUMENTS, f"arguments must be a JSON object, got {arguments!r}")
        known = {p.name for p in self.params}
        unexpected = sorted(set(arguments) - known)
        if unexpected:
            raise ToolFailure(ToolErrorKind.INVALID_ARGUMENTS, f"unexpected arguments: {', '.join(unexpected)}")
        kwargs: dict[str, Any] = {}
        for p in self.params:
            if p.name not in arguments:
                if p.required:
                    raise ToolFailure(ToolErrorKind.INVALID_ARGUMENTS, f"{p.name!r} is a required property")
                continue
            try:
                kwargs[p.name] = p.adapter.validate_python(arguments[p.name])
            except ValidationError as e:
                problems = "; ".join(err["msg"] for err in e.errors())
                raise ToolFailure(ToolErrorKind.INVALID_ARGUMENTS, f"{p.name!r}: {problems}") from None
        return kwargs


def _analyse(fn: Callable[..., Any], name: str | None, description: str | None) -> _Spec:
    # Cached on the plain function, never on a bound method: a cache entry
    # must not keep an environment instance alive.
    if inspect.ismethod(fn):
        func = fn.__func__
        return _analyse_function(func, True, name, description, getattr(func, _META_ATTR, None))
    if inspect.isfunction(fn):
        return _analyse_function(fn, False, name, description, getattr(fn, _META_ATTR, None))
    return _analyse_uncached(fn, False, name, description, getattr(fn, _META_ATTR, None))


@functools.lru_cache(maxsize=4096)
def _analyse_function(
    fn: Callable[..., Any], bound: bool, name: str | None, description: str | None, meta: _ToolMeta | None
) -> _Spec:
    return _analyse_uncached(fn, bound, name, description, meta)


def _analyse_uncached(
    fn: Callable[..., Any], bound: bool, name: str | None, description: str | None, meta: _ToolMeta | None
) -> _Spec:
    meta = meta or _ToolMeta(None, None)
    tool_name = name or meta.name or getattr(fn, "__name__", None)
    if not tool_name:
        raise ToolDefinitionError(f"{fn!r} has no __name__; pass name=... to give the tool a name")
    _check_name(tool_name, fn)
    doc_description, arg_docs = parse_docstring(inspect.getdoc(fn) or "")

    sig = _signature(fn)
    raw_params = _parameters(fn, sig, skip_first=bound)
    hints = _type_hints(fn)
    where = _qualname(fn)

    properties: dict[str, Any] = {}
    required: list[str] = []
    defs: dict[str, Any] = {}
    params: list[_Param] = []
    context_param: str | None = None
    for p in raw_params:
        annotation = hints.get(p.name, p.annotation)
        if annotation is ToolContext:
            context_param = p.name
            continue
        prop = _type_schema(annotation, defs, f"{where}, parameter {p.name!r}")
        text = arg_docs.get(p.name) or _annotated_description(annotation)
        if text:
            prop["description"] = text
        has_default = p.default is not inspect.Parameter.empty
        if has_default:
            default = _json_default(p.default)
            if default is not _NO_DEFAULT:
                prop["default"] = default
        else:
            required.append(p.name)
        properties[p.name] = prop
        try:
            adapter: TypeAdapter[Any] = TypeAdapter(annotation)
        except Exception as e:
            raise ToolDefinitionError(f"{where}, parameter {p.name!r}: unsupported type {annotation!r}: {e}") from e
        params.append(_Param(p.name, adapter, not has_default))

    parameters: dict[str, Any] = {"type": "object", "properties": properties, "required": required}
    parameters["additionalProperties"] = False
    if defs:
        parameters["$defs"] = defs
    text = description if description is not None else meta.description
    schema = {
        "type": "function",
        "function": {
            "name": tool_name,
            "description": text if text is not None else doc_description,
            "parameters": parameters,
        },
    }
    target = fn.func if isinstance(fn, functools.partial) else fn
    is_async = inspect.iscoroutinefunction(target) or inspect.iscoroutinefunction(getattr(target, "__call__", None))
    return _Spec(tool_name, schema, tuple(params), context_param, is_async)


def _check_name(name: str, fn: Any) -> None:
    if not TOOL_NAME_PATTERN.match(name):
        raise ToolDefinitionError(
            f"tool name {name!r} of {_qualname(fn)} is not valid: use 1-64 letters, digits, '_' or '-'"
        )


def _qualname(fn: Any) -> str:
    target = fn.func if isinstance(fn, functools.partial) else fn
    return getattr(target, "__qualname__", None) or repr(fn)


def _signature(fn: Callable[..., Any]) -> inspect.Signature:
    try:
        return inspect.signature(fn)
    except (TypeError, ValueError) as e:
        raise ToolDefinitionError(f"cannot read the signature of {_qualname(fn)}: {e}") from e


def _parameters(fn: Callable[..., Any], sig: inspect.Signature, *, skip_first: bool) -> list[inspect.Parameter]:
    """The parameters that become arguments; a missing hint or ``*args`` is a :class:`ToolDefinitionError`."""
    params = list(sig.parameters.values())
    if params and (skip_first or params[0].name in ("self", "cls")):
        params = params[1:]
    for p in params:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD, p.POSITIONAL_ONLY):
            raise ToolDefinitionError(
                f"tool function {_qualname(fn)}: parameter {p.name!r} must be passable by keyword "
                "(tools take named arguments only: no *args, **kwargs or positional-only parameters)"
            )
        if p.annotation is inspect.Parameter.empty:
            raise ToolDefinitionError(
                f"tool function {_qualname(fn)}: parameter {p.name!r} has no type hint; "
                "every tool parameter needs one (it becomes the JSON schema the model sees)"
            )
    return params


def _type_hints(fn: Callable[..., Any]) -> dict[str, Any]:
    target = fn.func if isinstance(fn, functools.partial) else fn
    if not (inspect.isfunction(target) or inspect.ismethod(target)):
        target = getattr(target, "__call__", target)  # a callable object: its __call__'s hints
    try:
        return typing.get_type_hints(target, include_extras=True)
    except Exception as e:  # an unresolvable forward reference
        raise ToolDefinitionError(f"cannot resolve the type hints of {_qualname(fn)}: {type(e).__name__}: {e}") from e


# -- types -> JSON schema ---------------------------------------------------------------
def _type_schema(tp: Any, defs: dict[str, Any], where: str) -> dict[str, Any]:
    origin, args = get_origin(tp), get_args(tp)
    if tp is Any or tp is object:
        return {}
    if tp is None or tp is type(None):
        return {"type": "null"}
    if origin is Annotated:
        return _type_schema(args[0], defs, where)
    if tp in _PRIMITIVES:
        return {"type": _PRIMITIVES[tp]}
    if origin is Literal:
        return _enum_schema(list(args))
    if origin is Union or origin is types.UnionType:
        return _union_schema(args, defs, where)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return _enum_schema([m.value for m in tp])
    if tp in (list, tuple, set, frozenset) or origin in (list, set, frozenset, Sequence):
        schema: dict[str, Any] = {"type": "array"}
        if args:
            schema["items"] = _type_schema(args[0], defs, where)
        if tp in (set, frozenset) or origin in (set, frozenset):
            schema["uniqueItems"] = True
        return schema
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return {"type": "array", "items": _type_schema(args[0], defs, where)}
        items = [_type_schema(a, defs, where) for a in args]
        return {"type": "array", "prefixItems": items, "minItems": len(items), "maxItems": len(items)}
    if tp is dict or origin in (dict, Mapping):
        schema = {"type": "object"}
        if len(args) == 2 and args[1] is not Any:
            schema["additionalProperties"] = _type_schema(args[1], defs, where)
        return schema
    return _pydantic_schema(tp, defs, where)


def _enum_schema(values: list[Any]) -> dict[str, Any]:
    kinds = {_json_type(v) for v in values}
    schema: dict[str, Any] = {"enum": values}
    if len(kinds) == 1 and None not in kinds:
        schema = {"type": kinds.pop(), "enum": values}
    return schema


def _json_type(value: Any) -> str | None:
    if value is None:
        return "null"
    for py, name in ((bool, "boolean"), (int, "integer"), (float, "number"), (str, "string")):
        if isinstance(value, py):
            return name
    return None


def _union_schema(args: tuple[Any, ...], defs: dict[str, Any], where: str) -> dict[str, Any]:
    members = [a for a in args if a is not type(None)]
    nullable = len(members) < len(args)
    if len(members) == 1:
        inner = _type_schema(members[0], defs, where)
    else:
        inner = {"anyOf": [_type_schema(a, defs, where) for a in members]}
    if not nullable:
        return inner
    # Prefer the compact {"type": [t, "null"]} form small models read easily.
    if "enum" in inner:
        inner = dict(inner, enum=[*inner["enum"], None])
        if isinstance(inner.get("type"), str):
            inner["type"] = [inner["type"], "null"]
        return inner
    if isinstance(inner.get("type"), str) and not {"anyOf", "oneOf", "allOf", "$ref", "const"} & set(inner):
        return dict(inner, type=[inner["type"], "null"])
    if "anyOf" in inner and len(inner) == 1:
        return {"anyOf": [*inner["anyOf"], {"type": "null"}]}
    return {"anyOf": [inner, {"type": "null"}]}


def _pydantic_schema(tp: Any, defs: dict[str, Any], where: str) -> dict[str, Any]:
    """Pydantic models, dataclasses, TypedDicts, datetimes...: pydantic's schema, inlined."""
    try:
        schema = TypeAdapter(tp).json_schema(ref_template="#/$defs/{model}")
    except Exception as e:
        raise ToolDefinitionError(f"{where}: unsupported type {tp!r} ({type(e).__name__}: {e})") from e
    for key, value in schema.pop("$defs", {}).items():
        if key in defs and defs[key] != value:
            raise ToolDefinitionError(f"{where}: two different types are both named {key!r} in the schema")
        defs[key] = value
    return schema


def _annotated_description(tp: Any) -> str | None:
    """``Annotated[int, "how many"]``: the string is the description (when the docstring has none)."""
    if get_origin(tp) is Annotated:
        for extra in get_args(tp)[1:]:
            if isinstance(extra, str):
                return extra
    return None


_NO_DEFAULT = object()


def _json_default(value: Any) -> Any:
    try:
        jsonable = to_jsonable_python(value)
        json.dumps(jsonable)
        return jsonable
    except Exception:
        return _NO_DEFAULT  # not expressible in JSON: the parameter is optional, the default unstated


# -- docstrings ---------------------------------------------------------------------------
def parse_docstring(doc: str) -> tuple[str, dict[str, str]]:
    """(description, {parameter: description}) from a Google-style docstring.

    The description is the text before the first section header (``Args:``,
    ``Returns:``, ...). Entries of ``Args:`` are ``name: text`` or
    ``name (type): text``; more deeply indented lines continue an entry.
    """
    lines = inspect.cleandoc(doc).splitlines() if doc else []
    description: list[str] = []
    args: dict[str, str] = {}
    section: str | None = None
    entry_indent: int | None = None
    current: str | None = None
    for line in lines:
        stripped = line.strip()
        indent = len(line) - len(line.lstrip())
        header = _SECTION.match(line) if indent == 0 else None
        if header:
            section, entry_indent, current = header.group(1).lower(), None, None
            continue
        if section is None:
            description.append(line)
            continue
        if section not in _ARGS_SECTION or not stripped:
            continue
        if entry_indent is None:
            entry_indent = indent
        match = _ARG_ENTRY.match(stripped) if indent <= entry_indent else None
        if match:
            current = match.group(1)
            args[current] = match.group(2).strip()
        elif current is not None:
            args[current] = f"{args[current]} {stripped}".strip()
    return "\n".join(description).strip(), args
