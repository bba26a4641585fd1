"""A killed import resumes: the ingest process is SIGKILLed mid-import, a new one takes the
re-delivered job, reads past the rows its committed parts hold and writes only the rest, and
the dataset ends with every row exactly once. Real PostgreSQL, NATS and ingest processes."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import pyarrow.parquet as pq
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from embedviz.v1 import ingest_pb2, ingest_pb2_grpc
from services.stack import Stack
from tests.ingest.test_ingest_depth import send
from tests.ingest.test_ingest_service import REPO_ROOT, Tokens, User, _free_port, new_project

pytestmark = pytest.mark.slow

ROWS = 600_000
PART_ROWS = 20_000


def table_csv(rows: int) -> bytes:
    lines = ["id,text,score"]
    lines.extend(f"{i},row number {i} of the table,{i % 97}" for i in range(rows))
    return ("\n".join(lines) + "\n").encode()


class Ingest:
    """`python -m services.ingest` processes on one address, started and killed by the test."""

    def __init__(self, infra: Stack, tokens: Tokens, blob_root: Path) -> None:
        self.addr = f"127.0.0.1:{_free_port()}"
        self.env = {
            **os.environ, **infra.env,
            "EMBEDVIZ_INGEST_ADDR": self.addr, "EMBEDVIZ_JWKS_URL": tokens.url,
            "EMBEDVIZ_BLOB_ROOT": str(blob_root), "PYTHONUNBUFFERED": "1", "EMBEDVIZ_WORKERS": "1",
            "EMBEDVIZ_IMPORT_PART_ROWS": str(PART_ROWS), "EMBEDVIZ_PROGRESS_INTERVAL_MS": "50",
            "EMBEDVIZ_JOB_ACK_WAIT": "3", "EMBEDVIZ_MAX_UPLOAD_BYTES": str(256 << 20),
        }
        self.logs = infra.logs_dir
        self.processes: list[tuple[subprocess.Popen[bytes], Path]] = []

    def start(self, name: str) -> subprocess.Popen[bytes]:
        log_path = self.logs / f"{name}.log"
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "services.ingest"], cwd=REPO_ROOT, env=self.env, stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.processes.append((process, log_path))
        channel = grpc.insecure_channel(self.addr)
        health = health_pb2_grpc.HealthStub(channel)
        deadline = time.monotonic() + 120
        try:
            while True:
                assert process.poll() is None, f"ingest exited: {log_path.read_text()[-3000:]}"
                try:
                    status = health.Check(health_pb2.HealthCheckRequest(), timeout=1).status
                    if status == health_pb2.HealthCheckResponse.SERVING:
                        return process
                except grpc.RpcError:
                    pass
                assert time.monotonic() < deadline, f"ingest not serving: {log_path.read_text()[-3000:]}"
                time.sleep(0.3)
        finally:
            channel.close()

    def stop(self) -> None:
        for process, _ in self.processes:
            if process.poll() is None:
                process.terminate()
        for process, _ in self.processes:
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()


@pytest.fixture
def ingest(infra: Stack) -> Iterator[tuple[Ingest, Tokens, Path]]:
    tokens = Tokens()
    blob_root = Path(tempfile.mkdtemp(prefix="embedviz-import-resume-"))
    processes = Ingest(infra, tokens, blob_root)
    try:
        yield processes, tokens, blob_root
    finally:
        processes.stop()
        tokens.close()


async def checkpoint(db: asyncpg.Connection, dataset_id: str) -> tuple[str, dict[str, Any] | None]:
    import json

    row = await db.fetchrow("select state, import_checkpoint from ingest.datasets where id = $1", dataset_id)
    assert row is not None
    stored = row["import_checkpoint"]
    return str(row["state"]), (json.loads(stored) if isinstance(stored, str) else stored)


async def test_a_killed_import_resumes_after_its_committed_parts_and_writes_each_row_once(
    infra: Stack, ingest: tuple[Ingest, Tokens, Path]
) -> None:
    processes, tokens, blob_root = ingest
    first = processes.start("ingest-resume-first")
    alice = User(tokens)
    db = await asyncpg.connect(infra.pg_dsn)
    try:
        async with grpc.aio.insecure_channel(processes.addr) as channel:
            stub = ingest_pb2_grpc.IngestServiceStub(channel)
            project = await new_project(stub, alice)
            upload = await send(stub, alice, project.name, table_csv(ROWS), "table.csv")
            dataset = await stub.FinishUpload(ingest_pb2.FinishUploadRequest(name=upload), metadata=alice.metadata)
        dataset_id = dataset.name.rsplit("/", 1)[1]

        # kill it once a few parts are committed, well before the end
        killed_at: dict[str, Any] | None = None
        async with asyncio.timeout(120):
            while killed_at is None:
                state, saved = await checkpoint(db, dataset_id)
                assert state in ("PENDING", "RUNNING"), f"the import ended ({state}) before it could be killed"
                if saved and saved["parts"] >= 2:
                    first.send_signal(signal.SIGKILL)
                    first.wait(10)
                    killed_at = saved
                await asyncio.sleep(0.02)
        assert 0 < killed_at["rows"] < ROWS

        second = processes.start("ingest-resume-second")
        async with asyncio.timeout(180):
            while True:
                state, saved = await checkpoint(db, dataset_id)
                if state in ("SUCCEEDED", "FAILED"):
                    break
                await asyncio.sleep(0.2)
        log = processes.processes[-1][1].read_text(errors="replace")
        assert state == "SUCCEEDED", log[-3000:]
        assert second.poll() is None
        assert saved is None  # the checkpoint goes with the import

        # the resumed import read past the committed rows instead of writing them again
        resumed = [line for line in log.splitlines() if f"resuming the import of dataset {dataset_id}" in line]
        assert resumed, log[-3000:]
        resumed_after = int(resumed[0].split("after row ")[1].split()[0])
        assert resumed_after >= killed_at["rows"] > 0

        rows = pq.read_table(blob_root / "datasets" / dataset_id / "rows.parquet", columns=["__row", "id", "score"])
        assert rows.num_rows == ROWS
        assert rows.column("__row").to_pylist() == list(range(ROWS))
        assert rows.column("id").to_pylist() == list(range(ROWS))
        assert rows.column("score").to_pylist() == [i % 97 for i in range(ROWS)]
        assert not (blob_root / "datasets" / dataset_id / "import").exists() or not any(
            (blob_root / "datasets" / dataset_id / "import").iterdir()
        )

        async with grpc.aio.insecure_channel(processes.addr) as channel:
            stub = ingest_pb2_grpc.IngestServiceStub(channel)
            done = await stub.GetDataset(ingest_pb2.GetDatasetRequest(name=dataset.name), metadata=alice.metadata)
        assert done.row_count == ROWS
        assert [c.name for c in done.columns] == ["id", "text", "score"]
    finally:
        await db.close()
