"""Search in a column by text: which rows hold the query (case-insensitive substring), and
how well each matches, so that hits can be ranked best first. Plain pyarrow and numpy.

A hit's score, in (0, 1]:

    0.50 x boundary   1 when the query stands as whole words somewhere in the text, 0.5 when
                      it only starts a word, 0 when it is only inside words
  + 0.35 x coverage   the share of the text the matches cover (occurrences x query length /
                      text length, at most 1): frequency, normalised by length as BM25 does
  + 0.15 x position   1 - (where the first match starts / text length): earlier is better

A text that is just the query scores 1. Lengths are in UTF-8 bytes; word characters are
Unicode letters, digits and `_`."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

BOUNDARY_WEIGHT = 0.5
COVERAGE_WEIGHT = 0.35
POSITION_WEIGHT = 0.15
_NOT_WORD = r"[^\pL\pN_]"

# pyarrow-stubs do not know the ignore_case keyword of the substring kernels.
compute: Any = pc


def _literal(text: str) -> str:
    """`text` as an RE2 pattern that matches it literally."""
    return "".join(c if c.isalnum() else f"\\x{{{ord(c):X}}}" for c in text)


def scores(values: pa.Array[Any] | pa.ChunkedArray[Any], query: str) -> tuple[np.ndarray, np.ndarray]:
    """(positions in `values` that contain `query`, their scores), in position order.
    Values of any type are compared as text; nulls never match."""
    text = values.cast(pa.string()) if values.type != pa.string() else values
    counts = compute.count_substring(text, query, ignore_case=True)
    hits = np.flatnonzero(compute.fill_null(counts, 0).to_numpy(zero_copy_only=False) > 0)
    if hits.shape[0] == 0:
        return hits.astype(np.int64), np.zeros(0, dtype=np.float32)
    found = text.take(hits)
    count = counts.take(hits).to_numpy(zero_copy_only=False).astype(np.float64)
    length = np.maximum(compute.binary_length(found).to_numpy(zero_copy_only=False).astype(np.float64), 1.0)
    first = compute.find_substring(found, query, ignore_case=True).to_numpy(zero_copy_only=False)
    pattern = _literal(query)
    whole = compute.match_substring_regex(found, f"(^|{_NOT_WORD}){pattern}($|{_NOT_WORD})", ignore_case=True)
    start = compute.match_substring_regex(found, f"(^|{_NOT_WORD}){pattern}", ignore_case=True)
    boundary = np.where(
        whole.to_numpy(zero_copy_only=False), 1.0, np.where(start.to_numpy(zero_copy_only=False), 0.5, 0.0)
    )
    coverage = np.minimum(1.0, count * len(query.encode()) / length)
    position = 1.0 - np.clip(first, 0, None) / length
    score = BOUNDARY_WEIGHT * boundary + COVERAGE_WEIGHT * coverage + POSITION_WEIGHT * position
    return hits.astype(np.int64), np.clip(score, 1e-6, 1.0).astype(np.float32)


class Ranking:
    """The best `limit` (row, score) pairs seen so far, fed batch by batch."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._rows = np.zeros(0, dtype=np.int64)
        self._scores = np.zeros(0, dtype=np.float32)

    def add(self, rows: np.ndarray, found: np.ndarray) -> None:
        all_rows = np.concatenate([self._rows, rows.astype(np.int64)])
        all_scores = np.concatenate([self._scores, found.astype(np.float32)])
        keep = np.lexsort((all_rows, -all_scores))[: self._limit]
        self._rows, self._scores = all_rows[keep], all_scores[keep]

    def best(self) -> list[tuple[int, float]]:
        """Best first; equal scores by row index."""
        return [(int(r), float(s)) for r, s in zip(self._rows, self._scores, strict=True)]
