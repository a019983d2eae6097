"""The built-in finance environment: answer numeric questions by searching a large document store.

The agent gets a question such as "What was Northwind Capital's revenue in
fiscal 2021, in $ millions?" and two tools, ``search(query)`` (BM25, top 5 as
``doc_id | title`` lines) and ``read(doc_id)``, over ~1,900 short synthetic
documents: annual and quarterly reports, press releases with guidance and
analyst notes with estimates, for 64 companies with look-alike names. Only
the annual report holds the answer; the rest are plausible distractors. The
answer is graded by relative error (:func:`agentrft.graders.numeric.grade_numeric`).

Parts: :mod:`.corpus` (the deterministic documents), :mod:`.retrieval` (the
shared BM25 index), :mod:`.tasks` (questions and splits), :mod:`.environment`
(the per-rollout tools), :mod:`.oracles` (scripted policies and
demonstrations). Nothing is built at import: the corpus, index and splits are
made on first use and shared by the process.
"""

from __future__ import annotations

from agentrft.envs.finance.corpus import FISCAL_YEARS, METRICS, Corpus, Document, build_corpus, default_corpus
from agentrft.envs.finance.environment import SEARCH_TOP_K, FinanceEnvironment
from agentrft.envs.finance.oracles import efficient_oracle, logged_oracle, oracle_conversation, verbose_oracle
from agentrft.envs.finance.tasks import SPLITS, SYSTEM_PROMPT, load_split
from agentrft.tools.environment import EnvSpec
from agentrft.graders.numeric import grade_numeric
from agentrft.types import Message, TaskRow

__all__ = [
    "FISCAL_YEARS",
    "METRICS",
    "SEARCH_TOP_K",
    "SPLITS",
    "SYSTEM_PROMPT",
    "Corpus",
    "Document",
    "FinanceEnvironment",
    "build_corpus",
    "default_corpus",
    "efficient_oracle",
    "env_spec",
    "load_split",
    "logged_oracle",
    "oracle_conversation",
    "verbose_oracle",
]


def _efficient_demonstration(row: TaskRow) -> list[Message]:
    return oracle_conversation(row, efficient_oracle)


def _verbose_demonstration(row: TaskRow) -> list[Message]:
    return oracle_conversation(row, verbose_oracle)


def _logged_demonstration(row: TaskRow) -> list[Message]:
    return oracle_conversation(row, logged_oracle)


def env_spec() -> EnvSpec:
    """The registry entry (``agentrft.envs.registry.get_env("finance")``).

    Its ``oracles`` return complete executed conversations (prompt, assistant
    turns, tool results, answer) -- what SFT/DPO turn into demonstrations; the
    bare assistant turns are :func:`efficient_oracle` / :func:`verbose_oracle` /
    :func:`logged_oracle` (mostly verbose, a quarter efficient).
    """
    return EnvSpec(
        name="finance",
        description="Answer numeric questions about 64 look-alike companies by searching ~1,900 filings, "
        "press releases and analyst notes (tools: search, read; graded by relative error).",
        splits=SPLITS,
        load_split=load_split,
        make_env=lambda row: FinanceEnvironment(),
        grade=grade_numeric,
        oracles={"efficient": _efficient_demonstration, "verbose": _verbose_demonstration,
                 "logged": _logged_demonstration},
    )
