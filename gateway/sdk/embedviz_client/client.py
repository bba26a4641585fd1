"""The embedviz client: every call goes over gRPC to the edge (Envoy), as the browser's do,
with the access token as `authorization: Bearer ...` metadata.

Lists come back as pandas DataFrames, points and columns also as Arrow tables, single
resources as their protobuf messages (`embedviz.v1`). A failed call raises `ApiError`
(code and the server's message); a job that ends FAILED or CANCELLED raises `JobFailed`.

    from embedviz_client import Client
    client = Client()                       # the session of `embedviz login`
    points = client.points("projects/.../projections/...", columns=["title"])
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import grpc
from google.protobuf import json_format, struct_pb2
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from embedviz.v1 import (
    auth_pb2,
    auth_pb2_grpc,
    embedding_pb2,
    embedding_pb2_grpc,
    ingest_pb2,
    ingest_pb2_grpc,
    job_pb2,
    projection_pb2,
    projection_pb2_grpc,
)
from embedviz_client.credentials import Credentials, CredentialStore

# numpy, pandas and pyarrow are imported where they are used: a command that needs none of
# them (most of the command line's) starts in a fraction of the time.
if TYPE_CHECKING:
    import numpy.typing as npt
    import pandas as pd
    import pyarrow as pa

DEFAULT_URL = "http://127.0.0.1:8080"
CHUNK_BYTES = 1024 * 1024  # the server takes up to 4 MiB a chunk
# Renew the access token when less than this is left of it.
RENEW_MARGIN_S = 60.0
POINT_COLUMNS = ("row", "x", "y", "z", "cluster")
WATCH_RECONNECTS = 5
ENDED = (job_pb2.JOB_STATE_SUCCEEDED, job_pb2.JOB_STATE_FAILED, job_pb2.JOB_STATE_CANCELLED)

Request = TypeVar("Request", bound=Message)
Response = TypeVar("Response", bound=Message)


class _Paged(Protocol):
    @property
    def next_page_token(self) -> str: ...


Reply = TypeVar("Reply")  # what a unary call returns
Page = TypeVar("Page", bound=_Paged)  # the reply of a List call
Watched = TypeVar("Watched", ingest_pb2.Dataset, embedding_pb2.Embedding, projection_pb2.Projection)

METHODS = {
    "umap": projection_pb2.PROJECTION_METHOD_UMAP,
    "pca": projection_pb2.PROJECTION_METHOD_PCA,
    "tsne": projection_pb2.PROJECTION_METHOD_TSNE,
}
CLUSTERING = {
    "auto": projection_pb2.CLUSTER_ALGORITHM_UNSPECIFIED,  # the server's default: HDBSCAN, or k-means given k
    "kmeans": projection_pb2.CLUSTER_ALGORITHM_KMEANS,
    "hdbscan": projection_pb2.CLUSTER_ALGORITHM_HDBSCAN,
    "none": projection_pb2.CLUSTER_ALGORITHM_NONE,
}
EXPORT_FORMATS = {
    "csv": projection_pb2.EXPORT_FORMAT_CSV,
    "jsonl": projection_pb2.EXPORT_FORMAT_JSONL,
    "parquet": projection_pb2.EXPORT_FORMAT_PARQUET,
}
DATA_FORMATS = {
    "csv": ingest_pb2.DATA_FORMAT_CSV,
    "parquet": ingest_pb2.DATA_FORMAT_PARQUET,
    "jsonl": ingest_pb2.DATA_FORMAT_JSONL,
    "arrow": ingest_pb2.DATA_FORMAT_ARROW,
}


class ApiError(Exception):
    """A call the server (or the edge) refused: `code` is the gRPC status name."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message

    @property
    def status(self) -> grpc.StatusCode:
        return grpc.StatusCode[self.code]

    @classmethod
    def from_rpc(cls, error: grpc.RpcError) -> ApiError:
        if isinstance(error, grpc.Call):
            code = error.code()
            return cls(code.name if code else "UNKNOWN", error.details() or "")
        return cls("UNKNOWN", str(error))


class JobFailed(Exception):
    """A job ended FAILED or CANCELLED; `resource` is its Dataset, Embedding or Projection."""

    def __init__(self, kind: str, resource: Watched_, job: job_pb2.Job) -> None:
        state = job_pb2.JobState.Name(job.state).removeprefix("JOB_STATE_").lower()
        detail = f": {job.error}" if job.error else ""
        super().__init__(f"{kind} {resource.name} {state}{detail}")
        self.kind = kind
        self.resource = resource
        self.job = job


Watched_ = ingest_pb2.Dataset | embedding_pb2.Embedding | projection_pb2.Projection
JobCallback = Callable[[job_pb2.Job], None]


def message_dict(message: Message) -> dict[str, Any]:
    """A message as JSON-ready data: proto field names, enum names, int64 as numbers."""
    return json_format.MessageToDict(
        message,
        preserving_proto_field_name=True,
        always_print_fields_with_no_presence=True,
        unquote_int64_if_possible=True,
    )


def _timestamp(value: Timestamp) -> float:
    return value.seconds + value.nanos / 1e9


def _plain(value: struct_pb2.Value) -> Any:
    kind = value.WhichOneof("kind")
    if kind is None or kind == "null_value":
        return None
    if kind == "number_value":
        number = value.number_value
        return int(number) if number.is_integer() and abs(number) < 2**53 else number
    if kind == "string_value":
        return value.string_value
    if kind == "bool_value":
        return value.bool_value
    if kind == "list_value":
        return [_plain(item) for item in value.list_value.values]
    return json_format.MessageToDict(value.struct_value)


def _target(url: str) -> tuple[str, bool]:
    """(host:port, TLS?) of an edge URL such as http://127.0.0.1:8080 or https://map.example.org."""
    secure = url.startswith("https://")
    rest = url.split("://", 1)[-1].rstrip("/")
    if "/" in rest:
        raise ValueError(f"the edge URL has a path: {url}; give only scheme, host and port")
    if ":" not in rest:
        rest += ":443" if secure else ":80"
    return rest, secure


def dataset_of(name: str) -> str:
    """`projects/p/datasets/d` of any resource below a dataset."""
    parts = name.split("/")
    if len(parts) < 4 or parts[0] != "projects" or parts[2] != "datasets":
        raise ValueError(f"not a dataset or a resource below one: {name}")
    return "/".join(parts[:4])


def embedding_of(name: str) -> str:
    """`projects/p/datasets/d/embeddings/e` of an embedding or a projection."""
    parts = name.split("/")
    if len(parts) < 6 or parts[4] != "embeddings":
        raise ValueError(f"not an embedding or a projection: {name}")
    return "/".join(parts[:6])


class Client:
    """One connection to an embedviz edge.

    Credentials, first found wins: `api_key=` (or the EMBEDVIZ_API_KEY variable), which is
    used in memory only; otherwise the session that `embedviz login` (or `login()` here)
    saved in the config folder (not read with `load_saved=False`, as before a new login).
    The URL: `url=`, else EMBEDVIZ_URL, else the saved one, else http://127.0.0.1:8080.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        api_key: str | None = None,
        store: CredentialStore | None = None,
        timeout: float = 60.0,
        load_saved: bool = True,
    ) -> None:
        self.store = store if store is not None else CredentialStore()
        api_key = api_key or os.environ.get("EMBEDVIZ_API_KEY") or None
        saved = self.store.load() if load_saved and not api_key else None
        self.credentials = Credentials(api_key=api_key) if api_key else saved
        self._persist = saved is not None
        self.url = url or os.environ.get("EMBEDVIZ_URL") or (saved.url if saved else "") or DEFAULT_URL
        self.timeout = timeout
        target, secure = _target(self.url)
        options = [("grpc.max_receive_message_length", 64 * 1024 * 1024)]
        if secure:
            self.channel = grpc.secure_channel(target, grpc.ssl_channel_credentials(), options=options)
        else:
            self.channel = grpc.insecure_channel(target, options=options)
        self.auth = auth_pb2_grpc.AuthServiceStub(self.channel)
        self.ingest = ingest_pb2_grpc.IngestServiceStub(self.channel)
        self.embedding = embedding_pb2_grpc.EmbeddingServiceStub(self.channel)
        self.projection = projection_pb2_grpc.ProjectionServiceStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- tokens -------------------------------------------------------------------------

    def _token(self) -> str:
        credentials = self.credentials
        if credentials is None:
            raise ApiError("UNAUTHENTICATED", "not logged in; run `embedviz login` first")
        if not credentials.access_token or credentials.access_expires - time.time() < RENEW_MARGIN_S:
            self.renew()
            assert self.credentials is not None
            credentials = self.credentials
        return credentials.access_token

    def _metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self._token()}"),)

    def renew(self) -> None:
        """A new access token: from the API key, or by spending the refresh token."""
        credentials = self.credentials
        if credentials is None or not credentials.renewable():
            raise ApiError("UNAUTHENTICATED", "the session has ended; run `embedviz login` again")
        if not self._persist:
            self._renew(credentials)
            return
        with self.store.locked():
            # Another command may have refreshed meanwhile: its tokens are the ones to use.
            latest = self.store.load()
            if latest is not None and latest.access_expires - time.time() >= RENEW_MARGIN_S:
                if latest.access_token != credentials.access_token:
                    self.credentials = latest
                    return
            if latest is not None:
                credentials = latest
            self._renew(credentials)
            assert self.credentials is not None
            self.store.save(self.credentials)

    def _renew(self, credentials: Credentials) -> None:
        try:
            if credentials.api_key:
                exchanged = self.auth.ExchangeApiKey(
                    auth_pb2.ExchangeApiKeyRequest(secret=credentials.api_key), timeout=self.timeout
                )
                credentials.access_token = exchanged.access_token
                credentials.access_expires = _timestamp(exchanged.access_token_expire_time)
            else:
                refreshed = self.auth.RefreshSession(
                    auth_pb2.RefreshSessionRequest(refresh_token=credentials.refresh_token), timeout=self.timeout
                )
                self._take_session(credentials, refreshed.session)
        except grpc.RpcError as error:
            failure = ApiError.from_rpc(error)
            if failure.code == "UNAUTHENTICATED":
                failure = ApiError("UNAUTHENTICATED", f"{failure.message}; run `embedviz login` again")
            raise failure from None
        self.credentials = credentials

    @staticmethod
    def _take_session(credentials: Credentials, session: auth_pb2.Session) -> None:
        credentials.access_token = session.access_token
        credentials.access_expires = _timestamp(session.access_token_expire_time)
        credentials.refresh_token = session.refresh_token
        credentials.refresh_expires = _timestamp(session.refresh_token_expire_time)

    # --- calls --------------------------------------------------------------------------

    def call(self, method: grpc.UnaryUnaryMultiCallable[Request, Reply], request: Request) -> Reply:
        """One unary call with the access token; renewed and tried once more if refused."""
        try:
            return method(request, metadata=self._metadata(), timeout=self.timeout)
        except grpc.RpcError as error:
            failure = ApiError.from_rpc(error)
        if failure.code == "UNAUTHENTICATED" and self.credentials is not None and self.credentials.renewable():
            self.renew()
            try:
                return method(request, metadata=self._metadata(), timeout=self.timeout)
            except grpc.RpcError as error:
                raise ApiError.from_rpc(error) from None
        raise failure

    def pages(
        self, method: grpc.UnaryUnaryMultiCallable[Request, Page], request_for: Callable[[str], Request]
    ) -> Iterator[Page]:
        """Every page of a List call: `request_for(page_token)` makes each page's request."""
        token = ""
        while True:
            page = self.call(method, request_for(token))
            yield page
            token = page.next_page_token
            if not token:
                return

    def stream(
        self, method: grpc.UnaryStreamMultiCallable[Request, Response], request: Request
    ) -> Iterator[Response]:
        """A server stream with the access token; renewed and opened once more if it is
        refused before its first message."""
        first_try = True
        while True:
            received = False
            call = method(request, metadata=self._metadata())
            try:
                for message in call:
                    received = True
                    yield message
                return
            except grpc.RpcError as error:
                failure = ApiError.from_rpc(error)
            finally:
                call.cancel()  # a consumer that stops early ends the stream on the server too
            renewable = self.credentials is not None and self.credentials.renewable()
            if failure.code == "UNAUTHENTICATED" and not received and first_try and renewable:
                first_try = False
                self.renew()
                continue
            raise failure

    def _public(self, method: grpc.UnaryUnaryMultiCallable[Request, Response], request: Request) -> Response:
        try:
            return method(request, timeout=self.timeout)
        except grpc.RpcError as error:
            raise ApiError.from_rpc(error) from None

    # --- identity -----------------------------------------------------------------------

    def _start(self, credentials: Credentials, save: bool) -> None:
        credentials.url = self.url
        self.credentials = credentials
        self._persist = save
        if save:
            self.store.save(credentials)

    def sign_up(self, email: str, password: str, display_name: str = "", *, save: bool = True) -> auth_pb2.User:
        """Creates a user and keeps its session (in the config folder when `save`)."""
        made = self._public(
            self.auth.SignUp, auth_pb2.SignUpRequest(email=email, password=password, display_name=display_name)
        )
        credentials = Credentials(email=made.user.email, user=made.user.name)
        self._take_session(credentials, made.session)
        self._start(credentials, save)
        return made.user

    def login(self, email: str, password: str, *, save: bool = True) -> auth_pb2.User:
        """Logs in with a password and keeps the session (in the config folder when `save`)."""
        logged = self._public(self.auth.Login, auth_pb2.LoginRequest(email=email, password=password))
        credentials = Credentials(email=logged.user.email, user=logged.user.name)
        self._take_session(credentials, logged.session)
        self._start(credentials, save)
        return logged.user

    def login_with_api_key(self, secret: str, *, save: bool = True) -> auth_pb2.User:
        """Logs in with an API key (`evk_...`); the key is kept to get new access tokens."""
        credentials = Credentials(api_key=secret)
        self._renew(credentials)
        self._start(credentials, False)
        user = self.whoami()
        credentials.email, credentials.user = user.email, user.name
        self._start(credentials, save)
        return user

    def logout(self) -> bool:
        """Ends the session on the server (password logins) and forgets it here."""
        credentials = self.credentials
        if credentials is not None and credentials.refresh_token:
            try:
                self.call(self.auth.Logout, auth_pb2.LogoutRequest(refresh_token=credentials.refresh_token))
            except ApiError as error:
                if error.code not in ("UNAUTHENTICATED", "NOT_FOUND"):
                    raise
        self.credentials = None
        return self.store.delete() if self._persist else credentials is not None

    def whoami(self) -> auth_pb2.User:
        return self.call(self.auth.GetCurrentUser, auth_pb2.GetCurrentUserRequest())

    def create_api_key(self, display_name: str) -> auth_pb2.CreateApiKeyResponse:
        """A new API key; its `secret` is shown only in this response."""
        return self.call(
            self.auth.CreateApiKey, auth_pb2.CreateApiKeyRequest(api_key=auth_pb2.ApiKey(display_name=display_name))
        )

    def list_api_keys(self) -> list[auth_pb2.ApiKey]:
        pages = self.pages(self.auth.ListApiKeys, lambda t: auth_pb2.ListApiKeysRequest(page_size=100, page_token=t))
        return [key for page in pages for key in page.api_keys]

    def delete_api_key(self, name: str) -> None:
        self.call(self.auth.DeleteApiKey, auth_pb2.DeleteApiKeyRequest(name=name))

    # --- projects -----------------------------------------------------------------------

    def list_projects(self) -> list[ingest_pb2.Project]:
        pages = self.pages(
            self.ingest.ListProjects, lambda t: ingest_pb2.ListProjectsRequest(page_size=1000, page_token=t)
        )
        return [project for page in pages for project in page.projects]

    def projects(self) -> pd.DataFrame:
        return _frame(
            [
                {
                    "name": p.name,
                    "display_name": p.display_name,
                    "role": ingest_pb2.Role.Name(p.role).removeprefix("ROLE_").lower(),
                    "description": p.description,
                    "create_time": p.create_time.ToDatetime(),
                }
                for p in self.list_projects()
            ],
            ["name", "display_name", "role", "description", "create_time"],
        )

    def create_project(self, display_name: str, description: str = "") -> ingest_pb2.Project:
        return self.call(
            self.ingest.CreateProject,
            ingest_pb2.CreateProjectRequest(
                project=ingest_pb2.Project(display_name=display_name, description=description)
            ),
        )

    def project(self, ref: str) -> ingest_pb2.Project:
        """A project by resource name (`projects/...`), id, or display name (when unique)."""
        if ref.startswith("projects/"):
            return self.call(self.ingest.GetProject, ingest_pb2.GetProjectRequest(name=ref))
        projects = self.list_projects()
        for project in projects:
            if project.name == f"projects/{ref}":
                return project
        named = [p for p in projects if p.display_name == ref]
        if len(named) > 1:
            choices = ", ".join(p.name for p in named)
            raise ApiError("FAILED_PRECONDITION", f"{len(named)} projects are called {ref!r}: {choices}; use one")
        if named:
            return named[0]
        # The list holds every project the caller may see, so nothing else can match.
        raise ApiError("NOT_FOUND", f"no project {ref!r} among yours (give its name, id or display name)")

    def delete_project(self, name: str) -> None:
        self.call(self.ingest.DeleteProject, ingest_pb2.DeleteProjectRequest(name=name))

    # --- datasets -----------------------------------------------------------------------

    def upload(
        self,
        project: str,
        path: str | os.PathLike[str],
        *,
        display_name: str = "",
        file_format: str = "",
        wait: bool = True,
        on_bytes: Callable[[int, int], None] | None = None,
        on_job: JobCallback | None = None,
    ) -> ingest_pb2.Dataset:
        """Uploads a file in chunks (with its SHA-256, checked by the server) and starts its
        import; with `wait`, follows the import to its end."""
        if file_format and file_format.lower() not in DATA_FORMATS:
            raise ValueError(f"unknown format {file_format!r}; one of: {', '.join(DATA_FORMATS)}")
        source = Path(path)
        size = source.stat().st_size
        digest = hashlib.sha256()
        with source.open("rb") as handle:
            for block in iter(lambda: handle.read(CHUNK_BYTES), b""):
                digest.update(block)
        upload = self.call(
            self.ingest.CreateUpload,
            ingest_pb2.CreateUploadRequest(
                parent=self.project(project).name,
                upload=ingest_pb2.Upload(filename=source.name, size_bytes=size, sha256=digest.hexdigest()),
            ),
        )
        sent = 0
        if on_bytes:
            on_bytes(0, size)
        with source.open("rb") as handle:
            while sent < size:
                handle.seek(sent)
                data = handle.read(CHUNK_BYTES)
                try:
                    sent = self.call(
                        self.ingest.AppendUploadChunk,
                        ingest_pb2.AppendUploadChunkRequest(name=upload.name, offset=sent, data=data),
                    ).received_bytes
                except ApiError as error:
                    if error.code not in ("UNAVAILABLE", "DEADLINE_EXCEEDED"):
                        raise
                    # Resumable: ask what arrived and go on from there.
                    time.sleep(1.0)
                    arrived = self.call(self.ingest.GetUpload, ingest_pb2.GetUploadRequest(name=upload.name))
                    sent = arrived.received_bytes
                if on_bytes:
                    on_bytes(sent, size)
        kind = DATA_FORMATS[file_format.lower()] if file_format else ingest_pb2.DATA_FORMAT_UNSPECIFIED
        dataset = self.call(
            self.ingest.FinishUpload,
            ingest_pb2.FinishUploadRequest(name=upload.name, display_name=display_name, format=kind),
        )
        return self.wait(dataset, on_job) if wait else dataset

    def get_dataset(self, name: str) -> ingest_pb2.Dataset:
        return self.call(self.ingest.GetDataset, ingest_pb2.GetDatasetRequest(name=name))

    def list_datasets(self, project: str) -> list[ingest_pb2.Dataset]:
        parent = self.project(project).name
        pages = self.pages(
            self.ingest.ListDatasets,
            lambda t: ingest_pb2.ListDatasetsRequest(parent=parent, page_size=100, page_token=t),
        )
        return [dataset for page in pages for dataset in page.datasets]

    def datasets(self, project: str) -> pd.DataFrame:
        return _frame(
            [
                {
                    "name": d.name,
                    "display_name": d.display_name,
                    "rows": d.row_count,
                    "columns": [c.name for c in d.columns],
                    "state": _state(d.job),
                    "create_time": d.create_time.ToDatetime(),
                }
                for d in self.list_datasets(project)
            ],
            ["name", "display_name", "rows", "columns", "state", "create_time"],
        )

    def delete_dataset(self, name: str) -> None:
        self.call(self.ingest.DeleteDataset, ingest_pb2.DeleteDatasetRequest(name=name))

    def rows(
        self, dataset: str, *, columns: Sequence[str] = (), filter: str = "", limit: int | None = None
    ) -> pd.DataFrame:
        """Rows of a dataset (a filter as in docs/ingest.md), indexed by row index."""
        records: list[dict[str, Any]] = []
        names: list[str] = list(columns)
        token = ""
        while limit is None or len(records) < limit:
            size = 1000 if limit is None else min(1000, limit - len(records))
            page = self.call(
                self.ingest.ListRows,
                ingest_pb2.ListRowsRequest(
                    parent=dataset, page_size=size, page_token=token, columns=list(columns), filter=filter
                ),
            )
            names = list(page.columns)
            for row in page.rows:
                records.append({"row": row.index, **{n: _plain(v) for n, v in zip(names, row.values, strict=True)}})
            token = page.next_page_token
            if not token:
                break
        return _frame(records, ["row", *names]).set_index("row")

    def read_columns(self, dataset: str, columns: Sequence[str]) -> pa.Table:
        """Whole columns of a dataset as one Arrow table, in row order."""
        import pyarrow as pa
        import pyarrow.ipc as ipc

        tables: list[pa.Table] = []
        for batch in self.stream(
            self.ingest.ReadColumns, ingest_pb2.ReadColumnsRequest(dataset=dataset, columns=list(columns))
        ):
            tables.append(ipc.open_stream(batch.arrow_ipc).read_all())
        if not tables:
            raise ApiError("FAILED_PRECONDITION", f"{dataset} sent no rows")
        return pa.concat_tables(tables)

    def _rows_by_index(self, dataset: str, indexes: Sequence[int], columns: Sequence[str]) -> dict[int, dict[str, Any]]:
        found: dict[int, dict[str, Any]] = {}
        for start in range(0, len(indexes), 1000):
            got = self.call(
                self.ingest.BatchGetRows,
                ingest_pb2.BatchGetRowsRequest(
                    parent=dataset, indexes=list(indexes[start : start + 1000]), columns=list(columns)
                ),
            )
            for row in got.rows:
                found[row.index] = {n: _plain(v) for n, v in zip(got.columns, row.values, strict=True)}
        return found

    # --- embeddings ---------------------------------------------------------------------

    def list_models(self) -> list[embedding_pb2.Model]:
        return list(self.call(self.embedding.ListModels, embedding_pb2.ListModelsRequest()).models)

    def embed(
        self,
        dataset: str,
        columns: Sequence[str],
        *,
        template: str = "",
        model: str = "",
        vector_columns: Sequence[str] = (),
        wait: bool = True,
        on_job: JobCallback | None = None,
    ) -> embedding_pb2.Embedding:
        """Starts embedding the text column(s) of a dataset, or taking the vectors its
        `vector_columns` hold (no model; `columns` then optional); with `wait`, follows the job."""
        made = self.call(
            self.embedding.CreateEmbedding,
            embedding_pb2.CreateEmbeddingRequest(
                parent=dataset,
                embedding=embedding_pb2.Embedding(
                    text_columns=list(columns), template=template, model=model, vector_columns=list(vector_columns)
                ),
            ),
        )
        return self.wait(made, on_job) if wait else made

    def get_embedding(self, name: str) -> embedding_pb2.Embedding:
        return self.call(self.embedding.GetEmbedding, embedding_pb2.GetEmbeddingRequest(name=name))

    def list_embeddings(self, dataset: str) -> list[embedding_pb2.Embedding]:
        pages = self.pages(
            self.embedding.ListEmbeddings,
            lambda t: embedding_pb2.ListEmbeddingsRequest(parent=dataset, page_size=100, page_token=t),
        )
        return [embedding for page in pages for embedding in page.embeddings]

    # --- maps ---------------------------------------------------------------------------

    def map(
        self,
        embedding: str,
        *,
        method: str = "umap",
        dimensions: int = 2,
        clustering: str = "auto",
        clusters: int = 0,
        min_cluster_size: int = 0,
        seed: int = 0,
        label_column: str = "",
        wait: bool = True,
        on_job: JobCallback | None = None,
    ) -> projection_pb2.Projection:
        """Starts a map (projection) of an embedding; with `wait`, follows the job.
        `clustering` "auto" is the server's default: HDBSCAN by density, or k-means when
        `clusters` (k) is given; `clusters` 0 and `min_cluster_size` 0 are chosen by the
        server from the row count."""
        if method.lower() not in METHODS:
            raise ValueError(f"unknown method {method!r}; one of: {', '.join(METHODS)}")
        if clustering.lower() not in CLUSTERING:
            raise ValueError(f"unknown clustering {clustering!r}; one of: {', '.join(CLUSTERING)}")
        made = self.call(
            self.projection.CreateProjection,
            projection_pb2.CreateProjectionRequest(
                parent=embedding,
                projection=projection_pb2.Projection(
                    method=METHODS[method.lower()],
                    dimensions=dimensions,
                    seed=seed,
                    label_column=label_column,
                    clustering=projection_pb2.ClusterParams(
                        algorithm=CLUSTERING[clustering.lower()], k=clusters, min_cluster_size=min_cluster_size
                    ),
                ),
            ),
        )
        return self.wait(made, on_job) if wait else made

    def get_projection(self, name: str) -> projection_pb2.Projection:
        return self.call(self.projection.GetProjection, projection_pb2.GetProjectionRequest(name=name))

    def list_projections(self, embedding: str) -> list[projection_pb2.Projection]:
        pages = self.pages(
            self.projection.ListProjections,
            lambda t: projection_pb2.ListProjectionsRequest(parent=embedding, page_size=100, page_token=t),
        )
        return [projection for page in pages for projection in page.projections]

    def clusters(self, projection: str, level: int = 0, all_levels: bool = False) -> pd.DataFrame:
        """A map's clusters at `level` (0: the finest, whose ids the points carry), or every
        level with `all_levels` (each row with its level and the id of its parent)."""
        found = self.call(
            self.projection.ListClusters,
            projection_pb2.ListClustersRequest(parent=projection, level=level, all_levels=all_levels),
        )
        return _frame(
            [
                {
                    "cluster": c.id,
                    "label": c.label,
                    "size": c.size,
                    "level": c.level,
                    "parent": c.parent_id,
                    "terms": list(c.terms),
                    "centroid": list(c.centroid),
                }
                for c in found.clusters
            ],
            ["cluster", "label", "size", "level", "parent", "terms", "centroid"],
        )

    def points_table(self, projection: str, columns: Sequence[str] = ()) -> pa.Table:
        """Every point of a map as an Arrow table, one row per dataset row, in row order:
        row, x, y (, z), cluster, then the chosen dataset columns (a column whose name is
        one of those is called `column:<name>`)."""
        import numpy as np
        import pyarrow as pa

        rows: list[npt.NDArray[np.uint32]] = []
        coordinates: list[npt.NDArray[np.float32]] = []
        cluster_ids: list[npt.NDArray[np.int32]] = []
        dimensions = 2
        for chunk in self.stream(self.projection.StreamPoints, projection_pb2.StreamPointsRequest(name=projection)):
            dimensions = chunk.dimensions or dimensions
            rows.append(np.frombuffer(chunk.row_indexes, dtype="<u4"))
            coordinates.append(np.frombuffer(chunk.coordinates, dtype="<f4").reshape(-1, dimensions))
            cluster_ids.append(np.frombuffer(chunk.cluster_ids, dtype="<i4"))
        row = np.concatenate(rows).astype(np.int64) if rows else np.empty(0, np.int64)
        xyz = np.concatenate(coordinates) if coordinates else np.empty((0, dimensions), np.float32)
        cluster = np.concatenate(cluster_ids) if cluster_ids else np.empty(0, np.int32)
        order = np.argsort(row, kind="stable")
        fields: dict[str, Any] = {"row": row[order]}
        for axis, label in enumerate("xyz"[:dimensions]):
            fields[label] = xyz[order, axis]
        fields["cluster"] = cluster[order]
        table = pa.table(fields)
        if columns:
            extra = self.read_columns(dataset_of(projection), columns)
            if extra.num_rows != len(row) or not np.array_equal(fields["row"], np.arange(len(row))):
                extra = extra.take(pa.array(fields["row"]))
            for name in extra.column_names:
                label = f"column:{name}" if name in POINT_COLUMNS else name
                table = table.append_column(label, extra.column(name))
        return table

    def points(self, projection: str, columns: Sequence[str] = ()) -> pd.DataFrame:
        """Every point of a map as a DataFrame indexed by row: x, y (, z), cluster and the
        chosen dataset columns (see `points_table`)."""
        return self.points_table(projection, columns).to_pandas().set_index("row")

    def _match_frame(
        self, projection: str, matches: Iterable[projection_pb2.PointMatch], columns: Sequence[str] | None
    ) -> pd.DataFrame:
        found = list(matches)
        if columns is None:
            columns = list(self.get_embedding(embedding_of(projection)).text_columns)
        values = self._rows_by_index(dataset_of(projection), [m.row_index for m in found], columns) if columns else {}
        records = [
            {"row": m.row_index, "score": float(m.score), **values.get(m.row_index, {})} for m in found
        ]
        return _frame(records, ["row", "score", *columns])

    def search(
        self,
        projection: str,
        query: str,
        *,
        limit: int = 20,
        column: str = "",
        columns: Sequence[str] | None = None,
    ) -> pd.DataFrame:
        """Rows by meaning (or, with `column`, by substring in that column), best first:
        row, score, and `columns` of each row (the embedded text columns when None)."""
        found = self.call(
            self.projection.SearchPoints,
            projection_pb2.SearchPointsRequest(name=projection, query=query, column=column, limit=limit),
        )
        return self._match_frame(projection, found.matches, columns)

    def neighbors(
        self, projection: str, row: int, *, limit: int = 10, columns: Sequence[str] | None = None
    ) -> pd.DataFrame:
        """A row's nearest neighbours in the vector space, nearest first (itself left out)."""
        found = self.call(
            self.projection.FindNeighbors,
            projection_pb2.FindNeighborsRequest(name=projection, row_index=row, limit=limit),
        )
        return self._match_frame(projection, found.neighbors, columns)

    def export(
        self,
        projection: str,
        path: str | os.PathLike[str],
        *,
        file_format: str = "",
        columns: Sequence[str] = (),
        rows: Sequence[int] = (),
        on_bytes: Callable[[int], None] | None = None,
    ) -> int:
        """Writes a map's points (row, x, y, cluster, label and `columns`) to a file; the
        format comes from `file_format` or else the file's extension. Returns its bytes."""
        target = Path(path)
        chosen = (file_format or target.suffix.lstrip(".")).lower()
        chosen = {"json": "jsonl", "ndjson": "jsonl", "pq": "parquet"}.get(chosen, chosen)
        if chosen not in EXPORT_FORMATS:
            known = ", ".join(EXPORT_FORMATS)
            raise ValueError(f"cannot tell the export format of {target.name}; give one of: {known}")
        partial = target.with_name(f".{target.name}.part")
        written = 0
        try:
            with partial.open("wb") as out:
                for chunk in self.stream(
                    self.projection.ExportProjection,
                    projection_pb2.ExportProjectionRequest(
                        name=projection, format=EXPORT_FORMATS[chosen], columns=list(columns), row_indexes=list(rows)
                    ),
                ):
                    out.write(chunk.data)
                    written += len(chunk.data)
                    if on_bytes:
                        on_bytes(written)
            partial.replace(target)
        finally:
            partial.unlink(missing_ok=True)
        return written

    # --- jobs ---------------------------------------------------------------------------

    def wait(self, resource: Watched, on_job: JobCallback | None = None) -> Watched:
        """Follows the job of a Dataset, Embedding or Projection through its Watch stream
        until it ends; raises JobFailed unless it SUCCEEDED. Reconnects when the stream
        drops (the first message is always the current state)."""
        kind, latest = _kind(resource), resource
        if on_job:
            on_job(latest.job)
        reconnects = 0
        while latest.job.state not in ENDED:
            try:
                for update in self._watch(latest):
                    latest = update
                    if on_job:
                        on_job(latest.job)
            except ApiError as error:
                if error.code != "UNAVAILABLE":
                    raise
            if latest.job.state in ENDED:
                break
            # The stream dropped (a restart, the network) before the job ended.
            reconnects += 1
            if reconnects > WATCH_RECONNECTS:
                raise ApiError(
                    "UNAVAILABLE",
                    f"lost the progress of {latest.name} {reconnects} times; `embedviz watch {latest.name}` follows it",
                )
            time.sleep(min(2.0**reconnects / 4, 5.0))
        if latest.job.state != job_pb2.JOB_STATE_SUCCEEDED:
            raise JobFailed(kind, latest, latest.job)
        return latest

    def watch(self, name: str, on_job: JobCallback | None = None) -> Watched_:
        """Follows the job of the resource with this name (dataset, embedding or map)."""
        if "/projections/" in name:
            return self.wait(self.get_projection(name), on_job)
        if "/embeddings/" in name:
            return self.wait(self.get_embedding(name), on_job)
        if "/datasets/" in name:
            return self.wait(self.get_dataset(name), on_job)
        raise ValueError(f"not a dataset, embedding or map: {name}")

    def _watch(self, resource: Watched) -> Iterator[Watched]:
        if isinstance(resource, ingest_pb2.Dataset):
            for d in self.stream(self.ingest.WatchDataset, ingest_pb2.WatchDatasetRequest(name=resource.name)):
                yield d.dataset
        elif isinstance(resource, embedding_pb2.Embedding):
            for e in self.stream(
                self.embedding.WatchEmbedding, embedding_pb2.WatchEmbeddingRequest(name=resource.name)
            ):
                yield e.embedding
        else:
            for p in self.stream(
                self.projection.WatchProjection, projection_pb2.WatchProjectionRequest(name=resource.name)
            ):
                yield p.projection


def _kind(resource: Watched_) -> str:
    if isinstance(resource, ingest_pb2.Dataset):
        return "import"
    if isinstance(resource, embedding_pb2.Embedding):
        return "embedding"
    return "map"


def _state(job: job_pb2.Job) -> str:
    return job_pb2.JobState.Name(job.state).removeprefix("JOB_STATE_").lower()


def _frame(records: list[dict[str, Any]], columns: Sequence[str]) -> pd.DataFrame:
    import pandas as pd

    return pd.DataFrame.from_records(records, columns=list(columns)) if records else pd.DataFrame(columns=list(columns))
