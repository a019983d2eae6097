"""The finance environment's document store: a deterministic synthetic corpus of company filings.

What: 64 fictional companies in 16 families of look-alike names ("Northwind
Capital", "Northwind Capital Group", "Northwood Capital", "Northwind
Holdings", ...) with annual results for fiscal 2018-2023 (revenue and net
income in $ millions, operating margin in %, year-end headcount), written up
as documents for fiscal 2019-2023:

=================  ==================  ==================================================
doc id             kind                what it says
=================  ==================  ==================================================
``10K-NWC-2021``   annual report       the reported figures (the gold documents)
``10Q-NWC-2021-Q2`` quarterly report   quarterly figures, Q1-Q3 (not the annual ones)
``PR-NWC-2021``    press release       guidance for the *next* fiscal year (forward-looking)
``AN-NWC-2021``    analyst note        an analyst's estimates for the year (not reported)
=================  ==================  ==================================================

Why this shape: the task is search under constraints -- the right number sits
in one of ~1,900 short documents, next to the same metric for a similarly
named company, for the neighbouring year, as guidance and as an estimate. An
agent has to search precisely and read the right filing; guessing from the
first hit is usually wrong. Each document is short (60-100 words) so several
fit a small model's context.

Determinism: everything comes from one seeded ``random.Random`` drawn in a
fixed order (no global RNG, no set or hash ordering), so every process builds
byte-identical documents; :func:`corpus_digest` fingerprints them.
"""

from __future__ import annotations

import hashlib
import math
import random
import threading
from dataclasses import dataclass

__all__ = [
    "CORPUS_SEED",
    "DOC_KINDS",
    "FISCAL_YEARS",
    "METRICS",
    "Company",
    "Corpus",
    "Document",
    "Metric",
    "build_corpus",
    "corpus_digest",
    "default_corpus",
]

CORPUS_SEED = 20240611
FISCAL_YEARS: tuple[int, ...] = (2019, 2020, 2021, 2022, 2023)
_FIRST_YEAR = FISCAL_YEARS[0] - 1  # figures start a year earlier: filings compare with the prior year


@dataclass(frozen=True)
class Metric:
    key: str
    label: str  # as it reads in a question: "revenue"
    unit: str  # "$ millions" | "%" | "employees"


METRICS: dict[str, Metric] = {
    m.key: m
    for m in (
        Metric("revenue", "revenue", "$ millions"),
        Metric("net_income", "net income", "$ millions"),
        Metric("operating_margin", "operating margin", "%"),
        Metric("headcount", "headcount", "employees"),
    )
}

DOC_KINDS = ("annual_report", "quarterly_report", "press_release", "analyst_note")


@dataclass(frozen=True)
class _Family:
    """Look-alike names: stem A and B share a sector; A also has a Group and a Holdings company."""

    stem_a: str
    code_a: str
    stem_b: str
    code_b: str
    sector: str
    sector_code: str
    business: str  # "a <business> company"
    margin: tuple[float, float]  # operating margin range, %
    staff_per_musd: tuple[float, float]  # employees per $ million of revenue


_FAMILIES: tuple[_Family, ...] = (
    _Family("Northwind", "NW", "Northwood", "ND", "Capital", "C", "asset management", (20, 34), (1.2, 2.2)),
    _Family("Silverline", "SL", "Silverlake", "SK", "Energy", "E", "power generation", (8, 20), (0.8, 1.8)),
    _Family("Bluewater", "BW", "Blackwater", "BK", "Logistics", "L", "freight and logistics", (3, 10), (4, 8)),
    _Family("Redstone", "RS", "Redrock", "RR", "Materials", "M", "building materials", (6, 15), (2, 4)),
    _Family("Greenfield", "GF", "Greenway", "GW", "Foods", "F", "packaged foods", (4, 12), (3, 6)),
    _Family("Ironbridge", "IB", "Ironwood", "IW", "Industries", "I", "industrial machinery", (6, 14), (3, 5)),
    _Family("Oakridge", "OR", "Oakmont", "OM", "Health", "T", "hospital services", (5, 15), (4, 7)),
    _Family("Pinecrest", "PC", "Pinehurst", "PH", "Software", "S", "enterprise software", (10, 30), (2.5, 5)),
    _Family("Clearwater", "CW", "Clearview", "CV", "Systems", "Y", "data storage", (8, 18), (3, 5)),
    _Family("Highland", "HL", "Highgate", "HG", "Telecom", "K", "mobile network", (12, 25), (1.5, 3)),
    _Family("Eastbrook", "EB", "Westbrook", "WB", "Financial", "N", "consumer lending", (18, 32), (2, 3)),
    _Family("Stonebridge", "SB", "Stonegate", "SG", "Insurance", "U", "property insurance", (8, 16), (1, 2)),
    _Family("Brightpath", "BP", "Brightwave", "BV", "Networks", "W", "network equipment", (5, 20), (2.5, 4.5)),
    _Family("Crestline", "CL", "Crestview", "CR", "Retail", "R", "home goods retail", (2, 8), (6, 10)),
    _Family("Harborview", "HV", "Harborside", "HS", "Shipping", "P", "container shipping", (4, 15), (1, 2.5)),
    _Family("Lakeshore", "LS", "Lakeside", "LK", "Pharma", "A", "generic drugs", (-4, 28), (2, 4)),
)

_CITIES = (
    "Boston", "Chicago", "Denver", "Austin", "Seattle", "Atlanta", "Phoenix", "Portland",
    "Minneapolis", "Charlotte", "Columbus", "Nashville", "Pittsburgh", "Omaha", "Raleigh", "Tampa",
)
_MONTHS = ("February", "March", "April", "May")
_ORDINALS = {1: "first", 2: "second", 3: "third"}


@dataclass(frozen=True)
class Company:
    name: str
    code: str  # ticker-like code used in doc ids: "NWC"
    business: str
    city: str
    family: str  # stem A of its family: the look-alikes share it


@dataclass(frozen=True)
class Document:
    doc_id: str
    kind: str  # one of DOC_KINDS
    title: str
    text: str
    company: str  # company name
    year: int  # the fiscal year the document is filed under

    def render(self) -> str:
        """What ``read`` shows: the title line, then the text."""
        return f"{self.title}\n{self.text}"


@dataclass(frozen=True)
class Corpus:
    companies: tuple[Company, ...]
    figures: dict[tuple[str, int, str], float]  # (company name, fiscal year, metric key) -> reported value
    documents: tuple[Document, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_id", {d.doc_id: d for d in self.documents})
        object.__setattr__(self, "_by_name", {c.name: c for c in self.companies})

    def document(self, doc_id: str) -> Document | None:
        return self._by_id.get(doc_id)  # type: ignore[attr-defined]

    def company(self, name: str) -> Company:
        return self._by_name[name]  # type: ignore[attr-defined]

    def annual_report_id(self, company: str, year: int) -> str:
        return f"10K-{self.company(company).code}-{year}"

    def look_alikes(self, company: str) -> list[Company]:
        """The other companies of ``company``'s family of similar names."""
        family = self.company(company).family
        return [c for c in self.companies if c.family == family and c.name != company]


# -- generation ------------------------------------------------------------------------


def _companies(rng: random.Random) -> list[Company]:
    out: list[Company] = []
    for f in _FAMILIES:
        for name, code in (
            (f"{f.stem_a} {f.sector}", f.code_a + f.sector_code),
            (f"{f.stem_a} {f.sector} Group", f.code_a + f.sector_code + "G"),
            (f"{f.stem_b} {f.sector}", f.code_b + f.sector_code),
            (f"{f.stem_a} Holdings", f.code_a + "HD"),
        ):
            out.append(Company(name, code, f.business, rng.choice(_CITIES), f.stem_a))
    assert len({c.code for c in out}) == len(out), "company codes must be unique"
    return out


def _figures(rng: random.Random, family: _Family) -> dict[int, dict[str, float]]:
    """One company's figures per fiscal year, from _FIRST_YEAR to the year after the last (for guidance)."""
    revenue = math.exp(rng.uniform(math.log(150), math.log(12000)))
    margin_base = rng.uniform(*family.margin)
    staff = rng.uniform(*family.staff_per_musd)
    out: dict[int, dict[str, float]] = {}
    for year in range(_FIRST_YEAR, FISCAL_YEARS[-1] + 2):
        if year > _FIRST_YEAR:
            revenue *= 1 + min(0.45, max(-0.25, rng.gauss(0.06, 0.09)))
        margin = round(margin_base + rng.gauss(0, 1.5), 1)
        rev = round(revenue, 1)
        net = round(rev * margin / 100 * rng.uniform(0.6, 0.85) + rng.gauss(0, 0.01) * rev, 1)
        headcount = max(50, int(round(rev * staff * rng.uniform(0.92, 1.08), -1)))
        out[year] = {"revenue": rev, "net_income": net, "operating_margin": margin, "headcount": float(headcount)}
    return out


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _musd(value: float) -> str:
    return f"-${-value:,.1f} million" if value < 0 else f"${value:,.1f} million"


_DRIVERS_UP = ("higher prices", "volume growth in its core markets", "new customer wins", "an acquisition")
_DRIVERS_DOWN = ("lower prices", "weaker demand in its core markets", "the loss of a large customer", "a divestiture")


def _annual_report(rng: random.Random, c: Company, year: int, now: dict[str, float], prev: dict[str, float]) -> Document:
    change = (now["revenue"] / prev["revenue"] - 1) * 100
    direction = "up" if change >= 0 else "down"
    driver = rng.choice(_DRIVERS_UP if change >= 0 else _DRIVERS_DOWN)
    loss = " (a net loss)" if now["net_income"] < 0 else ""
    text = (
        f"{c.name} ({c.code}) files its annual report on Form 10-K for fiscal {year}. "
        f"{c.name} is {_article(c.business)} {c.business} company headquartered in {c.city}. "
        f"Revenue for fiscal {year} was {_musd(now['revenue'])}, {direction} {abs(change):.1f}% "
        f"from {_musd(prev['revenue'])} in fiscal {year - 1}; management attributes the change mainly to {driver}. "
        f"Net income was {_musd(now['net_income'])}{loss}. "
        f"The operating margin was {now['operating_margin']:.1f}%, compared with {prev['operating_margin']:.1f}% a year earlier. "
        f"At the end of fiscal {year} the company had {int(now['headcount']):,} employees."
    )
    title = f"{c.name} annual report (Form 10-K), fiscal {year}"
    return Document(f"10K-{c.code}-{year}", "annual_report", title, text, c.name, year)


def _quarterly_report(rng: random.Random, c: Company, year: int, now: dict[str, float], quarter: int) -> Document:
    share = rng.uniform(0.21, 0.28)
    q_rev = round(now["revenue"] * share, 1)
    q_margin = round(now["operating_margin"] + rng.gauss(0, 2.5), 1)
    q_net = round(now["net_income"] * share * rng.uniform(0.7, 1.3), 1)
    q_staff = int(round(now["headcount"] * rng.uniform(0.93, 1.0), -1))
    text = (
        f"{c.name} ({c.code}) quarterly filing on Form 10-Q for the {_ORDINALS[quarter]} quarter of fiscal {year}. "
        f"Quarterly revenue was {_musd(q_rev)} and quarterly net income was {_musd(q_net)}. "
        f"The operating margin for the quarter was {q_margin:.1f}%. "
        f"Headcount at the end of the quarter was {q_staff:,} employees. "
        f"Results for the full fiscal year will be published after the fourth quarter."
    )
    title = f"{c.name} quarterly report (Form 10-Q), Q{quarter} fiscal {year}"
    return Document(f"10Q-{c.code}-{year}-Q{quarter}", "quarterly_report", title, text, c.name, year)


def _press_release(rng: random.Random, c: Company, year: int, nxt: dict[str, float]) -> Document:
    """Guidance for fiscal year + 1, issued in fiscal ``year``: deliberately not the reported figures."""
    g_rev = round(nxt["revenue"] * rng.choice((-1, 1)) * rng.uniform(0.04, 0.15) + nxt["revenue"], 1)
    g_margin = round(nxt["operating_margin"] + rng.choice((-1, 1)) * rng.uniform(1.0, 4.0), 1)
    g_staff = int(round(nxt["headcount"] * rng.uniform(1.04, 1.15), -1))
    text = (
        f"{c.name} ({c.code}) news release, {rng.choice(_MONTHS)} {year}. "
        f"{c.name} today issued its outlook for fiscal {year + 1}. "
        f"The company expects fiscal {year + 1} revenue of about {_musd(g_rev)} and an operating margin "
        f"near {g_margin:.1f}%, and plans to grow its workforce to roughly {g_staff:,} employees. "
        f"These forward-looking statements are targets, not reported results, and actual results may differ."
    )
    title = f"{c.name} press release: fiscal {year + 1} outlook (issued {year})"
    return Document(f"PR-{c.code}-{year}", "press_release", title, text, c.name, year)


def _analyst_note(rng: random.Random, c: Company, year: int, now: dict[str, float]) -> Document:
    """An analyst's pre-results estimates for fiscal ``year``: close to, but never equal to, the figures."""
    def off(value: float, lo: float, hi: float) -> float:
        return round(value * (1 + rng.choice((-1, 1)) * rng.uniform(lo, hi)), 1)

    e_rev, e_net = off(now["revenue"], 0.03, 0.12), off(now["net_income"], 0.05, 0.25)
    e_margin = round(now["operating_margin"] + rng.choice((-1, 1)) * rng.uniform(0.8, 3.0), 1)
    e_staff = int(round(off(now["headcount"], 0.03, 0.10), -1))
    text = (
        f"Analyst note on {c.name} ({c.code}), written before its fiscal {year} results. "
        f"We estimate fiscal {year} revenue of {_musd(e_rev)}, net income of {_musd(e_net)} "
        f"and an operating margin of {e_margin:.1f}%. We expect a headcount of about {e_staff:,}. "
        f"These are our estimates, not figures reported by the company; rating: "
        f"{rng.choice(('buy', 'hold', 'sell'))}."
    )
    title = f"{c.name} analyst note: fiscal {year} estimates"
    return Document(f"AN-{c.code}-{year}", "analyst_note", title, text, c.name, year)


def build_corpus(seed: int = CORPUS_SEED) -> Corpus:
    """Generate the corpus (deterministic in ``seed``). Use :func:`default_corpus` for the shared one."""
    rng = random.Random(seed)
    companies = _companies(rng)
    family_of = {c.name: next(f for f in _FAMILIES if f.stem_a == c.family) for c in companies}
    figures: dict[tuple[str, int, str], float] = {}
    documents: list[Document] = []
    for c in companies:
        by_year = _figures(rng, family_of[c.name])
        for year in FISCAL_YEARS:
            for key, value in by_year[year].items():
                figures[(c.name, year, key)] = value
            documents.append(_annual_report(rng, c, year, by_year[year], by_year[year - 1]))
            documents.extend(_quarterly_report(rng, c, year, by_year[year], q) for q in (1, 2, 3))
            documents.append(_press_release(rng, c, year, by_year[year + 1]))
            documents.append(_analyst_note(rng, c, year, by_year[year]))
    return Corpus(tuple(companies), figures, tuple(documents))


_default: Corpus | None = None
_default_lock = threading.Lock()


def default_corpus() -> Corpus:
    """The process-wide corpus (built once, on first use)."""
    global _default
    with _default_lock:
        if _default is None:
            _default = build_corpus()
        return _default


def corpus_digest(corpus: Corpus | None = None) -> str:
    """SHA-256 over every document (id, title, text): equal digests mean identical corpora."""
    h = hashlib.sha256()
    for d in (corpus or default_corpus()).documents:
        h.update(f"{d.doc_id}\x1f{d.title}\x1f{d.text}\x1e".encode())
    return h.hexdigest()
