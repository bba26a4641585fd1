"""Ingest at depth, over the real service (real PostgreSQL, NATS, gRPC): every bad input
of issue 3, limits, encodings and compression, progress on the Watch stream, filters,
appends, upload expiry and the deletion cascade."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import io
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from embedviz.v1 import ingest_pb2, ingest_pb2_grpc, job_pb2
from services.common.consumer import event_consumer, json_object
from services.common.events import EventBus
from services.ingest.checksum import crc32c
from services.stack import Stack
from tests.ingest.test_ingest_service import REPO_ROOT, Tokens, User, _free_port, new_project, wait_done

MAX_UPLOAD = 2 * 1024 * 1024
LIMITS = {
    "EMBEDVIZ_MAX_UPLOAD_BYTES": str(MAX_UPLOAD),
    "EMBEDVIZ_MAX_USER_BYTES": str(64 * 1024 * 1024),
    "EMBEDVIZ_MAX_ROWS": "100000",
    "EMBEDVIZ_MAX_COLUMNS": "1000",
    "EMBEDVIZ_MAX_CELL_BYTES": str(1024 * 1024),
    "EMBEDVIZ_PROGRESS_INTERVAL_MS": "30",
}


@contextlib.contextmanager
def running_ingest(
    infra: Stack, tokens: Tokens, blob_root: Path, extra: dict[str, str], log_name: str
) -> Iterator[str]:
    addr = f"127.0.0.1:{_free_port()}"
    env = {
        **os.environ, **infra.env, **extra,
        "EMBEDVIZ_INGEST_ADDR": addr, "EMBEDVIZ_JWKS_URL": tokens.url,
        "EMBEDVIZ_BLOB_ROOT": str(blob_root), "PYTHONUNBUFFERED": "1",
    }
    log_path = infra.logs_dir / log_name
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "services.ingest"], cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        channel = grpc.insecure_channel(addr)
        health = health_pb2_grpc.HealthStub(channel)
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, f"ingest exited: {log_path.read_text()[-3000:]}"
            try:
                if (
                    health.Check(health_pb2.HealthCheckRequest(), timeout=1).status
                    == health_pb2.HealthCheckResponse.SERVING
                ):
                    break
            except grpc.RpcError:
                pass
            assert time.monotonic() < deadline, f"ingest not serving: {log_path.read_text()[-3000:]}"
            time.sleep(0.3)
        channel.close()
        yield addr
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="module")
def service(infra: Stack) -> Iterator[dict[str, object]]:
    tokens = Tokens()
    blob_root = Path(tempfile.mkdtemp(prefix="embedviz-ingest-depth-"))
    try:
        with running_ingest(infra, tokens, blob_root, LIMITS, "ingest-depth-test.log") as addr:
            yield {"addr": addr, "tokens": tokens, "blobs": blob_root, "infra": infra}
    finally:
        tokens.close()


@pytest.fixture
async def stub(service: dict[str, object]) -> AsyncIterator[ingest_pb2_grpc.IngestServiceStub]:
    async with grpc.aio.insecure_channel(str(service["addr"])) as channel:
        yield ingest_pb2_grpc.IngestServiceStub(channel)


@pytest.fixture
def alice(service: dict[str, object]) -> User:
    return User(service["tokens"])  # type: ignore[arg-type]


async def send(stub: ingest_pb2_grpc.IngestServiceStub, user: User, project: str, data: bytes, filename: str) -> str:
    upload = await stub.CreateUpload(
        ingest_pb2.CreateUploadRequest(
            parent=project, upload=ingest_pb2.Upload(filename=filename, size_bytes=len(data))
        ),
        metadata=user.metadata,
    )
    for at in range(0, len(data), 1 << 20):
        chunk = data[at : at + (1 << 20)]
        await stub.AppendUploadChunk(
            ingest_pb2.AppendUploadChunkRequest(name=upload.name, offset=at, data=chunk, crc32c=crc32c(chunk)),
            metadata=user.metadata,
        )
    return upload.name


async def import_file(
    stub: ingest_pb2_grpc.IngestServiceStub, user: User, project: str, data: bytes, filename: str, **finish: object
) -> tuple[ingest_pb2.Dataset, list[ingest_pb2.Dataset]]:
    upload = await send(stub, user, project, data, filename)
    dataset = await stub.FinishUpload(ingest_pb2.FinishUploadRequest(name=upload, **finish), metadata=user.metadata)  # type: ignore[arg-type]
    events = await wait_done(stub, user, dataset.name)
    return events[-1], events


def blob_files(service: dict[str, object], dataset: str) -> list[str]:
    folder = Path(str(service["blobs"])) / "datasets" / dataset.rsplit("/", 1)[1]
    return sorted(p.name for p in folder.glob("*")) if folder.exists() else []


def parquet_bytes(rows: int = 1000) -> bytes:
    sink = io.BytesIO()
    pq.write_table(pa.table({"id": list(range(rows)), "text": [f"row {i}" for i in range(rows)]}), sink)
    return sink.getvalue()


BAD_INPUTS = [
    ("empty file", b"", "empty.csv", "the file is empty"),
    ("header only", b"id,text\n", "header.csv", "the file has a header but no rows"),
    (
        "binary garbage named .csv",
        bytes(range(256)) * 8,
        "garbage.csv",
        "the file looks binary, not CSV text (a zero byte at line 1, column 1)",
    ),
    (
        "ragged rows",
        b"id,text\n1,a\n2,b,extra\n3,c\n",
        "ragged.csv",
        "line 3 has 3 values where the header has 2 columns",
    ),
    (
        "unclosed quote",
        b'id,text\n1,"never closed\n2,x\n',
        "quote.csv",
        'a quoted value is never closed: the " on line 2',
    ),
    (
        "invalid UTF-8",
        "id,text\n1,naïve\n2,caf\xe9\n".encode().replace(b"\xc3\xa9", b"\xe9"),
        "bad.csv",
        "line 3, column 6: byte 0xe9 is not valid UTF-8",
    ),
    (
        "a 100 MB single cell",
        gzip.compress(b"id,text\n1," + b"x" * (100 << 20) + b"\n", 1),
        "huge.csv.gz",
        "row 1 is too long to read",
    ),
    (
        "50,000 columns",
        b",".join(b"c%d" % i for i in range(50_000)) + b"\n" + b"1," * 49_999 + b"1\n",
        "wide.csv",
        "at most 1000 (EMBEDVIZ_MAX_COLUMNS)",
    ),
    (
        "truncated Parquet",
        parquet_bytes()[:-200],
        "cut.parquet",
        "could not read the file as Parquet: it is cut short or damaged",
    ),
    (
        "JSON Lines broken in the middle",
        b'{"a": 1}\n{"a": 2}\n{"a": 3, oops}\n{"a": 4}\n',
        "broken.jsonl",
        "line 3, column 10 is not valid JSON",
    ),
    ("too many rows", gzip.compress(b"n\n" + b"1\n" * 100_001), "rows.csv.gz", "more than 100000 rows"),
]


@pytest.mark.parametrize(("what", "data", "filename", "expected"), BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
async def test_bad_input_fails_clearly_and_leaves_nothing(
    stub, alice: User, service, what: str, data: bytes, filename: str, expected: str
) -> None:  # type: ignore[no-untyped-def]
    project = await new_project(stub, alice)
    if not data:  # an empty file cannot even be declared
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await send(stub, alice, project.name, data, filename)
        assert (
            err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            and "size_bytes must be positive" in err.value.details()
        )
        return
    final, _ = await import_file(stub, alice, project.name, data, filename)
    assert final.job.state == job_pb2.JOB_STATE_FAILED
    assert expected in final.job.error, final.job.error
    assert final.row_count == 0 and blob_files(service, final.name) == []
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.ListRows(ingest_pb2.ListRowsRequest(parent=final.name), metadata=alice.metadata)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION and expected in err.value.details()


async def test_bad_chunks_and_early_finish_are_refused(stub, alice: User) -> None:  # type: ignore[no-untyped-def]
    project = await new_project(stub, alice)
    data = b"id,text\n1,hello\n2,world\n"
    upload = await stub.CreateUpload(
        ingest_pb2.CreateUploadRequest(
            parent=project.name, upload=ingest_pb2.Upload(filename="a.csv", size_bytes=len(data))
        ),
        metadata=alice.metadata,
    )
    with pytest.raises(grpc.aio.AioRpcError) as err:  # wrong checksum
        await stub.AppendUploadChunk(
            ingest_pb2.AppendUploadChunkRequest(name=upload.name, offset=0, data=data, crc32c=crc32c(data) ^ 1),
            metadata=alice.metadata,
        )
    assert (
        err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        and "damaged on the way; send it again" in err.value.details()
    )
    with pytest.raises(grpc.aio.AioRpcError) as err:  # past the declared size
        await stub.AppendUploadChunk(
            ingest_pb2.AppendUploadChunkRequest(name=upload.name, offset=10, data=data), metadata=alice.metadata
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (
        f"the chunk ends at byte {10 + len(data)}, past the declared size of {len(data)} bytes" in err.value.details()
    )
    await stub.AppendUploadChunk(
        ingest_pb2.AppendUploadChunkRequest(name=upload.name, offset=0, data=data[:7]), metadata=alice.metadata
    )
    with pytest.raises(grpc.aio.AioRpcError) as err:  # bytes missing
        await stub.FinishUpload(ingest_pb2.FinishUploadRequest(name=upload.name), metadata=alice.metadata)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert f"upload has 7 of {len(data)} bytes; send the rest from offset 7" in err.value.details()
    got = await stub.GetUpload(ingest_pb2.GetUploadRequest(name=upload.name), metadata=alice.metadata)
    assert got.received_bytes == 7  # where a resumed upload goes on from
    for bad in [dict(encoding="ebcdic"), dict(quote_char="|"), dict(compression="bz2"), dict(delimiter="ab")]:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.FinishUpload(ingest_pb2.FinishUploadRequest(name=upload.name, **bad), metadata=alice.metadata)  # type: ignore[arg-type]
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, bad


async def test_upload_limits_per_upload_and_per_user(stub, alice: User) -> None:  # type: ignore[no-untyped-def]
    project = await new_project(stub, alice)

    async def create(size: int) -> ingest_pb2.Upload:
        return await stub.CreateUpload(
            ingest_pb2.CreateUploadRequest(
                parent=project.name, upload=ingest_pb2.Upload(filename="a.csv", size_bytes=size)
            ),
            metadata=alice.metadata,
        )

    with pytest.raises(grpc.aio.AioRpcError) as err:
        await create(MAX_UPLOAD + 1)
    assert (
        err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        and f"takes files up to {MAX_UPLOAD} bytes" in err.value.details()
    )
    for _ in range(32):  # 32 x 2 MiB declared = the user's 64 MiB
        await create(MAX_UPLOAD)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await create(1)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "each user may keep 67108864 bytes (EMBEDVIZ_MAX_USER_BYTES)" in err.value.details()


async def test_encodings_compression_and_column_names(stub, alice: User, service) -> None:  # type: ignore[no-untyped-def]
    project = await new_project(stub, alice)
    latin = "name,,name,city\nJosé,1,x,Málaga\nZoë,2,y,Köln\n".encode("latin-1")
    final, _ = await import_file(stub, alice, project.name, latin, "people.csv")
    assert final.job.state == job_pb2.JOB_STATE_SUCCEEDED, final.job.error
    assert (final.encoding, final.delimiter, final.quote_char, final.compression) == ("latin-1", ",", '"', "none")
    assert [(c.name, c.source_name) for c in final.columns] == [
        ("name", ""),
        ("column_2", ""),
        ("name_2", "name"),
        ("city", ""),
    ]
    rows = await stub.ListRows(ingest_pb2.ListRowsRequest(parent=final.name, columns=["city"]), metadata=alice.metadata)
    assert [r.values[0].string_value for r in rows.rows] == ["Málaga", "Köln"]
    assert blob_files(service, final.name) == ["rows.parquet"]

    utf16 = "name\tcity\nZoë\tKöln\n".encode("utf-16")
    final, _ = await import_file(stub, alice, project.name, gzip.compress(utf16), "people.tsv.gz")
    assert final.job.state == job_pb2.JOB_STATE_SUCCEEDED, final.job.error
    assert (final.encoding, final.delimiter, final.compression) == ("utf-16", "\t", "gzip")

    zstd = pa.compress(b'{"t": "alpha"}\n{"t": "beta"}\n', codec="zstd", asbytes=True)
    final, _ = await import_file(stub, alice, project.name, zstd, "dump.jsonl.zst")
    assert final.job.state == job_pb2.JOB_STATE_SUCCEEDED and final.format == ingest_pb2.DATA_FORMAT_JSONL
    assert final.compression == "zstd" and final.row_count == 2

    # an override: the same bytes read as UTF-8 on request are refused with the place
    final, _ = await import_file(stub, alice, project.name, latin, "people.csv", encoding="utf-8")
    assert final.job.state == job_pb2.JOB_STATE_FAILED and "line 2, column 4: byte 0xe9" in final.job.error


async def test_watch_shows_bytes_and_rows_parsed(stub, alice: User) -> None:  # type: ignore[no-untyped-def]
    project = await new_project(stub, alice)
    # 30 MB of CSV in about 1 MB of gzip: long enough to parse that progress shows
    body = b"".join(
        b'%d,"%s",%d.5\n' % (i, b"review number %d, with a comma; " % (i % 1000) * 10, i % 97) for i in range(90_000)
    )
    data = gzip.compress(b"id,text,score\n" + body, 6)
    assert len(data) < MAX_UPLOAD
    final, events = await import_file(stub, alice, project.name, data, "many.csv.gz")
    assert final.job.state == job_pb2.JOB_STATE_SUCCEEDED, final.job.error
    assert final.row_count == 90_000 and final.parsed_bytes == len(data) and final.job.done == 90_000
    running = [e for e in events if e.job.state == job_pb2.JOB_STATE_RUNNING and e.job.done > 0]
    assert running, "no progress event while parsing"
    assert all(0 < e.parsed_bytes <= len(data) for e in running)
    assert [e.job.done for e in running] == sorted(e.job.done for e in running)


async def test_rows_filter_sort_and_page(stub, alice: User) -> None:  # type: ignore[no-untyped-def]
    project = await new_project(stub, alice)
    data = b"id,review,stars\n" + b"".join(
        b'%d,"%s",%d\n' % (i, (b"great phone" if i % 3 == 0 else b"refund please"), i % 5 + 1) for i in range(50)
    )
    final, _ = await import_file(stub, alice, project.name, data, "reviews.csv")

    async def rows(**request: object) -> ingest_pb2.ListRowsResponse:
        return await stub.ListRows(ingest_pb2.ListRowsRequest(parent=final.name, **request), metadata=alice.metadata)  # type: ignore[arg-type]

    page = await rows(
        filter='stars >= 4 AND review contains "GREAT"', order_by="id desc", columns=["id", "stars"], page_size=3
    )
    expected = [i for i in range(49, -1, -1) if i % 3 == 0 and i % 5 + 1 >= 4]
    assert page.total_size == len(expected) and [int(r.values[0].number_value) for r in page.rows] == expected[:3]
    following = await rows(
        filter='stars >= 4 AND review contains "GREAT"', order_by="id desc", columns=["id", "stars"], page_size=3,
        page_token=page.next_page_token,
    )
    assert [int(r.values[0].number_value) for r in following.rows] == expected[3:6]
    assert (await rows(filter="refund")).total_size == 50 - len(range(0, 50, 3))
    for bad, message in [
        ("stars >", "no value after '>'"),
        ("colour = red", "column 'colour' not found"),
        ("stars = many", "'many' is not a number"),
    ]:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await rows(filter=bad)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and message in err.value.details()


async def test_append_rows_continues_the_index(stub, alice: User, service) -> None:  # type: ignore[no-untyped-def]
    project = await new_project(stub, alice)
    final, _ = await import_file(stub, alice, project.name, b"id,text\n0,alpha\n1,beta\n", "part1.csv")
    upload = await send(stub, alice, project.name, gzip.compress(b"text,id\ngamma,2\ndelta,3\n"), "part2.csv.gz")
    appending = await stub.AppendRows(
        ingest_pb2.AppendRowsRequest(dataset=final.name, upload=upload), metadata=alice.metadata
    )
    assert appending.job.state == job_pb2.JOB_STATE_PENDING
    events = await wait_done(stub, alice, final.name)
    done = events[-1]
    assert done.job.state == job_pb2.JOB_STATE_SUCCEEDED and done.append_error == "" and done.row_count == 4
    rows = await stub.ListRows(ingest_pb2.ListRowsRequest(parent=final.name), metadata=alice.metadata)
    assert [(r.index, r.values[1].string_value) for r in rows.rows] == [
        (0, "alpha"),
        (1, "beta"),
        (2, "gamma"),
        (3, "delta"),
    ]
    assert blob_files(service, final.name) == ["rows.parquet"]

    other = await send(stub, alice, project.name, b"id,body\n4,x\n", "part3.csv")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.AppendRows(ingest_pb2.AppendRowsRequest(dataset=final.name, upload=other), metadata=alice.metadata)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert (
        "columns differ from the dataset's (missing 'text'; not in the dataset 'body'); the dataset has: id, text"
        in err.value.details()
    )

    # a bad row near the top is refused at once
    bad = await send(stub, alice, project.name, b"id,text\n4,x\n5,y,z\n", "part4.csv")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.AppendRows(ingest_pb2.AppendRowsRequest(dataset=final.name, upload=bad), metadata=alice.metadata)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "part4.csv: line 3 has 3 values where the header has 2 columns" in err.value.details()

    # a bad row deep in the file: the append fails in the job, the dataset keeps its four rows
    good = b"".join(
        b"%d,a longer line of text to fill the first blocks quickly %d\n" % (i, i) for i in range(4, 60_000)
    )
    deep = await send(stub, alice, project.name, gzip.compress(b"id,text\n" + good + b"60000,y,z\n"), "part5.csv.gz")
    await stub.AppendRows(ingest_pb2.AppendRowsRequest(dataset=final.name, upload=deep), metadata=alice.metadata)
    after = (await wait_done(stub, alice, final.name))[-1]
    assert after.job.state == job_pb2.JOB_STATE_SUCCEEDED and after.row_count == 4
    assert "appending part5.csv.gz failed: line 59998 has 3 values" in after.append_error
    assert blob_files(service, final.name) == ["rows.parquet"]
    assert (await stub.ListRows(ingest_pb2.ListRowsRequest(parent=final.name), metadata=alice.metadata)).total_size == 4


async def test_delete_removes_blobs_and_announces_it(stub, alice: User, service) -> None:  # type: ignore[no-untyped-def]
    """What the embedding and projection services listen to, through the same durable
    consumer they use (services.common.consumer.event_consumer)."""
    infra: Stack = service["infra"]  # type: ignore[assignment]
    bus = await EventBus.connect(infra.env["EMBEDVIZ_NATS_URL"], "ingest-depth-test")
    seen: asyncio.Queue[dict[str, str]] = asyncio.Queue()
    stop = asyncio.Event()

    async def on_deleted(payload: dict[str, str]) -> None:
        await seen.put(payload)

    mine: set[str] = set()
    consumer = asyncio.create_task(
        event_consumer(bus, "events.dataset-deleted.>", f"test-{uuid.uuid4().hex[:8]}", on_deleted,
                       decode=json_object).run(stop)
    )

    async def next_event() -> dict[str, str]:
        async with asyncio.timeout(15):
            while True:  # other tests' deletions come too
                event = await seen.get()
                if event["dataset"] in mine:
                    return event

    try:
        project = await new_project(stub, alice)
        one, _ = await import_file(stub, alice, project.name, b"id,text\n1,a\n", "one.csv")
        two, _ = await import_file(stub, alice, project.name, b"id,text\n2,b\n", "two.csv")
        mine.update({one.name, two.name})
        await stub.DeleteDataset(ingest_pb2.DeleteDatasetRequest(name=one.name), metadata=alice.metadata)
        event = await next_event()
        assert event["dataset"] == one.name and event["dataset_id"] == one.name.rsplit("/", 1)[1]
        assert blob_files(service, one.name) == []
        await stub.DeleteProject(ingest_pb2.DeleteProjectRequest(name=project.name), metadata=alice.metadata)
        event = await next_event()
        assert event["dataset"] == two.name and blob_files(service, two.name) == []
    finally:
        stop.set()
        await consumer
        await bus.close()


async def test_unfinished_uploads_expire_and_their_bytes_go(service, alice: User) -> None:  # type: ignore[no-untyped-def]
    """A second ingest process with a one-second upload lifetime (no workers of its own)."""
    extra = {**LIMITS, "EMBEDVIZ_UPLOAD_TTL_SECONDS": "1", "EMBEDVIZ_UPLOAD_SWEEP_MS": "200", "EMBEDVIZ_WORKERS": "0"}
    blobs = Path(str(service["blobs"]))
    with running_ingest(service["infra"], service["tokens"], blobs, extra, "ingest-expiry-test.log") as addr:  # type: ignore[arg-type]
        async with grpc.aio.insecure_channel(addr) as channel:
            stub = ingest_pb2_grpc.IngestServiceStub(channel)
            project = await new_project(stub, alice)
            upload = await stub.CreateUpload(
                ingest_pb2.CreateUploadRequest(
                    parent=project.name, upload=ingest_pb2.Upload(filename="a.csv", size_bytes=100)
                ),
                metadata=alice.metadata,
            )
            await stub.AppendUploadChunk(
                ingest_pb2.AppendUploadChunkRequest(name=upload.name, offset=0, data=b"x" * 50), metadata=alice.metadata
            )
            part = blobs / "uploads" / f"{upload.name.rsplit('/', 1)[1]}.part"
            assert part.exists()
            deadline = time.monotonic() + 15
            while part.exists():
                assert time.monotonic() < deadline, "the expired upload's bytes are still there"
                await asyncio.sleep(0.2)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.GetUpload(ingest_pb2.GetUploadRequest(name=upload.name), metadata=alice.metadata)
            assert err.value.code() == grpc.StatusCode.NOT_FOUND


# --- generated malformed files against the running service ------------------------------------

_SEEDS = [
    b"id,text\n1,hello there\n2,general kenobi\n",
    b'{"id": 1, "text": "x"}\n{"id": 2, "text": "y"}\n',
    b'id;text\n1;"quoted; value"\n2;plain\n',
    parquet_bytes(20),
]


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    seed=st.sampled_from(_SEEDS),
    cut=st.integers(min_value=0, max_value=60),
    junk=st.binary(min_size=1, max_size=30),
    at=st.integers(min_value=0, max_value=80),
    filename=st.sampled_from(["d.csv", "d.jsonl", "d.parquet", "d.arrow", "d.csv.gz", "d.txt"]),
    compress=st.sampled_from(["none", "gzip", "zstd"]),
)
def test_generated_bad_files_never_break_the_service_or_leave_blobs(
    service: dict[str, object], alice: User, seed: bytes, cut: int, junk: bytes, at: int, filename: str, compress: str
) -> None:
    data = seed[: max(0, len(seed) - cut)]
    at = min(at, len(data))
    data = data[:at] + junk + data[at:]
    if compress == "gzip":
        data = gzip.compress(data)
    elif compress == "zstd":
        data = pa.compress(data, codec="zstd", asbytes=True)
    blobs = Path(str(service["blobs"]))
    with grpc.insecure_channel(str(service["addr"])) as channel:
        stub = ingest_pb2_grpc.IngestServiceStub(channel)
        project = stub.CreateProject(
            ingest_pb2.CreateProjectRequest(project=ingest_pb2.Project(display_name="fuzz")), metadata=alice.metadata
        )
        upload = stub.CreateUpload(
            ingest_pb2.CreateUploadRequest(
                parent=project.name, upload=ingest_pb2.Upload(filename=filename, size_bytes=len(data))
            ),
            metadata=alice.metadata,
        )
        stub.AppendUploadChunk(
            ingest_pb2.AppendUploadChunkRequest(name=upload.name, offset=0, data=data, crc32c=crc32c(data)),
            metadata=alice.metadata,
        )
        dataset = stub.FinishUpload(ingest_pb2.FinishUploadRequest(name=upload.name), metadata=alice.metadata)
        final = None
        for event in stub.WatchDataset(
            ingest_pb2.WatchDatasetRequest(name=dataset.name), metadata=alice.metadata, timeout=60
        ):
            final = event.dataset
        assert final is not None
        part = blobs / "uploads" / f"{upload.name.rsplit('/', 1)[1]}.part"
        assert not part.exists(), "the upload's bytes stayed behind"
        if final.job.state == job_pb2.JOB_STATE_FAILED:
            assert final.job.error and "unexpectedly" not in final.job.error, final.job.error
            assert blob_files(service, final.name) == []
        else:
            assert final.job.state == job_pb2.JOB_STATE_SUCCEEDED and final.row_count > 0
            assert blob_files(service, final.name) == ["rows.parquet"]
            page = stub.ListRows(ingest_pb2.ListRowsRequest(parent=final.name, page_size=1000), metadata=alice.metadata)
            assert page.total_size == final.row_count
        stub.DeleteProject(ingest_pb2.DeleteProjectRequest(name=project.name), metadata=alice.metadata)
        assert blob_files(service, final.name) == []
        with pytest.raises(grpc.RpcError) as err:
            stub.GetDataset(ingest_pb2.GetDatasetRequest(name=final.name), metadata=alice.metadata)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND  # type: ignore[attr-defined]
