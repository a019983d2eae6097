"""BM25 ranked retrieval over the finance corpus (bm25s), built once per process.

Why module-level: indexing ~1,900 documents takes a fraction of a second, but
an environment is made for every rollout (hundreds per training step), so the
index is built on first use and shared; a per-rollout environment only holds
its own small state. Scoring only reads the index, so concurrent rollouts can
search at once.

Tokenisation is ours, not bm25s's, so queries and documents are tokenised
identically and deterministically: lower-cased alphanumeric runs, a short
English stop-word list and single letters dropped, a plural ``s`` stripped ("reports" finds
"report"). Doc ids tokenise into their parts ("10K-NWC-2021" -> ``10k nwc
2021``), so searching for an id finds it. Ties in score keep corpus order
(a stable sort), so the same query always gives the same ranking.
"""

from __future__ import annotations

import re
import threading

import numpy as np

from agentrft.envs.finance.corpus import Corpus, Document, default_corpus

__all__ = ["SearchIndex", "default_index", "tokenize"]

_TOKEN = re.compile(r"[a-z0-9]+")
_STOPWORDS = frozenset(
    "a an and are as at be by for from has have in is it its of on or our the their this to was were what which "
    "who with how many much did does do".split()
)


def tokenize(text: str) -> list[str]:
    """Search tokens of ``text`` (the same function for documents and queries)."""
    out = []
    for token in _TOKEN.findall(text.lower()):
        if token in _STOPWORDS or (len(token) == 1 and token.isalpha()):  # "'s" leaves a lone "s"
            continue
        if len(token) > 3 and token.endswith("s") and not token.endswith("ss"):
            token = token[:-1]
        out.append(token)
    return out


class SearchIndex:
    """A BM25 index over a corpus's documents (title and text)."""

    def __init__(self, corpus: Corpus):
        import bm25s  # imported here: only the finance environment needs it

        self.documents: tuple[Document, ...] = corpus.documents
        self._bm25 = bm25s.BM25()
        self._bm25.index([tokenize(f"{d.doc_id} {d.title} {d.text}") for d in self.documents], show_progress=False)
        self._vocab: dict[str, int] = dict(self._bm25.vocab_dict)

    def search(self, query: str, k: int = 5) -> list[Document]:
        """The ``k`` best-matching documents, best first; only documents sharing a word with the query."""
        tokens = [t for t in tokenize(query) if t in self._vocab]
        if not tokens or k <= 0:
            return []
        scores = np.asarray(self._bm25.get_scores(tokens), dtype=np.float64)
        order = np.argsort(-scores, kind="stable")[:k]
        return [self.documents[i] for i in order if scores[i] > 0]


_default: SearchIndex | None = None
_default_lock = threading.Lock()


def default_index() -> SearchIndex:
    """The process-wide index of :func:`~agentrft.envs.finance.corpus.default_corpus` (built on first use)."""
    global _default
    with _default_lock:
        if _default is None:
            _default = SearchIndex(default_corpus())
        return _default
