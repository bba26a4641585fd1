"""The `embedviz` command line and the Python client against the running stack, through
the edge as a user runs them: the console script in a subprocess, with its own config
folder, walks the whole path (sign up, log in, project, upload, embed, a PCA map, search,
neighbours, export) with --json, and every document it prints parses and says what a user
needs to see. Then the client library hands a notebook the map as a DataFrame."""

from __future__ import annotations

import csv
import json
import os
import stat
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from embedviz_client import Client, CredentialStore
from services.stack import Stack
from tests.support.texts import csv_bytes, rows

ROWS = 300
CLUSTERS = 4
PASSWORD = "correct horse battery"
EMBEDVIZ = Path(sys.executable).with_name("embedviz")
NOT_FOUND_EXIT = 10 + 5  # 10 + the gRPC status code (docs/cli.md)

pytestmark = pytest.mark.slow


@dataclass
class Ran:
    args: tuple[str, ...]
    code: int
    stdout: str
    stderr: str

    @property
    def json(self) -> Any:
        return json.loads(self.stdout)


class Cli:
    """Runs the console script with a config folder of its own and the stack's edge."""

    def __init__(self, stack: Stack, config_home: Path) -> None:
        self.config_home = config_home
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("EMBEDVIZ_")}
        self.env.update(XDG_CONFIG_HOME=str(config_home), EMBEDVIZ_URL=stack.edge_url)
        self.seen: list[Ran] = []

    @property
    def credentials(self) -> Path:
        return self.config_home / "embedviz" / "credentials.json"

    def __call__(self, *args: str, stdin: str | None = None, expect: int = 0) -> Ran:
        done = subprocess.run(
            [str(EMBEDVIZ), *args], input=stdin, capture_output=True, text=True, env=self.env, timeout=300
        )
        ran = Ran(args, done.returncode, done.stdout, done.stderr)
        self.seen.append(ran)
        assert ran.code == expect, f"embedviz {' '.join(args)} exited {ran.code}:\n{ran.stdout}\n{ran.stderr}"
        assert "Traceback" not in ran.stderr, ran.stderr
        return ran


@dataclass
class Walk:
    cli: Cli
    email: str
    table: list[dict[str, str]]
    project: dict[str, Any]
    dataset: dict[str, Any]
    upload_stderr: str
    embedding: dict[str, Any]
    embed_stderr: str
    projection: dict[str, Any]
    map_stderr: str


@pytest.fixture(scope="module")
def walk(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Walk:
    """Sign up, log out, log in, make a project, upload, embed and map: all with --json."""
    cli = Cli(stack, tmp_path_factory.mktemp("config"))
    email = f"cli-{uuid.uuid4().hex[:8]}@example.org"
    signed = cli("signup", "--email", email, "--password-stdin", "--json", stdin=PASSWORD + "\n").json
    assert signed["user"]["email"] == email
    assert cli("logout", "--json").json == {"logged_out": True}
    assert not cli.credentials.exists()
    cli("whoami", "--json", expect=10 + 16)  # UNAUTHENTICATED once logged out
    logged = cli("login", "--email", email, "--password-stdin", "--json", stdin=PASSWORD + "\n").json
    assert logged["user"]["name"] == signed["user"]["name"]

    title = f"cli walk {uuid.uuid4().hex[:6]}"
    project = cli("projects", "create", title, "--json").json
    assert project["role"] == "ROLE_OWNER"

    table = rows(ROWS)
    source = tmp_path_factory.mktemp("data") / "notes.csv"
    source.write_bytes(csv_bytes(table))
    # The project by its display name, as a person would type it.
    uploaded = cli("upload", str(source), "--project", title, "--json")
    embedded = cli("embed", uploaded.json["name"], "--column", "text", "--json")
    mapped = cli(
        "map", embedded.json["name"], "--method", "pca", "--clusters", str(CLUSTERS), "--seed", "1", "--json"
    )
    return Walk(
        cli, email, table, project, uploaded.json, uploaded.stderr, embedded.json, embedded.stderr,
        mapped.json, mapped.stderr,
    )


def test_upload_embed_and_map_account_for_every_row(walk: Walk) -> None:
    dataset, embedding, projection = walk.dataset, walk.embedding, walk.projection
    assert dataset["job"]["state"] == "JOB_STATE_SUCCEEDED"
    assert dataset["row_count"] == ROWS
    assert [c["name"] for c in dataset["columns"]] == ["id", "title", "text", "topic"]
    assert embedding["job"]["state"] == "JOB_STATE_SUCCEEDED"
    assert embedding["row_count"] == ROWS and embedding["dimension"] == 384
    assert projection["job"]["state"] == "JOB_STATE_SUCCEEDED"
    assert projection["point_count"] == ROWS and projection["cluster_count"] == CLUSTERS
    assert projection["name"].startswith(embedding["name"] + "/projections/")

    # Progress went to stderr while stdout held only the one JSON document.
    assert "upload" in walk.upload_stderr and "import" in walk.upload_stderr
    assert "embedding" in walk.embed_stderr and "100%" in walk.embed_stderr
    assert "map" in walk.map_stderr and "100%" in walk.map_stderr

    listed = walk.cli("projects", "list", "--json").json["projects"]
    assert walk.project["name"] in [p["name"] for p in listed]
    datasets = walk.cli("datasets", "list", walk.project["name"], "--json").json["datasets"]
    assert [d["name"] for d in datasets] == [dataset["name"]]
    clusters = walk.cli("clusters", projection["name"], "--json").json["clusters"]
    assert len(clusters) == CLUSTERS and sum(c["size"] for c in clusters) == ROWS
    assert any(c["label"] for c in clusters)


def test_search_finds_rows_by_meaning_with_scores(walk: Walk) -> None:
    found = walk.cli(
        "search", walk.projection["name"], "a rocket launched toward Mars", "--limit", "5", "--show", "text,topic",
        "--json",
    ).json
    matches = found["matches"]
    assert len(matches) == 5
    scores = [m["score"] for m in matches]
    assert scores == sorted(scores, reverse=True) and all(0 < s <= 1 for s in scores)
    assert matches[0]["topic"] == "space", matches
    assert matches[0]["text"] == walk.table[matches[0]["row"]]["text"]


def test_neighbours_of_a_row_start_with_its_near_duplicate(walk: Walk) -> None:
    # Rows 0 and 1 are a near-duplicate pair (tests/support/texts.py).
    found = walk.cli("neighbours", walk.projection["name"], "0", "--limit", "3", "--json").json
    neighbours = found["neighbors"]
    assert [n["row"] for n in neighbours][0] == 1
    assert 0 not in [n["row"] for n in neighbours]
    assert neighbours[0]["score"] > 0.9 and neighbours[0]["text"] == walk.table[1]["text"]


def test_export_writes_every_point_with_the_chosen_columns(walk: Walk, tmp_path: Path) -> None:
    target = tmp_path / "points.csv"
    done = walk.cli("export", walk.projection["name"], "--out", str(target), "--columns", "title,topic", "--json").json
    assert done["path"] == str(target) and done["bytes"] == target.stat().st_size
    with target.open(newline="") as handle:
        exported = list(csv.DictReader(handle))
    assert len(exported) == ROWS
    assert {"row", "x", "y", "cluster", "label", "title", "topic"} <= set(exported[0])
    assert sorted(int(r["row"]) for r in exported) == list(range(ROWS))
    for record in exported:
        assert record["topic"] == walk.table[int(record["row"])]["topic"]

    some = tmp_path / "some.jsonl"
    walk.cli("export", walk.projection["name"], "-o", str(some), "--rows", "3,5,8", "--json")
    assert sorted(json.loads(line)["row"] for line in some.read_text().splitlines()) == [3, 5, 8]


def test_an_unknown_project_is_not_found_in_one_line(walk: Walk) -> None:
    for args in (
        ("projects", "get", "projects/no-such-project", "--json"),
        ("datasets", "list", "no such project", "--json"),
    ):
        ran = walk.cli(*args, expect=NOT_FOUND_EXIT)
        assert ran.stdout == ""
        lines = ran.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: NOT_FOUND: "), ran.stderr
    ran = walk.cli("embed", walk.dataset["name"], "--column", "no_such_column", "--json", expect=10 + 3)
    assert ran.stderr.startswith("error: INVALID_ARGUMENT: ") and len(ran.stderr.strip().splitlines()) == 1


def test_without_json_a_person_reads_summaries_and_tables(walk: Walk) -> None:
    projection = walk.projection["name"]
    listed = walk.cli("projects", "list").stdout
    assert walk.project["name"] in listed and walk.project["display_name"] in listed
    assert walk.dataset["name"] in walk.cli("datasets", "list", walk.project["name"]).stdout
    clusters = walk.cli("clusters", projection).stdout.splitlines()
    assert clusters[0].split()[:3] == ["cluster", "label", "size"] and len(clusters) == 1 + CLUSTERS
    found = walk.cli("search", projection, "fresh bread from the oven", "--limit", "3").stdout.splitlines()
    assert found[0].split() == ["row", "score", "text"] and len(found) == 4
    assert walk.cli("neighbours", projection, "2", "--limit", "2").stdout.splitlines()[1].split()[0] == "3"
    rows_out = walk.cli("rows", walk.dataset["name"], "--columns", "topic", "--limit", "2").stdout.splitlines()
    assert rows_out == ["row  topic", "0    pair", "1    pair"]
    assert walk.cli("whoami").stdout.startswith(walk.email)
    # The progress of the embedding as it went by on stderr: a bar, the stage, rows done.
    bars = [line for line in walk.embed_stderr.splitlines() if line.startswith("embedding")]
    assert bars and "[" in bars[-1] and f"{ROWS}/{ROWS}" in bars[-1], walk.embed_stderr


def test_the_session_is_private_to_the_user(walk: Walk) -> None:
    path = walk.cli.credentials
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    saved = json.loads(path.read_text())
    assert saved["email"] == walk.email and saved["refresh_token"]
    for ran in walk.cli.seen:  # tokens are never printed
        assert saved["access_token"] not in ran.stdout + ran.stderr
        assert saved["refresh_token"] not in ran.stdout + ran.stderr


def test_an_expired_access_token_is_renewed_and_saved(walk: Walk) -> None:
    path = walk.cli.credentials
    saved = json.loads(path.read_text())
    saved["access_expires"] = 0
    path.write_text(json.dumps(saved))
    assert walk.cli("whoami", "--json").json["email"] == walk.email
    renewed = json.loads(path.read_text())
    assert renewed["refresh_token"] != saved["refresh_token"]  # refresh tokens rotate
    assert renewed["access_expires"] > 0
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_an_api_key_logs_in_from_another_config_folder(walk: Walk, stack: Stack, tmp_path: Path) -> None:
    made = walk.cli("api-keys", "create", "cli test", "--json").json
    assert made["secret"].startswith("evk_")
    script = Cli(stack, tmp_path / "other-config")
    script("login", "--api-key-stdin", "--json", stdin=made["secret"] + "\n")
    assert script("whoami", "--json").json["email"] == walk.email
    assert walk.project["name"] in [p["name"] for p in script("projects", "list", "--json").json["projects"]]
    assert stat.S_IMODE(script.credentials.stat().st_mode) == 0o600
    walk.cli("api-keys", "delete", made["api_key"]["name"], "--json")


def test_the_client_gives_a_notebook_the_points_as_a_dataframe(walk: Walk, stack: Stack) -> None:
    store = CredentialStore(walk.cli.config_home / "embedviz")
    with Client(stack.edge_url, store=store) as client:
        points = client.points(walk.projection["name"], columns=["topic"])
        hits = client.search(walk.projection["name"], "the goalkeeper defended a penalty", limit=3)
        head = client.rows(walk.dataset["name"], columns=["title"], limit=5)
    assert len(points) == ROWS
    assert list(points.index) == list(range(ROWS))
    assert list(points.columns) == ["x", "y", "cluster", "topic"]
    assert points[["x", "y"]].notna().all().all()
    assert set(points["cluster"]) == set(range(CLUSTERS))
    assert list(points["topic"].astype(str)) == [row["topic"] for row in walk.table]
    assert list(hits.columns) == ["row", "score", "text"] and len(hits) == 3
    assert walk.table[int(hits["row"].iloc[0])]["topic"] == "football"
    assert list(head.index) == [0, 1, 2, 3, 4] and list(head.columns) == ["title"]
