"""numba compiles UMAP once per worker process: a new process reads what numba can cache
from NUMBA_CACHE_DIR, and after its warm-up a job of any size (exact or approximate
neighbours, with or without PCA, with a sample and `transform`) compiles nothing new.

One child process checks both, so the suite pays for one warm-up, not two (a warm-up is
the slowest thing a test here does)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

PROBE = """
import json
import sys

import numpy as np
from numba.core.dispatcher import Dispatcher


maps.warm_umap()
hits = misses = 0
for name, module in list(sys.modules.items()):
    if module is not None and name.startswith(("umap", "pynndescent")):
        for value in list(vars(module).values()):
            if isinstance(value, Dispatcher):
                hits += sum(value.stats.cache_hits.values())
                misses += sum(value.stats.cache_misses.values())

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
print(json.dumps({"hits": hits, "misses": misses, "new": maps.compiled_signatures() - before, "shapes_ok": shapes_ok}))
"""


@pytest.mark.slow
@pytest.mark.timeout(1200)  # two warm-ups: one fills a new disk cache, one reads it
def test_a_new_process_loads_umap_from_the_disk_cache_and_then_compiles_nothing(tmp_path: Path) -> None:
    # A cache of its own: the test stacks' UMAP jobs write the shared one at the same time
    # (numba's index files are rewritten by their last writer), and they take only the exact
    # path, so what the shared cache holds when this test runs depends on the test order.
    cache = str(tmp_path / "numba-cache")
    env = {**os.environ, "NUMBA_CACHE_DIR": cache}
    warm = "from services.projection import maps; maps.warm_umap()"
    subprocess.run([sys.executable, "-c", warm], cwd=ROOT, env=env, check=True, capture_output=True, text=True)
    probe = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, env=env, check=True, capture_output=True, text=True)
    counts = json.loads(probe.stdout.strip().splitlines()[-1])
    # numba re-compiles some pynndescent specialisations in every process (those that take
    # other jitted functions as arguments); the rest come from the disk cache
    assert counts["hits"] > counts["misses"], counts
    assert any(Path(cache).rglob("*.nbi"))
    # after the warm-up, maps of every kind and size compile nothing new
    assert counts["shapes_ok"], counts
    assert counts["new"] == 0, counts
