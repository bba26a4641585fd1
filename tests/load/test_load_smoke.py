"""The load driver of `make load` on the session's stack (tests/conftest.py), small and
short, so that it cannot rot: two people, three tabs for a few seconds through the real
Envoy with real tokens, every step of a tab at least once, no call failing, and the probes
refused as they must be. The numbers themselves are docs/load.md's business, not a test's."""

from __future__ import annotations

import asyncio

from services.stack import Stack
from tests.load.report import Memory
from tests.load.run import Settings, load
from tests.load.users import Texts
from tests.support.texts import rows

EVERY_STEP = {
    "IngestService/ListProjects", "IngestService/ListDatasets", "EmbeddingService/ListEmbeddings",
    "ProjectionService/ListProjections", "IngestService/ListRows", "IngestService/BatchGetRows",
    "ProjectionService/GetProjection", "ProjectionService/ListClusters", "ProjectionService/StreamPoints",
    "ProjectionService/SearchPoints", "ProjectionService/FindNeighbors", "ProjectionService/WatchProjection",
    "AuthService/GetCurrentUser",
}


def test_load_driver_runs_every_step_through_the_edge_without_errors(stack: Stack) -> None:
    texts = Texts([(row["title"], row["topic"], row["text"]) for row in rows(200)])
    settings = Settings(users=3, seconds=5, accounts=2, rows=60, uploaders=0, think_s=0.05, watch_s=1,
                        edge=stack.edge_url)  # edge given: it deletes the projects it made at the end
    result = asyncio.run(load(stack.edge_url, Memory({}), settings, texts))

    summary = result["load"]
    assert summary["errors"] == 0, summary["error_samples"]  # type: ignore[index]
    rpcs = summary["rpcs"]  # type: ignore[index]
    assert EVERY_STEP <= set(rpcs), sorted(EVERY_STEP - set(rpcs))
    probes = {name: s for name, s in rpcs.items() if "[" in name}
    assert probes and all(s["expected_errors"] == s["calls"] for s in probes.values()), probes
    assert summary["expected_by_code"] == {"NOT_FOUND": summary["expected_errors"]}  # type: ignore[index]
    assert result["projects_deleted"] == 2  # the shared stack is left as it was
