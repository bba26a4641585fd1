"""gRPC servicers of ingest: check the request, call the domain, build the messages."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pyarrow as pa
from google.protobuf import empty_pb2

from embedviz.v1 import ingest_pb2, ingest_pb2_grpc
from services.common import paging
from services.common.auth import current_identity
from services.common.errors import InvalidArgument
from services.common.rpc_types import Context
from services.ingest import messages, rows
from services.ingest.datasets import Datasets, check_options
from services.ingest.projects import Projects

MAX_ROWS_PAGE = 1000
MAX_BATCH_GET = 1000
DEFAULT_STREAM_BATCH = 8192
MAX_STREAM_BATCH = 65536
MAX_READ_COLUMNS = 32
DEFAULT_COLUMN_BATCH = 65536
MAX_COLUMN_BATCH = 262144


def _role(value: int) -> str:
    if value not in messages.ROLE_NAME:
        raise InvalidArgument("member.role must be ROLE_VIEWER, ROLE_EDITOR or ROLE_OWNER")
    return messages.ROLE_NAME[value]


def _format(value: int) -> str:
    if value == ingest_pb2.DATA_FORMAT_UNSPECIFIED:
        return ""
    if value not in messages.FORMAT_NAME:
        raise InvalidArgument(f"format {value} is not a DataFormat this service knows")
    return messages.FORMAT_NAME[value]


def _columns(values: list[str]) -> list[str]:
    if len(set(values)) != len(values):
        raise InvalidArgument("columns names a column twice")
    return list(values)


def _ipc(batch: pa.RecordBatch) -> bytes:
    """One self-contained Arrow IPC stream holding `batch`."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, batch.schema) as writer:
        writer.write_batch(batch)
    return sink.getvalue().to_pybytes()


class IngestServicer(ingest_pb2_grpc.IngestServiceServicer):
    def __init__(self, projects: Projects, datasets: Datasets) -> None:
        self._projects = projects
        self._datasets = datasets

    # --- projects --------------------------------------------------------------------

    async def CreateProject(self, request: ingest_pb2.CreateProjectRequest, context: Context) -> ingest_pb2.Project:
        project, role = await self._projects.create(
            current_identity(), request.project.display_name, request.project.description
        )
        return messages.project(project, role)

    async def GetProject(self, request: ingest_pb2.GetProjectRequest, context: Context) -> ingest_pb2.Project:
        project, role = await self._projects.get(current_identity(), request.name)
        return messages.project(project, role)

    async def ListProjects(
        self, request: ingest_pb2.ListProjectsRequest, context: Context
    ) -> ingest_pb2.ListProjectsResponse:
        page = await self._projects.list(current_identity(), request.page_size, request.page_token)
        return ingest_pb2.ListProjectsResponse(
            projects=[messages.project(p, r) for p, r in page.projects], next_page_token=page.next_page_token
        )

    async def UpdateProject(self, request: ingest_pb2.UpdateProjectRequest, context: Context) -> ingest_pb2.Project:
        paths = set(request.update_mask.paths) or {"display_name", "description"}
        unknown = paths - {"display_name", "description"}
        if unknown:
            raise InvalidArgument(
                f"update_mask names {', '.join(sorted(unknown))}; only display_name and description can change"
            )
        project, role = await self._projects.update(
            current_identity(),
            request.project.name,
            request.project.display_name if "display_name" in paths else None,
            request.project.description if "description" in paths else None,
        )
        return messages.project(project, role)

    async def DeleteProject(self, request: ingest_pb2.DeleteProjectRequest, context: Context) -> empty_pb2.Empty:
        blobs = await self._projects.delete(current_identity(), request.name)
        await self._datasets.remove_project_data(request.name, blobs)
        return empty_pb2.Empty()

    # --- members ---------------------------------------------------------------------

    async def ListMembers(
        self, request: ingest_pb2.ListMembersRequest, context: Context
    ) -> ingest_pb2.ListMembersResponse:
        page = await self._projects.list_members(
            current_identity(), request.parent, request.page_size, request.page_token
        )
        return ingest_pb2.ListMembersResponse(
            members=[messages.member(m) for m in page.members], next_page_token=page.next_page_token
        )

    async def CreateMember(self, request: ingest_pb2.CreateMemberRequest, context: Context) -> ingest_pb2.Member:
        member = await self._projects.create_member(
            current_identity(), request.parent, request.member.email, _role(request.member.role)
        )
        return messages.member(member)

    async def UpdateMember(self, request: ingest_pb2.UpdateMemberRequest, context: Context) -> ingest_pb2.Member:
        member = await self._projects.update_member(current_identity(), request.member.name, _role(request.member.role))
        return messages.member(member)

    async def DeleteMember(self, request: ingest_pb2.DeleteMemberRequest, context: Context) -> empty_pb2.Empty:
        await self._projects.delete_member(current_identity(), request.name)
        return empty_pb2.Empty()

    # --- uploads ---------------------------------------------------------------------

    async def CreateUpload(self, request: ingest_pb2.CreateUploadRequest, context: Context) -> ingest_pb2.Upload:
        upload = await self._datasets.create_upload(
            current_identity(),
            request.parent,
            request.upload.filename,
            request.upload.size_bytes,
            request.upload.sha256,
        )
        return messages.upload(upload)

    async def GetUpload(self, request: ingest_pb2.GetUploadRequest, context: Context) -> ingest_pb2.Upload:
        return messages.upload(await self._datasets.get_upload(current_identity(), request.name))

    async def AppendUploadChunk(
        self, request: ingest_pb2.AppendUploadChunkRequest, context: Context
    ) -> ingest_pb2.AppendUploadChunkResponse:
        received = await self._datasets.append_chunk(
            current_identity(), request.name, request.offset, request.data, request.crc32c
        )
        return ingest_pb2.AppendUploadChunkResponse(received_bytes=received)

    async def FinishUpload(self, request: ingest_pb2.FinishUploadRequest, context: Context) -> ingest_pb2.Dataset:
        options = check_options(
            _format(request.format), request.delimiter, request.quote_char, request.encoding, request.compression
        )
        dataset = await self._datasets.finish_upload(current_identity(), request.name, request.display_name, options)
        return messages.dataset(dataset)

    async def AppendRows(self, request: ingest_pb2.AppendRowsRequest, context: Context) -> ingest_pb2.Dataset:
        if not request.upload:
            raise InvalidArgument("upload is required: the finished upload whose rows to append")
        options = check_options(
            _format(request.format), request.delimiter, request.quote_char, request.encoding, request.compression
        )
        dataset = await self._datasets.append_rows(current_identity(), request.dataset, request.upload, options)
        return messages.dataset(dataset)

    # --- datasets --------------------------------------------------------------------

    async def GetDataset(self, request: ingest_pb2.GetDatasetRequest, context: Context) -> ingest_pb2.Dataset:
        return messages.dataset(await self._datasets.get(current_identity(), request.name))

    async def ListDatasets(
        self, request: ingest_pb2.ListDatasetsRequest, context: Context
    ) -> ingest_pb2.ListDatasetsResponse:
        page = await self._datasets.list(current_identity(), request.parent, request.page_size, request.page_token)
        return ingest_pb2.ListDatasetsResponse(
            datasets=[messages.dataset(d) for d in page.datasets], next_page_token=page.next_page_token
        )

    async def DeleteDataset(self, request: ingest_pb2.DeleteDatasetRequest, context: Context) -> empty_pb2.Empty:
        await self._datasets.delete(current_identity(), request.name)
        return empty_pb2.Empty()

    async def WatchDataset(
        self, request: ingest_pb2.WatchDatasetRequest, context: Context
    ) -> AsyncIterator[ingest_pb2.WatchDatasetResponse]:
        async for dataset in self._datasets.watch(current_identity(), request.name):
            yield ingest_pb2.WatchDatasetResponse(dataset=dataset)

    async def ListRows(self, request: ingest_pb2.ListRowsRequest, context: Context) -> ingest_pb2.ListRowsResponse:
        size = paging.page_size(request.page_size, 100, MAX_ROWS_PAGE)
        columns = _columns(list(request.columns))
        # The token holds the offset; paging signs it for this query (parent, filter, order, columns).
        token = paging.decode(request.page_token)
        offset = 0
        if token is not None:
            if not isinstance(token, dict) or not isinstance(token.get("o"), int) or token["o"] < 0:
                raise InvalidArgument(paging.INVALID_TOKEN)
            offset = token["o"]
        parquet = await self._datasets.open_rows(current_identity(), request.parent)
        page = await asyncio.to_thread(
            rows.list_rows, parquet, columns, offset, size, request.order_by, request.filter
        )
        following = offset + len(page.rows)
        return ingest_pb2.ListRowsResponse(
            columns=page.columns,
            rows=[messages.row(i, v) for i, v in page.rows],
            next_page_token=paging.encode({"o": following}) if following < page.total_size else "",
            total_size=page.total_size,
        )

    async def BatchGetRows(
        self, request: ingest_pb2.BatchGetRowsRequest, context: Context
    ) -> ingest_pb2.BatchGetRowsResponse:
        if not request.indexes:
            raise InvalidArgument("indexes is required: the row indexes to get")
        if len(request.indexes) > MAX_BATCH_GET:
            raise InvalidArgument(f"indexes holds {len(request.indexes)} rows; at most {MAX_BATCH_GET} a call")
        columns = _columns(list(request.columns))
        parquet = await self._datasets.open_rows(current_identity(), request.parent)

        def fetch() -> tuple[list[str], list[tuple[int, list[object]]]]:
            names = rows.check_columns(parquet, columns)
            return names, rows.get_rows(parquet, list(request.indexes), names)

        names, found = await asyncio.to_thread(fetch)
        return ingest_pb2.BatchGetRowsResponse(columns=names, rows=[messages.row(i, v) for i, v in found])

    async def ReadColumns(
        self, request: ingest_pb2.ReadColumnsRequest, context: Context
    ) -> AsyncIterator[ingest_pb2.ReadColumnsResponse]:
        if not request.columns:
            raise InvalidArgument("columns is required: the columns to read (1 to 32)")
        if len(request.columns) > MAX_READ_COLUMNS:
            raise InvalidArgument(
                f"columns names {len(request.columns)} columns; at most {MAX_READ_COLUMNS} a call"
            )
        if request.batch_rows < 0 or request.batch_rows > MAX_COLUMN_BATCH:
            raise InvalidArgument(
                f"batch_rows must be between 1 and {MAX_COLUMN_BATCH} (0: {DEFAULT_COLUMN_BATCH}); "
                f"got {request.batch_rows}"
            )
        columns = _columns(list(request.columns))
        parquet = await self._datasets.open_rows(current_identity(), request.dataset)
        total = parquet.metadata.num_rows
        batches = rows.read_columns(parquet, columns, request.batch_rows or DEFAULT_COLUMN_BATCH)

        def next_message() -> ingest_pb2.ReadColumnsResponse | None:
            item = next(batches, None)  # the first call checks the columns (INVALID_ARGUMENT)
            if item is None:
                return None
            start, batch = item
            return ingest_pb2.ReadColumnsResponse(
                start_row=start, row_count=batch.num_rows, total_rows=total, arrow_ipc=_ipc(batch)
            )

        try:
            while (message := await asyncio.to_thread(next_message)) is not None:
                yield message
        finally:
            batches.close()


class IngestInternalServicer(ingest_pb2_grpc.IngestInternalServiceServicer):
    def __init__(self, projects: Projects, datasets: Datasets) -> None:
        self._projects = projects
        self._datasets = datasets

    async def GetProjectRole(
        self, request: ingest_pb2.GetProjectRoleRequest, context: Context
    ) -> ingest_pb2.GetProjectRoleResponse:
        identity = current_identity()
        role = await self._projects.role(identity, request.project)
        return ingest_pb2.GetProjectRoleResponse(role=messages.ROLE_BY_NAME[role], user=identity.user)

    async def StreamRows(
        self, request: ingest_pb2.StreamRowsRequest, context: Context
    ) -> AsyncIterator[ingest_pb2.StreamRowsResponse]:
        if request.start_row < 0:
            raise InvalidArgument(f"start_row must not be negative (got {request.start_row})")
        if request.row_count < 0:
            raise InvalidArgument(f"row_count must not be negative (got {request.row_count})")
        if request.batch_rows < 0 or request.batch_rows > MAX_STREAM_BATCH:
            raise InvalidArgument(f"batch_rows must be between 1 and {MAX_STREAM_BATCH} (0: {DEFAULT_STREAM_BATCH})")
        columns = _columns(list(request.columns))
        parquet = await self._datasets.open_rows(current_identity(), request.dataset)
        batches = rows.stream_batches(
            parquet, columns, request.start_row, request.row_count, request.batch_rows or DEFAULT_STREAM_BATCH
        )

        def next_message() -> ingest_pb2.StreamRowsResponse | None:
            item = next(batches, None)
            if item is None:
                return None
            start, batch = item
            sink = pa.BufferOutputStream()
            with pa.ipc.new_stream(sink, batch.schema) as writer:
                writer.write_batch(batch)
            return ingest_pb2.StreamRowsResponse(
                start_row=start, row_count=batch.num_rows, arrow_ipc=sink.getvalue().to_pybytes()
            )

        try:
            while (message := await asyncio.to_thread(next_message)) is not None:
                yield message
        finally:
            batches.close()
