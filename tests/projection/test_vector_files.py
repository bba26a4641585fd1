"""Search and neighbours read unit vectors memory-mapped from local files
(services/projection/vectors.py): the same answers as normalised vectors in memory, one
fetch per embedding and row count (also across processes sharing the folder), disk use
within the budget (least recently used first), and an embedding's files go with it."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from services.projection import maps
from services.projection.vectors import Allocate, VectorFiles


def loader(raw: np.ndarray, fetched: list[int]):  # type: ignore[no-untyped-def]
    async def load(allocate: Allocate) -> np.ndarray:
        fetched.append(raw.shape[0])
        out = allocate(*raw.shape)
        out[:] = raw
        return out

    return load


async def test_memory_mapped_vectors_answer_as_the_vectors_in_memory(tmp_path: Path) -> None:
    raw = np.random.default_rng(0).normal(size=(3000, 64)).astype(np.float32)
    raw[5] = 0.0  # a zero row stays zero
    fetched: list[int] = []
    files = VectorFiles(tmp_path, 1 << 30)
    unit = await files.get("projects/p/datasets/d/embeddings/e", 3000, loader(raw, fetched))
    assert isinstance(unit, np.memmap) and not unit.flags.writeable
    np.testing.assert_allclose(unit, maps.normalise(raw), atol=1e-6)
    assert maps.nearest(unit, raw[7], 20) == maps.nearest(maps.normalise(raw), raw[7], 20)
    assert maps.nearest(unit, unit[9], 10, 9) == maps.nearest(maps.normalise(raw), maps.normalise(raw)[9], 10, 9)

    again = await files.get("projects/p/datasets/d/embeddings/e", 3000, loader(raw, fetched))
    other_process = await VectorFiles(tmp_path, 1 << 30).get(
        "projects/p/datasets/d/embeddings/e", 3000, loader(raw, fetched)
    )
    assert again is unit and np.array_equal(other_process, unit)
    assert fetched == [3000]  # fetched once; the second reader opened the file
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no partial file left


async def test_disk_use_stays_within_the_budget_least_recently_used_first(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    one_file = 1000 * 64 * 4
    files = VectorFiles(tmp_path, budget_bytes=int(2.5 * one_file))
    fetched: list[int] = []
    for name in ("a", "b"):
        await files.get(name, 1000, loader(rng.normal(size=(1000, 64)).astype(np.float32), fetched))
    old = time.time() - 600
    os.utime(files.path("a", 1000), (old, old))  # "a" was used longest ago
    await files.get("c", 1000, loader(rng.normal(size=(1000, 64)).astype(np.float32), fetched))
    assert not files.path("a", 1000).exists()
    assert files.path("b", 1000).exists() and files.path("c", 1000).exists()
    assert sum(p.stat().st_size for p in tmp_path.glob("*.npy")) <= 2.5 * one_file

    files.forget("b")
    assert not files.path("b", 1000).exists() and files.path("c", 1000).exists()
