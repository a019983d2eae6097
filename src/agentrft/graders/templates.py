"""``{{ namespace.path }}`` templates, as in OpenAI's graders.

Only two namespaces exist: ``sample`` (see :mod:`agentrft.graders.sample`)
and ``item`` (the dataset row). Paths use dots and integer indices:
``{{sample.output_tools[0].function.name}}``, ``{{item.answers[1].text}}``.
Strings render as-is; any other value renders as compact JSON (``42``,
``true``, ``["a","b"]``), so a list or object can be shown to a judge.

A path that does not resolve raises :class:`TemplateError` with the OpenAI
flag ``invalid_variable_error``; asking for ``sample.output_json`` when the
output is not JSON raises with ``sample_parse_error``. Graders turn these
into flagged grades, never crashes.
"""

from __future__ import annotations

import json
import re
from typing import Any

from agentrft.graders.sample import SampleError

_PLACEHOLDER = re.compile(r"\{\{\s*(.*?)\s*\}\}")
_SEGMENT = re.compile(r"([A-Za-z_][A-Za-z0-9_\-]*)|\[\s*(-?\d+)\s*\]|\[\s*[\"']([^\"']*)[\"']\s*\]")


class TemplateError(ValueError):
    """A template variable does not resolve (OpenAI flag ``invalid_variable_error``)."""

    flag = "invalid_variable_error"


def parse_path(path: str) -> list[str | int]:
    """``sample.output_tools[0].function.name`` -> ``["sample", "output_tools", 0, "function", "name"]``."""
    parts: list[str | int] = []
    pos = 0
    expect_name = True
    while pos < len(path):
        if path[pos] == "." and not expect_name:
            pos += 1
            expect_name = True
            continue
        m = _SEGMENT.match(path, pos)
        if not m or (m.group(1) and not expect_name):
            raise TemplateError(f"cannot parse template variable {path!r} at position {pos}")
        if m.group(1) is not None:
            parts.append(m.group(1))
        elif m.group(2) is not None:
            parts.append(int(m.group(2)))
        else:
            parts.append(m.group(3))
        expect_name = False
        pos = m.end()
    if expect_name:
        raise TemplateError(f"cannot parse template variable {path!r}")
    return parts


def resolve(path: str, sample: dict[str, Any], item: dict[str, Any]) -> Any:
    """The value ``path`` names in the ``sample`` / ``item`` namespaces."""
    parts = parse_path(path)
    namespaces = {"sample": sample, "item": item}
    if parts[0] not in namespaces:
        raise TemplateError(f"{{{{{path}}}}}: unknown namespace {parts[0]!r} (use 'sample' or 'item')")
    node: Any = namespaces[parts[0]]
    walked = str(parts[0])
    for i, part in enumerate(parts[1:]):
        if parts[0] == "sample" and i == 0 and part == "output_json" and node.get("output_json") is None:
            raise SampleError(f"{{{{{path}}}}}: sample.output_text is not valid JSON")
        if isinstance(part, int):
            if not isinstance(node, list) or not -len(node) <= part < len(node):
                raise TemplateError(f"{{{{{path}}}}}: {walked} has no index {part}")
            node = node[part]
            walked += f"[{part}]"
        else:
            if not isinstance(node, dict) or part not in node:
                raise TemplateError(f"{{{{{path}}}}}: {walked} has no field {part!r}")
            node = node[part]
            walked += f".{part}"
    return node


def to_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def render(template: str, sample: dict[str, Any], item: dict[str, Any]) -> str:
    """Substitute every ``{{ ... }}`` in ``template``; text without placeholders is returned unchanged."""
    return _PLACEHOLDER.sub(lambda m: to_text(resolve(m.group(1), sample, item)), template)


def template_variables(template: str) -> list[str]:
    """The variable paths a template uses, in order."""
    return [m.group(1) for m in _PLACEHOLDER.finditer(template)]
