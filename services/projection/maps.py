"""The numeric work of a map: reduce vectors to 2-D or 3-D, cluster the points, name the
clusters from their texts, and pack points for the wire. Plain numpy / scikit-learn /
umap-learn; the CPU-bound functions run in a job's child process (fits.py)."""

from __future__ import annotations

import io
import math
import os
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pyarrow as pa

UMAP = "UMAP"
PCA = "PCA"
TSNE = "TSNE"
METHODS = (UMAP, PCA, TSNE)

KMEANS = "KMEANS"
HDBSCAN = "HDBSCAN"
NONE = "NONE"
ALGORITHMS = (KMEANS, HDBSCAN, NONE)

PROJECTED = "PROJECTED"
EMBEDDING = "EMBEDDING"
REDUCED = "REDUCED"  # clusters.py: a 5-D UMAP of the vectors

NOISE = -1
NOISE_LABEL = "unclustered"
TSNE_PCA_DIMS = 50
UMAP_METRICS = ("cosine", "euclidean", "manhattan", "correlation", "chebyshev", "minkowski")
# metrics whose neighbourhoods survive PCA (cosine after normalising rows)
PRE_REDUCIBLE = ("cosine", "euclidean")

# Stage names a job reports while a map is made.
STAGE_PRE_REDUCTION = "pre-reduction"
STAGE_NEIGHBOURS = "neighbours"
STAGE_OPTIMISATION = "optimisation"
STAGE_PLACING = "placing"  # rows outside the fitted sample, put in with `transform`

# Defaults of the scale settings (services/projection/settings.py reads the variables).
DEFAULT_FIT_ROWS = 40_000  # EMBEDVIZ_PROJECTION_FIT_ROWS: above this, fit on a sample (docs/projection.md)
DEFAULT_PCA_DIMS = 50  # EMBEDVIZ_PROJECTION_PCA_DIMS: pre-reduce wider vectors (0: never)
DEFAULT_PCA_MIN_ROWS = 5_000  # EMBEDVIZ_PROJECTION_PCA_MIN_ROWS: below this, UMAP skips PCA
TRANSFORM_BATCH_ROWS = 20_000
# A fit of this many rows or more runs LARGE_FIT_EPOCHS epochs instead of umap's 200 (its
# choice above 10,000 rows). On the 100,000 Debian vectors (40,000 fitted) 150 epochs gave
# the same trustworthiness and section agreement as 200 (0.855-0.859 / 0.384-0.387 against
# 0.852-0.854 / 0.386) in three quarters of the time; 100 and 120 epochs lost agreement
# (0.379-0.380), as did PCA initialisation or fewer negative samples (docs/projection.md).
LARGE_FIT_ROWS = 20_000
LARGE_FIT_EPOCHS = 150
QUALITY_SAMPLE_ROWS = 2_000
QUALITY_NEIGHBOURS = 10

StageCallback = Callable[[str, int, int], object]  # (stage, done, total)


@dataclass(frozen=True)
class MapParams:
    """How to make a map; defaults already filled in (see `defaults`)."""

    method: str = UMAP
    dimensions: int = 2
    seed: int | None = None
    n_neighbors: int = 15
    min_dist: float = 0.1
    metric: str = "cosine"
    perplexity: float = 30.0
    algorithm: str = HDBSCAN
    k: int = 0  # 0: chosen from the row count
    min_cluster_size: int = 10
    space: str = REDUCED
    fit_rows: int = DEFAULT_FIT_ROWS  # fit on a sample of this many rows above it (0: never)
    pca_dims: int = DEFAULT_PCA_DIMS  # PCA pre-reduction before UMAP / t-SNE (0: never)
    pca_min_rows: int = DEFAULT_PCA_MIN_ROWS  # UMAP pre-reduces only from this many rows
    n_epochs: int | None = None  # UMAP's own choice when None; only the warm-up sets it (not stored)


def default_k(rows: int) -> int:
    """round(sqrt(n / 2)), kept within [2, 30] and never above the row count."""
    k = int(round(math.sqrt(rows / 2))) if rows > 0 else 2
    return max(1, min(max(2, min(k, 30)), rows))


def ensure_numba_cache() -> str:
    """Numba compiles UMAP on first use; cache the machine code across processes."""
    if not os.environ.get("NUMBA_CACHE_DIR"):
        path = Path(__file__).resolve().parents[2] / "build" / "numba-cache"
        path.mkdir(parents=True, exist_ok=True)
        os.environ["NUMBA_CACHE_DIR"] = str(path)
    return os.environ["NUMBA_CACHE_DIR"]


_DISK_CACHE_ON = False


def cache_umap_functions() -> None:
    """Most of umap's numba functions (and some of pynndescent's) are declared without
    `cache=True`, so every new process compiled them again: about 20 s of CPU before its
    first small map, even with NUMBA_CACHE_DIR full. This turns numba's disk cache on for
    every module-level numba function of theirs that lacks it, once per process, before
    anything compiles; then a new process (a fitting child, a restarted service) loads
    them from the cache in well under a second. What numba cannot cache (a specialisation
    that takes another jitted function as an argument) it still compiles in memory."""
    global _DISK_CACHE_ON
    if _DISK_CACHE_ON:
        return
    ensure_numba_cache()
    import sys

    import umap  # noqa: F401 (imports umap.umap_, umap.layouts and pynndescent)
    from numba.core.caching import NullCache
    from numba.core.dispatcher import Dispatcher

    for name, module in list(sys.modules.items()):
        if module is None or not name.startswith(("umap", "pynndescent")):
            continue
        for value in list(vars(module).values()):
            if isinstance(value, Dispatcher) and isinstance(getattr(value, "_cache", None), NullCache):
                value.enable_caching()
    _DISK_CACHE_ON = True


WARM_EPOCHS = 6  # the fit runs 6, transform a third of that (2)


def warm_umap() -> None:
    """Small fits through every numba path a job takes (exact and approximate neighbours,
    cosine and euclidean, seeded and parallel, transform), so that compilation happens
    once per process before the first real job, and is read from NUMBA_CACHE_DIR where
    umap and pynndescent allow caching."""
    ensure_numba_cache()
    rng = np.random.default_rng(0)
    # enough rows that pynndescent's trees split several levels deep, as on real data
    data = (rng.normal(size=(8, 96))[rng.integers(0, 8, 4600)] * 3 + rng.normal(size=(4600, 96))).astype(np.float32)
    for metric in ("cosine", "euclidean"):
        for seed in (0, None):
            # a few epochs take every compiled path of the hundreds a job runs (same types)
            params = MapParams(
                method=UMAP, seed=seed, metric=metric, n_neighbors=8, fit_rows=4200, pca_dims=0, n_epochs=WARM_EPOCHS
            )
            reduce(data, params, exact_below=0)  # approximate neighbours, then transform
            reduce(data[:240], params)  # exact neighbours (exact_knn), no transform
            reduce(data[:240], replace(params, fit_rows=200))  # umap's own small-data path, then transform
    import sklearn.manifold  # noqa: F401 (the quality stage's trustworthiness: imported here, not in a job)


def compiled_signatures() -> int:
    """How many numba specialisations umap and pynndescent hold in this process; a job
    that compiles nothing leaves it unchanged."""
    import sys

    from numba.core.dispatcher import Dispatcher

    total = 0
    for name, module in list(sys.modules.items()):
        if module is None or not name.startswith(("umap", "pynndescent")):
            continue
        for value in list(vars(module).values()):
            if isinstance(value, Dispatcher):
                total += len(value.overloads)
    return total


def _nothing(stage: str, done: int, total: int) -> None:
    return None


def fit_sample(n: int, params: MapParams) -> np.ndarray | None:
    """Row indexes the reducer is fitted on (sorted), or None when it is fitted on all."""
    if not params.fit_rows or n <= params.fit_rows or params.method == PCA and n <= 4 * params.fit_rows:
        return None
    rng = np.random.default_rng(params.seed if params.seed is not None else 0)
    return np.sort(rng.choice(n, size=params.fit_rows, replace=False))


def pre_reduce_dims(shape: tuple[int, ...], params: MapParams, fitted_rows: int) -> int:
    """The dimensions `pre_reduce` brings vectors of this shape to; 0 when it leaves them."""
    n, width = int(shape[0]), int(shape[1])
    metric = params.metric if params.method == UMAP else "euclidean"
    dims = params.pca_dims
    wanted = params.method == TSNE or (params.method == UMAP and fitted_rows >= params.pca_min_rows)
    if not dims or width <= dims or n <= dims or not wanted or metric not in PRE_REDUCIBLE:
        return 0
    return dims


def pre_reduce(data: np.ndarray, params: MapParams, sample: np.ndarray | None) -> tuple[np.ndarray, str]:
    """PCA to `params.pca_dims` before UMAP or t-SNE, where it helps: wide vectors, enough
    rows, a metric whose neighbourhoods survive it. Returns the data and the metric to use
    on it (cosine becomes euclidean on normalised rows, which orders neighbours the same)."""
    n = data.shape[0]
    metric = params.metric if params.method == UMAP else "euclidean"
    dims = pre_reduce_dims(data.shape, params, n if sample is None else int(sample.shape[0]))
    if not dims:
        return data, metric
    from sklearn.decomposition import PCA as SkPCA

    if metric == "cosine":
        data = normalise(data)
    fit_on = data if sample is None else data[sample]
    pca = SkPCA(n_components=dims, svd_solver="randomized", random_state=params.seed if params.seed is not None else 0)
    pca.fit(fit_on)
    reduced = np.empty((n, dims), dtype=np.float32)
    for start in range(0, n, 100_000):  # bounded temporaries
        reduced[start : start + 100_000] = pca.transform(data[start : start + 100_000])
    return reduced, "euclidean"


def reduce(
    vectors: np.ndarray, params: MapParams, on_stage: StageCallback | None = None, exact_below: int = 4096
) -> np.ndarray:
    """The map's coordinates: float32, rows x params.dimensions. Every row gets a place:
    above `params.fit_rows` the reducer is fitted on a random sample and the other rows
    are placed with `transform` (t-SNE, which has none: at the weighted mean of their
    nearest fitted rows), in parallel batches. `on_stage(stage, done, total)` hears of
    each stage as it starts and of placing progress."""
    report = on_stage or _nothing
    n = vectors.shape[0]
    dims = params.dimensions
    if n < dims + 2:
        raise ValueError(f"a {dims}-D map needs at least {dims + 2} rows; the embedding has {n}")
    data = np.ascontiguousarray(vectors, dtype=np.float32)
    sample = fit_sample(n, params)
    if params.method == PCA:
        return _pca_map(data, params, sample)
    if params.method not in (UMAP, TSNE):
        raise ValueError(f"unknown projection method {params.method!r}")
    report(STAGE_PRE_REDUCTION, 0, n)
    data, metric = pre_reduce(data, params, sample)
    fitted = data if sample is None else np.ascontiguousarray(data[sample])
    if params.method == TSNE:
        report(STAGE_OPTIMISATION, 0, sum(tsne_iterations(fitted.shape[0])))
        fitted_points = _tsne(fitted, params, report)
        if sample is None:
            return fitted_points
        return _place_by_neighbours(data, sample, fitted, fitted_points, report)
    reducer, fitted_points = _umap_fit(fitted, params, metric, report, exact_below, sample is not None)
    if sample is None:
        return fitted_points
    return _place_with_transform(reducer, data, sample, fitted_points, report)


def _pca_map(data: np.ndarray, params: MapParams, sample: np.ndarray | None) -> np.ndarray:
    from sklearn.decomposition import PCA as SkPCA

    dims = params.dimensions
    pca = SkPCA(n_components=min(dims, data.shape[1]), random_state=params.seed)
    pca.fit(data if sample is None else data[sample])
    points = np.empty((data.shape[0], dims), dtype=np.float32)
    points[:] = 0.0  # vectors of fewer dimensions than the map keep zeros in the rest
    for start in range(0, data.shape[0], 100_000):
        part = pca.transform(data[start : start + 100_000])
        points[start : start + part.shape[0], : part.shape[1]] = part
    return points


TSNE_EXACT_NEIGHBOURS_BELOW = 50_000  # brute-force kNN below this (n² work), Annoy from here


def tsne_iterations(n: int) -> tuple[int, int]:
    """Early-exaggeration iterations, then the rest. With openTSNE's learning rate of
    n / 12, half its default schedule (250 + 500) keeps the map as trustworthy up to the
    40,000 rows a map fits by default (Debian summaries, k 10: 5,000 rows 0.915 against
    0.911; 20,000 rows 0.888 against 0.896, scikit-learn 0.864; 40,000 rows 0.888 against
    0.887). Larger fits (EMBEDVIZ_PROJECTION_FIT_ROWS raised) keep the default."""
    return (125, 250) if n <= 50_000 else (250, 500)


def _tsne(data: np.ndarray, params: MapParams, report: StageCallback = _nothing) -> np.ndarray:
    """t-SNE by openTSNE: FFT-accelerated interpolation of the repulsive forces in 2-D
    (Barnes-Hut in 3-D, where FFT has no grid), PCA initialisation. Iterations are reported
    as optimisation progress. A seed makes it single-threaded, so that it is reproducible.

    Three choices make it several times faster than openTSNE's defaults (measured on 5,000
    Debian summaries, docs/projection.md): the neighbour index is built here, because
    openTSNE's own choice of one imports pynndescent, which compiles for ~1.7 s (brute force
    below 50,000 rows: 7.8 s for 40,000 rows against Annoy's 26 s); the FFT
    grid has one interval per 2 units of the map and at least 20 (defaults 1 and 50: as the
    map spreads to ~150 units the grid's FFTs grew to 40 s of 47), which kept
    trustworthiness; and the schedule of `tsne_iterations`."""
    from openTSNE import TSNE as OpenTSNE
    from openTSNE import affinity, initialization
    from openTSNE.nearest_neighbors import Annoy, Sklearn

    n = data.shape[0]
    perplexity = max(1.0, min(params.perplexity, (n - 1) / 3))
    early, rest = tsne_iterations(n)
    total = early + rest
    done = 0
    n_jobs = 1 if params.seed is not None else -1
    x = np.asarray(data, dtype=np.float64)
    k = min(n - 1, int(3 * perplexity))
    if n < TSNE_EXACT_NEIGHBOURS_BELOW:
        index = Sklearn(data=x, k=k, metric="euclidean", n_jobs=n_jobs, knn_kwargs={"algorithm": "brute"})
    else:
        index = Annoy(data=x, k=k, metric="euclidean", n_jobs=n_jobs, random_state=params.seed)
    affinities = affinity.PerplexityBasedNN(perplexity=perplexity, knn_index=index, n_jobs=n_jobs)
    start = initialization.pca(x, n_components=params.dimensions, random_state=params.seed)

    def progress(iteration: int, error: float, embedding: object) -> None:
        nonlocal done
        done = min(total, done + 10)
        report(STAGE_OPTIMISATION, done, total)

    tsne = OpenTSNE(
        n_components=params.dimensions,
        perplexity=perplexity,
        early_exaggeration_iter=early,
        n_iter=rest,
        negative_gradient_method="fft" if params.dimensions <= 2 else "bh",
        ints_in_interval=2,
        min_num_intervals=20,
        random_state=params.seed,
        n_jobs=n_jobs,
        callbacks=progress,
        callbacks_every_iters=10,
        verbose=False,
    )
    points = tsne.fit(affinities=affinities, initialization=start)
    report(STAGE_OPTIMISATION, total, total)
    return np.ascontiguousarray(points, dtype=np.float32)


class Reducer(Protocol):
    """What placing needs of a fitted reducer (umap.UMAP, which ships no types)."""

    def transform(self, data: np.ndarray, /) -> np.ndarray: ...


def _umap_fit(
    data: np.ndarray, params: MapParams, metric: str, report: StageCallback, exact_below: int, transform_after: bool
) -> tuple[Reducer, np.ndarray]:
    cache_umap_functions()
    import umap
    from umap.umap_ import nearest_neighbors

    n = data.shape[0]
    n_neighbors = max(2, min(params.n_neighbors, n - 1))
    n_jobs = 1 if params.seed is not None else -1  # a seed makes umap single-threaded anyway
    fast_graph_transform_start()
    n_epochs = params.n_epochs if params.n_epochs is not None or n < LARGE_FIT_ROWS else LARGE_FIT_EPOCHS
    knn: tuple[object, object, object] = (None, None, None)
    report(STAGE_NEIGHBOURS, 0, n)
    if n >= exact_below:
        angular = metric in ("cosine", "correlation")
        random_state = np.random.RandomState(params.seed) if params.seed is not None else None
        knn = nearest_neighbors(data, n_neighbors, metric, {}, angular, random_state, n_jobs=n_jobs)
        report(STAGE_OPTIMISATION, 0, n)
    elif not transform_after and (exact := exact_knn(data, n_neighbors, metric)) is not None:
        # below exact_below umap would compute all distances itself, pair by pair through a
        # Python call each (see exact_knn); `transform` needs umap's own small-data state
        knn = (exact[0], exact[1], None)
        report(STAGE_OPTIMISATION, 0, n)
    reducer = umap.UMAP(
        n_neighbors=n_neighbors,
        n_components=params.dimensions,
        min_dist=params.min_dist,
        metric=metric,
        random_state=params.seed,
        n_jobs=n_jobs,
        precomputed_knn=knn,
        n_epochs=n_epochs,
        # spectral initialisation fails on graphs this small; random is fine there
        init="spectral" if n > 3 * n_neighbors else "random",
        force_approximation_algorithm=knn[0] is not None,
        # umap has no progress callback, only a tqdm bar over the epochs: read its counts
        tqdm_kwds=epoch_bar(report, STAGE_OPTIMISATION),
    )
    if knn[0] is None:
        report(STAGE_OPTIMISATION, 0, n)
    points = fit_quietly(reducer, data, searchable=knn[0] is None or knn[2] is not None)
    reducer.tqdm_kwds = {"disable": True}  # placing (transform) runs epochs too: not the fit's
    # transform runs a third of a set n_epochs, else 30 (batches above 10,000 rows) or 100:
    # the larger fit's fewer epochs are not meant to make placing run more (50)
    reducer.n_epochs = params.n_epochs
    return reducer, np.ascontiguousarray(points, dtype=np.float32)


def graph_transform_start(graph: Any, embedding: np.ndarray) -> np.ndarray:
    """Where `UMAP.transform` starts each new row before its epochs: the mean of its fitted
    neighbours' map positions weighted by their membership strengths; at a neighbour's
    position when the strength is 1 (the same vector); NaN without neighbours. The same
    result as umap's own `init_graph_transform` (tests/projection/test_maps_speed.py), which
    walks the sparse graph row by row in Python: 5-10 s of the ~11 s that placing 60,000
    rows took, against well under a second for this."""
    import scipy.sparse

    csr = scipy.sparse.csr_matrix(graph)
    counts = np.diff(csr.indptr)
    sums = np.asarray(csr.sum(axis=1), dtype=np.float64).ravel()
    with np.errstate(invalid="ignore", divide="ignore"):
        start = np.asarray(csr @ np.asarray(embedding, dtype=np.float64)) / sums[:, None]
    result = start.astype(np.float32)
    same = csr.data == 1
    if same.any():
        rows = np.repeat(np.arange(csr.shape[0]), counts)[same]
        cols = csr.indices[same]
        rows, first = np.unique(rows, return_index=True)  # umap stops at a row's first such neighbour
        result[rows] = embedding[cols[first]]
    result[counts == 0] = np.nan
    return result


UMAPS_OWN: dict[str, Callable[..., Any]] = {}  # what fast_graph_transform_start replaced


def fast_graph_transform_start() -> None:
    """Make `UMAP.transform` use `graph_transform_start` (umap looks the function up in its
    module when it runs, so replacing the module's name is enough; once per process)."""
    import umap.umap_

    current = umap.umap_.init_graph_transform
    if current is not graph_transform_start:
        UMAPS_OWN["init_graph_transform"] = current
        umap.umap_.init_graph_transform = graph_transform_start


def fit_quietly(reducer: Any, data: np.ndarray, searchable: bool) -> np.ndarray:
    """`reducer.fit_transform(data)`; without a search index (neighbours from `exact_knn`)
    umap warns that `transform` is unavailable, which the caller knows."""
    import warnings

    with warnings.catch_warnings():
        if not searchable:
            warnings.filterwarnings("ignore", message=r"precomputed_knn\[2\]")
        return np.asarray(reducer.fit_transform(data))


EXACT_KNN_BLOCK = 1024


def exact_knn(data: np.ndarray, k: int, metric: str) -> tuple[np.ndarray, np.ndarray] | None:
    """Every row's k nearest rows (itself first, at distance 0) by matrix products, as umap's
    precomputed_knn (int32 indexes, float32 distances); None for a metric other than cosine
    or euclidean. For fewer than 4,096 rows umap computes all distances itself through
    scikit-learn with its numba metric as a Python callable, one call per pair: 5.7 s of a
    7.4 s map of 2,000 rows, and four times that at 4,000. This takes 0.1 s."""
    if metric not in ("cosine", "euclidean"):
        return None
    x = normalise(data) if metric == "cosine" else np.ascontiguousarray(data, dtype=np.float32)
    n = x.shape[0]
    squares = np.einsum("ij,ij->i", x, x)
    indexes = np.empty((n, k), dtype=np.int32)
    distances = np.empty((n, k), dtype=np.float32)
    for start in range(0, n, EXACT_KNN_BLOCK):
        rows = np.arange(start, min(n, start + EXACT_KNN_BLOCK))
        products = x[rows] @ x.T
        if metric == "cosine":
            block = 1.0 - products
        else:
            block = np.sqrt(np.maximum(squares[rows, None] + squares[None, :] - 2.0 * products, 0.0))
        np.maximum(block, 0.0, out=block)
        block[np.arange(rows.shape[0]), rows] = -1.0  # itself first, also among exact duplicates
        nearest = np.argpartition(block, k - 1, axis=1)[:, :k]
        picked = np.take_along_axis(block, nearest, axis=1)
        order = np.argsort(picked, axis=1, kind="stable")
        indexes[rows] = np.take_along_axis(nearest, order, axis=1)
        distances[rows] = np.maximum(np.take_along_axis(picked, order, axis=1), 0.0)
    return indexes, distances


class _EpochCounts(io.TextIOBase):
    """Where umap's epoch bar writes "done/total": passed on as progress of `stage`
    (the optimisation, or clustering's own 5-D UMAP)."""

    def __init__(self, report: StageCallback, stage: str = STAGE_OPTIMISATION) -> None:
        super().__init__()
        self._report = report
        self._stage = stage

    def write(self, text: str) -> int:
        found = _EPOCHS.findall(text)
        if found:
            done, total = found[-1]
            self._report(self._stage, int(done), int(total))
        return len(text)


def epoch_bar(report: StageCallback, stage: str) -> dict[str, object]:
    """umap's `tqdm_kwds` that turn its epoch bar into `report(stage, epochs done, epochs)`."""
    return {"disable": False, "file": _EpochCounts(report, stage), "bar_format": "{n}/{total}\n",
            "mininterval": 0.25, "ascii": True}


_EPOCHS = re.compile(r"(\d+)/(\d+)")


def _batches(rest: np.ndarray) -> list[np.ndarray]:
    return [rest[i : i + TRANSFORM_BATCH_ROWS] for i in range(0, rest.shape[0], TRANSFORM_BATCH_ROWS)]


def _place_with_transform(
    reducer: Reducer, data: np.ndarray, sample: np.ndarray, fitted_points: np.ndarray, report: StageCallback
) -> np.ndarray:
    n = data.shape[0]
    points = np.empty((n, fitted_points.shape[1]), dtype=np.float32)
    points[sample] = fitted_points
    rest = np.setdiff1d(np.arange(n), sample, assume_unique=True)
    batches = _batches(rest)
    report(STAGE_PLACING, 0, rest.shape[0])
    done = 0

    # One batch after another: umap's transform is not safe to run from two threads on one
    # reducer. With batches on a thread pool, the placed rows of 100,000 real vectors (40,000
    # fitted, 60,000 placed in three batches) came out scrambled in four runs of six
    # (trustworthiness of the placed rows 0.65 against 0.85-0.86 for the fitted ones; see
    # docs/projection.md). Each transform's optimisation runs on every core by itself.
    for rows in batches:
        points[rows] = np.asarray(reducer.transform(data[rows]), dtype=np.float32)
        done += rows.shape[0]
        report(STAGE_PLACING, done, rest.shape[0])
    return points


def _place_by_neighbours(
    data: np.ndarray,
    sample: np.ndarray,
    fitted: np.ndarray,
    fitted_points: np.ndarray,
    report: StageCallback,
    k: int = 10,
) -> np.ndarray:
    from sklearn.neighbors import NearestNeighbors

    n = data.shape[0]
    points = np.empty((n, fitted_points.shape[1]), dtype=np.float32)
    points[sample] = fitted_points
    rest = np.setdiff1d(np.arange(n), sample, assume_unique=True)
    index = NearestNeighbors(n_neighbors=min(k, fitted.shape[0])).fit(fitted)
    batches = _batches(rest)
    report(STAGE_PLACING, 0, rest.shape[0])
    done = 0

    def place(rows: np.ndarray) -> np.ndarray:
        distances, neighbours = index.kneighbors(data[rows])
        weights = 1.0 / np.maximum(distances, 1e-6)
        weights /= weights.sum(axis=1, keepdims=True)
        placed: np.ndarray = np.einsum("rk,rkd->rd", weights, fitted_points[neighbours]).astype(np.float32)
        return placed

    with ThreadPoolExecutor(max_workers=max(1, min(len(batches), os.cpu_count() or 1))) as pool:
        for rows, placed in zip(batches, pool.map(place, batches), strict=True):
            points[rows] = placed
            done += rows.shape[0]
            report(STAGE_PLACING, done, rest.shape[0])
    return points


@dataclass(frozen=True)
class Quality:
    """How faithful a map is. trustworthiness: sklearn's, k=10, on a random sample of at
    most QUALITY_SAMPLE_ROWS rows (1 is perfect). label_agreement: share of each point's 10
    nearest map neighbours that carry its label; shuffled: the same with labels shuffled
    (what chance gives); both -1 when no labels were given."""

    trustworthiness: float
    sample_rows: int
    neighbours: int
    label_agreement: float = -1.0
    shuffled_label_agreement: float = -1.0
    labelled_rows: int = 0


def trustworthiness(
    vectors: np.ndarray,
    points: np.ndarray,
    metric: str,
    seed: int | None,
    sample_rows: int = QUALITY_SAMPLE_ROWS,
    k: int = QUALITY_NEIGHBOURS,
) -> tuple[float, int]:
    from sklearn.manifold import trustworthiness as sk_trustworthiness

    n = points.shape[0]
    rows = np.arange(n)
    if n > sample_rows:
        rows = np.sort(
            np.random.default_rng(seed if seed is not None else 0).choice(n, size=sample_rows, replace=False)
        )
    k = max(1, min(k, (rows.shape[0] - 1) // 2 - 1))
    if k < 1 or rows.shape[0] < 4:
        return 1.0, int(rows.shape[0])
    high = np.asarray(vectors[rows], dtype=np.float64)
    value = sk_trustworthiness(
        high,
        np.asarray(points[rows], dtype=np.float64),
        n_neighbors=k,
        metric=metric if metric in PRE_REDUCIBLE else "euclidean",
    )
    return float(value), int(rows.shape[0])


def label_agreement(
    points: np.ndarray, labels: np.ndarray, seed: int | None, k: int = QUALITY_NEIGHBOURS
) -> tuple[float, float, int]:
    """(agreement, shuffled agreement, labelled rows) over the rows whose label is not
    empty; neighbours are looked for among those rows."""
    from sklearn.neighbors import NearestNeighbors

    keep = np.flatnonzero(np.asarray([bool(v) for v in labels]))
    if keep.shape[0] < 3:
        return -1.0, -1.0, int(keep.shape[0])
    k = min(k, keep.shape[0] - 1)
    _, codes = np.unique(np.asarray(labels)[keep], return_inverse=True)
    _, neighbours = NearestNeighbors(n_neighbors=k + 1).fit(points[keep]).kneighbors(points[keep])
    neighbours = neighbours[:, 1:]  # not the point itself
    agreement = float((codes[neighbours] == codes[:, None]).mean())
    shuffled = np.random.default_rng(seed if seed is not None else 0).permutation(codes)
    baseline = float((shuffled[neighbours] == shuffled[:, None]).mean())
    return agreement, baseline, int(keep.shape[0])


def cluster_agreement(clusters: np.ndarray, labels: np.ndarray) -> float:
    """Adjusted mutual information between the clusters (noise, -1, a group of its own)
    and the known labels, over the rows whose label is not empty; -1 with fewer than 3."""
    from sklearn.metrics import adjusted_mutual_info_score

    keep = np.flatnonzero(np.asarray([bool(v) for v in labels]))
    if keep.shape[0] < 3:
        return -1.0
    return float(adjusted_mutual_info_score(np.asarray(labels)[keep].astype(str), np.asarray(clusters)[keep]))


def measure(
    vectors: np.ndarray,
    points: np.ndarray,
    params: MapParams,
    truth: list[str] | None,
    clusters: np.ndarray | None = None,
) -> dict[str, object]:
    """A projection's `quality`: trustworthiness on a sample and, with known labels
    (`truth`, one per row, empty for none), the label agreement and its chance baseline,
    and how far `clusters` agree with the labels."""
    trust, sample_rows = trustworthiness(vectors, points, params.metric, params.seed)
    quality: dict[str, object] = {
        "trustworthiness": trust,
        "sample_rows": sample_rows,
        "neighbours": QUALITY_NEIGHBOURS,
        "label_agreement": -1.0,
        "shuffled_label_agreement": -1.0,
        "labelled_rows": 0,
        "cluster_agreement": -1.0,
    }
    if truth is not None:
        known = np.asarray(truth, dtype=object)
        agreement, shuffled, labelled = label_agreement(points, known, params.seed)
        quality.update(label_agreement=agreement, shuffled_label_agreement=shuffled, labelled_rows=labelled)
        if clusters is not None:
            quality.update(cluster_agreement=cluster_agreement(clusters, known))
    return quality


def renumber_by_size(labels: np.ndarray) -> np.ndarray:
    """Cluster 0 is the largest, then 1, ...; noise stays -1. Stable for a fixed seed."""
    ids, counts = np.unique(labels[labels != NOISE], return_counts=True)
    order = ids[np.lexsort((ids, -counts))]
    mapping = np.full(int(labels.max(initial=0)) + 2, NOISE, dtype=np.int32)
    mapping[order] = np.arange(len(order), dtype=np.int32)
    out = np.full_like(labels, NOISE)
    kept = labels != NOISE
    out[kept] = mapping[labels[kept]]
    return out


@dataclass
class ClusterSummary:
    id: int
    size: int
    centroid: list[float]
    terms: list[str] = field(default_factory=list)
    label: str = ""


def summarise(points: np.ndarray, labels: np.ndarray) -> list[ClusterSummary]:
    """Size and centre (in map coordinates) of each cluster, by id; noise last."""
    summaries = []
    for cid in sorted(int(c) for c in np.unique(labels)):
        members = points[labels == cid]
        summaries.append(
            ClusterSummary(id=cid, size=int(members.shape[0]), centroid=[float(v) for v in members.mean(axis=0)])
        )
    return sorted(summaries, key=lambda s: (s.id == NOISE, s.id))


def points_table(points: np.ndarray, labels: np.ndarray, rows: np.ndarray | None = None) -> pa.Table:
    """The points file's table: `row` uint32, `x`, `y` (, `z`) float32, `cluster` int32."""
    n = points.shape[0]
    row_index = np.arange(n, dtype=np.uint32) if rows is None else rows.astype(np.uint32)
    columns: dict[str, pa.Array[Any]] = {"row": pa.array(row_index, type=pa.uint32())}
    for axis, name in enumerate("xyz"[: points.shape[1]]):
        columns[name] = pa.array(np.ascontiguousarray(points[:, axis], dtype=np.float32), type=pa.float32())
    columns["cluster"] = pa.array(labels.astype(np.int32), type=pa.int32())
    return pa.table(columns)


def write_points(sink: pa.NativeFile, table: pa.Table) -> None:
    with pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table, max_chunksize=1 << 20)


@dataclass(frozen=True)
class Points:
    """A map's points as flat arrays (views into the points file where possible)."""

    rows: np.ndarray  # uint32
    coordinates: np.ndarray  # float32, n x dimensions
    clusters: np.ndarray  # int32

    @property
    def dimensions(self) -> int:
        return int(self.coordinates.shape[1])

    def __len__(self) -> int:
        return int(self.rows.shape[0])


def read_points(source: pa.NativeFile) -> Points:
    table = pa.ipc.open_file(source).read_all().combine_chunks()
    names = [n for n in ("x", "y", "z") if n in table.column_names]
    rows = table.column("row").to_numpy()
    coordinates = np.column_stack([table.column(n).to_numpy() for n in names]).astype(np.float32, copy=False)
    clusters = table.column("cluster").to_numpy()
    return Points(rows=rows, coordinates=coordinates, clusters=clusters)


@dataclass(frozen=True)
class PointChunk:
    count: int
    dimensions: int
    row_indexes: bytes
    coordinates: bytes
    cluster_ids: bytes


def chunk_bounds(points: Points, chunk_points: int) -> list[tuple[int, int]]:
    """(start, stop) of each chunk."""
    n = len(points)
    size = max(1, chunk_points)
    return [(start, min(start + size, n)) for start in range(0, n, size)]


def pack(points: Points, start: int, stop: int) -> PointChunk:
    """Packed little-endian arrays of points[start:stop]: coordinates row-major,
    interleaved x, y (, z)."""
    coords = np.ascontiguousarray(points.coordinates[start:stop], dtype="<f4")
    return PointChunk(
        count=stop - start,
        dimensions=points.dimensions,
        row_indexes=np.ascontiguousarray(points.rows[start:stop], dtype="<u4").tobytes(),
        coordinates=coords.tobytes(),
        cluster_ids=np.ascontiguousarray(points.clusters[start:stop], dtype="<i4").tobytes(),
    )


def unpack(chunk: PointChunk) -> Points:
    """The inverse of `pack`, as a client reads a chunk."""
    return Points(
        rows=np.frombuffer(chunk.row_indexes, dtype="<u4"),
        coordinates=np.frombuffer(chunk.coordinates, dtype="<f4").reshape(chunk.count, chunk.dimensions),
        clusters=np.frombuffer(chunk.cluster_ids, dtype="<i4"),
    )


# POINT_ENCODING_PACKED: the cluster as uint16, noise as its largest value.
PACKED_NOISE = 0xFFFF
MAX_PACKED_CLUSTER = PACKED_NOISE - 1


def record_dtype(dimensions: int) -> np.dtype[Any]:
    """One packed point: x, y (, z) float32, cluster uint16, 2 zero bytes (4-byte aligned
    records, so a client can view them as Float32Array / Uint16Array or hand them to WebGL)."""
    axes: list[tuple[str, str]] = [(axis, "<f4") for axis in "xyz"[:dimensions]]
    return np.dtype([*axes, ("cluster", "<u2"), ("pad", "<u2")])


def pack_records(points: Points, start: int, stop: int) -> bytes:
    """points[start:stop] as packed records (record_dtype); the row index is implicit:
    record i is row start + i, which holds for every points file (written in row order)."""
    rows = points.rows[start:stop]
    if rows.shape[0] and (int(rows[0]) != start or int(rows[-1]) != stop - 1):
        raise ValueError(f"the points file is not in row order at {start}; make the map again")
    clusters = points.clusters[start:stop]
    if clusters.shape[0] and int(clusters.max()) > MAX_PACKED_CLUSTER:
        raise ValueError(
            f"cluster {int(clusters.max())} does not fit the packed encoding (at most {MAX_PACKED_CLUSTER})"
        )
    records = np.zeros(stop - start, dtype=record_dtype(points.dimensions))
    for axis, name in enumerate("xyz"[: points.dimensions]):
        records[name] = points.coordinates[start:stop, axis]
    records["cluster"] = np.where(clusters < 0, PACKED_NOISE, clusters).astype("<u2")
    return records.tobytes()


def unpack_records(packed: bytes, dimensions: int, start: int) -> Points:
    """The inverse of `pack_records`, as a client reads a chunk."""
    records = np.frombuffer(packed, dtype=record_dtype(dimensions))
    coordinates = np.column_stack([records[name] for name in "xyz"[:dimensions]]).astype(np.float32)
    cluster = records["cluster"].astype(np.int32)
    return Points(
        rows=np.arange(start, start + records.shape[0], dtype=np.uint32),
        coordinates=coordinates,
        clusters=np.where(cluster == PACKED_NOISE, NOISE, cluster).astype(np.int32),
    )


def normalise(vectors: np.ndarray) -> np.ndarray:
    """Unit-length rows (zero rows stay zero), for cosine similarity by dot product."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    unit: np.ndarray = (vectors / np.maximum(norms, 1e-12)).astype(np.float32, copy=False)
    return unit


def nearest(
    unit_vectors: np.ndarray, query: np.ndarray, limit: int, exclude: int | None = None
) -> list[tuple[int, float]]:
    """Rows most similar to `query` by cosine, best first: (row, similarity)."""
    q = query.astype(np.float32).ravel()
    q = q / max(float(np.linalg.norm(q)), 1e-12)
    scores = unit_vectors @ q
    if exclude is not None and 0 <= exclude < scores.shape[0]:
        scores[exclude] = -np.inf
    n = scores.shape[0] - (1 if exclude is not None else 0)
    take = max(0, min(limit, n))
    if take == 0:
        return []
    top = np.argpartition(-scores, take - 1)[:take]
    top = top[np.lexsort((top, -scores[top]))]
    return [(int(i), float(scores[i])) for i in top]
