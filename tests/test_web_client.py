"""The web client in headless Chromium against the whole system: sign up, create a
project, upload a CSV, embed, project, and the map canvas shows every row as a point;
then one scenario per page (gateway/web/e2e/features.mjs): session refresh and logout, an
expired session, members, API keys, the data table, resumable upload, the template preview
with cancel, and the map's colouring, search, neighbours, lasso and export; and the web
client's own grpc-web library against the real Envoy's refusals (test/edge-errors.test.ts)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from services.stack import Stack
from tests.support.texts import csv_bytes, rows

REPO = Path(__file__).resolve().parents[1]
WEB = REPO / "gateway" / "web"
ARTIFACTS = REPO / "test-artifacts"
ROWS = 200

pytestmark = pytest.mark.slow


def test_browser_walkthrough_draws_every_row(stack: Stack, tmp_path: Path) -> None:
    csv_file = tmp_path / "notes.csv"
    csv_file.write_bytes(csv_bytes(rows(ROWS)))
    ARTIFACTS.mkdir(exist_ok=True)
    screenshot = ARTIFACTS / "map.png"
    result = subprocess.run(
        [
            "node",
            "e2e/walkthrough.mjs",
            "--base-url",
            stack.edge_url,
            "--csv",
            str(csv_file),
            "--screenshot",
            str(screenshot),
        ],
        cwd=WEB,
        capture_output=True,
        text=True,
        timeout=480,
    )
    assert result.returncode == 0, f"walkthrough failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["points"] == ROWS
    assert summary["nonBackgroundPixels"] > 500
    assert screenshot.exists() and screenshot.stat().st_size > 10_000


def _scenario(stack: Stack, tmp_path: Path, name: str, timeout_s: int = 240) -> dict[str, Any]:
    """Runs one scenario of e2e/features.mjs; its screenshot lands in test-artifacts/."""
    csv_file = tmp_path / "notes.csv"
    csv_file.write_bytes(csv_bytes(rows(ROWS)))
    ARTIFACTS.mkdir(exist_ok=True)
    result = subprocess.run(
        [
            "node", "e2e/features.mjs", "--base-url", stack.edge_url, "--scenario", name,
            "--csv", str(csv_file), "--screenshot", str(ARTIFACTS / f"web-{name}.png"),
            "--timeout-s", str(timeout_s - 20),
        ],
        cwd=WEB,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
    lines = result.stdout.strip().splitlines()
    summary = json.loads(lines[-1]) if lines else {}
    assert result.returncode == 0, f"scenario {name} failed: {summary.get('error')}\n{result.stderr[-4000:]}"
    assert summary["ok"] is True
    return summary


def test_session_refreshes_without_login_and_logout_ends_it(stack: Stack, tmp_path: Path) -> None:
    summary = _scenario(stack, tmp_path, "session")
    assert summary["refreshed"] is True
    assert "log in again" in summary["notice"]


def test_expired_session_refreshes_silently_then_ends_on_the_login_screen(stack: Stack, tmp_path: Path) -> None:
    summary = _scenario(stack, tmp_path, "expiry")
    assert summary["refusedWith"] == "Jwt is expired"  # Envoy refused it, the page never said so
    assert summary["refreshed"] is True
    assert summary["bannersShown"] == []
    for way, notice in summary["notices"].items():
        assert "session has ended" in notice, way


def test_connect_web_reads_every_edge_refusal_with_its_code_and_message(stack: Stack, tmp_path: Path) -> None:
    """gateway/web/test/edge-errors.test.ts: createGrpcWebTransport, as the app builds it,
    against the stack's Envoy: no token, a garbage or expired token -> Unauthenticated;
    an internal service or unknown method -> Unimplemented."""
    report = tmp_path / "vitest.json"
    result = subprocess.run(
        ["node_modules/.bin/vitest", "run", "test/edge-errors.test.ts", "--reporter=json", f"--outputFile={report}"],
        cwd=WEB,
        env={**os.environ, "EMBEDVIZ_EDGE_URL": stack.edge_url},
        capture_output=True,
        text=True,
        timeout=180,
    )
    outcome = json.loads(report.read_text()) if report.exists() else {}
    tests = [t for f in outcome.get("testResults", []) for t in f["assertionResults"]]
    failed = [f"{t['title']}: {' '.join(t['failureMessages'])[:600]}" for t in tests if t["status"] != "passed"]
    assert result.returncode == 0 and not failed, "\n".join(failed) or result.stdout[-4000:] + result.stderr[-4000:]
    assert len(tests) >= 6 and outcome["numPendingTests"] == 0, "the checks were skipped"


def test_members_page_adds_changes_and_removes_a_member(stack: Stack, tmp_path: Path) -> None:
    summary = _scenario(stack, tmp_path, "members")
    assert "owner" in summary["lastOwnerError"]


def test_api_keys_page_shows_the_secret_once_and_lists_by_prefix(stack: Stack, tmp_path: Path) -> None:
    summary = _scenario(stack, tmp_path, "apikeys")
    assert len(summary["prefix"]) >= 4
    assert summary["lastUsed"] != "never"


def test_data_table_pages_sorts_and_searches(stack: Stack, tmp_path: Path) -> None:
    summary = _scenario(stack, tmp_path, "table")
    assert summary["searchMatches"] >= 1
    assert "volcano" in summary["firstMatch"].lower()


def test_upload_resumes_after_dropped_chunks(stack: Stack, tmp_path: Path) -> None:
    summary = _scenario(stack, tmp_path, "resume")
    assert summary["dropped"] == ["before the server", "after the server", "offline"]
    assert summary["retries"] >= 3


def test_template_preview_model_hint_and_cancel(stack: Stack, tmp_path: Path) -> None:
    summary = _scenario(stack, tmp_path, "template")
    assert summary["preview"].endswith("{id}")
    assert summary["embeddingState"] == "cancelled"
    assert "dimensions" in summary["modelHint"]


def test_map_colour_search_neighbours_lasso_and_export(stack: Stack, tmp_path: Path) -> None:
    summary = _scenario(stack, tmp_path, "map")
    assert "volcano" in summary["search"][0].lower()
    assert all(text for _, text in summary["neighbors"])
    assert summary["lassoSelected"] > 1
    header = summary["exportHeader"].replace('"', "").split(",")
    assert header[:5] == ["row", "x", "y", "cluster", "label"]
    if "exportColumnsRefused" not in summary:  # the server can add the dataset's columns
        assert "text" in header


def test_workspace_map_labels_legend_lasso_filter_link_and_reload(stack: Stack, tmp_path: Path) -> None:
    """Issue 10's workspace: screenshots web-workspace-{labels,zoomed,filtered,reopened,viewer,3d,reloaded}.png."""
    summary = _scenario(stack, tmp_path, "workspace", timeout_s=600)
    assert summary["mapFraction"] >= 0.7
    before, after = summary["labels"]
    assert 0 < before < after
    assert summary["legendPixels"][1] < summary["legendPixels"][0] * 0.1
    assert summary["lassoSelected"] > 1
    assert summary["filtered"]["visible"] < ROWS
    assert summary["view3d"]["points"] == ROWS
    assert "Viewers cannot" in summary["viewerReason"]
    assert summary["afterReload"] in ("running", "pending", "succeeded")
