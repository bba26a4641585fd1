"""numba compiles UMAP once per worker process: after its warm-up a job of any size (exact
or approximate neighbours, with or without PCA, with a sample and `transform`) compiles
nothing new, and a later process reads what numba can cache from NUMBA_CACHE_DIR.

Two child processes on a disk cache of the test's own: the first warms up (filling the
cache) and then makes maps of four kinds, counting new specialisations; the second makes
one small map and counts cache hits and misses. One warm-up, not two: a warm-up is the
slowest thing a test here does."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

COUNTS = """
import sys

from numba.core.dispatcher import Dispatcher


def cache_counts():
    hits = misses = 0
    for name, module in list(sys.modules.items()):
        if module is not None and name.startswith(("umap", "pynndescent")):
            for value in list(vars(module).values()):
                if isinstance(value, Dispatcher):
                    hits += sum(value.stats.cache_hits.values())
                    misses += sum(value.stats.cache_misses.values())
    return hits, misses
"""

WARM_THEN_MAP = COUNTS + """
import json

import numpy as np

from services.projection import maps

maps.warm_umap()
before = maps.compiled_signatures()
rng = np.random.default_rng(4)
wide = rng.normal(size=(5200, 96)).astype(np.float32)
shapes_ok = True
for vectors, params in (
    # the two large maps run a few epochs (the count changes no compiled type; the small maps
    # run umap's own count, 500, through the same functions)
    (wide, maps.MapParams(pca_dims=32, pca_min_rows=5000, n_epochs=maps.WARM_EPOCHS)),  # PCA, approximate, parallel
    (wide[:300], maps.MapParams(seed=3)),  # exact neighbours, seeded
    # approximate neighbours, then transform
    (wide[:4500], maps.MapParams(seed=3, metric="euclidean", fit_rows=4200, pca_dims=0, n_epochs=maps.WARM_EPOCHS)),
    (wide[:900], maps.MapParams(fit_rows=500)),  # exact + transform
):
    points = maps.reduce(vectors, params)
    shapes_ok = shapes_ok and points.shape == (len(vectors), 2) and bool(np.isfinite(points).all())
print(json.dumps({"new": maps.compiled_signatures() - before, "shapes_ok": shapes_ok}))
"""

LATER_PROCESS = COUNTS + """
import json

import numpy as np

from services.projection import maps

vectors = np.random.default_rng(5).normal(size=(900, 96)).astype(np.float32)
points = maps.reduce(vectors, maps.MapParams(fit_rows=500, n_epochs=maps.WARM_EPOCHS))  # exact + transform
hits, misses = cache_counts()
print(json.dumps({"hits": hits, "misses": misses, "shape_ok": points.shape == (900, 2)}))
"""


def _run(script: str, env: dict[str, str]) -> dict[str, object]:
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, check=True, capture_output=True, text=True)
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_after_the_warm_up_nothing_compiles_and_a_later_process_reads_the_disk_cache(tmp_path: Path) -> None:
    # A cache of its own: the test stacks' UMAP jobs write the shared one at the same time
    # (numba's index files are rewritten by their last writer).
    cache = tmp_path / "numba-cache"
    env = {**os.environ, "NUMBA_CACHE_DIR": str(cache)}
    first = _run(WARM_THEN_MAP, env)
    # after the warm-up, maps of every kind and size compile nothing new
    assert first["shapes_ok"], first
    assert first["new"] == 0, first
    assert any(cache.rglob("*.nbi")) and any(cache.rglob("*.nbc"))
    later = _run(LATER_PROCESS, env)
    # numba re-compiles the pynndescent specialisations that take other jitted functions
    # as arguments in every process; what can be cached comes from the disk
    assert later["shape_ok"], later
    assert isinstance(later["hits"], int) and isinstance(later["misses"], int)
    assert later["hits"] > later["misses"], later
