"""Cluster labels a person reads.

1. Candidates: class-based TF-IDF (as in BERTopic) over single words and two-word phrases,
   English stop words removed. All texts of a cluster (a bounded random sample of them on
   large maps) form one document; a term weighs tf(term, cluster) * log(1 + mean words per
   cluster / frequency of the term over all clusters).
2. Re-ranking (when the map's model can embed the candidates): maximal marginal relevance
   between the closeness of a term to the cluster's centroid in the embedding space and its
   closeness to the terms already chosen, so the chosen terms say different things.
3. One form per word: "files" is not chosen after "file", nor "filesystem" after "file"
   (see `form`), nor a word that a chosen phrase already holds.
4. A cluster's label is its first chosen terms up to three words (one phrase, or two or
   three words); a child's label does not repeat a word form of its parent's.

Pure numpy / scikit-learn; runs in a job's child process (fits.py), except the embedding
of candidate terms, which the job asks the embedding service for."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from services.projection.maps import NOISE, NOISE_LABEL, normalise

CANDIDATES = 15  # c-TF-IDF candidates per cluster that re-ranking chooses from
TERMS = 10  # terms kept per cluster (ListClusters' `terms`)
LABEL_WORDS = 3
SAMPLE_TEXTS = 1_000  # texts per cluster that count towards its terms, at most (bounds time and memory at 1M rows)
MAX_VOCABULARY = 200_000
MMR_RELEVANCE = 0.6  # weight of closeness to the centroid against novelty
MIN_LIFT = 1.5  # a term used less than this many times as often in a cluster as overall is not its own
MIN_PREFIX = 4  # a word that starts with another chosen word of at least this length repeats it
TOKEN_PATTERN = r"(?u)\b[^\W\d_]{2,}\b"


def form(word: str) -> str:
    """The form a word is compared by: lower case, common English inflections removed
    ("libraries" -> "library", "files" -> "file", "tools" -> "tool", "running" -> "runn")."""
    w = word.lower()
    if len(w) > 4 and w.endswith("ies"):
        return w[:-3] + "y"
    if len(w) > 4 and w.endswith(("ses", "xes", "zes", "ches", "shes")):
        return w[:-2]
    if len(w) > 3 and w.endswith("s") and not w.endswith(("ss", "us", "is")):
        return w[:-1]
    if len(w) > 5 and w.endswith("ing"):
        return w[:-3]
    return w


def _same_word(a: str, b: str) -> bool:
    """Two forms say the same word: equal, or one starts with the other and that one has
    at least MIN_PREFIX letters ("file" and "filesystem")."""
    if a == b:
        return True
    short, long = (a, b) if len(a) <= len(b) else (b, a)
    return len(short) >= MIN_PREFIX and long.startswith(short)


def _forms(term: str) -> list[str]:
    return [form(w) for w in term.split()]


def repeats(term: str, used: Sequence[str]) -> bool:
    """Does `term` (a word or a phrase) repeat a word form of any of `used`?"""
    mine = _forms(term)
    return any(_same_word(a, b) for t in used for b in _forms(t) for a in mine)


@dataclass
class Candidates:
    """c-TF-IDF candidates of each cluster, best first, with their scores."""

    terms: dict[int, list[str]] = field(default_factory=dict)
    scores: dict[int, list[float]] = field(default_factory=dict)
    own: dict[int, set[str]] = field(default_factory=dict)  # terms with a lift of MIN_LIFT or more


def _documents(texts: Sequence[str], labels: np.ndarray, ids: list[int], seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    docs = []
    for cid in ids:
        members = np.flatnonzero(labels == cid)
        if len(members) > SAMPLE_TEXTS:
            members = np.sort(rng.choice(members, SAMPLE_TEXTS, replace=False))
        docs.append(" ".join(texts[int(i)] for i in members))
    return docs


def candidates(texts: Sequence[str], labels: np.ndarray, top: int = CANDIDATES, seed: int = 0) -> Candidates:
    """The `top` c-TF-IDF terms (words and two-word phrases) of each cluster in `labels`
    (noise, -1, has none). Terms that repeat a better term's word form are skipped here
    already, so each list holds distinct words."""
    from sklearn.feature_extraction.text import CountVectorizer

    ids = sorted(int(c) for c in np.unique(labels) if c != NOISE)
    out = Candidates()
    if not ids:
        return out
    documents = _documents(texts, labels, ids, seed)
    vectorizer = CountVectorizer(
        stop_words="english", token_pattern=TOKEN_PATTERN, ngram_range=(1, 2), max_features=MAX_VOCABULARY
    )
    try:
        counts = vectorizer.fit_transform(documents).tocsr().astype(np.float64)
    except ValueError:  # no words at all (empty texts, only stop words)
        return Candidates({cid: [] for cid in ids}, {cid: [] for cid in ids})
    words = vectorizer.get_feature_names_out()
    per_cluster = np.asarray(counts.sum(axis=1)).ravel()
    frequency = np.asarray(counts.sum(axis=0)).ravel()
    total = float(per_cluster.sum())
    mean_words = total / len(ids)
    idf = np.log(1.0 + mean_words / np.maximum(frequency, 1.0))
    for row, cid in enumerate(ids):
        start, stop = counts.indptr[row], counts.indptr[row + 1]
        cols = counts.indices[start:stop]
        tf = counts.data[start:stop] / max(per_cluster[row], 1.0)
        score = tf * idf[cols]
        # lift: how much more often the term is used here than over all clusters (1: as often)
        lift = (counts.data[start:stop] / np.maximum(frequency[cols], 1.0)) / max(per_cluster[row] / total, 1e-12)
        # a phrase must occur at least twice to count (once is one text's wording)
        names = [str(words[c]) for c in cols]
        keep = [i for i in range(len(cols)) if " " not in names[i] or counts.data[start + i] >= 2]
        # words used everywhere as often ("thing", "package") come after the distinctive ones
        order = sorted(keep, key=lambda i: (bool(lift[i] < MIN_LIFT), -score[i], names[i]))
        chosen: list[str] = []
        chosen_scores: list[float] = []
        own: set[str] = set()
        for i in order:
            term = names[i]
            if repeats(term, chosen):
                continue
            chosen.append(term)
            chosen_scores.append(float(score[i]))
            if lift[i] >= MIN_LIFT:
                own.add(term)
            if len(chosen) == top:
                break
        out.terms[cid] = chosen
        out.scores[cid] = chosen_scores
        out.own[cid] = own
    return out


def rerank(
    terms: list[str],
    scores: list[float],
    centroid: np.ndarray | None,
    term_vectors: Mapping[str, np.ndarray] | None,
    avoid: Sequence[str] = (),
    keep: int = TERMS,
    own: set[str] | None = None,
) -> list[str]:
    """Order a cluster's candidates by maximal marginal relevance: closeness to the cluster's
    centroid (unit vector in the embedding space) against closeness to terms already
    chosen. Without vectors, c-TF-IDF order. Terms that repeat a word form of `avoid` (the
    parent's label) go last, as do terms that are not the cluster's own (`own`: used at
    least MIN_LIFT times as often there as overall), and none repeats a chosen one."""
    fresh = [t for t in terms if not repeats(t, avoid) and (own is None or t in own)]
    common = [t for t in terms if not repeats(t, avoid) and own is not None and t not in own]
    stale = [t for t in terms if repeats(t, avoid)]
    if centroid is None or term_vectors is None or not all(t in term_vectors for t in fresh):
        return (fresh + common + stale)[:keep]
    best = max(scores) if scores else 1.0
    weight = {t: s / best if best > 0 else 0.0 for t, s in zip(terms, scores, strict=True)}
    chosen: list[str] = []
    left = list(fresh)
    while left and len(chosen) < keep:

        def value(t: str) -> float:
            v = term_vectors[t]
            relevance = 0.5 * float(v @ centroid) + 0.5 * weight[t]
            novelty = max((float(v @ term_vectors[c]) for c in chosen), default=0.0)
            return MMR_RELEVANCE * relevance - (1 - MMR_RELEVANCE) * novelty

        pick = max(left, key=lambda t: (value(t), -terms.index(t)))
        chosen.append(pick)
        left.remove(pick)
    return (chosen + common + stale)[:keep]


def label_from(terms: Sequence[str], cluster_id: int) -> str:
    """The first terms up to LABEL_WORDS words: a phrase, or two or three words."""
    if cluster_id == NOISE:
        return NOISE_LABEL
    words = 0
    parts: list[str] = []
    for term in terms:
        n = len(term.split())
        if parts and words + n > LABEL_WORDS:
            break
        parts.append(term)
        words += n
        if words >= LABEL_WORDS:
            break
    return ", ".join(parts) if parts else f"cluster {cluster_id}"


def candidate_terms(found: Candidates) -> list[str]:
    """Every distinct candidate term, for embedding them in one go."""
    return list(dict.fromkeys(t for terms in found.terms.values() for t in terms))


def term_vectors_of(terms: list[str], vectors: np.ndarray | None) -> dict[str, np.ndarray] | None:
    if vectors is None or len(vectors) != len(terms):
        return None
    unit = normalise(np.asarray(vectors, dtype=np.float32))
    return {t: unit[i] for i, t in enumerate(terms)}
