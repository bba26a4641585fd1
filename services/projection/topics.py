"""A map's topics: the cluster levels (hierarchy.py) and a label for every cluster of every
level (labels.py). The job runs `levels` and `candidates_by_level` in its child process,
asks the embedding service for the candidates' vectors, then `choose`s the terms here."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from services.projection import hierarchy, labels
from services.projection.maps import NOISE, NOISE_LABEL


@dataclass
class Levels:
    tree: hierarchy.Hierarchy
    centroids: dict[int, np.ndarray]  # unit centroid in the embedding space, by cluster id (every level)


def levels(vectors: np.ndarray, fine: np.ndarray) -> Levels:
    """The cluster levels above `fine` (ids by size, noise -1) and every cluster's centroid
    in the embedding space."""
    ids = sorted(int(c) for c in np.unique(fine) if c != NOISE)
    centroids = hierarchy.unit_centroids(vectors, fine, ids) if ids else np.zeros((0, vectors.shape[1]), np.float32)
    sizes = np.bincount(fine[fine != NOISE], minlength=len(ids)) if ids else np.zeros(0, np.int64)
    tree = hierarchy.build(fine, centroids, sizes)
    by_id = {cid: centroids[i] for i, cid in enumerate(ids)}
    size = {cid: float(sizes[i]) for i, cid in enumerate(ids)}
    for mapping in tree.parents:  # level by level, upwards: a parent is its children's weighted mean
        members: dict[int, list[int]] = {}
        for child, parent in mapping.items():
            members.setdefault(parent, []).append(child)
        for parent, children in members.items():
            weights = np.array([size[c] for c in children])
            mean = (np.stack([by_id[c] for c in children]) * weights[:, None]).sum(axis=0)
            by_id[parent] = (mean / max(float(np.linalg.norm(mean)), 1e-12)).astype(np.float32)
            size[parent] = float(weights.sum())
    return Levels(tree=tree, centroids=by_id)


def candidates_by_level(texts: list[str], tree: hierarchy.Hierarchy, seed: int = 0) -> labels.Candidates:
    """c-TF-IDF candidates of every cluster of every level (each level's clusters compared
    with each other), in one Candidates keyed by cluster id."""
    out = labels.Candidates()
    for level in range(tree.depth):
        found = labels.candidates(texts, tree.rows_at(level), seed=seed)
        out.terms.update(found.terms)
        out.scores.update(found.scores)
        out.own.update(found.own)
    return out


@dataclass
class Named:
    terms: list[str]
    label: str


def choose(
    tree: hierarchy.Hierarchy,
    found: labels.Candidates,
    centroids: Mapping[int, np.ndarray],
    term_vectors: Mapping[str, np.ndarray] | None,
) -> dict[int, Named]:
    """Terms and label of every cluster, top level first, so that a child's label keeps
    clear of its parent's words."""
    named: dict[int, Named] = {}
    for level in reversed(range(tree.depth)):
        for cid in tree.levels[level]:
            parent = tree.parents[level].get(cid, NOISE) if level < len(tree.parents) else NOISE
            avoid = named[parent].label.split(", ") if parent in named else []
            terms = labels.rerank(
                found.terms.get(cid, []),
                found.scores.get(cid, []),
                centroids.get(cid),
                term_vectors,
                avoid=avoid,
                own=found.own.get(cid),
            )
            label = labels.label_from([t for t in terms if not labels.repeats(t, avoid)] or terms, cid)
            if parent in named and label == named[parent].label:
                label = f"{label} ({cid})"
            named[cid] = Named(terms=terms, label=label)
    named[NOISE] = Named(terms=[], label=NOISE_LABEL)
    return named
