"""The per-rollout finance environment: ``search`` and ``read`` over the shared document store.

An instance is made for every rollout and costs nothing: the corpus and its
BM25 index are process-wide (:mod:`.corpus`, :mod:`.retrieval`); the instance
only records what this rollout searched for and read (``searches``,
``reads``), which tests and trajectory graders can inspect.
"""

from __future__ import annotations

from agentrft.envs.finance.corpus import default_corpus
from agentrft.envs.finance.retrieval import default_index
from agentrft.tools.base import ToolFailure
from agentrft.tools.environment import Environment
from agentrft.types import TaskRow, ToolErrorKind

__all__ = ["SEARCH_TOP_K", "FinanceEnvironment", "normalize_doc_id"]

SEARCH_TOP_K = 5


def normalize_doc_id(doc_id: str) -> str:
    """A doc id as the store keys it: forgiving about form (case, spaces, quotes, a whole "id | title" line)."""
    return str(doc_id).split("|")[0].strip().strip("\"'`").upper()


class FinanceEnvironment(Environment):
    """Search and read a store of ~1,900 company filings, press releases and analyst notes."""

    def __init__(self) -> None:
        self.row: TaskRow = {}
        self.searches: list[str] = []
        self.reads: list[str] = []

    def setup(self, row: TaskRow) -> None:
        self.row = row

    def search(self, query: str) -> str:
        """Search the document store (annual reports, quarterly reports, press releases, analyst notes).

        Returns the 5 best matches, one per line as "doc_id | title".

        Args:
            query: words to look for, e.g. a company name, a fiscal year and a document type.
        """
        self.searches.append(query)
        if not query.strip():
            raise ToolFailure(ToolErrorKind.TOOL_ERROR, "empty query; search for words such as a company name and a year")
        hits = default_index().search(query, k=SEARCH_TOP_K)
        if not hits:
            return "No documents match the query."
        return "\n".join(f"{d.doc_id} | {d.title}" for d in hits)

    def read(self, doc_id: str) -> str:
        """Read one document in full.

        Args:
            doc_id: the id of a document, as listed by search (the part before " | ").
        """
        key = normalize_doc_id(doc_id)  # forgiving about form, never about content
        doc = default_corpus().document(key)
        if doc is None:
            raise ToolFailure(ToolErrorKind.TOOL_ERROR, f"unknown doc_id {doc_id!r}; use search to find ids")
        self.reads.append(doc.doc_id)
        return doc.render()
