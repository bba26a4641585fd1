"""A map whose worker is SIGKILLed after a finished stage resumes there: the new worker
process loads the saved coordinates instead of fitting again, and the map ends with every
point exactly once. Real PostgreSQL, NATS and `python -m services.projection worker`."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
from typing import Any

import asyncpg
import numpy as np
import pytest

from embedviz.v1 import job_pb2, projection_pb2
from services.stack import Stack
from tests.projection.standins import auth
from tests.projection.test_worker_crash import EMBEDDING, OWNER, ROWS, Setup, setup, start_worker, workers

__all__ = ["setup", "workers"]  # the fixtures, shared with the worker crash test

FIT_STAGES = {"pre-reduction", "optimisation", "placing", "pca"}


async def finished_stages(db: asyncpg.Connection, projection_id: str) -> tuple[str, dict[str, Any]]:
    row = await db.fetchrow("select state, stages from projection.projections where id = $1", projection_id)
    assert row is not None
    stored = row["stages"]
    return str(row["state"]), (json.loads(stored) if isinstance(stored, str) else stored) or {}


@pytest.mark.slow
async def test_a_map_killed_after_its_fit_resumes_without_fitting_again(
    infra: Stack, setup: Setup, workers: list[subprocess.Popen[bytes]]
) -> None:
    first = start_worker(setup, workers)
    created = await setup.stub.CreateProjection(
        projection_pb2.CreateProjectionRequest(
            parent=EMBEDDING,
            projection=projection_pb2.Projection(
                method=projection_pb2.PROJECTION_METHOD_TSNE,
                seed=5,
                clustering=projection_pb2.ClusterParams(algorithm=projection_pb2.CLUSTER_ALGORITHM_HDBSCAN),
            ),
        ),
        metadata=auth(OWNER),
    )
    projection_id = created.name.rsplit("/", 1)[1]
    db = await asyncpg.connect(infra.pg_dsn)
    try:
        async with asyncio.timeout(300):  # until the fit is saved, then no goodbye
            while True:
                state, stages = await finished_stages(db, projection_id)
                assert state in ("PENDING", "RUNNING"), f"the map ended ({state}) before it could be killed"
                if "points" in stages:
                    first.send_signal(signal.SIGKILL)
                    first.wait(timeout=10)
                    break
                await asyncio.sleep(0.02)
        killed_with = set(stages)

        second = start_worker(setup, workers)
        updates = []
        async for update in setup.stub.WatchProjection(
            projection_pb2.WatchProjectionRequest(name=created.name), metadata=auth(OWNER), timeout=400
        ):
            updates.append(update.projection)
        last = updates[-1]
        assert last.job.state == job_pb2.JOB_STATE_SUCCEEDED, last
        # the new worker's run begins at "loading vectors" (what comes before is the killed one's)
        stages_seen = [u.job.stage for u in updates]
        assert "loading vectors" in stages_seen, stages_seen
        resumed_stages = set(stages_seen[len(stages_seen) - stages_seen[::-1].index("loading vectors") - 1:])
        assert not resumed_stages & FIT_STAGES, stages_seen
        log = (setup.logs / f"worker-{len(workers) - 1}.log").read_text(errors="replace")
        assert f"resuming projection {projection_id}: " in log, log[-3000:]
        assert second.poll() is None
        _, left = await finished_stages(db, projection_id)
        assert left == {}  # the record of stages goes with the job
        assert "points" in killed_with

        assert last.point_count == ROWS
        indexes = []
        async for chunk in setup.stub.StreamPoints(
            projection_pb2.StreamPointsRequest(name=created.name), metadata=auth(OWNER)
        ):
            indexes.extend(np.frombuffer(chunk.row_indexes, dtype=np.uint32).tolist()
                           if isinstance(chunk.row_indexes, bytes) else list(chunk.row_indexes))
        assert sorted(indexes) == list(range(ROWS))  # every point exactly once
    finally:
        await db.close()
