"""Bug-fix tasks: tiny seeded Python repositories whose tests fail, as OpenAI RFT task rows.

What: :data:`TASKS` holds 30 :class:`BugTask` s, 3 variants of each of 10 bug
families (an off-by-one ``range``, a flipped comparison, a wrong arithmetic
operator, a case-sensitivity slip, a missing rule, a dropped remainder chunk,
a slice off by one, a wrong accumulator start, a dict counter that forgets,
a wrong sort order). Each task is one repository of three files:

* ``<module>.py`` -- one function with one bug (its docstring says what it
  should do);
* ``test_<module>.py`` -- 3 to 4 plain-``assert`` tests, every one of which
  fails on the buggy code and passes once :attr:`BugTask.old` is replaced by
  :attr:`BugTask.new`; the expected values are computed here by running the
  *fixed* function, so they cannot drift from the fix;
* ``run_tests.py`` -- a runner that needs no pytest: ``python -I run_tests.py``
  prints ``PASS name`` / ``FAIL name: reason (line N: source)`` per test and,
  last, ``{"passed": n, "total": m}``.

:func:`load_split` returns rows ``{"id", "messages", <reference fields>}``:
``messages`` is a short system prompt plus a user message describing the
failing behaviour (a concrete call, what it returns and what it should
return) and naming the file; the reference fields are ``task_id``,
``family``, ``module``, ``test_file``, ``solution`` (``{"path", "old",
"new"}``, the edit that fixes it) and ``target_tool_calls``.

Why every test fails before the fix: the reward is the fraction of tests
passing at the end, so a policy that changes nothing scores exactly 0 and any
reward is earned by an edit. Splits: the 30 tasks are shuffled with the seed
and cut 18 / 6 / 6 into train / validation / test, so a held-out task is a
function the policy has never seen (its bug family usually has been).

Nothing is executed at import: the test files and prompts are built on first
use (running the fixed and buggy functions here, on the host, is safe: they
are our own template code, not model output).
"""

from __future__ import annotations

import copy
import functools
import json
import random
from dataclasses import dataclass
from typing import Any

from agentrft.errors import ConfigError
from agentrft.types import TaskRow

__all__ = [
    "RUNNER_FILE",
    "SPLIT_SIZES",
    "SYSTEM_PROMPT",
    "TARGET_TOOL_CALLS",
    "TASKS",
    "BugTask",
    "get_task",
    "load_split",
    "runner_source",
]

RUNNER_FILE = "run_tests.py"
SPLIT_SIZES = {"train": 18, "validation": 6, "test": 6}
TARGET_TOOL_CALLS = 5
"""Calls a careful agent needs (list, read the code, read the tests, edit, run); beyond it costs reward."""

SYSTEM_PROMPT = (
    "You are a software engineer fixing a bug in a small Python repository. Use the tools: list_files, "
    "read_file, replace_in_file (preferred for small edits) or write_file, and run_tests. Fix the code, "
    "not the tests. When the tests pass, reply with one sentence saying what you fixed."
)


@dataclass(frozen=True, eq=False)  # identity hash: the fields hold lists
class BugTask:
    """One repository with one bug; ``source`` contains ``old`` exactly once, and ``new`` fixes it."""

    task_id: str
    family: str
    module: str  # file name, e.g. "series.py"
    function: str
    behaviour: str  # what the function should do, completing "<function>() should ..."
    source: str  # the buggy module
    old: str
    new: str
    calls: tuple[tuple[Any, ...], ...]  # the argument tuples the tests call the function with

    @property
    def test_file(self) -> str:
        return f"test_{self.module}"

    @property
    def fixed_source(self) -> str:
        return self.source.replace(self.old, self.new, 1)

    @property
    def num_tests(self) -> int:
        return len(self.calls)

    def files(self) -> dict[str, str]:
        """The repository as ``{path: text}``."""
        return {self.module: self.source, self.test_file: self.tests_source(), RUNNER_FILE: runner_source([self.test_file])}

    def protected_files(self) -> frozenset[str]:
        """Files the agent may not change (the tests and the runner)."""
        return frozenset({self.test_file, RUNNER_FILE})

    def tests_source(self) -> str:
        return _tests_source(self)

    def expected_values(self) -> tuple[Any, ...]:
        """What the fixed function returns for each of :attr:`calls`: the values the tests assert."""
        return _expected_values(self)

    def prompt(self) -> str:
        """The user message: the failing behaviour of one concrete call, and where the code is."""
        args = self.calls[0]
        call = f"{self.function}({_args_text(args)})"
        expected = self.expected_values()[0]
        actual = _outcome(self.source, self.function, args)
        return (
            f"The tests in {self.test_file} fail. {self.function}() in {self.module} should {self.behaviour}, "
            f"but {call} {actual} instead of returning {expected!r}. Fix the bug in {self.module} so that all tests pass "
            f"(run them with run_tests); do not change the tests."
        )


def _args_text(args: tuple[Any, ...]) -> str:
    return ", ".join(repr(a) for a in args)


def _call(source: str, function: str, args: tuple[Any, ...]) -> Any:
    namespace: dict[str, Any] = {}
    exec(compile(source, "<template>", "exec"), namespace)  # our own template code, never model output
    return namespace[function](*copy.deepcopy(args))


def _outcome(source: str, function: str, args: tuple[Any, ...]) -> str:
    try:
        return f"returns {_call(source, function, args)!r}"
    except Exception as e:
        return f"raises {type(e).__name__}"


@functools.lru_cache(maxsize=None)
def _expected_values(task: BugTask) -> tuple[Any, ...]:
    return tuple(_call(task.fixed_source, task.function, args) for args in task.calls)


@functools.lru_cache(maxsize=None)
def _tests_source(task: BugTask) -> str:
    stem = task.module[:-3]
    lines = [f'"""Tests of {task.module}."""', "", f"from {stem} import {task.function}"]
    for k, (args, expected) in enumerate(zip(task.calls, task.expected_values()), start=1):
        call = f"{task.function}({_args_text(args)})"
        lines += ["", "", f"def test_{task.function}_{k}():"]
        if isinstance(expected, float):
            lines.append(f"    assert abs({call} - {expected!r}) < 1e-9")
        else:
            lines.append(f"    assert {call} == {expected!r}")
    return "\n".join(lines) + "\n"


_RUNNER = '''"""Runs this repository's tests without pytest.

Prints one line per test, PASS name or FAIL name: reason, and last a JSON
summary line {"passed": n, "total": m}. Run it as: python -I run_tests.py
"""

import ast
import json
import os
import signal
import sys
import traceback

sys.dont_write_bytecode = True
TEST_FILES = __TEST_FILES__
PER_TEST_SECONDS = 2
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.append(HERE)  # after the standard library, so a file here cannot shadow it


def on_alarm(signum, frame):
    raise TimeoutError("the test took longer than %d s" % PER_TEST_SECONDS)


def test_names(path):
    with open(os.path.join(HERE, path)) as f:
        tree = ast.parse(f.read(), path)
    return [n.name for n in tree.body if isinstance(n, ast.FunctionDef) and n.name.startswith("test_")]


def reason(exc, path):
    text = "%s: %s" % (type(exc).__name__, exc) if str(exc) else type(exc).__name__
    for frame in reversed(traceback.extract_tb(exc.__traceback__)):
        if os.path.basename(frame.filename) == path:
            return "%s (line %d: %s)" % (text, frame.lineno, frame.line)
    return text


def main():
    passed = total = 0
    signal.signal(signal.SIGALRM, on_alarm)
    for path in TEST_FILES:
        names = test_names(path)
        total += len(names)
        signal.alarm(PER_TEST_SECONDS)
        try:
            module = __import__(path[:-3])
        except BaseException as exc:
            signal.alarm(0)
            for name in names:
                print("FAIL %s: cannot import %s: %s" % (name, path, reason(exc, path)))
            continue
        signal.alarm(0)
        for name in names:
            signal.alarm(PER_TEST_SECONDS)
            try:
                getattr(module, name)()
            except BaseException as exc:
                signal.alarm(0)
                print("FAIL %s: %s" % (name, reason(exc, path)))
            else:
                signal.alarm(0)
                passed += 1
                print("PASS %s" % name)
    print(json.dumps({"passed": passed, "total": total}))


if __name__ == "__main__":
    main()
'''


def runner_source(test_files: list[str]) -> str:
    """``run_tests.py`` for these test files (only they count: a test file the agent adds does not)."""
    return _RUNNER.replace("__TEST_FILES__", json.dumps(list(test_files)))


# -- the tasks -----------------------------------------------------------------------------------
def _task(family: str, module: str, function: str, behaviour: str, source: str, old: str, new: str,
          calls: list[tuple[Any, ...]]) -> BugTask:
    source = source.strip("\n") + "\n"
    if source.count(old) != 1:
        raise AssertionError(f"{function}: the bug text must occur exactly once")
    return BugTask(f"{family}-{function}", family, module, function, behaviour, source, old, new, tuple(calls))


def _inclusive_sum(function: str, what: str, term: str) -> str:
    return f'''
def {function}(n):
    """Return the sum of {what} for i = 1, 2, ..., n (n included)."""
    total = 0
    for i in range(1, n):
        total += {term}
    return total
'''


def _pick(function: str, what: str, key: str, op: str) -> str:
    return f'''
def {function}(values):
    """Return the {what} item of a non-empty list."""
    best = values[0]
    for value in values[1:]:
        if {key.format("value")} {op} {key.format("best")}:
            best = value
    return best
'''


def _counter(function: str, what: str, items: str) -> str:
    return f'''
def {function}(text):
    """Return a dict mapping each {what} of the text to how many times it occurs."""
    counts = {{}}
    for item in {items}:
        counts[item] = 1
    return counts
'''


_COUNTER_FIX = ("counts[item] = 1", "counts[item] = counts.get(item, 0) + 1")

_LISTS = [([3, 9, 1],), ([5, 2, 8, 7],), ([0, -4, 6],), ([10, 20, 5, 15],)]

TASKS: tuple[BugTask, ...] = (
    # 1. off-by-one range end
    _task("off_by_one", "series.py", "sum_to", "return 1 + 2 + ... + n",
          _inclusive_sum("sum_to", "i", "i"), "range(1, n)", "range(1, n + 1)", [(5,), (1,), (2,), (10,)]),
    _task("off_by_one", "squares.py", "sum_of_squares", "return 1*1 + 2*2 + ... + n*n",
          _inclusive_sum("sum_of_squares", "i * i", "i * i"), "range(1, n)", "range(1, n + 1)", [(3,), (1,), (4,), (6,)]),
    _task("off_by_one", "factorials.py", "factorial", "return n! = 1 * 2 * ... * n", '''
def factorial(n):
    """Return n! = 1 * 2 * ... * n."""
    result = 1
    for i in range(2, n):
        result *= i
    return result
''', "range(2, n)", "range(2, n + 1)", [(5,), (2,), (3,), (6,)]),
    # 2. flipped comparison
    _task("comparison", "extremes.py", "largest", "return the largest number in the list",
          _pick("largest", "largest", "{}", "<"), "value < best", "value > best", _LISTS),
    _task("comparison", "lowest.py", "smallest", "return the smallest number in the list",
          _pick("smallest", "smallest", "{}", ">"), "value > best", "value < best", _LISTS),
    _task("comparison", "words.py", "longest_word", "return the longest word in the list",
          _pick("longest_word", "longest", "len({})", "<"), "len(value) < len(best)", "len(value) > len(best)",
          [(["pear", "fig", "banana"],), (["bb", "a", "cccc"],), (["tree", "at", "elephant", "dog"],)]),
    # 3. wrong arithmetic operator
    _task("arithmetic", "temperature.py", "celsius_to_fahrenheit",
          "convert degrees Celsius to Fahrenheit (F = C * 9 / 5 + 32)", '''
def celsius_to_fahrenheit(celsius):
    """Convert degrees Celsius to degrees Fahrenheit."""
    return celsius * 9 / 5 - 32
''', "celsius * 9 / 5 - 32", "celsius * 9 / 5 + 32", [(100,), (0,), (37,), (-40,)]),
    _task("arithmetic", "averages.py", "midpoint", "return the number halfway between a and b", '''
def midpoint(a, b):
    """Return the number halfway between a and b."""
    return a + b / 2
''', "a + b / 2", "(a + b) / 2", [(10, 20), (2, 4), (-6, 2), (1, 2)]),
    _task("arithmetic", "pricing.py", "apply_discount",
          "return the price after taking percent % off", '''
def apply_discount(price, percent):
    """Return the price after a discount of `percent` percent."""
    return price * percent / 100
''', "price * percent / 100", "price * (100 - percent) / 100", [(200, 10), (50, 20), (80, 25)]),
    # 4. case sensitivity
    _task("case", "text_stats.py", "count_vowels", "count the vowels a, e, i, o, u in either case", '''
def count_vowels(text):
    """Return how many vowels (a, e, i, o, u, upper or lower case) the text contains."""
    count = 0
    for ch in text:
        if ch in "aeiou":
            count += 1
    return count
''', 'if ch in "aeiou"', 'if ch.lower() in "aeiou"', [("Apple",), ("EVE",), ("Io",), ("Umbrella",)]),
    _task("case", "palindromes.py", "is_palindrome", "tell whether the text reads the same backwards, ignoring case", '''
def is_palindrome(text):
    """Return True if the text reads the same backwards, ignoring upper/lower case."""
    return text == text[::-1]
''', "    return text == text[::-1]", "    text = text.lower()\n    return text == text[::-1]",
          [("Racecar",), ("Level",), ("Noon",), ("Anna",)]),
    _task("case", "counting.py", "count_letter", "count how often a letter occurs in the text, ignoring case", '''
def count_letter(text, letter):
    """Return how many times the letter occurs in the text, ignoring upper/lower case."""
    return text.count(letter)
''', "text.count(letter)", "text.lower().count(letter.lower())",
          [("Banana", "b"), ("Hello HELLO", "l"), ("aAaA", "a"), ("Mississippi", "S")]),
    # 5. a missing rule
    _task("missing_rule", "calendar_utils.py", "is_leap_year",
          "follow the Gregorian rule (years divisible by 100 are leap years only if divisible by 400)", '''
def is_leap_year(year):
    """Return True if the year is a leap year in the Gregorian calendar."""
    return year % 4 == 0
''', "return year % 4 == 0", "return year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)",
          [(1900,), (2100,), (1800,), (2200,)]),
    _task("missing_rule", "fizzbuzz.py", "fizzbuzz",
          'return "FizzBuzz" for multiples of 15, "Fizz" for 3, "Buzz" for 5, else the number', '''
def fizzbuzz(n):
    """Return "FizzBuzz" for multiples of 15, "Fizz" for 3, "Buzz" for 5, else str(n)."""
    if n % 3 == 0:
        return "Fizz"
    if n % 5 == 0:
        return "Buzz"
    if n % 15 == 0:
        return "FizzBuzz"
    return str(n)
''', '    if n % 3 == 0:\n        return "Fizz"\n',
          '    if n % 15 == 0:\n        return "FizzBuzz"\n    if n % 3 == 0:\n        return "Fizz"\n',
          [(15,), (30,), (45,), (60,)]),
    _task("missing_rule", "grades.py", "letter_grade",
          "give A from 90, B from 80, C from 70 (boundaries included), else F", '''
def letter_grade(score):
    """Return "A" for 90 and above, "B" for 80 and above, "C" for 70 and above, else "F"."""
    if score > 90:
        return "A"
    if score > 80:
        return "B"
    if score > 70:
        return "C"
    return "F"
''', 'if score > 90:\n        return "A"\n    if score > 80:\n        return "B"\n    if score > 70:',
          'if score >= 90:\n        return "A"\n    if score >= 80:\n        return "B"\n    if score >= 70:',
          [(90,), (80,), (70,)]),
    # 6. the last, shorter chunk is dropped
    _task("chunks", "batching.py", "chunks", "split the list into chunks of `size` items (the last may be shorter)", '''
def chunks(items, size):
    """Split items into lists of `size` items; the last one may be shorter."""
    return [items[i:i + size] for i in range(0, len(items) - size + 1, size)]
''', "range(0, len(items) - size + 1, size)", "range(0, len(items), size)",
          [([1, 2, 3, 4, 5], 2), ([1, 2, 3], 2), (list("abcdefg"), 3)]),
    _task("chunks", "pairing.py", "pairs", "split the list into pairs (an odd last item forms its own list)", '''
def pairs(items):
    """Split items into lists of two; with an odd count the last list has one item."""
    return [items[i:i + 2] for i in range(0, len(items) - 1, 2)]
''', "range(0, len(items) - 1, 2)", "range(0, len(items), 2)", [([1, 2, 3],), ([1],), (["a", "b", "c", "d", "e"],)]),
    _task("chunks", "windowing.py", "sliding_windows", "return every run of k consecutive items", '''
def sliding_windows(items, k):
    """Return all runs of k consecutive items, in order."""
    return [items[i:i + k] for i in range(len(items) - k)]
''', "range(len(items) - k)", "range(len(items) - k + 1)", [([1, 2, 3], 2), ([1, 2, 3, 4], 3), ([5, 6], 2)]),
    # 7. slice off by one
    _task("slicing", "list_utils.py", "last_n", "return the last n items", '''
def last_n(items, n):
    """Return the last n items of the list (n >= 1)."""
    return items[-n - 1:]
''', "items[-n - 1:]", "items[-n:]", [([1, 2, 3, 4, 5], 2), ([1, 2, 3], 1), (list("abcdef"), 3)]),
    _task("slicing", "text_utils.py", "truncate", "cut the text to at most `width` characters", '''
def truncate(text, width):
    """Return the text cut to at most `width` characters."""
    return text[:width - 1]
''', "text[:width - 1]", "text[:width]", [("hello world", 5), ("abc", 3), ("abcdef", 4)]),
    _task("slicing", "sequences.py", "drop_first", "return the list without its first n items", '''
def drop_first(items, n):
    """Return the list without its first n items."""
    return items[n + 1:]
''', "items[n + 1:]", "items[n:]", [([1, 2, 3, 4], 1), ([5, 6, 7], 0), (list("abcde"), 2)]),
    # 8. wrong starting value of an accumulator
    _task("accumulator", "products.py", "product", "return the product of the numbers in the list", '''
def product(values):
    """Return the product of all numbers in the list (1 for an empty list)."""
    result = 0
    for value in values:
        result *= value
    return result
''', "result = 0", "result = 1", [([2, 3],), ([1, 2, 3, 4],), ([5],)]),
    _task("accumulator", "maxima.py", "max_of", "return the largest number of a non-empty list, negatives too", '''
def max_of(values):
    """Return the largest number in a non-empty list (which may hold only negatives)."""
    best = 0
    for value in values:
        if value > best:
            best = value
    return best
''', "best = 0", "best = values[0]", [([-3, -1, -7],), ([-10],), ([-5, -2],)]),
    _task("accumulator", "minima.py", "min_of", "return the smallest number of a non-empty list", '''
def min_of(values):
    """Return the smallest number in a non-empty list."""
    best = 0
    for value in values:
        if value < best:
            best = value
    return best
''', "best = 0", "best = values[0]", [([3, 5, 9],), ([7],), ([12, 4, 8],)]),
    # 9. a counter that forgets
    _task("counter", "word_count.py", "word_counts", "count how many times each word occurs",
          _counter("word_counts", "word", "text.split()"), *_COUNTER_FIX,
          [("a b a",), ("the cat the hat the",), ("x x x x",)]),
    _task("counter", "histogram.py", "char_counts", "count how many times each character occurs",
          _counter("char_counts", "character", "text"), *_COUNTER_FIX, [("banana",), ("aab",), ("mississippi",)]),
    _task("counter", "grouping.py", "group_by_length", "group the words by their length, keeping every word", '''
def group_by_length(words):
    """Return a dict mapping each word length to the list of words of that length, in order."""
    groups = {}
    for word in words:
        groups[len(word)] = [word]
    return groups
''', "groups[len(word)] = [word]", "groups.setdefault(len(word), []).append(word)",
          [(["a", "b", "cc"],), (["hi", "yo", "hey"],), (["one", "two", "six", "four"],)]),
    # 10. wrong order
    _task("ordering", "ranking.py", "top_k", "return the k largest numbers, largest first", '''
def top_k(values, k):
    """Return the k largest numbers, largest first."""
    return sorted(values)[:k]
''', "sorted(values)[:k]", "sorted(values, reverse=True)[:k]", [([5, 1, 9, 3], 2), ([10, 20, 30], 1), ([4, 8, 2, 6], 3)]),
    _task("ordering", "bottom.py", "bottom_k", "return the k smallest numbers, smallest first", '''
def bottom_k(values, k):
    """Return the k smallest numbers, smallest first."""
    return sorted(values, reverse=True)[:k]
''', "sorted(values, reverse=True)[:k]", "sorted(values)[:k]", [([5, 1, 9, 3], 2), ([10, 20, 30], 1), ([4, 8, 2, 6], 3)]),
    _task("ordering", "medians.py", "median", "return the median (the mean of the two middle numbers for an even count)", '''
def median(values):
    """Return the median of a non-empty list: the middle value, or the mean of the two middle values."""
    ordered = sorted(values)
    n = len(ordered)
    return ordered[n // 2]
''', "    return ordered[n // 2]",
          "    if n % 2 == 0:\n        return (ordered[n // 2 - 1] + ordered[n // 2]) / 2\n    return ordered[n // 2]",
          [([1, 2, 3, 4],), ([10, 20],), ([4, 1, 3, 2],), ([7, 1, 5, 3, 9, 11],)]),
)

_BY_ID = {t.task_id: t for t in TASKS}
if len(_BY_ID) != len(TASKS):  # pragma: no cover - a template typo
    raise AssertionError("task ids must be unique")


def get_task(task_id: str) -> BugTask:
    """The task of a row's ``task_id``."""
    try:
        return _BY_ID[task_id]
    except KeyError:
        raise ConfigError(f"unknown coding task {task_id!r}") from None


def _row(task: BugTask, split: str, index: int) -> TaskRow:
    return {
        "id": f"coding-{split}-{index:03d}",
        "messages": [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": task.prompt()}],
        "task_id": task.task_id,
        "family": task.family,
        "module": task.module,
        "test_file": task.test_file,
        "solution": {"path": task.module, "old": task.old, "new": task.new},
        "target_tool_calls": TARGET_TOOL_CALLS,
    }


@functools.lru_cache(maxsize=16)
def _split_rows(split: str, seed: int) -> tuple[TaskRow, ...]:
    order = list(TASKS)
    random.Random(f"agentrft-coding-{seed}").shuffle(order)
    start = 0
    for name, size in SPLIT_SIZES.items():
        if name == split:
            return tuple(_row(task, split, i) for i, task in enumerate(order[start:start + size]))
        start += size
    raise AssertionError(split)  # pragma: no cover - load_split checked the name


def load_split(split: str, seed: int = 0) -> list[TaskRow]:
    """The task rows of ``split`` (train, validation or test); deterministic for a ``seed``."""
    if split not in SPLIT_SIZES:
        raise ConfigError(f"unknown split {split!r}; available: {', '.join(SPLIT_SIZES)}")
    return copy.deepcopy(list(_split_rows(split, seed)))
