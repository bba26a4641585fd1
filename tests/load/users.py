"""The people of a load run, all through the edge with real tokens.

- `Account`: a person who signed up (or logged in) and owns a project with a dataset of real
  text, its embedding and a map (`set_up`); its access token is refreshed before it expires,
  as the web client does, by whichever tab needs it first.
- `Tab`: one simulated user, a browser tab on one account, doing what people do on the map
  page in a loop with a pause between steps: lists, row pages, hovering rows, opening a map
  (its clusters and all its points), meaning and substring search, neighbours, watching the
  newest job for a few seconds, and probes that must be refused (another person's project,
  a dataset that is not there: NOT_FOUND, counted apart as expected).
- `uploader`: the background actor: uploads a new table in chunks, then embeds it and makes
  a map of it (UMAP and PCA in turn), following each job to its end, over and over, so
  imports, embeddings and fits run while the tabs read."""

from __future__ import annotations

import asyncio
import io
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from google.protobuf.message import Message

from embedviz.v1 import auth_pb2, embedding_pb2, ingest_pb2, job_pb2, projection_pb2
from tests.load.report import Calls
from tests.load.wire import Browser, CallFailed

M = TypeVar("M", bound=Message)

AUTH = "/embedviz.v1.AuthService/"
INGEST = "/embedviz.v1.IngestService/"
EMBEDDING = "/embedviz.v1.EmbeddingService/"
PROJECTION = "/embedviz.v1.ProjectionService/"
PASSWORD = "load test horse battery staple"
CHUNK = 64 * 1024
ENDED = (job_pb2.JOB_STATE_SUCCEEDED, job_pb2.JOB_STATE_FAILED, job_pb2.JOB_STATE_CANCELLED)

# What people look for in a catalogue of Debian packages.
QUERIES = [
    "play music and videos", "read and write images", "python library for the web", "a text editor",
    "fonts for asian languages", "database server", "tools to compress files", "email client",
    "network monitoring", "chess game", "scientific computing with matrices", "bioinformatics sequence analysis",
    "printer drivers", "firmware for wireless cards", "translations of the documentation", "perl module for dates",
    "encrypt my disk", "back up my files", "ruby library", "java library for xml", "haskell package",
    "rust crate", "GNOME desktop", "KDE application", "command line utility", "debugging symbols",
    "development headers for a C library", "web browser", "password manager", "spell checker dictionary",
]
SUBSTRINGS = ["lib", "python", "game", "font", "server", "tool", "data"]
FILTERS = ["", "", "", 'text contains "library"', "section = python", "python", 'text contains "tool"']
ORDERS = ["", "", "package", "section desc", "text"]


def short(path: str) -> str:
    """`/embedviz.v1.IngestService/ListRows` -> `IngestService/ListRows`."""
    return path.removeprefix("/embedviz.v1.")


@dataclass
class View:
    """A finished map and the dataset it shows, as a tab opens it."""

    dataset: str
    projection: str
    rows: int


@dataclass
class Account:
    email: str
    password: str
    token: str = ""
    refresh_token: str = ""
    expires: float = 0.0  # monotonic
    project: str = ""
    views: list[View] = field(default_factory=list)
    jobs: list[tuple[str, str]] = field(default_factory=list)  # (kind, name), newest last
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def take(self, session: auth_pb2.Session) -> None:
        self.token, self.refresh_token = session.access_token, session.refresh_token
        lifetime = session.access_token_expire_time.ToSeconds() - time.time()
        self.expires = time.monotonic() + lifetime

    async def bearer(self, browser: Browser, calls: Calls) -> str:
        """The access token, refreshed (once, for every tab of this account) when it has less
        than a minute left."""
        if self.expires - time.monotonic() > 60:
            return self.token
        async with self.lock:
            if self.expires - time.monotonic() > 60:
                return self.token
            started = time.perf_counter()
            try:
                reply = await browser.unary(
                    AUTH + "RefreshSession",
                    auth_pb2.RefreshSessionRequest(refresh_token=self.refresh_token),
                    auth_pb2.RefreshSessionResponse,
                )
            except CallFailed as exc:
                calls.failed("AuthService/RefreshSession", time.perf_counter() - started, exc.code, exc.message)
                raise
            calls.ok("AuthService/RefreshSession", time.perf_counter() - started)
            self.take(reply.session)
            return self.token


class Caller:
    """Calls on behalf of one account through one browser, each timed and counted."""

    def __init__(self, browser: Browser, account: Account, calls: Calls) -> None:
        self.browser = browser
        self.account = account
        self.calls = calls

    async def unary(
        self, path: str, request: Message, reply: type[M], *, expect: str = "", label: str = ""
    ) -> M | None:
        """The reply; None when the call failed (counted). With `expect`, that code is the
        right answer (a probe) and an OK reply is the error."""
        rpc = label or short(path)
        token = await self.account.bearer(self.browser, self.calls)
        started = time.perf_counter()
        try:
            out = await self.browser.unary(path, request, reply, token)
        except CallFailed as exc:
            self.calls.failed(rpc, time.perf_counter() - started, exc.code, exc.message, expected=exc.code == expect)
            return None
        if expect:
            self.calls.failed(rpc, time.perf_counter() - started, f"OK (wanted {expect})", str(request)[:200])
            return None
        self.calls.ok(rpc, time.perf_counter() - started)
        return out

    async def stream(
        self, path: str, request: Message, reply: type[M], *, hold_s: float | None = None,
        until: Callable[[M], bool] | None = None,
    ) -> list[M] | None:
        """Every message of a server stream (None when it failed). With `hold_s` (a Watch) the
        latency counted is to the first message, and the stream is closed after `hold_s`
        seconds (the person closed the panel) or when `until` says so; otherwise the
        latency is to the last message."""
        rpc = short(path)
        token = await self.account.bearer(self.browser, self.calls)
        started = time.perf_counter()
        first: float | None = None
        got: list[M] = []
        try:
            async with asyncio.timeout(hold_s):
                async with aclosing(self.browser.stream(path, request, reply, token)) as messages:
                    async for message in messages:
                        if first is None:
                            first = time.perf_counter() - started
                        got.append(message)
                        if until is not None and until(message):
                            break
        except TimeoutError:
            if first is None:  # nothing at all within hold_s: a failure a person would see
                self.calls.failed(rpc, time.perf_counter() - started, "NO_FIRST_MESSAGE", f"nothing in {hold_s} s")
                return None
        except CallFailed as exc:
            self.calls.failed(rpc, time.perf_counter() - started, exc.code, exc.message)
            return None
        whole = time.perf_counter() - started
        self.calls.ok(rpc, first if hold_s is not None and first is not None else whole)
        return got

    def wrong(self, rpc: str, message: str) -> None:
        """A reply that came OK but is not what a person should see."""
        self.calls.failed(rpc, 0.0, "WRONG_REPLY", message)


def job_of(update: Message) -> job_pb2.Job:
    """The job of a Watch… reply: the one resource it carries."""
    (_, resource), *_ = update.ListFields()
    return resource.job  # type: ignore[no-any-return]


def watch_call(kind: str, name: str) -> tuple[str, Message, type[Message]]:
    """The Watch RPC of a job's resource: path, request, reply type."""
    if kind == "dataset":
        return INGEST + "WatchDataset", ingest_pb2.WatchDatasetRequest(name=name), ingest_pb2.WatchDatasetResponse
    if kind == "embedding":
        return (EMBEDDING + "WatchEmbedding", embedding_pb2.WatchEmbeddingRequest(name=name),
                embedding_pb2.WatchEmbeddingResponse)
    return (PROJECTION + "WatchProjection", projection_pb2.WatchProjectionRequest(name=name),
            projection_pb2.WatchProjectionResponse)


async def follow(caller: Caller, kind: str, name: str, timeout_s: float) -> job_pb2.Job | None:
    """Follow a job's Watch stream to its end (watching again when a stream is cut); its last
    state, or None when it did not end within `timeout_s`."""
    path, request, reply = watch_call(kind, name)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got = await caller.stream(path, request, reply, hold_s=deadline - time.monotonic(),
                                  until=lambda u: job_of(u).state in ENDED)
        for update in reversed(got or []):
            if job_of(update).state in ENDED:
                return job_of(update)
        await asyncio.sleep(1)
    return None


# --- data -----------------------------------------------------------------------------------------


class Texts:
    """Debian packages (name, section, one-line description) handed out in slices, cycled."""

    def __init__(self, packages: list[tuple[str, str, str]]) -> None:
        if not packages:
            raise SystemExit("no Debian package lists: run `apt-get update` (apt-cache dumpavail is empty)")
        self.packages = packages
        self.offset = 0

    def table(self, rows: int) -> pa.Table:
        picked = [self.packages[(self.offset + i) % len(self.packages)] for i in range(rows)]
        self.offset += rows
        return pa.table({
            "package": [p[0] for p in picked], "section": [p[1] for p in picked], "text": [p[2] for p in picked],
        })


def parquet_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


def csv_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pacsv.write_csv(table, sink)
    return sink.getvalue()


async def upload(caller: Caller, project: str, data: bytes, filename: str) -> str | None:
    """Upload in chunks as the web client does (create, append each chunk, finish): the
    dataset's name, None when a step failed."""
    made = await caller.unary(
        INGEST + "CreateUpload",
        ingest_pb2.CreateUploadRequest(
            parent=project, upload=ingest_pb2.Upload(filename=filename, size_bytes=len(data))
        ),
        ingest_pb2.Upload,
    )
    if made is None:
        return None
    for offset in range(0, len(data), CHUNK):
        appended = await caller.unary(
            INGEST + "AppendUploadChunk",
            ingest_pb2.AppendUploadChunkRequest(name=made.name, offset=offset, data=data[offset : offset + CHUNK]),
            ingest_pb2.AppendUploadChunkResponse,
        )
        if appended is None:
            return None
    dataset = await caller.unary(INGEST + "FinishUpload", ingest_pb2.FinishUploadRequest(name=made.name),
                                 ingest_pb2.Dataset)
    return dataset.name if dataset else None


def map_params(umap: bool) -> projection_pb2.Projection:
    if umap:  # what a person gets by default: UMAP 2-D, clusters found by HDBSCAN, labelled
        return projection_pb2.Projection(method=projection_pb2.PROJECTION_METHOD_UMAP, dimensions=2)
    return projection_pb2.Projection(
        method=projection_pb2.PROJECTION_METHOD_PCA, dimensions=2,
        clustering=projection_pb2.ClusterParams(algorithm=projection_pb2.CLUSTER_ALGORITHM_KMEANS, k=8),
    )


async def succeeded(caller: Caller, kind: str, name: str, label: str, timeout_s: float) -> bool:
    """Follow a job to its end; one that did not succeed (or end in time) counts as an error
    "job: <label>"."""
    job = await follow(caller, kind, name, timeout_s)
    if job is not None and job.state == job_pb2.JOB_STATE_SUCCEEDED:
        return True
    caller.calls.failed(f"job: {label}", 0.0, "JOB_" + (job_pb2.JobState.Name(job.state) if job else "TIMEOUT"),
                        job.error if job else f"not done in {timeout_s:.0f} s")
    return False


async def make_map(caller: Caller, data: bytes, filename: str, umap: bool, timeout_s: float) -> View | None:
    """Upload, import, embed and map one table, following each job to its end; the new jobs go
    on the account's list as they start, for the tabs to watch."""
    account = caller.account
    dataset = await upload(caller, account.project, data, filename)
    if dataset is None:
        return None
    account.jobs.append(("dataset", dataset))
    if not await succeeded(caller, "dataset", dataset, "import", timeout_s):
        return None
    embedding = await caller.unary(
        EMBEDDING + "CreateEmbedding",
        embedding_pb2.CreateEmbeddingRequest(parent=dataset, embedding=embedding_pb2.Embedding(text_columns=["text"])),
        embedding_pb2.Embedding,
    )
    if embedding is None:
        return None
    account.jobs.append(("embedding", embedding.name))
    if not await succeeded(caller, "embedding", embedding.name, "embedding", timeout_s):
        return None
    projection = await caller.unary(
        PROJECTION + "CreateProjection",
        projection_pb2.CreateProjectionRequest(parent=embedding.name, projection=map_params(umap)),
        projection_pb2.Projection,
    )
    if projection is None:
        return None
    account.jobs.append(("projection", projection.name))
    if not await succeeded(caller, "projection", projection.name, "map", timeout_s):
        return None
    got = await caller.unary(INGEST + "GetDataset", ingest_pb2.GetDatasetRequest(name=dataset), ingest_pb2.Dataset)
    return View(dataset, projection.name, got.row_count) if got else None


# --- setting up -----------------------------------------------------------------------------------


async def sign_in(browser: Browser, calls: Calls, email: str | None, password: str, label: str) -> Account:
    """An existing account (Login) when `email` is given, else a new one (SignUp)."""
    started = time.perf_counter()
    try:
        if email:
            reply: auth_pb2.LoginResponse | auth_pb2.SignUpResponse = await browser.unary(
                AUTH + "Login", auth_pb2.LoginRequest(email=email, password=password), auth_pb2.LoginResponse)
            rpc = "AuthService/Login"
        else:
            email = f"{label}-{uuid.uuid4().hex[:8]}@example.org"
            reply = await browser.unary(
                AUTH + "SignUp", auth_pb2.SignUpRequest(email=email, password=password, display_name=label),
                auth_pb2.SignUpResponse)
            rpc = "AuthService/SignUp"
    except CallFailed as exc:
        raise SystemExit(f"could not sign in through the edge: {exc}") from exc
    calls.ok(rpc, time.perf_counter() - started)
    account = Account(email, password)
    account.take(reply.session)
    return account


async def set_up(account: Account, browser: Browser, calls: Calls, data: bytes, index: int, timeout_s: float) -> None:
    """The account's project, a dataset of real text, its embedding and a PCA map."""
    caller = Caller(browser, account, calls)
    project = await caller.unary(
        INGEST + "CreateProject",
        ingest_pb2.CreateProjectRequest(project=ingest_pb2.Project(display_name=f"load test {index}")),
        ingest_pb2.Project,
    )
    if project is None:
        raise SystemExit(f"CreateProject failed for {account.email}: {calls.summary(1.0)['error_samples']}")
    account.project = project.name
    view = await make_map(caller, data, f"debian-{index}.parquet", umap=False, timeout_s=timeout_s)
    if view is None:
        raise SystemExit(f"setting up {account.email} failed: {calls.summary(1.0)['error_samples']}")
    account.views.append(view)


# --- the simulated users --------------------------------------------------------------------------


class Tab(Caller):
    """One person at the map page."""

    def __init__(self, browser: Browser, account: Account, others: list[Account], calls: Calls,
                 rng: random.Random, think_s: float, watch_s: float) -> None:
        super().__init__(browser, account, calls)
        self.others = [a for a in others if a is not account]
        self.rng = rng
        self.think_s = think_s
        self.watch_s = watch_s
        self.actions: list[tuple[Callable[[View], Awaitable[None]], int]] = [
            (self.browse, 12), (self.read_rows, 18), (self.hover, 20), (self.open_map, 10), (self.search, 12),
            (self.neighbours, 12), (self.watch, 8), (self.whoami, 4), (self.probe, 4),
        ]

    async def run(self) -> None:
        """Every step once, in a random order (a first look around), then steps drawn by
        weight; most of them on the person's first map, the rest on any map they have."""
        actions, weights = zip(*self.actions, strict=True)
        first = list(actions)
        self.rng.shuffle(first)
        await asyncio.sleep(self.rng.uniform(0, 2 * self.think_s))  # people do not all start at once
        while True:
            views = self.account.views
            view = views[0] if len(views) == 1 or self.rng.random() < 0.6 else self.rng.choice(views)
            action = first.pop() if first else self.rng.choices(actions, weights)[0]
            await action(view)
            await asyncio.sleep(self.rng.uniform(0, 2 * self.think_s))

    async def browse(self, view: View) -> None:
        """The data and jobs panel: projects, then what is in this one."""
        await self.unary(INGEST + "ListProjects", ingest_pb2.ListProjectsRequest(page_size=50),
                         ingest_pb2.ListProjectsResponse)
        datasets = await self.unary(INGEST + "ListDatasets",
                                    ingest_pb2.ListDatasetsRequest(parent=self.account.project, page_size=50),
                                    ingest_pb2.ListDatasetsResponse)
        if datasets is not None and view.dataset not in {d.name for d in datasets.datasets}:
            self.wrong("IngestService/ListDatasets", f"{view.dataset} missing from its project's list")
        embeddings = await self.unary(EMBEDDING + "ListEmbeddings",
                                      embedding_pb2.ListEmbeddingsRequest(parent=view.dataset),
                                      embedding_pb2.ListEmbeddingsResponse)
        if embeddings is not None and embeddings.embeddings:
            await self.unary(PROJECTION + "ListProjections",
                             projection_pb2.ListProjectionsRequest(parent=embeddings.embeddings[0].name),
                             projection_pb2.ListProjectionsResponse)

    async def read_rows(self, view: View) -> None:
        """The table panel: a page of rows, sometimes sorted or filtered, then a page or two more."""
        token = ""
        request = ingest_pb2.ListRowsRequest(parent=view.dataset, page_size=50,
                                             order_by=self.rng.choice(ORDERS), filter=self.rng.choice(FILTERS))
        for _ in range(self.rng.randint(1, 3)):
            request.page_token = token
            page = await self.unary(INGEST + "ListRows", request, ingest_pb2.ListRowsResponse)
            if page is None or not page.next_page_token:
                return
            token = page.next_page_token
            await asyncio.sleep(self.rng.uniform(0, self.think_s))

    async def hover(self, view: View) -> None:
        """Hovering points: each shows its row (the client asks in small batches)."""
        indexes = sorted(self.rng.sample(range(view.rows), min(view.rows, self.rng.randint(1, 5))))
        got = await self.unary(INGEST + "BatchGetRows",
                               ingest_pb2.BatchGetRowsRequest(parent=view.dataset, indexes=indexes),
                               ingest_pb2.BatchGetRowsResponse)
        if got is not None and [r.index for r in got.rows] != indexes:
            self.wrong("IngestService/BatchGetRows", f"asked for rows {indexes}, got {[r.index for r in got.rows]}")

    async def open_map(self, view: View) -> None:
        """Opening a map: its state, its clusters and every point (packed, as the web client)."""
        projection = await self.unary(PROJECTION + "GetProjection",
                                      projection_pb2.GetProjectionRequest(name=view.projection),
                                      projection_pb2.Projection)
        await self.unary(PROJECTION + "ListClusters",
                         projection_pb2.ListClustersRequest(parent=view.projection, all_levels=True),
                         projection_pb2.ListClustersResponse)
        chunks = await self.stream(
            PROJECTION + "StreamPoints",
            projection_pb2.StreamPointsRequest(name=view.projection, encoding=projection_pb2.POINT_ENCODING_PACKED),
            projection_pb2.StreamPointsResponse,
        )
        if chunks is not None and projection is not None:
            points = sum(c.count for c in chunks)
            record = 4 * (projection.dimensions or 2) + 4
            if points != projection.point_count or sum(len(c.packed) for c in chunks) != points * record:
                self.wrong("ProjectionService/StreamPoints", f"{points} points of {projection.point_count}")
            elif chunks:
                coordinates = np.frombuffer(chunks[0].packed, "<f4").reshape(chunks[0].count, -1)[:, :2]
                if not np.isfinite(coordinates).all():
                    self.wrong("ProjectionService/StreamPoints", "coordinates that are not finite")

    async def search(self, view: View) -> None:
        """Search by meaning (most of the time) or for a substring of the text column."""
        if self.rng.random() < 0.75:
            request = projection_pb2.SearchPointsRequest(name=view.projection, query=self.rng.choice(QUERIES), limit=20)
        else:
            request = projection_pb2.SearchPointsRequest(name=view.projection, query=self.rng.choice(SUBSTRINGS),
                                                         column="text", limit=50)
        found = await self.unary(PROJECTION + "SearchPoints", request, projection_pb2.SearchPointsResponse)
        if found is not None and not request.column and len(found.matches) != min(20, view.rows):
            self.wrong("ProjectionService/SearchPoints", f"{len(found.matches)} matches by meaning, want 20")
        if found is not None and found.matches:  # then reads the rows it found, as the results list does
            await self.unary(INGEST + "BatchGetRows",
                             ingest_pb2.BatchGetRowsRequest(parent=view.dataset,
                                                            indexes=[m.row_index for m in found.matches[:20]]),
                             ingest_pb2.BatchGetRowsResponse)

    async def neighbours(self, view: View) -> None:
        """Clicking a point: its nearest neighbours."""
        row = self.rng.randrange(view.rows)
        found = await self.unary(PROJECTION + "FindNeighbors",
                                 projection_pb2.FindNeighborsRequest(name=view.projection, row_index=row, limit=10),
                                 projection_pb2.FindNeighborsResponse)
        if found is not None and (len(found.neighbors) != min(10, view.rows - 1)
                                  or row in {n.row_index for n in found.neighbors}):
            self.wrong("ProjectionService/FindNeighbors", f"{len(found.neighbors)} neighbours of row {row}")

    async def watch(self, view: View) -> None:
        """The jobs panel follows the newest job for a few seconds (or to its end)."""
        kind, name = self.account.jobs[-1] if self.account.jobs else ("projection", view.projection)
        path, request, reply = watch_call(kind, name)
        await self.stream(path, request, reply, hold_s=self.watch_s,
                          until=lambda u: job_of(u).state in ENDED)

    async def whoami(self, view: View) -> None:
        await self.unary(AUTH + "GetCurrentUser", auth_pb2.GetCurrentUserRequest(), auth_pb2.User)

    async def probe(self, view: View) -> None:
        """What must be refused: another person's project, a dataset that does not exist."""
        if self.others and self.rng.random() < 0.5:
            other = self.rng.choice(self.others)
            await self.unary(INGEST + "GetProject", ingest_pb2.GetProjectRequest(name=other.project),
                             ingest_pb2.Project, expect="NOT_FOUND", label="IngestService/GetProject [not theirs]")
        else:
            missing = f"{self.account.project}/datasets/{uuid.uuid4()}"
            await self.unary(INGEST + "GetDataset", ingest_pb2.GetDatasetRequest(name=missing), ingest_pb2.Dataset,
                             expect="NOT_FOUND", label="IngestService/GetDataset [no such]")


async def uploader(browser: Browser, accounts: list[Account], calls: Calls, texts: Texts, rows: int,
                   timeout_s: float, made: list[View]) -> None:
    """Upload, embed and map new tables one after another, each account in turn, maps by UMAP
    and PCA alternately; finished maps join their account's views."""
    turn = 0
    while True:
        account = accounts[turn % len(accounts)]
        caller = Caller(browser, account, calls)
        table = texts.table(rows)
        if turn % 2:
            data, name = csv_bytes(table), f"more-{turn}.csv"
        else:
            data, name = parquet_bytes(table), f"more-{turn}.parquet"
        view = await make_map(caller, data, name, umap=turn % 2 == 0, timeout_s=timeout_s)
        if view is not None:
            account.views.append(view)
            made.append(view)
        turn += 1
