"""The finance environment's questions and their seeded train / validation / test splits.

Every (company, fiscal year, metric) of the corpus is a possible question
(64 x 5 x 4 = 1,280) with a numeric reference answer read from the corpus's
figures, so a reference can never disagree with its gold document. One seeded
shuffle deals disjoint splits from that pool -- validation and test ask about
the same corpus the agent searches in training, but never the same question.

Rows are OpenAI RFT dataset rows: ``messages`` (a short system prompt and the
question) and reference fields for graders (``answer``, ``unit``, ``company``,
``year``, ``metric``, ``gold_doc_id``). There is no ``tools`` key: the tools
come from the environment.
"""

from __future__ import annotations

import copy
import random
import threading

from agentrft.envs.finance.corpus import FISCAL_YEARS, METRICS, Corpus, default_corpus
from agentrft.errors import ConfigError
from agentrft.types import TaskRow

__all__ = ["SPLITS", "SPLIT_SIZES", "SYSTEM_PROMPT", "TASK_SEED", "build_splits", "load_split", "question_text"]

TASK_SEED = 7
SPLIT_SIZES: dict[str, int] = {"train": 400, "validation": 64, "test": 200}
SPLITS: tuple[str, ...] = tuple(SPLIT_SIZES)

SYSTEM_PROMPT = (
    "You answer questions about companies' financial results. Use the search tool to find documents "
    "and the read tool to read them. Reported figures are in annual reports (Form 10-K); press releases "
    "and analyst notes hold forecasts, not results. Mind similar company names. "
    "Give the final answer as just the number, without units."
)

_QUESTIONS = {
    "revenue": "What was {company}'s revenue in fiscal {year}, in $ millions?",
    "net_income": "What was {company}'s net income in fiscal {year}, in $ millions?",
    "operating_margin": "What was {company}'s operating margin in fiscal {year}, in percent?",
    "headcount": "How many employees did {company} have at the end of fiscal {year}?",
}


def question_text(company: str, year: int, metric: str) -> str:
    return _QUESTIONS[metric].format(company=company, year=year)


def _row(corpus: Corpus, company: str, year: int, metric: str) -> TaskRow:
    return {
        "id": f"finance-{corpus.company(company).code}-{year}-{metric}",
        "messages": [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": question_text(company, year, metric)},
        ],
        "company": company,
        "year": year,
        "metric": metric,
        "unit": METRICS[metric].unit,
        "answer": corpus.figures[(company, year, metric)],
        "gold_doc_id": corpus.annual_report_id(company, year),
    }


def build_splits(corpus: Corpus, seed: int = TASK_SEED) -> dict[str, list[TaskRow]]:
    """Deal the question pool into disjoint splits of :data:`SPLIT_SIZES` (deterministic in ``seed``)."""
    pool = [_row(corpus, c.name, y, m) for c in corpus.companies for y in FISCAL_YEARS for m in METRICS]
    random.Random(seed).shuffle(pool)
    if sum(SPLIT_SIZES.values()) > len(pool):
        raise ValueError(f"the corpus has {len(pool)} questions, fewer than the splits need")
    # validation first: its questions do not move if the train size changes.
    order = ("validation", "test", "train")
    out: dict[str, list[TaskRow]] = {}
    start = 0
    for name in order:
        out[name] = pool[start : start + SPLIT_SIZES[name]]
        start += SPLIT_SIZES[name]
    return {name: out[name] for name in SPLITS}


_splits: dict[str, list[TaskRow]] | None = None
_lock = threading.Lock()


def load_split(name: str) -> list[TaskRow]:
    """The rows of split ``name`` (``train``, ``validation`` or ``test``); a fresh copy each call."""
    global _splits
    if name not in SPLIT_SIZES:
        raise ConfigError(f"the finance environment has no split {name!r}; splits: {', '.join(SPLITS)}")
    with _lock:
        if _splits is None:
            _splits = build_splits(default_corpus())
    return copy.deepcopy(_splits[name])
