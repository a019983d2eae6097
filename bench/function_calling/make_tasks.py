"""A small function-calling task set: SFT demonstrations, RFT tasks, a held-out set and its grader.

Written from scratch (templates and entity lists below; nothing is read from any public benchmark) in the
four categories of the usual function-calling evaluations:

    simple             one function offered, one call
    multiple           several functions offered, one call of the right one
    parallel           one function offered, 2-3 calls of it in one turn
    parallel_multiple  several functions offered, 2-3 calls among them in one turn

Output (``--out``, default ``bench/function_calling/data``):

    sft_train.jsonl  OpenAI supervised fine-tuning rows: ``messages`` (system, user, the assistant turn with
                     ``tool_calls`` and ``content: null``), ``tools``, ``parallel_tool_calls: true``
    rft_train.jsonl  OpenAI RFT rows: ``messages`` without the answer, ``tools``, and the reference fields
                     ``expected_calls`` (``[{"name", "arguments": {...}}]``) and ``category``
    heldout.jsonl    the same format, 16 rows per category, on values never used for training
    grader.json      the ``python`` grader spec (source: ``grader_source.py``)

Held out means other values: every free (non-enum) argument value is assigned to training or to the
held-out set by a hash of its JSON text (:func:`is_heldout_value`), so no city, ticker, amount, date,
phrase ... of a held-out expected call appears in any training call; enum values (units, languages, ...)
are part of the schemas and shared. Prompts are short (SmolLM2-135M, 2,048-token context): at most four
small schemas per row. The output is a pure function of ``--seed``.

    python bench/function_calling/make_tasks.py [--out DIR] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import random
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
CATEGORIES = ("simple", "multiple", "parallel", "parallel_multiple")
SYSTEM_PROMPT = "You are a helpful assistant. Answer by calling the functions the request needs."
SIZES = {"sft_train": 320, "rft_train": 64, "heldout": 64}
"""Rows per file, split evenly over the four categories."""


def is_heldout_value(value) -> bool:
    """Whether a free argument value belongs to the held-out side (about a quarter of every pool)."""
    return zlib.crc32(json.dumps(value).encode()) % 4 == 0


# -- entity pools (free values; split by is_heldout_value) ---------------------------------------------------

CITIES = ["Paris", "Tokyo", "Berlin", "Madrid", "Lisbon", "Oslo", "Cairo", "Lima", "Toronto", "Sydney", "Dublin",
          "Vienna", "Prague", "Warsaw", "Athens", "Rome", "Seoul", "Bangkok", "Nairobi", "Chicago", "Denver",
          "Boston", "Austin", "Seattle", "Mumbai", "Delhi", "Istanbul", "Helsinki", "Stockholm", "Zurich",
          "Montreal", "Santiago", "Bogota", "Havana", "Manila", "Jakarta", "Hanoi", "Osaka", "Kyoto", "Munich",
          "Milan", "Naples", "Porto", "Seville", "Krakow", "Budapest", "Reykjavik", "Edinburgh", "Glasgow",
          "Auckland", "Perth", "Phoenix", "Miami", "Atlanta", "Vancouver", "Quito", "Accra", "Lagos", "Doha"]
AIRPORTS = ["JFK", "LAX", "SFO", "ORD", "ATL", "SEA", "BOS", "DFW", "DEN", "MIA", "LHR", "CDG", "FRA", "AMS",
            "MAD", "FCO", "MUC", "ZRH", "VIE", "CPH", "ARN", "HEL", "DUB", "LIS", "IST", "DXB", "DOH", "SIN",
            "HND", "NRT", "ICN", "PEK", "HKG", "SYD", "MEL", "YYZ", "YVR", "MEX", "GRU", "EZE"]
TICKERS = ["AAPL", "MSFT", "GOOGL", "AMZN", "NVDA", "META", "TSLA", "NFLX", "INTC", "AMD", "ORCL", "IBM", "CSCO",
           "ADBE", "CRM", "PYPL", "UBER", "SHOP", "SPOT", "DIS", "KO", "PEP", "NKE", "SBUX", "WMT", "COST", "JPM",
           "BAC", "GS", "V", "MA", "XOM", "CVX", "PFE", "MRK", "BA", "F", "GM", "T", "VZ"]
EVENT_TITLES = ["dentist appointment", "team meeting", "yoga class", "project review", "lunch with Sam",
                "book club", "piano lesson", "doctor visit", "budget planning", "birthday party", "gym session",
                "parent-teacher meeting", "car service", "haircut", "code review", "quarterly review",
                "coffee with Ana", "sprint planning", "guitar lesson", "vet appointment", "board meeting",
                "dinner with Lee", "study group", "flight check-in", "tax filing", "date night", "swim practice",
                "job interview", "movie night", "garden club"]
PHRASES = ["good morning", "thank you very much", "where is the train station", "I would like a coffee",
           "how much does this cost", "see you tomorrow", "the weather is nice today", "I am lost",
           "can you help me", "happy birthday", "where is the bathroom", "I love this city", "good night",
           "the bill, please", "nice to meet you", "what time is it", "I don't understand", "excuse me",
           "how are you", "my name is Alex", "one ticket, please", "is this seat free", "have a nice day",
           "I am hungry", "let's go to the beach", "the museum is closed", "where can I buy bread",
           "call a taxi", "I need a doctor", "what is your name", "the food was delicious", "welcome home"]
TIMER_LABELS = ["pasta", "laundry", "tea", "workout", "nap", "pizza", "meeting prep", "eggs", "rice", "break",
                "bread", "stretching", "reading", "homework", "call mom", "oven", "cookies", "meditation",
                "parking meter", "plants"]
TIMES = [f"{h:02d}:{m:02d}" for h in range(7, 21) for m in (0, 15, 30, 45)]
DATES = [f"2025-{m:02d}-{d:02d}" for m in range(1, 13) for d in (3, 8, 12, 17, 21, 26)]
AMOUNTS = [5, 10, 15, 20, 25, 40, 50, 75, 80, 100, 120, 150, 200, 250, 300, 350, 400, 500, 600, 750, 800, 1000,
           1200, 1500, 2000, 2500, 12.5, 19.99, 49.5, 99.99, 7.25, 33.3, 64, 88, 640, 1750]
MEASURES = [1, 2, 3, 5, 8, 10, 12, 15, 20, 26.2, 30, 42, 50, 60, 75, 100, 150, 200, 2.5, 0.5, 3.7, 6.4, 9.8, 13,
            18, 24, 36, 45, 90, 120]
PERCENTS = [5, 8, 10, 12, 15, 18, 20, 25, 30, 33, 40, 45, 50, 60, 65, 70, 75, 80, 85, 90, 7.5, 12.5, 2.5, 17.5]
BASES = [40, 60, 80, 120, 150, 240, 360, 480, 640, 900, 1250, 1600, 2400, 3200, 45.5, 99.9, 18, 72, 250, 4200]
GCD_ARGS = [12, 18, 24, 30, 36, 42, 48, 54, 60, 72, 84, 90, 96, 108, 120, 126, 144, 150, 168, 180, 210, 252,
            270, 300, 330, 360, 420, 462, 504, 630]
MINUTES = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 14, 15, 18, 20, 25, 30, 35, 40, 45, 50, 60, 90]
COUNTS = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 12, 15]

# -- enum values (part of the schemas, shared by both sides) -------------------------------------------------

TEMP_UNITS = ["celsius", "fahrenheit"]
CURRENCIES = ["USD", "EUR", "GBP", "JPY", "CHF", "CAD", "AUD", "INR", "MXN", "SEK"]
UNIT_PAIRS = [("km", "miles"), ("miles", "km"), ("kg", "pounds"), ("pounds", "kg"), ("meters", "feet"),
              ("feet", "meters"), ("liters", "gallons"), ("gallons", "liters")]
LENGTH_UNITS = sorted({u for pair in UNIT_PAIRS for u in pair})
LANGUAGES = ["French", "Spanish", "German", "Italian", "Japanese", "Portuguese"]
CUISINES = ["italian", "mexican", "japanese", "indian", "thai", "french", "chinese"]
TOPICS = ["sports", "technology", "business", "science", "health", "politics"]


# -- functions: schema, argument sampler, phrasings ---------------------------------------------------------


@dataclass(frozen=True)
class Function:
    """One tool: its schema, how to draw arguments, and how a user asks for one call.

    ``requests`` are whole requests; ``clauses`` are verb phrases ("convert 5 USD to EUR") that combine into
    multi-call requests. Both are ``str.format`` templates over the arguments plus ``spoken`` renderings.
    """

    name: str
    description: str
    params: dict[str, dict]
    sample_args: Callable[[random.Random, "Pools"], dict]
    requests: tuple[str, ...]
    clauses: tuple[str, ...]

    def schema(self) -> dict:
        return {"type": "function", "function": {
            "name": self.name, "description": self.description,
            "parameters": {"type": "object", "properties": self.params, "required": list(self.params)}}}

    def render(self, template: str, args: dict) -> str:
        return template.format(**{k: _spoken(v) for k, v in args.items()})


def _spoken(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


class Pools:
    """The entity pools of one side (training or held-out)."""

    def __init__(self, heldout: bool) -> None:
        def side(values: list) -> list:
            kept = [v for v in values if is_heldout_value(v) == heldout]
            if len(kept) < 2:
                raise AssertionError(f"a pool has fewer than 2 values on one side: {values[:3]}...")
            return kept

        self.cities, self.airports, self.tickers = side(CITIES), side(AIRPORTS), side(TICKERS)
        self.titles, self.phrases, self.labels = side(EVENT_TITLES), side(PHRASES), side(TIMER_LABELS)
        self.times, self.dates, self.amounts = side(TIMES), side(DATES), side(AMOUNTS)
        self.measures, self.percents, self.bases = side(MEASURES), side(PERCENTS), side(BASES)
        self.gcd_args, self.minutes, self.counts = side(GCD_ARGS), side(MINUTES), side(COUNTS)


def _string(desc: str) -> dict:
    return {"type": "string", "description": desc}


def _enum(values: list[str], desc: str) -> dict:
    return {"type": "string", "enum": values, "description": desc}


def _currency_args(r: random.Random, p: Pools) -> dict:
    src, dst = r.sample(CURRENCIES, 2)
    return {"amount": r.choice(p.amounts), "from_currency": src, "to_currency": dst}


def _unit_args(r: random.Random, p: Pools) -> dict:
    src, dst = r.choice(UNIT_PAIRS)
    return {"value": r.choice(p.measures), "from_unit": src, "to_unit": dst}


def _flight_args(r: random.Random, p: Pools) -> dict:
    origin, destination = r.sample(p.airports, 2)
    return {"origin": origin, "destination": destination, "date": r.choice(p.dates)}


def _gcd_args(r: random.Random, p: Pools) -> dict:
    a, b = r.sample(p.gcd_args, 2)
    return {"a": a, "b": b}


FUNCTIONS: tuple[Function, ...] = (
    Function("get_weather", "Current weather of a city.",
             {"city": _string("City name"), "unit": _enum(TEMP_UNITS, "Temperature unit")},
             lambda r, p: {"city": r.choice(p.cities), "unit": r.choice(TEMP_UNITS)},
             ("What's the weather in {city} right now? Use {unit}.", "How warm is it in {city}, in {unit}?",
              "Tell me the current temperature in {city} in {unit}.", "Weather for {city} please, in {unit}.",
              "Is it cold in {city} today? Give me degrees {unit}."),
             ("check the weather in {city} in {unit}", "get the temperature in {city} using {unit}",
              "tell me how warm {city} is in {unit}")),
    Function("convert_currency", "Convert an amount of money between currencies.",
             {"amount": {"type": "number", "description": "Amount to convert"},
              "from_currency": _enum(CURRENCIES, "Currency of the amount"),
              "to_currency": _enum(CURRENCIES, "Target currency")},
             _currency_args,
             ("How much is {amount} {from_currency} in {to_currency}?", "Convert {amount} {from_currency} to "
              "{to_currency}.", "I have {amount} {from_currency}. What is that in {to_currency}?",
              "What do {amount} {from_currency} come to in {to_currency}?"),
             ("convert {amount} {from_currency} to {to_currency}",
              "tell me what {amount} {from_currency} is in {to_currency}")),
    Function("convert_units", "Convert a measurement from one unit to another.",
             {"value": {"type": "number", "description": "Value to convert"},
              "from_unit": _enum(LENGTH_UNITS, "Unit of the value"), "to_unit": _enum(LENGTH_UNITS, "Target unit")},
             _unit_args,
             ("How many {to_unit} is {value} {from_unit}?", "Convert {value} {from_unit} into {to_unit}.",
              "What is {value} {from_unit} in {to_unit}?", "I need {value} {from_unit} expressed in {to_unit}."),
             ("convert {value} {from_unit} to {to_unit}", "express {value} {from_unit} in {to_unit}")),
    Function("create_event", "Add an event to the user's calendar.",
             {"title": _string("Event title"), "date": _string("Date, YYYY-MM-DD"),
              "time": _string("Start time, HH:MM")},
             lambda r, p: {"title": r.choice(p.titles), "date": r.choice(p.dates), "time": r.choice(p.times)},
             ("Add {title} to my calendar on {date} at {time}.", "Schedule a {title} for {date} at {time}.",
              "Put {title} in my calendar: {date}, {time}.", "Can you book {title} on {date} at {time}?"),
             ("add {title} on {date} at {time} to my calendar", "schedule {title} for {date} at {time}")),
    Function("get_stock_price", "Latest price of a stock.",
             {"symbol": _string("Ticker symbol")},
             lambda r, p: {"symbol": r.choice(p.tickers)},
             ("What's {symbol} trading at?", "Get me the stock price of {symbol}.", "How much is one {symbol} share?",
              "Price check on {symbol}, please."),
             ("get the share price of {symbol}", "look up the stock price of {symbol}")),
    Function("search_flights", "Find flights between two airports on a date.",
             {"origin": _string("Origin airport code"), "destination": _string("Destination airport code"),
              "date": _string("Departure date, YYYY-MM-DD")},
             _flight_args,
             ("Find flights from {origin} to {destination} on {date}.", "Any flights {origin} to {destination} "
              "on {date}?", "I want to fly from {origin} to {destination} on {date}.",
              "Search flights {origin}-{destination} departing {date}."),
             ("find flights from {origin} to {destination} on {date}",
              "search for a flight {origin} to {destination} on {date}")),
    Function("translate_text", "Translate text into another language.",
             {"text": _string("Text to translate"), "target_language": _enum(LANGUAGES, "Language to translate into")},
             lambda r, p: {"text": r.choice(p.phrases), "target_language": r.choice(LANGUAGES)},
             ("Translate '{text}' into {target_language}.", "How do you say '{text}' in {target_language}?",
              "What is '{text}' in {target_language}?", "Give me the {target_language} for '{text}'."),
             ("translate '{text}' into {target_language}", "say '{text}' in {target_language}")),
    Function("percentage_of", "Compute a percentage of a value.",
             {"percent": {"type": "number", "description": "The percentage"},
              "value": {"type": "number", "description": "The whole"}},
             lambda r, p: {"percent": r.choice(p.percents), "value": r.choice(p.bases)},
             ("What is {percent}% of {value}?", "Calculate {percent} percent of {value}.",
              "How much is {percent}% of {value}?"),
             ("work out {percent}% of {value}", "calculate {percent} percent of {value}")),
    Function("greatest_common_divisor", "Greatest common divisor of two integers.",
             {"a": {"type": "integer", "description": "First integer"},
              "b": {"type": "integer", "description": "Second integer"}},
             _gcd_args,
             ("What is the greatest common divisor of {a} and {b}?", "Find the GCD of {a} and {b}.",
              "gcd({a}, {b}) = ?"),
             ("find the GCD of {a} and {b}", "compute the greatest common divisor of {a} and {b}")),
    Function("set_timer", "Start a countdown timer.",
             {"minutes": {"type": "integer", "description": "Duration in minutes"}, "label": _string("Timer name")},
             lambda r, p: {"minutes": r.choice(p.minutes), "label": r.choice(p.labels)},
             ("Set a {minutes} minute timer for {label}.", "Start a timer called {label} for {minutes} minutes.",
              "Timer: {label}, {minutes} minutes.", "Remind me in {minutes} minutes about the {label}."),
             ("set a {minutes} minute timer for {label}", "start a {label} timer of {minutes} minutes")),
    Function("find_restaurants", "Find restaurants of a cuisine in a city.",
             {"city": _string("City name"), "cuisine": _enum(CUISINES, "Type of food")},
             lambda r, p: {"city": r.choice(p.cities), "cuisine": r.choice(CUISINES)},
             ("Find {cuisine} restaurants in {city}.", "Where can I eat {cuisine} food in {city}?",
              "Any good {cuisine} places in {city}?", "I'm in {city} and want {cuisine}. Suggest restaurants."),
             ("find {cuisine} restaurants in {city}", "look for {cuisine} food in {city}")),
    Function("get_news", "Latest news headlines on a topic.",
             {"topic": _enum(TOPICS, "News topic"), "count": {"type": "integer", "description": "How many headlines"}},
             lambda r, p: {"topic": r.choice(TOPICS), "count": r.choice(p.counts)},
             ("Show me {count} {topic} headlines.", "What are the top {count} {topic} news stories?",
              "Give me the latest {topic} news, {count} headlines.", "I want {count} headlines about {topic}."),
             ("get {count} {topic} headlines", "fetch the top {count} {topic} stories")),
)
BY_NAME = {f.name: f for f in FUNCTIONS}

JOINS = ("Please {0} and {1}.", "Could you {0} and {1}?", "I need you to {0}, then {1}.", "{0_cap}, and also {1}.",
         "Two things: {0}, and {1}.", "Can you {0} and {1}?")
JOINS3 = ("Please {0}, {1} and {2}.", "Could you {0}, {1}, and {2}?", "I need three things: {0}; {1}; {2}.",
          "{0_cap}, {1}, and then {2}.")


def _join(clauses: list[str], r: random.Random) -> str:
    template = r.choice(JOINS if len(clauses) == 2 else JOINS3)
    return template.format(*clauses, **{"0_cap": clauses[0][0].upper() + clauses[0][1:]})


# -- rows ---------------------------------------------------------------------------------------------------


def _distinct_args(fn: Function, r: random.Random, pools: Pools, n: int) -> list[dict]:
    """``n`` different argument sets of ``fn``."""
    out: list[dict] = []
    seen: set[str] = set()
    for _ in range(200):
        args = fn.sample_args(r, pools)
        key = json.dumps(args, sort_keys=True)
        if key not in seen:
            seen.add(key)
            out.append(args)
            if len(out) == n:
                return out
    raise AssertionError(f"cannot draw {n} distinct argument sets for {fn.name}")


def make_task(category: str, r: random.Random, pools: Pools) -> dict:
    """One task: its user request, offered tools and expected calls (no answer message yet)."""
    if category in ("simple", "multiple"):
        fn = r.choice(FUNCTIONS)
        calls = [(fn, fn.sample_args(r, pools))]
        prompt = fn.render(r.choice(fn.requests), calls[0][1])
        others = [f for f in FUNCTIONS if f is not fn]
        offered = [fn] + (r.sample(others, r.choice((2, 3))) if category == "multiple" else [])
    elif category == "parallel":
        fn = r.choice(FUNCTIONS)
        calls = [(fn, a) for a in _distinct_args(fn, r, pools, r.choice((2, 2, 3)))]
        prompt = _join([fn.render(r.choice(fn.clauses), a) for _, a in calls], r)
        offered = [fn]
    else:  # parallel_multiple: 2-3 calls over 2-3 different functions, plus maybe one unused
        used = r.sample(FUNCTIONS, r.choice((2, 2, 3)))
        calls = [(fn, fn.sample_args(r, pools)) for fn in used]
        if len(used) == 2 and r.random() < 0.3:  # one function called twice
            fn, first = calls[r.randrange(2)]
            calls.append((fn, next(a for a in _distinct_args(fn, r, pools, 2) if a != first)))
            r.shuffle(calls)
        prompt = _join([fn.render(r.choice(fn.clauses), a) for fn, a in calls], r)
        spare = [f for f in FUNCTIONS if f not in used]
        offered = used + (r.sample(spare, 1) if len(used) < 4 and r.random() < 0.5 else [])
    r.shuffle(offered)
    return {"prompt": prompt, "tools": [f.schema() for f in offered], "category": category,
            "expected_calls": [{"name": fn.name, "arguments": args} for fn, args in calls]}


def _messages(task: dict) -> list[dict]:
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": task["prompt"]}]


def sft_row(task: dict, row_id: str, r: random.Random) -> dict:
    calls = [{"id": f"call_{r.getrandbits(48):012x}", "type": "function",
              "function": {"name": c["name"], "arguments": json.dumps(c["arguments"])}} for c in task["expected_calls"]]
    return {"id": row_id, "messages": _messages(task) + [{"role": "assistant", "content": None, "tool_calls": calls}],
            "tools": task["tools"], "parallel_tool_calls": True}


def rft_row(task: dict, row_id: str) -> dict:
    return {"id": row_id, "messages": _messages(task), "tools": task["tools"],
            "expected_calls": task["expected_calls"], "category": task["category"]}


def make_sets(seed: int = 0) -> dict[str, list[dict]]:
    """The three files' rows. Prompts are unique across all of them; held-out values are never trained on."""
    r = random.Random(seed)
    train_pools, heldout_pools = Pools(heldout=False), Pools(heldout=True)
    seen: set[str] = set()
    out: dict[str, list[dict]] = {}
    for name, size in SIZES.items():
        pools = heldout_pools if name == "heldout" else train_pools
        rows: list[dict] = []
        for category in CATEGORIES:
            made = 0
            while made < size // len(CATEGORIES):
                task = make_task(category, r, pools)
                if task["prompt"] in seen:
                    continue
                seen.add(task["prompt"])
                made += 1
                row_id = f"fc-{name.replace('_', '-')}-{len(rows):04d}"
                rows.append(sft_row(task, row_id, r) if name == "sft_train" else rft_row(task, row_id))
        r.shuffle(rows)
        out[name] = rows
    return out


def grader_spec() -> dict:
    return {"type": "python", "name": "function_calls_match",
            "source": (HERE / "grader_source.py").read_text(encoding="utf-8")}


def write(out_dir: Path, seed: int = 0) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, rows in make_sets(seed).items():
        path = out_dir / f"{name}.jsonl"
        path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
        paths.append(path)
    path = out_dir / "grader.json"
    path.write_text(json.dumps(grader_spec(), indent=2) + "\n", encoding="utf-8")
    return paths + [path]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=HERE / "data")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    for path in write(args.out, args.seed):
        print(path)


if __name__ == "__main__":
    main()
