"""Projections' rules: their names, which parameters make sense (with defaults filled
in), the parameters stored with a projection, and page tokens. No I/O here."""

from __future__ import annotations

import uuid
from typing import Any

from embedviz.v1 import projection_pb2
from services.common import paging
from services.common.errors import FailedPrecondition, InvalidArgument
from services.projection import clusters, maps
from services.projection.models import ProjectionRow
from services.projection.settings import ProjectionSettings

KIND = "projection"
EMBEDDING_PATTERN = "projects/{project}/datasets/{dataset}/embeddings/{embedding}"
PROJECTION_PATTERN = EMBEDDING_PATTERN + "/projections/{projection}"
MIN_ROWS = 4
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
# Follow-up projections (Embedding.project_when_done) get a stable id from the embedding's
# name, so an event delivered twice makes one projection.
FOLLOW_UP_NAMESPACE = uuid.UUID("6f1b7c1e-43a5-4f0e-9a51-1a2f6b0c9d7e")

_METHOD_NAMES = {
    projection_pb2.PROJECTION_METHOD_UNSPECIFIED: maps.UMAP,
    projection_pb2.PROJECTION_METHOD_UMAP: maps.UMAP,
    projection_pb2.PROJECTION_METHOD_PCA: maps.PCA,
    projection_pb2.PROJECTION_METHOD_TSNE: maps.TSNE,
}
_ALGORITHM_NAMES = {
    projection_pb2.CLUSTER_ALGORITHM_UNSPECIFIED: maps.HDBSCAN,
    projection_pb2.CLUSTER_ALGORITHM_KMEANS: maps.KMEANS,
    projection_pb2.CLUSTER_ALGORITHM_HDBSCAN: maps.HDBSCAN,
    projection_pb2.CLUSTER_ALGORITHM_NONE: maps.NONE,
}
_SPACE_NAMES = {
    projection_pb2.CLUSTER_SPACE_UNSPECIFIED: maps.REDUCED,
    projection_pb2.CLUSTER_SPACE_PROJECTED: maps.PROJECTED,
    projection_pb2.CLUSTER_SPACE_EMBEDDING: maps.EMBEDDING,
    projection_pb2.CLUSTER_SPACE_REDUCED: maps.REDUCED,
}


def points_key(projection_id: str) -> str:
    return f"projections/{projection_id}/points.arrow"


def embedding_name(row: ProjectionRow) -> str:
    return f"projects/{row.project_id}/datasets/{row.dataset_id}/embeddings/{row.embedding_id}"


def dataset_name(row: ProjectionRow) -> str:
    return f"projects/{row.project_id}/datasets/{row.dataset_id}"


def projection_name(row: ProjectionRow) -> str:
    return f"{embedding_name(row)}/projections/{row.id}"


def map_params(
    spec: projection_pb2.Projection, rows: int, settings: ProjectionSettings | None = None
) -> maps.MapParams:
    """The request's parameters with defaults filled in, or INVALID_ARGUMENT saying what
    to change. `rows` is the embedding's row count; `settings` gives the scale of the fit."""
    scale = settings or ProjectionSettings()
    method = _METHOD_NAMES.get(spec.method)
    if method is None:
        raise InvalidArgument(f"unknown projection method {spec.method}; use UMAP, PCA or TSNE")
    dimensions = spec.dimensions or 2
    if dimensions not in (2, 3):
        raise InvalidArgument(f"dimensions is {spec.dimensions}; a map has 2 or 3 dimensions")
    if rows < MIN_ROWS:
        raise FailedPrecondition(f"the embedding has {rows} rows; a map needs at least {MIN_ROWS}")
    n_neighbors = spec.umap.n_neighbors
    if n_neighbors < 0 or n_neighbors == 1:
        raise InvalidArgument(f"n_neighbors is {n_neighbors}; use 2 or more")
    if method == maps.UMAP and n_neighbors and n_neighbors >= rows:
        raise InvalidArgument(
            f"n_neighbors is {n_neighbors} but the embedding has {rows} rows; use at most {rows - 1}"
        )
    # proto3 has no presence for scalars: 0 means "the default"
    if not 0.0 <= spec.umap.min_dist <= 1.0:
        raise InvalidArgument(f"min_dist is {spec.umap.min_dist:g}; use a value from 0 to 1")
    min_dist = spec.umap.min_dist or 0.1
    metric = spec.umap.metric or "cosine"
    if metric not in maps.UMAP_METRICS:
        raise InvalidArgument(f"metric '{metric}' is not supported; use one of: {', '.join(maps.UMAP_METRICS)}")
    if spec.HasField("tsne") and spec.tsne.perplexity <= 0:
        raise InvalidArgument(f"perplexity is {spec.tsne.perplexity:g}; use a value above 0 (typically 5 to 50)")
    perplexity = spec.tsne.perplexity or 30.0
    algorithm = _ALGORITHM_NAMES.get(spec.clustering.algorithm)
    if spec.clustering.algorithm == projection_pb2.CLUSTER_ALGORITHM_UNSPECIFIED and spec.clustering.k:
        algorithm = maps.KMEANS  # a k asks for k-means
    if algorithm is None:
        raise InvalidArgument(f"unknown clustering algorithm {spec.clustering.algorithm}; use KMEANS, HDBSCAN or NONE")
    space = _SPACE_NAMES.get(spec.clustering.space)
    if space is None:
        raise InvalidArgument(f"unknown cluster space {spec.clustering.space}; use REDUCED, PROJECTED or EMBEDDING")
    k = spec.clustering.k
    if k < 0 or (k and algorithm == maps.KMEANS and k < 2):
        raise InvalidArgument(f"k is {k}; use 2 or more")
    if algorithm == maps.KMEANS and k > rows:
        raise InvalidArgument(f"k is {k} but the embedding has {rows} rows; use at most {rows}")
    min_cluster_size = spec.clustering.min_cluster_size or clusters.default_min_cluster_size(rows)
    if spec.clustering.min_cluster_size and algorithm == maps.HDBSCAN:
        if min_cluster_size < 2:
            raise InvalidArgument(f"min_cluster_size is {min_cluster_size}; use 2 or more")
        if min_cluster_size > rows:
            raise InvalidArgument(
                f"min_cluster_size is {min_cluster_size} but the embedding has {rows} rows; use at most {rows}"
            )
    return maps.MapParams(
        method=method,
        dimensions=dimensions,
        seed=spec.seed or None,
        n_neighbors=n_neighbors or 15,
        min_dist=float(min_dist),
        metric=metric,
        perplexity=float(perplexity),
        algorithm=algorithm,
        k=k or (maps.default_k(rows) if algorithm == maps.KMEANS else 0),
        min_cluster_size=min_cluster_size,
        space=space,
        fit_rows=scale.fit_rows,
        pca_dims=scale.pca_dims,
        pca_min_rows=scale.pca_min_rows,
    )


def follow_up_spec(rows: int) -> projection_pb2.Projection:
    """The projection made for an embedding created with project_when_done: UMAP 2-D with
    the default clusters (HDBSCAN in the reduced space, sized to the data)."""
    return projection_pb2.Projection(
        method=projection_pb2.PROJECTION_METHOD_UMAP,
        dimensions=2,
        clustering=projection_pb2.ClusterParams(
            algorithm=projection_pb2.CLUSTER_ALGORITHM_HDBSCAN,
            min_cluster_size=min(clusters.default_min_cluster_size(rows), max(2, rows)),
            space=projection_pb2.CLUSTER_SPACE_REDUCED,
        ),
    )


def params_json(params: maps.MapParams) -> dict[str, Any]:
    return {
        "n_neighbors": params.n_neighbors,
        "min_dist": params.min_dist,
        "metric": params.metric,
        "perplexity": params.perplexity,
        "algorithm": params.algorithm,
        "k": params.k,
        "min_cluster_size": params.min_cluster_size,
        "space": params.space,
        "fit_rows": params.fit_rows,
        "pca_dims": params.pca_dims,
        "pca_min_rows": params.pca_min_rows,
    }


def params_of(row: ProjectionRow) -> maps.MapParams:
    p = row.params or {}
    return maps.MapParams(
        method=row.method,
        dimensions=row.dimensions,
        seed=row.seed or None,
        n_neighbors=int(p.get("n_neighbors", 15)),
        min_dist=float(p.get("min_dist", 0.1)),
        metric=str(p.get("metric", "cosine")),
        perplexity=float(p.get("perplexity", 30.0)),
        algorithm=str(p.get("algorithm", maps.KMEANS)),
        k=int(p.get("k", 0)),
        min_cluster_size=int(p.get("min_cluster_size", 10)),
        space=str(p.get("space", maps.PROJECTED)),
        fit_rows=int(p.get("fit_rows", maps.DEFAULT_FIT_ROWS)),
        pca_dims=int(p.get("pca_dims", maps.DEFAULT_PCA_DIMS)),
        pca_min_rows=int(p.get("pca_min_rows", maps.DEFAULT_PCA_MIN_ROWS)),
    )


def encode_page_token(offset: int) -> str:
    return paging.encode({"o": offset})


def decode_page_token(token: str) -> int:
    value = paging.decode(token)
    if value is None:
        return 0
    if not isinstance(value, dict) or not isinstance(value.get("o"), int) or value["o"] < 0:
        raise InvalidArgument("page_token is not a token this service gave out; start again without it")
    return int(value["o"])
