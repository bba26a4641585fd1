"""Projection records as API messages."""

from __future__ import annotations

from embedviz.v1 import projection_pb2
from services.common.jobs import job_to_proto, timestamp
from services.projection import maps
from services.projection.models import ClusterRow, ProjectionRow
from services.projection.rules import projection_name


def to_proto(row: ProjectionRow) -> projection_pb2.Projection:
    p = row.params or {}
    message = projection_pb2.Projection(
        name=projection_name(row),
        method=projection_pb2.ProjectionMethod.Value(f"PROJECTION_METHOD_{row.method}"),
        dimensions=row.dimensions,
        seed=row.seed or 0,
        umap=projection_pb2.UmapParams(
            n_neighbors=p.get("n_neighbors", 15), min_dist=p.get("min_dist", 0.1), metric=p.get("metric", "cosine")
        ),
        tsne=projection_pb2.TsneParams(perplexity=p.get("perplexity", 30.0)),
        clustering=projection_pb2.ClusterParams(
            algorithm=projection_pb2.ClusterAlgorithm.Value(f"CLUSTER_ALGORITHM_{p.get('algorithm', maps.KMEANS)}"),
            k=p.get("k", 0),
            min_cluster_size=p.get("min_cluster_size", 10),
            space=projection_pb2.ClusterSpace.Value(f"CLUSTER_SPACE_{p.get('space', maps.PROJECTED)}"),
        ),
        point_count=row.point_count or 0,
        cluster_count=row.cluster_count or 0,
        job=job_to_proto(row),
        label_column=str(p.get("label_column", "")),
    )
    q = row.quality or {}
    if q:
        message.fitted_rows = int(q.get("fitted_rows", 0))
        message.pre_reduction_dimensions = int(q.get("pre_reduction_dimensions", 0))
        message.cluster_levels = int(q.get("cluster_levels", 1))
        message.quality.CopyFrom(
            projection_pb2.ProjectionQuality(
                trustworthiness=float(q.get("trustworthiness", 0.0)),
                sample_rows=int(q.get("sample_rows", 0)),
                neighbors=int(q.get("neighbours", 0)),
                label_agreement=float(q.get("label_agreement", -1.0)),
                shuffled_label_agreement=float(q.get("shuffled_label_agreement", -1.0)),
                labelled_rows=int(q.get("labelled_rows", 0)),
                cluster_agreement=float(q.get("cluster_agreement", -1.0)),
            )
        )
    created = timestamp(row.create_time)
    if created is not None:
        message.create_time.CopyFrom(created)
    return message


def cluster_to_proto(row: ClusterRow) -> projection_pb2.Cluster:
    return projection_pb2.Cluster(
        id=row.cluster_id,
        label=row.label,
        size=row.size,
        centroid=list(row.centroid),
        terms=list(row.terms),
        level=row.level or 0,
        parent_id=row.parent_id if row.parent_id is not None else -1,
    )

