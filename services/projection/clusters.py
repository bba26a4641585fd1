"""Clustering a map's rows: in the embedding's structure (REDUCED, the default: HDBSCAN on a
5-D UMAP of the vectors, as BERTopic and Latent Scope do), in the picture (PROJECTED) or
in the raw vectors (EMBEDDING); HDBSCAN keeps noise as -1, k-means is the other choice.

Above CLUSTER_SAMPLE_ROWS rows the clusterer runs on a random sample and every other row
takes the cluster most of its nearest sampled rows have (in the space the sample was
reduced from), so a million rows cost about what 50,000 do.

Plain numpy / scikit-learn / umap-learn / hdbscan; runs in a job's child process."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from services.projection import maps

CLUSTER_SAMPLE_ROWS = 50_000
REDUCED_DIMS = 5
REDUCED_NEIGHBOURS = 15
REDUCED_PCA_DIMS = 50
ASSIGN_NEIGHBOURS = 10
ASSIGN_BATCH_ROWS = 20_000
MIN_SAMPLES = 5  # HDBSCAN's density smoothing
ISOLATED_IQR = 3.0  # see `isolated`
MAX_CLUSTER_SHARE = 0.4  # HDBSCAN picks no cluster larger than this share of the rows


def default_min_cluster_size(rows: int) -> int:
    """HDBSCAN's smallest cluster for a map of `rows` rows: 0.2 % of the rows it clusters
    (at most CLUSTER_SAMPLE_ROWS), from 10 to 100: 10 up to 5,000 rows, 100 from 50,000."""
    clustered = min(rows, CLUSTER_SAMPLE_ROWS)
    return int(max(10, min(100, round(clustered * 0.002))))


def sample_of(n: int, seed: int | None) -> np.ndarray | None:
    """Rows the clusterer runs on (sorted), or None for all."""
    if n <= CLUSTER_SAMPLE_ROWS:
        return None
    rng = np.random.default_rng(seed if seed is not None else 0)
    return np.sort(rng.choice(n, size=CLUSTER_SAMPLE_ROWS, replace=False))


def _space(points: np.ndarray, vectors: np.ndarray, params: maps.MapParams, sample: np.ndarray | None) -> np.ndarray:
    """The space clusters are looked for in (and rows outside the sample are assigned in):
    the map's points, the vectors as they are, or (REDUCED) the unit vectors brought to
    REDUCED_PCA_DIMS by PCA, which the 5-D UMAP then starts from."""
    if params.space == maps.PROJECTED:
        return np.asarray(points, dtype=np.float32)
    if params.space == maps.EMBEDDING:
        return np.asarray(vectors, dtype=np.float32)
    n, width = vectors.shape
    if width <= REDUCED_PCA_DIMS or n <= REDUCED_PCA_DIMS:
        return maps.normalise(np.asarray(vectors, dtype=np.float32))
    from sklearn.decomposition import PCA as SkPCA

    fit_on = maps.normalise(np.asarray(vectors if sample is None else vectors[sample], dtype=np.float32))
    pca = SkPCA(n_components=REDUCED_PCA_DIMS, svd_solver="randomized", random_state=params.seed or 0).fit(fit_on)
    del fit_on
    out = np.empty((n, REDUCED_PCA_DIMS), dtype=np.float32)
    for start in range(0, n, 100_000):  # bounded temporaries
        out[start : start + 100_000] = pca.transform(maps.normalise(np.asarray(vectors[start : start + 100_000])))
    return out


def isolated(data: np.ndarray, knn_dists: np.ndarray | None = None) -> np.ndarray:
    """Rows with nothing close to them: the distance to their MIN_SAMPLES-th nearest row
    (`knn_dists`: each row's sorted neighbour distances, itself first, when already known)
    beyond the third quartile plus ISOLATED_IQR interquartile ranges of all rows'. UMAP
    gives every row neighbours in the reduced space, so such rows would join a cluster
    there; they stay noise."""
    n = data.shape[0]
    k = min(MIN_SAMPLES, n - 1)
    if k < 1:
        return np.zeros(n, dtype=bool)
    if knn_dists is None or knn_dists.shape[1] <= k:
        from sklearn.neighbors import NearestNeighbors

        knn_dists, _ = NearestNeighbors(n_neighbors=k + 1).fit(data).kneighbors(data)
    far = np.asarray(knn_dists[:, k], dtype=np.float64)
    q1, q3 = np.percentile(far, [25, 75])
    return np.asarray(far > q3 + ISOLATED_IQR * (q3 - q1))


STAGE = "clustering"


SMALL_DATA_ROWS = 4096  # umap computes all pairwise distances itself below this


def reduced(
    data: np.ndarray, params: maps.MapParams, report: maps.StageCallback | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """A 5-D UMAP of `data` (min_dist 0: clumps kept tight), what density clustering runs
    on, and the neighbour distances UMAP found in `data` (None when it kept none)."""
    maps.cache_umap_functions()
    import umap

    n = data.shape[0]
    if n <= REDUCED_DIMS + 2:
        return np.asarray(data, dtype=np.float32), None
    neighbours = max(2, min(REDUCED_NEIGHBOURS, n - 1))
    # below umap's small-data size, the neighbours by matrix products (maps.exact_knn)
    exact = maps.exact_knn(data, neighbours, "euclidean") if n < SMALL_DATA_ROWS else None
    reducer = umap.UMAP(
        n_neighbors=neighbours,
        n_components=REDUCED_DIMS,
        min_dist=0.0,
        metric="euclidean",  # on unit rows (or their PCA): orders neighbours as cosine does
        random_state=params.seed,
        n_jobs=1 if params.seed is not None else -1,
        init="spectral" if n > 3 * neighbours else "random",
        precomputed_knn=(None, None, None) if exact is None else (exact[0], exact[1], None),
        force_approximation_algorithm=exact is not None,
        tqdm_kwds=maps.epoch_bar(report, STAGE) if report is not None else {"disable": True},
    )
    points = np.ascontiguousarray(maps.fit_quietly(reducer, data, searchable=exact is None), dtype=np.float32)
    knn = getattr(reducer, "_knn_dists", None)
    return points, (np.asarray(knn) if isinstance(knn, np.ndarray) and knn.shape[0] == n else None)


def _fit_labels(data: np.ndarray, params: maps.MapParams) -> np.ndarray:
    n = data.shape[0]
    if params.algorithm == maps.KMEANS:
        from sklearn.cluster import KMeans

        k = max(1, min(params.k or maps.default_k(n), n))
        found: np.ndarray = KMeans(n_clusters=k, n_init="auto", random_state=params.seed).fit_predict(data)
        return found.astype(np.int32)
    if params.algorithm == maps.HDBSCAN:
        import hdbscan

        size = max(2, min(params.min_cluster_size or default_min_cluster_size(n), n))
        clusterer = hdbscan.HDBSCAN(
            min_cluster_size=size,
            # no one cluster holds most of the map: its parts are what a person wants to tell
            # apart (the levels above merge them again)
            max_cluster_size=int(MAX_CLUSTER_SHARE * n) if n >= 4 * size else 0,
            min_samples=max(1, min(MIN_SAMPLES, size, n - 1)),
            core_dist_n_jobs=1 if params.seed is not None else max(1, os.cpu_count() or 1),
        )
        return np.asarray(clusterer.fit_predict(np.asarray(data, dtype=np.float64)), dtype=np.int32)
    raise ValueError(f"unknown clustering algorithm {params.algorithm!r}")


def _assign(
    space: np.ndarray, sample: np.ndarray, sampled: np.ndarray, report: maps.StageCallback
) -> np.ndarray:
    """Every row's cluster: the sample's own, and for the rest the cluster most of their
    ASSIGN_NEIGHBOURS nearest sampled rows have (noise when most are noise)."""
    from sklearn.neighbors import NearestNeighbors

    n = space.shape[0]
    out = np.empty(n, dtype=np.int32)
    out[sample] = sampled
    rest = np.setdiff1d(np.arange(n), sample, assume_unique=True)
    index = NearestNeighbors(n_neighbors=min(ASSIGN_NEIGHBOURS, len(sample))).fit(space[sample])
    shift = 1  # noise (-1) counts as a class of its own
    classes = int(sampled.max(initial=0)) + 2

    def assign(rows: np.ndarray) -> np.ndarray:
        _, neighbours = index.kneighbors(space[rows])
        votes = sampled[neighbours] + shift
        counts = np.zeros((len(rows), classes), dtype=np.int32)
        np.add.at(counts, (np.repeat(np.arange(len(rows)), votes.shape[1]), votes.ravel()), 1)
        winners: np.ndarray = counts.argmax(axis=1) - shift
        return winners.astype(np.int32)

    batches = [rest[i : i + ASSIGN_BATCH_ROWS] for i in range(0, len(rest), ASSIGN_BATCH_ROWS)]
    done = 0
    with ThreadPoolExecutor(max_workers=max(1, min(len(batches), os.cpu_count() or 1))) as pool:
        for rows, found in zip(batches, pool.map(assign, batches), strict=True):
            out[rows] = found
            done += len(rows)
            report(STAGE, len(rest) + done, 2 * len(rest))  # the second half of the stage
    return out


def cluster(
    points: np.ndarray, vectors: np.ndarray, params: maps.MapParams, on_stage: maps.StageCallback | None = None
) -> np.ndarray:
    """A cluster id per row (int32), numbered by size (0 the largest); -1 is noise.
    `on_stage(stage, done, total)` hears the 5-D UMAP's epochs, then the rows assigned
    outside the sample."""
    report = on_stage or (lambda stage, done, total: None)
    n = points.shape[0]
    if params.algorithm == maps.NONE or n == 0:
        return np.zeros(n, dtype=np.int32)
    sample = sample_of(n, params.seed)
    space = _space(points, vectors, params, sample)
    fitted = space if sample is None else np.ascontiguousarray(space[sample])
    lonely = None
    if params.space == maps.REDUCED:
        start = fitted
        # with a sample, its UMAP's epochs are the first half of the stage, assigning the rest the second
        epochs = report if sample is None else (lambda stage, done, total: report(stage, done, 2 * total))
        fitted, knn_dists = reduced(fitted, params, epochs)
        if params.algorithm == maps.HDBSCAN:
            lonely = isolated(start, knn_dists)
    labels = _fit_labels(fitted, params)
    if lonely is not None:
        labels[lonely] = maps.NOISE
    if sample is not None:
        labels = _assign(space, sample, labels, report)
    return maps.renumber_by_size(labels)
