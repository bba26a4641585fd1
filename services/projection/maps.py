"""The numeric work of a map: reduce vectors to 2-D or 3-D, cluster the points, name the
clusters from their texts, and pack points for the wire. Plain numpy / scikit-learn /
umap-learn; every function here is CPU-bound and runs in a worker thread."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

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

NOISE = -1
NOISE_LABEL = "unclustered"
TSNE_PCA_DIMS = 50
UMAP_METRICS = ("cosine", "euclidean", "manhattan", "correlation", "chebyshev", "minkowski")


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
    algorithm: str = KMEANS
    k: int = 0  # 0: chosen from the row count
    min_cluster_size: int = 10
    space: str = PROJECTED


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


def warm_umap() -> None:
    """A tiny fit, so that numba's compilation happens before the first real job."""
    ensure_numba_cache()
    import umap

    data = np.random.default_rng(0).normal(size=(40, 8)).astype(np.float32)
    umap.UMAP(n_neighbors=5, n_components=2, metric="cosine", random_state=0, n_jobs=1, n_epochs=20).fit_transform(data)


def reduce(vectors: np.ndarray, params: MapParams) -> np.ndarray:
    """The map's coordinates: float32, rows x params.dimensions."""
    n = vectors.shape[0]
    dims = params.dimensions
    if n < dims + 2:
        raise ValueError(f"a {dims}-D map needs at least {dims + 2} rows; the embedding has {n}")
    data = np.ascontiguousarray(vectors, dtype=np.float32)
    if params.method == PCA:
        from sklearn.decomposition import PCA as SkPCA

        points = SkPCA(n_components=min(dims, data.shape[1]), random_state=params.seed).fit_transform(data)
        if points.shape[1] < dims:  # vectors of fewer dimensions than the map
            points = np.pad(points, ((0, 0), (0, dims - points.shape[1])))
    elif params.method == TSNE:
        from sklearn.decomposition import PCA as SkPCA
        from sklearn.manifold import TSNE as SkTSNE

        if data.shape[1] > TSNE_PCA_DIMS and n > TSNE_PCA_DIMS:
            data = SkPCA(n_components=TSNE_PCA_DIMS, random_state=params.seed).fit_transform(data)
        perplexity = max(1.0, min(params.perplexity, (n - 1) / 3))
        points = SkTSNE(
            n_components=dims,
            perplexity=perplexity,
            init="pca",
            random_state=params.seed,
            method="barnes_hut" if dims <= 3 else "exact",
        ).fit_transform(data)
    elif params.method == UMAP:
        ensure_numba_cache()
        import umap

        n_neighbors = max(2, min(params.n_neighbors, n - 1))
        reducer = umap.UMAP(
            n_neighbors=n_neighbors,
            n_components=dims,
            min_dist=params.min_dist,
            metric=params.metric,
            random_state=params.seed,
            n_jobs=1 if params.seed is not None else -1,  # a seed makes umap single-threaded anyway
            # spectral initialisation fails on graphs this small; random is fine there
            init="spectral" if n > 3 * n_neighbors else "random",
        )
        points = reducer.fit_transform(data)
    else:
        raise ValueError(f"unknown projection method {params.method!r}")
    return np.ascontiguousarray(points, dtype=np.float32)


def cluster(points: np.ndarray, vectors: np.ndarray, params: MapParams) -> np.ndarray:
    """A cluster id per row (int32); -1 is noise (HDBSCAN only)."""
    n = points.shape[0]
    data = vectors if params.space == EMBEDDING else points
    if params.algorithm == NONE or n == 0:
        return np.zeros(n, dtype=np.int32)
    if params.algorithm == KMEANS:
        from sklearn.cluster import KMeans

        k = params.k or default_k(n)
        k = max(1, min(k, n))
        labels = KMeans(n_clusters=k, n_init="auto", random_state=params.seed).fit_predict(data)
        return _renumber_by_size(labels.astype(np.int32))
    if params.algorithm == HDBSCAN:
        from sklearn.cluster import HDBSCAN as SkHDBSCAN

        size = max(2, min(params.min_cluster_size, n))
        labels = SkHDBSCAN(min_cluster_size=size, copy=True).fit_predict(np.asarray(data, dtype=np.float64))
        return _renumber_by_size(labels.astype(np.int32))
    raise ValueError(f"unknown clustering algorithm {params.algorithm!r}")


def _renumber_by_size(labels: np.ndarray) -> np.ndarray:
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


def cluster_terms(texts: list[str], labels: np.ndarray, top: int = 10) -> dict[int, list[str]]:
    """The most distinctive terms of each cluster by class-based TF-IDF (as in BERTopic):
    all texts of a cluster form one document; a term weighs tf(term, cluster) *
    log(1 + mean words per cluster / frequency of the term over all clusters)."""
    from sklearn.feature_extraction.text import CountVectorizer

    ids = sorted(int(c) for c in np.unique(labels) if c != NOISE)
    if not ids:
        return {}
    documents = [" ".join(texts[i] for i in np.flatnonzero(labels == cid)) for cid in ids]
    vectorizer = CountVectorizer(stop_words="english", token_pattern=r"(?u)\b[^\W\d_]{2,}\b")
    try:
        counts = vectorizer.fit_transform(documents).toarray().astype(np.float64)
    except ValueError:  # no words at all (empty texts, only stop words)
        return {cid: [] for cid in ids}
    words = vectorizer.get_feature_names_out()
    per_cluster = counts.sum(axis=1, keepdims=True)
    tf = counts / np.maximum(per_cluster, 1.0)
    frequency = counts.sum(axis=0)
    mean_words = counts.sum() / len(ids)
    idf = np.log(1.0 + mean_words / np.maximum(frequency, 1.0))
    scores = tf * idf
    result: dict[int, list[str]] = {}
    for row, cid in enumerate(ids):
        present = np.flatnonzero(counts[row] > 0)
        best = present[np.lexsort((words[present], -scores[row, present]))][:top]
        result[cid] = [str(words[i]) for i in best]
    return result


def label_of(terms: list[str], cluster_id: int) -> str:
    if cluster_id == NOISE:
        return NOISE_LABEL
    return ", ".join(terms[:3]) if terms else f"cluster {cluster_id}"


def points_table(points: np.ndarray, labels: np.ndarray, rows: np.ndarray | None = None) -> pa.Table:
    """The points file's table: `row` uint32, `x`, `y` (, `z`) float32, `cluster` int32."""
    n = points.shape[0]
    row_index = np.arange(n, dtype=np.uint32) if rows is None else rows.astype(np.uint32)
    columns: dict[str, pa.Array] = {"row": pa.array(row_index, type=pa.uint32())}
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


def normalise(vectors: np.ndarray) -> np.ndarray:
    """Unit-length rows (zero rows stay zero), for cosine similarity by dot product."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.maximum(norms, 1e-12)).astype(np.float32, copy=False)


def nearest(unit_vectors: np.ndarray, query: np.ndarray, limit: int, exclude: int | None = None) -> list[tuple[int, float]]:
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
