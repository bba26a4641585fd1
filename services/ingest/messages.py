"""Table rows and domain values to protobuf messages (no gRPC here)."""

from __future__ import annotations

import base64
import datetime as dt
import json
import math
from typing import Any

from google.protobuf import struct_pb2

from embedviz.v1 import ingest_pb2
from services.common.jobs import job_to_proto, timestamp
from services.ingest import models

ROLE_BY_NAME = {"viewer": ingest_pb2.ROLE_VIEWER, "editor": ingest_pb2.ROLE_EDITOR, "owner": ingest_pb2.ROLE_OWNER}
ROLE_NAME: dict[int, str] = {v: k for k, v in ROLE_BY_NAME.items()}
FORMAT_BY_NAME = {
    "csv": ingest_pb2.DATA_FORMAT_CSV,
    "parquet": ingest_pb2.DATA_FORMAT_PARQUET,
    "jsonl": ingest_pb2.DATA_FORMAT_JSONL,
    "arrow": ingest_pb2.DATA_FORMAT_ARROW,
}
FORMAT_NAME: dict[int, str] = {v: k for k, v in FORMAT_BY_NAME.items()}


def project(row: models.Project, role: str) -> ingest_pb2.Project:
    message = ingest_pb2.Project(
        name=f"projects/{row.id}",
        display_name=row.display_name,
        description=row.description or "",
        role=ROLE_BY_NAME[role],
    )
    message.create_time.CopyFrom(timestamp(row.create_time))
    message.update_time.CopyFrom(timestamp(row.update_time))
    return message


def member(row: models.Member) -> ingest_pb2.Member:
    return ingest_pb2.Member(
        name=f"projects/{row.project_id}/members/{row.user_id}",
        email=row.email,
        role=ROLE_BY_NAME[row.role],
        user=f"users/{row.user_id}",
    )


def upload(row: models.Upload) -> ingest_pb2.Upload:
    message = ingest_pb2.Upload(
        name=f"projects/{row.project_id}/uploads/{row.id}",
        filename=row.filename,
        size_bytes=row.size_bytes,
        sha256=row.sha256,
        received_bytes=row.received_bytes,
    )
    message.create_time.CopyFrom(timestamp(row.create_time))
    message.expire_time.CopyFrom(timestamp(row.expire_time))
    return message


def dataset(row: models.Dataset) -> ingest_pb2.Dataset:
    message = ingest_pb2.Dataset(
        name=f"projects/{row.project_id}/datasets/{row.id}",
        display_name=row.display_name,
        source_filename=row.source_filename,
        format=FORMAT_BY_NAME.get(row.format, ingest_pb2.DATA_FORMAT_UNSPECIFIED),
        columns=[ingest_pb2.Column(**column) for column in row.columns or []],
        row_count=row.row_count or 0,
        size_bytes=row.size_bytes or 0,
        job=job_to_proto(row),
        parsed_bytes=row.parsed_bytes or 0,
        delimiter=row.delimiter or "",
        quote_char=row.quote_char or "",
        encoding=row.encoding or "",
        compression=row.compression or "",
        append_error=row.append_error or "",
    )
    message.create_time.CopyFrom(timestamp(row.create_time))
    return message


def value(v: Any) -> struct_pb2.Value:
    """A cell as a google.protobuf.Value: null, bool, number, string; anything else as
    text (dates ISO 8601, nested values JSON, bytes base64)."""
    if v is None:
        return struct_pb2.Value(null_value=struct_pb2.NULL_VALUE)
    if isinstance(v, bool):
        return struct_pb2.Value(bool_value=v)
    if isinstance(v, int | float):
        if isinstance(v, float) and not math.isfinite(v):
            return struct_pb2.Value(string_value=str(v))
        return struct_pb2.Value(number_value=float(v))
    if isinstance(v, str):
        return struct_pb2.Value(string_value=v)
    if isinstance(v, dt.datetime | dt.date | dt.time):
        return struct_pb2.Value(string_value=v.isoformat())
    if isinstance(v, bytes):
        return struct_pb2.Value(string_value=base64.b64encode(v).decode())
    if isinstance(v, dict | list):
        return struct_pb2.Value(string_value=json.dumps(v, default=str, ensure_ascii=False))
    return struct_pb2.Value(string_value=str(v))


def row(index: int, values: list[Any]) -> ingest_pb2.Row:
    return ingest_pb2.Row(index=index, values=[value(v) for v in values])
