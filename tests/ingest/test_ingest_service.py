"""The ingest service over a real socket, with real PostgreSQL and NATS (the `infra`
fixture) and tokens signed by a test key the service fetches as JWKS over HTTP."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import grpc
import jwt
import pyarrow as pa
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from grpc_health.v1 import health_pb2, health_pb2_grpc

from embedviz.v1 import ingest_pb2, ingest_pb2_grpc, job_pb2
from services.ingest.checksum import crc32c
from services.stack import Stack

REPO_ROOT = Path(__file__).resolve().parents[2]
KID = "ingest-test-key"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Tokens:
    """A signing key of our own, published as JWKS over HTTP, minting user tokens."""

    def __init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(self.key.public_key()))
        body = json.dumps({"keys": [{**jwk, "kid": KID, "alg": "ES256", "use": "sig"}]}).encode()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/.well-known/jwks.json"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def mint(self, user_id: str, email: str) -> str:
        now = int(time.time())
        claims = {
            "iss": "embedviz-auth", "aud": "embedviz", "sub": user_id, "email": email,
            "iat": now, "nbf": now, "exp": now + 900, "jti": uuid.uuid4().hex, "sid": uuid.uuid4().hex,
        }
        return jwt.encode(claims, self.key, algorithm="ES256", headers={"kid": KID})

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class User:
    def __init__(self, tokens: Tokens) -> None:
        self.id = str(uuid.uuid4())
        self.metadata = (("authorization", f"Bearer {tokens.mint(self.id, f'{self.id[:8]}@example.org')}"),)


@pytest.fixture(scope="module")
def ingest(infra: Stack) -> Iterator[dict[str, object]]:
    tokens = Tokens()
    blob_root = Path(tempfile.mkdtemp(prefix="embedviz-ingest-blobs-"))
    addr = f"127.0.0.1:{_free_port()}"
    env = {
        **os.environ, **infra.env,
        "EMBEDVIZ_INGEST_ADDR": addr, "EMBEDVIZ_JWKS_URL": tokens.url,
        "EMBEDVIZ_BLOB_ROOT": str(blob_root), "EMBEDVIZ_MAX_UPLOAD_BYTES": str(1024 * 1024),
        "PYTHONUNBUFFERED": "1",
    }
    log_path = infra.logs_dir / "ingest-test.log"
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
        yield {"addr": addr, "tokens": tokens, "blobs": blob_root}
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
        tokens.close()


@pytest.fixture
async def stubs(
    ingest: dict[str, object],
) -> AsyncIterator[tuple[ingest_pb2_grpc.IngestServiceStub, ingest_pb2_grpc.IngestInternalServiceStub]]:
    async with grpc.aio.insecure_channel(str(ingest["addr"])) as channel:
        yield ingest_pb2_grpc.IngestServiceStub(channel), ingest_pb2_grpc.IngestInternalServiceStub(channel)


@pytest.fixture
def alice(ingest: dict[str, object]) -> User:
    return User(ingest["tokens"])  # type: ignore[arg-type]


@pytest.fixture
def bob(ingest: dict[str, object]) -> User:
    return User(ingest["tokens"])  # type: ignore[arg-type]


REVIEWS = [
    ("The battery lasts two full days, which surprised me.", "pos"),
    ("Screen cracked within a week, support was unhelpful.", "neg"),
    ("Decent value for the price, though the case feels cheap.", "mixed"),
    ("Fast shipping, works exactly as described, five stars.", "pos"),
    ("Stopped charging after a month; the refund took ages.", "neg"),
]


def reviews_csv(copies: int = 1) -> bytes:
    lines = ["id,review,label"]
    n = 0
    for _ in range(copies):
        for text, label in REVIEWS:
            lines.append(f'{n},"{text} #{n}",{label}')
            n += 1
    return ("\n".join(lines) + "\n").encode()


async def upload_file(
    stub: ingest_pb2_grpc.IngestServiceStub, user: User, project: str, data: bytes, filename: str = "reviews.csv"
) -> ingest_pb2.Dataset:
    upload = await stub.CreateUpload(
        ingest_pb2.CreateUploadRequest(
            parent=project, upload=ingest_pb2.Upload(filename=filename, size_bytes=len(data))
        ),
        metadata=user.metadata,
    )
    await stub.AppendUploadChunk(
        ingest_pb2.AppendUploadChunkRequest(name=upload.name, offset=0, data=data, crc32c=crc32c(data)),
        metadata=user.metadata,
    )
    return await stub.FinishUpload(ingest_pb2.FinishUploadRequest(name=upload.name), metadata=user.metadata)


async def wait_done(stub: ingest_pb2_grpc.IngestServiceStub, user: User, name: str) -> list[ingest_pb2.Dataset]:
    seen = []
    async with asyncio.timeout(60):
        async for event in stub.WatchDataset(ingest_pb2.WatchDatasetRequest(name=name), metadata=user.metadata):
            seen.append(event.dataset)
    return seen


async def new_project(
    stub: ingest_pb2_grpc.IngestServiceStub, user: User, title: str = "Reviews"
) -> ingest_pb2.Project:
    return await stub.CreateProject(
        ingest_pb2.CreateProjectRequest(project=ingest_pb2.Project(display_name=title)), metadata=user.metadata
    )


async def test_upload_in_chunks_import_and_read_rows(stubs, alice: User, bob: User, ingest) -> None:  # type: ignore[no-untyped-def]
    stub, internal = stubs
    project = await new_project(stub, alice)
    assert project.role == ingest_pb2.ROLE_OWNER
    data = reviews_csv(copies=6)  # 30 rows
    upload = await stub.CreateUpload(
        ingest_pb2.CreateUploadRequest(
            parent=project.name, upload=ingest_pb2.Upload(filename="reviews.csv", size_bytes=len(data))
        ),
        metadata=alice.metadata,
    )
    cut1, cut2 = 500, 1200
    chunks = [(cut2, data[cut2:]), (0, data[:cut1]), (0, data[:cut1]), (cut1, data[cut1:cut2])]
    received = []
    for offset, chunk in chunks:  # out of order, one repeated
        reply = await stub.AppendUploadChunk(
            ingest_pb2.AppendUploadChunkRequest(name=upload.name, offset=offset, data=chunk, crc32c=crc32c(chunk)),
            metadata=alice.metadata,
        )
        received.append(reply.received_bytes)
        if offset == cut2:  # nothing from 0 yet: finishing now tells what is missing
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.FinishUpload(ingest_pb2.FinishUploadRequest(name=upload.name), metadata=alice.metadata)
            assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert f"upload has 0 of {len(data)} bytes; send the rest from offset 0" in err.value.details()
    assert received == [0, cut1, cut1, len(data)]

    dataset = await stub.FinishUpload(
        ingest_pb2.FinishUploadRequest(name=upload.name, display_name="Phone reviews"), metadata=alice.metadata
    )
    assert dataset.display_name == "Phone reviews" and dataset.source_filename == "reviews.csv"
    events = await wait_done(stub, alice, dataset.name)
    final = events[-1]
    assert final.job.state == job_pb2.JOB_STATE_SUCCEEDED, final.job.error
    assert final.row_count == 30 and final.format == ingest_pb2.DATA_FORMAT_CSV
    assert [c.name for c in final.columns] == ["id", "review", "label"]
    assert [c.name for c in final.columns if c.suggested] == ["review"]
    blobs = Path(ingest["blobs"])
    assert not (blobs / "uploads" / f"{upload.name.rsplit('/', 1)[1]}.part").exists()

    # pages
    first = await stub.ListRows(ingest_pb2.ListRowsRequest(parent=dataset.name, page_size=12), metadata=alice.metadata)
    assert first.columns == ["id", "review", "label"] and first.total_size == 30
    assert [r.index for r in first.rows] == list(range(12))
    assert first.rows[1].values[0].number_value == 1.0
    assert first.rows[1].values[1].string_value.startswith("Screen cracked")
    second = await stub.ListRows(
        ingest_pb2.ListRowsRequest(parent=dataset.name, page_size=12, page_token=first.next_page_token),
        metadata=alice.metadata,
    )
    third = await stub.ListRows(
        ingest_pb2.ListRowsRequest(parent=dataset.name, page_size=12, page_token=second.next_page_token),
        metadata=alice.metadata,
    )
    assert [r.index for r in second.rows] == list(range(12, 24))
    assert [r.index for r in third.rows] == list(range(24, 30)) and third.next_page_token == ""

    # sort and filter
    by_id = await stub.ListRows(
        ingest_pb2.ListRowsRequest(parent=dataset.name, columns=["id"], order_by="id desc", page_size=3),
        metadata=alice.metadata,
    )
    assert [r.values[0].number_value for r in by_id.rows] == [29.0, 28.0, 27.0]
    negative = await stub.ListRows(
        ingest_pb2.ListRowsRequest(parent=dataset.name, columns=["label"], filter="REFUND"), metadata=alice.metadata
    )
    assert negative.total_size == 6 and {r.values[0].string_value for r in negative.rows} == {"neg"}

    # batch get, in the order asked
    got = await stub.BatchGetRows(
        ingest_pb2.BatchGetRowsRequest(parent=dataset.name, indexes=[7, 2, 7], columns=["label", "id"]),
        metadata=alice.metadata,
    )
    assert got.columns == ["label", "id"]
    assert [(r.index, r.values[1].number_value) for r in got.rows] == [(7, 7.0), (2, 2.0), (7, 7.0)]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.BatchGetRows(
            ingest_pb2.BatchGetRowsRequest(parent=dataset.name, indexes=[30]), metadata=alice.metadata
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "out of range" in err.value.details()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.ListRows(ingest_pb2.ListRowsRequest(parent=dataset.name, columns=["body"]), metadata=alice.metadata)
    assert err.value.details() == "column 'body' not found; the dataset has: id, review, label"

    # stream as Arrow IPC
    batches = []
    async for message in internal.StreamRows(
        ingest_pb2.StreamRowsRequest(dataset=dataset.name, columns=["review"], start_row=5, batch_rows=10),
        metadata=alice.metadata,
    ):
        table = pa.ipc.open_stream(message.arrow_ipc).read_all()
        assert table.num_rows == message.row_count
        batches.append((message.start_row, table))
    assert [s for s, _ in batches] == [5, 15, 25]
    streamed = pa.concat_tables([t for _, t in batches])
    assert streamed.column_names == ["__row", "review"]
    assert streamed.column("__row").to_pylist() == list(range(5, 30))

    # the role, for other services
    role = await internal.GetProjectRole(
        ingest_pb2.GetProjectRoleRequest(project=project.name), metadata=alice.metadata
    )
    assert role.role == ingest_pb2.ROLE_OWNER and role.user == f"users/{alice.id}"

    # another user sees nothing of it
    for call, request in [
        (stub.GetProject, ingest_pb2.GetProjectRequest(name=project.name)),
        (stub.GetDataset, ingest_pb2.GetDatasetRequest(name=dataset.name)),
        (stub.ListRows, ingest_pb2.ListRowsRequest(parent=dataset.name)),
        (stub.ListDatasets, ingest_pb2.ListDatasetsRequest(parent=project.name)),
        (stub.DeleteDataset, ingest_pb2.DeleteDatasetRequest(name=dataset.name)),
        (stub.GetUpload, ingest_pb2.GetUploadRequest(name=upload.name)),
        (internal.GetProjectRole, ingest_pb2.GetProjectRoleRequest(project=project.name)),
    ]:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call(request, metadata=bob.metadata)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND, call
    listed = await stub.ListProjects(ingest_pb2.ListProjectsRequest(), metadata=bob.metadata)
    assert project.name not in [p.name for p in listed.projects]

    # deleting the dataset removes its rows
    await stub.DeleteDataset(ingest_pb2.DeleteDatasetRequest(name=dataset.name), metadata=alice.metadata)
    assert not (blobs / "datasets" / dataset.name.rsplit("/", 1)[1]).exists()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.GetDataset(ingest_pb2.GetDatasetRequest(name=dataset.name), metadata=alice.metadata)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_bad_file_fails_the_dataset_and_leaves_no_rows(stubs, alice: User, ingest) -> None:  # type: ignore[no-untyped-def]
    stub, _ = stubs
    project = await new_project(stub, alice)
    dataset = await upload_file(stub, alice, project.name, b'a,b\n1,"never closed\n2,x\n')
    final = (await wait_done(stub, alice, dataset.name))[-1]
    assert final.job.state == job_pb2.JOB_STATE_FAILED
    assert "quoted value is never closed" in final.job.error
    assert not (Path(ingest["blobs"]) / "datasets" / dataset.name.rsplit("/", 1)[1]).exists()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.ListRows(ingest_pb2.ListRowsRequest(parent=dataset.name), metadata=alice.metadata)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_upload_requests_are_checked(stubs, alice: User) -> None:  # type: ignore[no-untyped-def]
    stub, _ = stubs
    project = await new_project(stub, alice)

    async def create(filename: str, size: int, sha: str = "") -> grpc.aio.AioRpcError:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.CreateUpload(
                ingest_pb2.CreateUploadRequest(
                    parent=project.name, upload=ingest_pb2.Upload(filename=filename, size_bytes=size, sha256=sha)
                ),
                metadata=alice.metadata,
            )
        return err.value

    assert (await create("", 10)).code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (await create("a.csv", 0)).code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "takes files up to 1048576 bytes" in (await create("a.csv", 2 * 1024 * 1024)).details()
    assert (await create("a.csv", 10, "xyz")).code() == grpc.StatusCode.INVALID_ARGUMENT

    upload = await stub.CreateUpload(
        ingest_pb2.CreateUploadRequest(
            parent=project.name, upload=ingest_pb2.Upload(filename="a.csv", size_bytes=10, sha256="0" * 64)
        ),
        metadata=alice.metadata,
    )
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.AppendUploadChunk(
            ingest_pb2.AppendUploadChunkRequest(name=upload.name, offset=5, data=b"123456"), metadata=alice.metadata
        )
    assert (
        err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        and "past the declared size of 10 bytes" in err.value.details()
    )
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.AppendUploadChunk(
            ingest_pb2.AppendUploadChunkRequest(name=upload.name, offset=0, data=b"a,b\n1,2\n33", crc32c=12345),
            metadata=alice.metadata,
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "crc32c" in err.value.details()
    await stub.AppendUploadChunk(
        ingest_pb2.AppendUploadChunkRequest(name=upload.name, offset=0, data=b"a,b\n1,2\n33"), metadata=alice.metadata
    )
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.FinishUpload(ingest_pb2.FinishUploadRequest(name=upload.name), metadata=alice.metadata)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "SHA-256" in err.value.details()

    # Adding members by email needs the auth service: tests/auth/test_members.py, on the whole stack.


async def test_projects_list_update_and_delete(stubs, alice: User) -> None:  # type: ignore[no-untyped-def]
    stub, _ = stubs
    made = [await new_project(stub, alice, f"P{i}") for i in range(5)]
    names, token = [], ""
    while True:
        page = await stub.ListProjects(
            ingest_pb2.ListProjectsRequest(page_size=2, page_token=token), metadata=alice.metadata
        )
        names += [p.name for p in page.projects]
        token = page.next_page_token
        if not token:
            break
    assert names == [p.name for p in reversed(made)]

    updated = await stub.UpdateProject(
        ingest_pb2.UpdateProjectRequest(
            project=ingest_pb2.Project(name=made[0].name, display_name="Renamed", description="d")
        ),
        metadata=alice.metadata,
    )
    assert updated.display_name == "Renamed" and updated.description == "d"
    members = await stub.ListMembers(ingest_pb2.ListMembersRequest(parent=made[0].name), metadata=alice.metadata)
    assert [(m.user, m.role) for m in members.members] == [(f"users/{alice.id}", ingest_pb2.ROLE_OWNER)]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.DeleteMember(ingest_pb2.DeleteMemberRequest(name=members.members[0].name), metadata=alice.metadata)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION

    dataset = await upload_file(stub, alice, made[0].name, reviews_csv())
    await wait_done(stub, alice, dataset.name)
    await stub.DeleteProject(ingest_pb2.DeleteProjectRequest(name=made[0].name), metadata=alice.metadata)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.GetDataset(ingest_pb2.GetDatasetRequest(name=dataset.name), metadata=alice.metadata)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
