"""ProjectionService over gRPC: check the request, call the domain, build messages."""

from __future__ import annotations

from collections.abc import AsyncIterator

from google.protobuf import empty_pb2

from embedviz.v1 import projection_pb2, projection_pb2_grpc
from services.common.auth import current_identity
from services.common.errors import FailedPrecondition, InvalidArgument
from services.common.rpc_types import Context
from services.projection import exports, maps
from services.projection.messages import cluster_to_proto, to_proto
from services.projection.reads import MapReads
from services.projection.records import ProjectionRecords

_EXPORT_FORMATS = {
    projection_pb2.EXPORT_FORMAT_UNSPECIFIED: exports.CSV,
    projection_pb2.EXPORT_FORMAT_CSV: exports.CSV,
    projection_pb2.EXPORT_FORMAT_JSONL: exports.JSONL,
    projection_pb2.EXPORT_FORMAT_PARQUET: exports.PARQUET,
}
_POINT_ENCODINGS = (projection_pb2.POINT_ENCODING_UNSPECIFIED, projection_pb2.POINT_ENCODING_PACKED)
DEFAULT_CHUNK_POINTS = 65536
MAX_CHUNK_POINTS = 1 << 20


def _required(value: str, field: str) -> str:
    if not value:
        raise InvalidArgument(f"{field} is required")
    return value


class ProjectionServicer(projection_pb2_grpc.ProjectionServiceServicer):
    def __init__(self, records: ProjectionRecords, reads: MapReads) -> None:
        self._records = records
        self._reads = reads

    async def CreateProjection(
        self, request: projection_pb2.CreateProjectionRequest, context: Context
    ) -> projection_pb2.Projection:
        row = await self._records.create(
            current_identity(), _required(request.parent, "parent"), request.projection
        )
        return to_proto(row)

    async def GetProjection(
        self, request: projection_pb2.GetProjectionRequest, context: Context
    ) -> projection_pb2.Projection:
        return to_proto(await self._records.get(current_identity(), _required(request.name, "name")))

    async def ListProjections(
        self, request: projection_pb2.ListProjectionsRequest, context: Context
    ) -> projection_pb2.ListProjectionsResponse:
        rows, token = await self._records.list(
            current_identity(), _required(request.parent, "parent"), request.page_size, request.page_token
        )
        return projection_pb2.ListProjectionsResponse(projections=[to_proto(r) for r in rows], next_page_token=token)

    async def DeleteProjection(
        self, request: projection_pb2.DeleteProjectionRequest, context: Context
    ) -> empty_pb2.Empty:
        await self._records.delete(current_identity(), _required(request.name, "name"))
        return empty_pb2.Empty()

    async def WatchProjection(
        self, request: projection_pb2.WatchProjectionRequest, context: Context
    ) -> AsyncIterator[projection_pb2.WatchProjectionResponse]:
        updates = self._records.watch(current_identity(), _required(request.name, "name"))
        try:
            async for projection in updates:
                yield projection_pb2.WatchProjectionResponse(projection=projection)
        finally:
            await updates.aclose()

    async def CancelProjection(
        self, request: projection_pb2.CancelProjectionRequest, context: Context
    ) -> projection_pb2.Projection:
        return to_proto(await self._records.cancel(current_identity(), _required(request.name, "name")))

    async def StreamPoints(
        self, request: projection_pb2.StreamPointsRequest, context: Context
    ) -> AsyncIterator[projection_pb2.StreamPointsResponse]:
        if request.chunk_points < 0:
            raise InvalidArgument(f"chunk_points is {request.chunk_points}; use 0 (the default) or more")
        if request.encoding not in _POINT_ENCODINGS:
            raise InvalidArgument(
                f"encoding {request.encoding} is not a PointEncoding; use POINT_ENCODING_UNSPECIFIED or "
                "POINT_ENCODING_PACKED"
            )
        size = min(request.chunk_points or DEFAULT_CHUNK_POINTS, MAX_CHUNK_POINTS)
        points = await self._reads.points(current_identity(), _required(request.name, "name"))
        total = len(points)
        for start, stop in maps.chunk_bounds(points, size):
            if request.encoding == projection_pb2.POINT_ENCODING_PACKED:
                try:
                    packed = maps.pack_records(points, start, stop)
                except ValueError as exc:
                    raise FailedPrecondition(f"{exc}; stream this map with POINT_ENCODING_UNSPECIFIED") from None
                yield projection_pb2.StreamPointsResponse(
                    count=stop - start, dimensions=points.dimensions, total_count=total, start=start, packed=packed
                )
                continue
            chunk = maps.pack(points, start, stop)
            yield projection_pb2.StreamPointsResponse(
                count=chunk.count,
                dimensions=chunk.dimensions,
                row_indexes=chunk.row_indexes,
                coordinates=chunk.coordinates,
                cluster_ids=chunk.cluster_ids,
                total_count=total,
                start=start,
            )

    async def ListClusters(
        self, request: projection_pb2.ListClustersRequest, context: Context
    ) -> projection_pb2.ListClustersResponse:
        clusters = await self._reads.clusters(
            current_identity(), _required(request.parent, "parent"), None if request.all_levels else request.level
        )
        return projection_pb2.ListClustersResponse(clusters=[cluster_to_proto(c) for c in clusters])

    async def SearchPoints(
        self, request: projection_pb2.SearchPointsRequest, context: Context
    ) -> projection_pb2.SearchPointsResponse:
        matches = await self._reads.search(
            current_identity(), _required(request.name, "name"), request.query, request.column, request.limit
        )
        return projection_pb2.SearchPointsResponse(
            matches=[projection_pb2.PointMatch(row_index=r, score=s) for r, s in matches]
        )

    async def FindNeighbors(
        self, request: projection_pb2.FindNeighborsRequest, context: Context
    ) -> projection_pb2.FindNeighborsResponse:
        neighbors = await self._reads.neighbors(
            current_identity(), _required(request.name, "name"), request.row_index, request.limit
        )
        return projection_pb2.FindNeighborsResponse(
            neighbors=[projection_pb2.PointMatch(row_index=r, score=s) for r, s in neighbors]
        )

    async def ExportProjection(
        self, request: projection_pb2.ExportProjectionRequest, context: Context
    ) -> AsyncIterator[projection_pb2.ExportProjectionResponse]:
        file_format = _EXPORT_FORMATS.get(request.format)
        if file_format is None:
            raise InvalidArgument(f"unknown export format {request.format}; use CSV, JSONL or PARQUET")
        chunks = self._reads.export(
            current_identity(),
            _required(request.name, "name"),
            file_format,
            list(request.columns),
            list(request.row_indexes),
        )
        content_type = exports.CONTENT_TYPES[file_format]
        try:
            async for data in chunks:
                yield projection_pb2.ExportProjectionResponse(data=data, content_type=content_type)
        finally:
            await chunks.aclose()
