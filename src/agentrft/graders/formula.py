"""The ``multi`` grader's ``calculate_output`` language: a tiny safe arithmetic parser.

OpenAI's multi grader combines sub-grader scores with a formula such as
``0.7 * accuracy + 0.3 * max(0, 1 - tool_calls / 10)``. Formulas come from
user files, so they are never handed to ``eval`` (nor to Python's ``ast``,
whose grammar is far larger than needed): a hand-written tokenizer and
recursive-descent parser accept exactly

    numbers, sub-grader names, + - * / ^ (power, right-associative),
    unary minus/plus, parentheses, and min max abs floor ceil exp sqrt log

and nothing else -- no attributes, subscripts, strings, lambdas or keywords.
Inputs are bounded (length, nesting depth) and every operation is float
arithmetic, so a huge exponent overflows to an error instead of building a
gigantic integer.

Errors carry the OpenAI flag they map to: unknown names ->
``invalid_variable_error``; everything else (syntax, forbidden construct,
overflow, division by zero, math domain) -> ``formula_parse_error``.

Grammar::

    expr  := term (('+' | '-') term)*
    term  := unary (('*' | '/') unary)*
    unary := ('-' | '+') unary | power
    power := atom ('^' unary)?
    atom  := NUMBER | NAME | NAME '(' expr (',' expr)* ')' | '(' expr ')'
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Callable

MAX_FORMULA_CHARS = 2000
MAX_DEPTH = 64
MAX_TOKENS = 400  # bounds the tree depth of long left-nested chains (a+a+a+...) too

FORMULA_PARSE_ERROR = "formula_parse_error"
INVALID_VARIABLE_ERROR = "invalid_variable_error"


class FormulaError(ValueError):
    """A formula could not be parsed or evaluated; ``flag`` is the OpenAI error name."""

    flag = FORMULA_PARSE_ERROR


class UnknownVariableError(FormulaError):
    flag = INVALID_VARIABLE_ERROR


def _log(x: float) -> float:
    return math.log(x)


FUNCTIONS: dict[str, tuple[Callable[..., float], int | None]] = {
    # name: (function, arity; None = one or more)
    "min": (lambda *xs: min(xs), None),
    "max": (lambda *xs: max(xs), None),
    "abs": (abs, 1),
    "floor": (math.floor, 1),
    "ceil": (math.ceil, 1),
    "exp": (math.exp, 1),
    "sqrt": (math.sqrt, 1),
    "log": (_log, 1),
}

_TOKEN = re.compile(
    r"\s*(?:"
    r"(?P<number>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)"
    r"|(?P<name>[A-Za-z_][A-Za-z0-9_]*)"
    r"|(?P<op>[-+*/^(),])"
    r")"
)


@dataclass(frozen=True)
class _Tok:
    kind: str  # number | name | op | end
    text: str
    pos: int


def _tokenize(text: str) -> list[_Tok]:
    toks: list[_Tok] = []
    pos = 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise FormulaError(f"unexpected character {text[pos:].lstrip()[:1]!r} at position {pos}")
        kind = m.lastgroup or ""
        toks.append(_Tok(kind, m.group(kind), m.start(kind)))
        pos = m.end()
    if len(toks) > MAX_TOKENS:
        raise FormulaError(f"formula has more than {MAX_TOKENS} tokens")
    toks.append(_Tok("end", "", len(text)))
    return toks


# Expression tree nodes: ("num", value) | ("var", name) | ("neg", node)
# | ("bin", op, left, right) | ("call", fname, [args])
Node = tuple


class _Parser:
    def __init__(self, text: str):
        self.toks = _tokenize(text)
        self.i = 0
        self.depth = 0

    def peek(self) -> _Tok:
        return self.toks[self.i]

    def take(self, text: str | None = None) -> _Tok:
        tok = self.toks[self.i]
        if text is not None and tok.text != text:
            found = tok.text or "end of formula"
            raise FormulaError(f"expected {text!r} at position {tok.pos}, found {found!r}")
        self.i += 1
        return tok

    def _nest(self) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise FormulaError(f"formula nests deeper than {MAX_DEPTH} levels")

    def expr(self) -> Node:
        self._nest()
        node = self.term()
        while self.peek().text in ("+", "-"):
            op = self.take().text
            node = ("bin", op, node, self.term())
        self.depth -= 1
        return node

    def term(self) -> Node:
        node = self.unary()
        while self.peek().text in ("*", "/"):
            op = self.take().text
            node = ("bin", op, node, self.unary())
        return node

    def unary(self) -> Node:
        if self.peek().text in ("-", "+"):
            self._nest()
            op = self.take().text
            inner = self.unary()
            self.depth -= 1
            return ("neg", inner) if op == "-" else inner
        return self.power()

    def power(self) -> Node:
        base = self.atom()
        if self.peek().text == "^":
            self.take()
            self._nest()
            exponent = self.unary()
            self.depth -= 1
            return ("bin", "^", base, exponent)
        return base

    def atom(self) -> Node:
        tok = self.peek()
        if tok.kind == "number":
            self.take()
            return ("num", float(tok.text))
        if tok.kind == "name":
            self.take()
            if self.peek().text == "(":
                if tok.text not in FUNCTIONS:
                    raise FormulaError(f"unknown function {tok.text!r} (allowed: {', '.join(FUNCTIONS)})")
                self.take("(")
                args = [self.expr()]
                while self.peek().text == ",":
                    self.take()
                    args.append(self.expr())
                self.take(")")
                _, arity = FUNCTIONS[tok.text]
                if arity is not None and len(args) != arity:
                    raise FormulaError(f"{tok.text}() takes {arity} argument(s), got {len(args)}")
                return ("call", tok.text, args)
            if tok.text in FUNCTIONS:
                raise FormulaError(f"function {tok.text!r} must be called with parentheses")
            return ("var", tok.text)
        if tok.text == "(":
            self.take()
            node = self.expr()
            self.take(")")
            return node
        found = tok.text or "end of formula"
        raise FormulaError(f"unexpected {found!r} at position {tok.pos}")


def _variables(node: Node, out: set[str]) -> set[str]:
    kind = node[0]
    if kind == "var":
        out.add(node[1])
    elif kind == "neg":
        _variables(node[1], out)
    elif kind == "bin":
        _variables(node[2], out)
        _variables(node[3], out)
    elif kind == "call":
        for a in node[2]:
            _variables(a, out)
    return out


def _evaluate(node: Node, env: dict[str, float]) -> float:
    kind = node[0]
    if kind == "num":
        return node[1]
    if kind == "var":
        if node[1] not in env:
            raise UnknownVariableError(f"unknown variable {node[1]!r} (known: {sorted(env)})")
        return float(env[node[1]])
    if kind == "neg":
        return -_evaluate(node[1], env)
    if kind == "call":
        fn, _ = FUNCTIONS[node[1]]
        return float(fn(*[_evaluate(a, env) for a in node[2]]))
    _, op, left, right = node
    a, b = _evaluate(left, env), _evaluate(right, env)
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    if op == "/":
        return a / b
    return math.pow(a, b)  # float pow: overflow raises instead of building a huge int


@dataclass(frozen=True)
class Formula:
    """A parsed ``calculate_output`` expression."""

    text: str
    tree: Node = field(repr=False)
    variables: frozenset[str] = frozenset()

    def evaluate(self, env: dict[str, float]) -> float:
        """Evaluate with ``env`` mapping names to scores; raise :class:`FormulaError` on failure."""
        try:
            value = _evaluate(self.tree, env)
        except FormulaError:
            raise
        except ZeroDivisionError:
            raise FormulaError("division by zero") from None
        except OverflowError:
            raise FormulaError("numeric overflow") from None
        except (ValueError, TypeError) as e:
            raise FormulaError(f"math error: {e}") from None
        if not math.isfinite(value):
            raise FormulaError(f"formula result is not finite ({value})")
        return value


def parse_formula(text: str) -> Formula:
    """Parse a formula; raise :class:`FormulaError` (flag ``formula_parse_error``) if it is not allowed."""
    if not isinstance(text, str):  # before the cache, which cannot hash a list
        raise FormulaError("formula must be a string")
    return _parse_formula(text)


@lru_cache(maxsize=512)
def _parse_formula(text: str) -> Formula:
    if len(text) > MAX_FORMULA_CHARS:
        raise FormulaError(f"formula longer than {MAX_FORMULA_CHARS} characters")
    if not text.strip():
        raise FormulaError("formula is empty")
    parser = _Parser(text)
    tree = parser.expr()
    if parser.peek().kind != "end":
        tok = parser.peek()
        raise FormulaError(f"unexpected {tok.text!r} at position {tok.pos}")
    return Formula(text=text, tree=tree, variables=frozenset(_variables(tree, set())))


def evaluate_formula(text: str, env: dict[str, float]) -> float:
    """Parse and evaluate in one step (see :meth:`Formula.evaluate`)."""
    return parse_formula(text).evaluate(env)
