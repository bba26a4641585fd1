"""The web client in headless Chromium against the whole system: sign up, create a
project, upload a CSV, embed, project, and the map canvas shows every row as a point."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from services.stack import Stack
from tests.support.texts import csv_bytes, rows

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts"
ROWS = 200

pytestmark = pytest.mark.slow


def test_browser_walkthrough_draws_every_row(stack: Stack, tmp_path: Path) -> None:
    csv_file = tmp_path / "notes.csv"
    csv_file.write_bytes(csv_bytes(rows(ROWS)))
    ARTIFACTS.mkdir(exist_ok=True)
    screenshot = ARTIFACTS / "map.png"
    result = subprocess.run(
        ["node", "e2e/walkthrough.mjs", "--base-url", stack.edge_url, "--csv", str(csv_file), "--screenshot", str(screenshot)],
        cwd=REPO / "gateway" / "web",
        capture_output=True,
        text=True,
        timeout=480,
    )
    assert result.returncode == 0, f"walkthrough failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["points"] == ROWS
    assert summary["nonBackgroundPixels"] > 500
    assert screenshot.exists() and screenshot.stat().st_size > 10_000
