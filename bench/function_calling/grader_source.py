"""The function-calling grader: ``grade(sample, item)`` for OpenAI's ``python`` grader type.

``make_tasks.py`` copies this file's text into ``grader.json`` as the spec's ``source``; it runs in the
python grader's contained subprocess (standard library only, no imports from agentrft).

It compares ``sample["output_tools"]`` (the final assistant message's calls, OpenAI shape
``{"type": "function", "function": {"name", "arguments": "<JSON string>"}}``) with
``item["expected_calls"]`` (``[{"name", "arguments": {...}}]``), ignoring order:

* an expected call matched by a produced call with the same name and the same arguments earns 1;
* one matched only by name earns ``NAME_CREDIT + ARG_CREDIT * (share of its arguments right)``, at most
  0.75, so a wrong argument never passes for right;
* the sum is divided by the number of expected calls, and each produced call beyond that number costs
  ``EXTRA_PENALTY`` of one call; the result is clipped to [0, 1].

So 1.0 means exactly the expected calls, no more; an empty output is 0. Argument values compare as JSON
values, except that numbers compare by value (``5 == 5.0``; a bool is not a number) and strings ignore
case and surrounding spaces (``"Paris"`` == ``"paris "``). Arguments that are not a JSON object count
as no argument right.
"""

import json

NAME_CREDIT = 0.25
ARG_CREDIT = 0.5
EXTRA_PENALTY = 0.5


def _same(a, b):
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return abs(a - b) <= 1e-6 * max(1.0, abs(a), abs(b))
    if isinstance(a, str) and isinstance(b, str):
        return a.strip().casefold() == b.strip().casefold()
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return a == b


def _produced(call):
    """(name, arguments dict or None) of one produced call, in the OpenAI shape or a flat one."""
    if not isinstance(call, dict):
        return None, None
    fn = call.get("function", call)
    if not isinstance(fn, dict):
        return None, None
    args = fn.get("arguments")
    if isinstance(args, str):
        try:
            args = json.loads(args) if args.strip() else {}
        except ValueError:
            args = None
    return fn.get("name"), (args if isinstance(args, dict) else None)


def _partial(expected, args):
    """Credit of a same-name call whose arguments are not exactly the expected ones."""
    want = expected.get("arguments") or {}
    if args is None or not want:
        return NAME_CREDIT
    right = sum(1 for k, v in want.items() if k in args and _same(args[k], v))
    wrong_extra = sum(1 for k in args if k not in want)
    return NAME_CREDIT + ARG_CREDIT * max(0, right - wrong_extra) / len(want)


def grade(sample, item):
    expected = list(item.get("expected_calls") or [])
    produced = [_produced(c) for c in (sample.get("output_tools") or [])]
    if not expected:
        return 1.0 if not produced else 0.0
    free = list(range(len(produced)))
    unmatched = []
    credit = 0.0
    for want in expected:  # exact matches first: "same call" is an equivalence, so taking any one is optimal
        hit = next((j for j in free if produced[j][0] == want["name"] and produced[j][1] is not None
                    and _same(produced[j][1], want.get("arguments") or {})), None)
        if hit is None:
            unmatched.append(want)
        else:
            free.remove(hit)
            credit += 1.0
    pairs = sorted(((_partial(w, produced[j][1]), i, j) for i, w in enumerate(unmatched) for j in free
                    if produced[j][0] == w["name"]), key=lambda p: (-p[0], p[1], p[2]))
    used_w, used_p = set(), set()
    for value, i, j in pairs:  # then the best name-only matches, greedily
        if i not in used_w and j not in used_p:
            used_w.add(i)
            used_p.add(j)
            credit += value
    extra = max(0, len(produced) - len(expected))
    return max(0.0, min(1.0, (credit - EXTRA_PENALTY * extra) / len(expected)))
