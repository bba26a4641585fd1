"""Hostile input for every RPC of every service, generated from the proto descriptors by
hypothesis and sent over real gRPC to the whole stack.

Requests carry random and missing fields, huge and hostile strings (NUL, control
characters, right-to-left marks, emoji, 100 KB), hostile resource names (paths with `..`,
percent escapes, another user's real names, ids of one project under another), hostile
page tokens (base64 JSON of the wrong shape, negative or huge offsets, edited tokens,
tokens another call gave out), huge page sizes and negative numbers; and, apart from
those, bytes that are no valid message at all. The internal services are called too,
without the internal secret.

For every call: the status is never INTERNAL or UNKNOWN, the answer comes within
CALL_TIMEOUT, the error message stays short, and the service is still SERVING. At the end
another user's project, dataset and rows are exactly as they were.

The run is bounded: EMBEDVIZ_FUZZ_EXAMPLES requests per method at most and
EMBEDVIZ_FUZZ_SECONDS for the whole fuzzer; it prints how many requests it made.
"""

from __future__ import annotations

import base64
import json
import os
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import field_mask_pb2, message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from embedviz.v1 import auth_pb2, embedding_pb2, embedding_pb2_grpc, ingest_pb2, projection_pb2, projection_pb2_grpc
from services.common.clients import INTERNAL_SECRET_HEADER
from services.stack import Stack
from tests.support.world import Person, Stubs, bearer

pytestmark = pytest.mark.slow

PROTO_MODULES = (auth_pb2, ingest_pb2, embedding_pb2, projection_pb2)
ADDRESS_OF = {"Auth": "auth", "Ingest": "ingest", "Embedding": "embedding", "Projection": "projection"}
EXAMPLES = int(os.environ.get("EMBEDVIZ_FUZZ_EXAMPLES", "100"))
MIN_EXAMPLES = min(EXAMPLES, 8)  # requests every method gets, whatever the budget says
BUDGET_SECONDS = float(os.environ.get("EMBEDVIZ_FUZZ_SECONDS", "60"))
CALL_TIMEOUT = 20.0
STREAM_MESSAGES = 3  # server streams: read this many, then cancel
MAX_DETAILS_BYTES = 1024  # services.common.errors.MAX_MESSAGE_BYTES
# EMBEDVIZ_FUZZ_COLLECT=1: note every finding and go on (the last test fails on them),
# instead of stopping and shrinking at the first; for a survey of many at once.
COLLECT = os.environ.get("EMBEDVIZ_FUZZ_COLLECT") == "1"
REPORT = Path(__file__).resolve().parents[1] / "test-artifacts" / "fuzz.json"

# Calls that destroy or demote: never given the fuzzing user's own real names, so the
# resources the other calls reach stay in place for the whole run.
DESTRUCTIVE = {
    "/embedviz.v1.IngestService/DeleteProject",
    "/embedviz.v1.IngestService/DeleteDataset",
    "/embedviz.v1.IngestService/DeleteMember",
    "/embedviz.v1.IngestService/UpdateMember",
    "/embedviz.v1.EmbeddingService/DeleteEmbedding",
    "/embedviz.v1.ProjectionService/DeleteProjection",
    "/embedviz.v1.AuthService/DeleteApiKey",
    "/embedviz.v1.AuthService/Logout",
}
# String fields that hold resource names.
NAME_FIELDS = {"name", "parent", "project", "dataset", "embedding", "upload", "user", "model"}
NEVER = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}


def all_methods() -> list[tuple[str, MethodDescriptor]]:
    found = []
    for module in PROTO_MODULES:
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                found.append((f"/{service.full_name}/{method.name}", method))
    return found


METHODS = all_methods()


def service_of(method: str) -> str:
    service = method.split("/")[1].split(".")[-1]
    return next(v for k, v in ADDRESS_OF.items() if service.startswith(k))


# --- what the fuzzer knows of the world ------------------------------------------------


@dataclass
class Targets:
    """Real resources: the fuzzing user's (a), and a second user's (b) that must not change."""

    a: Person
    b: Person
    a_names: list[str]  # the fuzzing user's own resources, offered to non-destructive calls
    b_names: list[str]  # the other user's: every call gets them
    ids: list[str]  # ids of both, to splice into made-up names
    emails: list[str]
    page_tokens: list[str]  # real tokens from A's List calls (other calls' tokens)
    columns: list[str]
    b_project: str
    b_dataset: str


@dataclass
class Stats:
    requests: int = 0
    codes: Counter[str] = field(default_factory=Counter)
    per_method: Counter[str] = field(default_factory=Counter)
    seconds_per_method: Counter[str] = field(default_factory=Counter)
    slowest: tuple[float, str] = (0.0, "")
    first_share: float | None = None
    shares_taken: int = 0
    findings: list[str] = field(default_factory=list)


STATS = Stats()


async def _snapshot(stubs: Stubs, b: Person, project: str, dataset: str) -> dict[str, Any]:
    """Everything of b's that a fuzzing user could try to change, as plain values."""
    got = await stubs.ingest.GetProject(ingest_pb2.GetProjectRequest(name=project), metadata=b.md)
    members = await stubs.ingest.ListMembers(ingest_pb2.ListMembersRequest(parent=project), metadata=b.md)
    datasets = await stubs.ingest.ListDatasets(ingest_pb2.ListDatasetsRequest(parent=project), metadata=b.md)
    data = await stubs.ingest.GetDataset(ingest_pb2.GetDatasetRequest(name=dataset), metadata=b.md)
    rows = await stubs.ingest.ListRows(ingest_pb2.ListRowsRequest(parent=dataset, page_size=1000), metadata=b.md)
    embeddings = await stubs.embedding.ListEmbeddings(
        embedding_pb2.ListEmbeddingsRequest(parent=dataset), metadata=b.md
    )
    keys = await stubs.auth.ListApiKeys(auth_pb2.ListApiKeysRequest(), metadata=b.md)
    return {
        "project": (got.display_name, got.description),
        "members": sorted((m.name, m.role) for m in members.members),
        "datasets": sorted(d.name for d in datasets.datasets),
        "dataset": (data.row_count, [c.name for c in data.columns], data.job.state, data.display_name),
        "rows": [r.SerializeToString(deterministic=True) for r in rows.rows],
        "embeddings": [e.name for e in embeddings.embeddings],
        "api_keys": sorted(k.name for k in keys.api_keys),
    }


async def _first_token(call: Any, request: Message, md: Any) -> str:
    response = await call(request, metadata=md)
    token = response.next_page_token
    assert token, f"{type(request).__name__} gave no next page; the fuzzer needs a real token"
    return str(token)


@pytest.fixture(scope="module")
async def targets(stack: Stack) -> AsyncIterator[tuple[Targets, dict[str, Any]]]:
    stubs = Stubs(stack)
    try:
        a, b, c = [await stubs.sign_up(label) for label in ("fuzzer", "victim", "member")]
        project = await stubs.make_project(a, "fuzzed")
        await stubs.make_project(a, "fuzzed too")
        member = (await stubs.add_member(a, project, c, ingest_pb2.ROLE_VIEWER)).name
        dataset = await stubs.make_dataset(a, project, n_rows=60)
        await stubs.make_dataset(a, project, n_rows=10, wait=False)
        embedding = await stubs.make_embedding(a, dataset)
        second = await stubs.make_embedding(a, dataset, wait=False)
        await stubs.embedding.CancelEmbedding(embedding_pb2.CancelEmbeddingRequest(name=second), metadata=a.md)
        projection = await stubs.make_projection(a, embedding)
        other = await stubs.make_projection(a, embedding, wait=False)
        await stubs.projection.CancelProjection(projection_pb2.CancelProjectionRequest(name=other), metadata=a.md)
        upload = await stubs.ingest.CreateUpload(
            ingest_pb2.CreateUploadRequest(
                parent=project, upload=ingest_pb2.Upload(filename="half.csv", size_bytes=100)
            ),
            metadata=a.md,
        )
        key = await stubs.auth.CreateApiKey(
            auth_pb2.CreateApiKeyRequest(api_key=auth_pb2.ApiKey(display_name="one")), metadata=a.md
        )
        await stubs.auth.CreateApiKey(
            auth_pb2.CreateApiKeyRequest(api_key=auth_pb2.ApiKey(display_name="two")), metadata=a.md
        )

        b_project = await stubs.make_project(b, "victim")
        await stubs.ingest.UpdateProject(
            ingest_pb2.UpdateProjectRequest(
                project=ingest_pb2.Project(name=b_project, description="must not change"),
                update_mask=field_mask_pb2.FieldMask(paths=["description"]),
            ),
            metadata=b.md,
        )
        b_dataset = await stubs.make_dataset(b, b_project, n_rows=20)
        b_key = await stubs.auth.CreateApiKey(
            auth_pb2.CreateApiKeyRequest(api_key=auth_pb2.ApiKey(display_name="b's")), metadata=b.md
        )

        tokens = [
            await _first_token(stubs.ingest.ListProjects, ingest_pb2.ListProjectsRequest(page_size=1), a.md),
            await _first_token(
                stubs.ingest.ListMembers, ingest_pb2.ListMembersRequest(parent=project, page_size=1), a.md
            ),
            await _first_token(
                stubs.ingest.ListDatasets, ingest_pb2.ListDatasetsRequest(parent=project, page_size=1), a.md
            ),
            await _first_token(stubs.ingest.ListRows, ingest_pb2.ListRowsRequest(parent=dataset, page_size=1), a.md),
            await _first_token(stubs.ingest.ListRows, ingest_pb2.ListRowsRequest(parent=b_dataset, page_size=1), b.md),
            await _first_token(
                stubs.embedding.ListEmbeddings, embedding_pb2.ListEmbeddingsRequest(parent=dataset, page_size=1), a.md
            ),
            await _first_token(
                stubs.projection.ListProjections,
                projection_pb2.ListProjectionsRequest(parent=embedding, page_size=1),
                a.md,
            ),
            await _first_token(stubs.auth.ListApiKeys, auth_pb2.ListApiKeysRequest(page_size=1), a.md),
        ]
        ids = [
            n.rsplit("/", 1)[-1] for n in (project, dataset, embedding, projection, upload.name, b_project, b_dataset)
        ]
        found = Targets(
            a=a,
            b=b,
            a_names=[
                project,
                dataset,
                embedding,
                projection,
                second,
                other,
                upload.name,
                member,
                key.api_key.name,
                a.user,
            ],
            b_names=[
                b_project,
                b_dataset,
                f"{b_project}/members/{b.user_id}",
                b_key.api_key.name,
                b.user,
                f"{b_dataset}/embeddings/{ids[2]}",
                f"{project}/datasets/{ids[6]}",
                f"{b_project}/datasets/{ids[1]}",
                f"{b_project}/uploads/{ids[4]}",
                f"{b_dataset}/embeddings/{ids[2]}/projections/{ids[3]}",
            ],
            ids=ids + [a.user_id, b.user_id],
            emails=[a.email, b.email, c.email],
            page_tokens=tokens,
            columns=["text", "label", "__row", "id"],
            b_project=b_project,
            b_dataset=b_dataset,
        )
        yield found, await _snapshot(stubs, b, b_project, b_dataset)
    finally:
        await stubs.close()


@pytest.fixture(scope="module")
def channels(stack: Stack) -> Iterator[dict[str, grpc.Channel]]:
    opened = {
        name: grpc.insecure_channel(stack.addrs[name], options=[("grpc.max_receive_message_length", 64 * 1024 * 1024)])
        for name in ADDRESS_OF.values()
    }
    yield opened
    for channel in opened.values():
        channel.close()
    _report()


def _report() -> str:
    """Write test-artifacts/fuzz.json and return the one-line summary."""
    elapsed = time.monotonic() - (STATS.first_share or time.monotonic())
    summary = {
        "requests": STATS.requests,
        "seconds": round(elapsed, 1),
        "methods": len(STATS.per_method),
        "codes": dict(STATS.codes.most_common()),
        "slowest": {"seconds": round(STATS.slowest[0], 2), "method": STATS.slowest[1]},
        "seconds_per_method": {m: round(t, 2) for m, t in STATS.seconds_per_method.most_common()},
        "findings": STATS.findings,
    }
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    REPORT.write_text(json.dumps(summary, indent=2))
    line = (
        f"fuzzer: {STATS.requests} requests to {len(STATS.per_method)} methods in {elapsed:.0f} s; "
        f"statuses {dict(STATS.codes.most_common())}"
    )
    return line


# --- strategies from the descriptors ---------------------------------------------------

HOSTILE_STRINGS = [
    "", " ", "\x00", "a\x00b", "\x01\x02\x1b[31mred", "\x7f", "\x85", "\u2028", "\u200b", "\u202eevil", "\ufeff",
    "🚀", "👩\u200d👩\u200d👧", "é", "e\u0301", "Ω≈ç√∫", "ｆｕｌｌ", "' OR '1'='1", "'; DROP TABLE projects; --",
    "%s%n%x", "%00", "{0}", "{title}", "{", "}", "{}", "{{}}", "{text}", "{text!r:>{x}}", "${jndi:ldap://x}",
    "../../etc/passwd", "NaN", "nan", "inf", "-inf", "null", "true", "-1", "1e309", "\\", '"', "`", "``",
    "line\nbreak", "tab\there", "\r\n", "contains", "AND", "= =", 'text contains "x', "text >= 4", "__row = 1",
    "text = null", "label != `", "`text` contains \"a\" AND id > -1", "id desc", "text asc", "text desc desc",
    "utf-16", "latin-1", "gzip", "zstd", "none", ",", "'", "\t", "cosine", "euclidean", "x" * 80,
]
HUGE_STRINGS = st.builds(
    lambda ch, n: ch * n,
    st.sampled_from(["x", "é", "🚀", "\x00", "a\u202e", "a\n"]),
    st.sampled_from([200, 201, 501, 4096, 4097, 10_001, 16_385, 100_001]),
)
SEGMENTS = ["projects", "datasets", "embeddings", "projections", "uploads", "members", "users", "apiKeys", "models",
            "..", ".", "", "%2e%2e", "*", "-", "_", "a" * 63, "a" * 64, "\x00", "é", " "]


# Values a real client sends: they pass the input rules, so the request reaches the
# handler and the code behind it with the hostile values in the other fields.
PLAUSIBLE_STRINGS = [
    "text", "label", "id", "hello world", "reviews.csv", "notes.tsv", "data.parquet", "rows.jsonl.gz", "a rocket",
    "{text}", "{text}: {label}", "{label}{text}{label}", "text desc", "label", "id asc", 'label = "a"',
    'text contains "rocket"', "id >= 3 AND id < 10", "id = 2.5e3", "label != null", "rocket", "models/all-minilm-l6-v2",
    "all-minilm-l6-v2", "cosine", "euclidean", "utf-8", "latin-1", "gzip", "none", ";", "|", "display_name",
    "description", "role", "x@example.org", "correct horse battery",
]


def plausible_or_hostile() -> st.SearchStrategy[str]:
    return st.one_of(st.sampled_from(PLAUSIBLE_STRINGS), st.sampled_from(PLAUSIBLE_STRINGS), hostile_strings())


def hostile_strings() -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from(HOSTILE_STRINGS),
        # A plausible value with one control character somewhere: it would be stored.
        st.builds(
            lambda p, at, c: p[: at % (len(p) + 1)] + c + p[at % (len(p) + 1) :],
            st.sampled_from(PLAUSIBLE_STRINGS),
            st.integers(0, 40),
            st.sampled_from(["\x00", "\x1b", "\x85", "\n", "\x7f"]),
        ),
        st.text(max_size=30),
        HUGE_STRINGS,
        st.builds(lambda a, b: a + b, st.sampled_from(HOSTILE_STRINGS), st.text(max_size=8)),
    )


def hostile_names(targets: Targets, destructive: bool) -> st.SearchStrategy[str]:
    real = targets.b_names + ([] if destructive else targets.a_names)
    segment = st.one_of(st.sampled_from(SEGMENTS + targets.ids), st.text(max_size=6))
    made_up = st.builds("/".join, st.lists(segment, min_size=1, max_size=8))
    return st.one_of(
        st.sampled_from(real),
        st.sampled_from(real),
        st.sampled_from(real),
        made_up,
        st.builds(
            lambda n, s: n + s, st.sampled_from(real), st.sampled_from(["/", "/..", "%00", "\x00", "/x", " ", "é"])
        ),
        st.sampled_from(
            [
                "projects/../x",
                "projects/%00",
                "projects/\x00",
                "projects/",
                "/projects/x",
                "projects//x",
                "models/../../etc",
                "users/../..",
                "users/me",
                "models/default",
                "PROJECTS/x",
            ]
        ),
        hostile_strings(),
    )


def _b64(value: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode()


def hostile_tokens(targets: Targets) -> st.SearchStrategy[str]:
    shapes = [
        {"o": -1},
        {"o": 10**30},
        {"o": 2**63},
        {"o": "1"},
        {"o": 1.5},
        {"o": None},
        {},
        [],
        None,
        "x",
        1,
        -5,
        ["2020-01-01T00:00:00+00:00", "id"],
        ["not a time", 1],
        [None, None],
        [1],
        {"p": targets.b_dataset, "t": "2020", "id": 1},
        {"p": targets.b_dataset, "t": "2020-01-01T00:00:00+00:00", "id": "x"},
        {"o": 1, "q": [targets.b_dataset, "", ""]},
        targets.b_project,
        {"o": 5},
    ]
    real = targets.page_tokens

    def edited(token: str, at: int, char: str) -> str:
        at %= max(len(token), 1)
        return token[:at] + char + token[at + 1:]

    return st.one_of(
        st.sampled_from(real),
        st.builds(
            edited, st.sampled_from(real), st.integers(0, 200), st.sampled_from(["A", "_", "-", ".", "=", "\x00", "é"])
        ),
        st.builds(lambda t, n: t[:n], st.sampled_from(real), st.integers(0, 40)),
        st.builds(lambda t, u: t.split(".")[0] + "." + u.split(".")[-1], st.sampled_from(real), st.sampled_from(real)),
        st.sampled_from([_b64(s) for s in shapes]),
        st.builds(
            lambda s, sig: _b64(s).rstrip("=") + "." + base64.urlsafe_b64encode(sig).decode().rstrip("="),
            st.sampled_from(shapes),
            st.binary(min_size=16, max_size=16),
        ),
        hostile_strings(),
    )


def ints(f: FieldDescriptor) -> st.SearchStrategy[int]:
    unsigned = f.type in (
        FieldDescriptor.TYPE_UINT32,
        FieldDescriptor.TYPE_UINT64,
        FieldDescriptor.TYPE_FIXED32,
        FieldDescriptor.TYPE_FIXED64,
    )
    bits = 32 if f.cpp_type in (FieldDescriptor.CPPTYPE_INT32, FieldDescriptor.CPPTYPE_UINT32) else 64
    low, high = (0, 2**bits - 1) if unsigned else (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    special = [0, 1, 2, 3, -1, -2, 5, 10, 59, 60, 61, 99, 100, 1000, 1001, 4096, 65536, 65537, 1 << 20, (1 << 20) + 1,
               10**9, 2**31 - 1, -(2**31), 2**32 - 1, 2**53, 2**63 - 1, -(2**63), low, high]
    return st.one_of(
        st.sampled_from([v for v in special if low <= v <= high]), st.integers(max(low, -10_000), min(high, 10_000))
    )


def _is_repeated(f: FieldDescriptor) -> bool:
    repeated = getattr(f, "is_repeated", None)
    return bool(repeated) if repeated is not None else f.label == FieldDescriptor.LABEL_REPEATED


@dataclass
class Drawer:
    """Draws a request for a message descriptor. Its mood, drawn once a request, decides
    the strings: "hostile" everywhere, "plausible" (what a real client sends, so that the
    request gets past the input rules and the hostile numbers, names and tokens reach the
    handler), or a mix field by field."""

    data: st.DataObject
    targets: Targets
    destructive: bool
    mood: str = "mixed"

    def request(self, descriptor: Descriptor) -> Message:
        self.mood = self.data.draw(st.sampled_from(["hostile", "plausible", "mixed"]), label="mood")
        return self.message(descriptor)

    def message(self, descriptor: Descriptor, depth: int = 0) -> Message:
        message = message_factory.GetMessageClass(descriptor)()
        for f in descriptor.fields:
            if not self.data.draw(st.booleans(), label=f"set {f.full_name}"):
                continue  # a missing field
            if f.message_type is not None and f.message_type.GetOptions().map_entry:
                continue  # no map in the protos; a new one gets its values from its entry type below
            if _is_repeated(f):
                self._repeated(message, f, depth)
            elif f.type == FieldDescriptor.TYPE_MESSAGE:
                if depth < 3:
                    getattr(message, f.name).CopyFrom(self.message(f.message_type, depth + 1))
            else:
                setattr(message, f.name, self.scalar(f))
        return message

    def _repeated(self, message: Message, f: FieldDescriptor, depth: int) -> None:
        target = getattr(message, f.name)
        big = self.data.draw(st.sampled_from([0, 0, 0, 0, 1001, 10_001]), label=f"many {f.full_name}")
        if big and f.type != FieldDescriptor.TYPE_MESSAGE:
            value = (
                "x"
                if f.type == FieldDescriptor.TYPE_STRING
                else (b"x" if f.type == FieldDescriptor.TYPE_BYTES else None)
            )
            if value is None and f.cpp_type in (FieldDescriptor.CPPTYPE_FLOAT, FieldDescriptor.CPPTYPE_DOUBLE):
                target.extend([0.5] * big)
            elif value is None and f.cpp_type == FieldDescriptor.CPPTYPE_BOOL:
                target.extend([True] * big)
            elif value is None:
                target.extend(range(big))
            else:
                target.extend([value] * big)
            return
        count = self.data.draw(st.integers(0, 4), label=f"count {f.full_name}")
        for _ in range(count):
            if f.type == FieldDescriptor.TYPE_MESSAGE:
                if depth < 3:
                    target.add().CopyFrom(self.message(f.message_type, depth + 1))
            else:
                target.append(self.scalar(f))

    def _plausible(self, f: FieldDescriptor) -> st.SearchStrategy[str]:
        t = self.targets
        if f.name == "page_token":
            return st.sampled_from(["", *t.page_tokens])
        if f.name in NAME_FIELDS:
            return st.sampled_from(t.b_names + ([] if self.destructive else t.a_names * 3))
        if "email" in f.name:
            return st.sampled_from(t.emails)
        if "column" in f.name:
            return st.sampled_from(t.columns)
        return st.sampled_from(PLAUSIBLE_STRINGS)

    def scalar(self, f: FieldDescriptor) -> Any:
        draw = self.data.draw
        if f.type == FieldDescriptor.TYPE_STRING:
            if self.mood == "plausible":
                return draw(self._plausible(f), label=f.full_name)
            if f.name == "page_token":
                return draw(hostile_tokens(self.targets), label="page_token")
            if f.name in NAME_FIELDS:
                return draw(hostile_names(self.targets, self.destructive), label=f.full_name)
            if "email" in f.name:
                return draw(st.one_of(st.sampled_from(self.targets.emails), hostile_strings()), label=f.full_name)
            if "column" in f.name:
                return draw(st.one_of(st.sampled_from(self.targets.columns), plausible_or_hostile()), label=f.full_name)
            if self.mood == "hostile":
                return draw(hostile_strings(), label=f.full_name)
            return draw(plausible_or_hostile(), label=f.full_name)
        if f.type == FieldDescriptor.TYPE_BYTES:
            return draw(
                st.one_of(st.binary(max_size=64), st.sampled_from([b"", b"\x00" * 100, b"text\n0\n"])),
                label=f.full_name,
            )
        if f.type == FieldDescriptor.TYPE_BOOL:
            return draw(st.booleans())
        if f.type == FieldDescriptor.TYPE_ENUM:
            return draw(
                st.one_of(st.sampled_from([v.number for v in f.enum_type.values]), st.integers(-3, 50)),
                label=f.full_name,
            )
        if f.cpp_type in (FieldDescriptor.CPPTYPE_FLOAT, FieldDescriptor.CPPTYPE_DOUBLE):
            width = 32 if f.cpp_type == FieldDescriptor.CPPTYPE_FLOAT else 64
            return draw(st.one_of(st.sampled_from([0.0, -1.0, 0.5, 1.0, 1.5, 1e30, -1e30, float("nan"), float("inf")]),
                                  st.floats(width=width)), label=f.full_name)
        return draw(ints(f), label=f.full_name)


# --- calling ---------------------------------------------------------------------------


@dataclass
class Answer:
    code: grpc.StatusCode
    details: str
    trailers_bytes: int
    response: Message | None


def _call(channel: grpc.Channel, method: str, descriptor: MethodDescriptor, request: Any,
          metadata: tuple[tuple[str, str], ...], raw: bool = False) -> Answer:
    response_class = message_factory.GetMessageClass(descriptor.output_type)
    serialize = (lambda b: b) if raw else (lambda m: m.SerializeToString())
    try:
        if descriptor.server_streaming:
            stream = channel.unary_stream(
                method, request_serializer=serialize, response_deserializer=response_class.FromString
            )
            call = stream(request, metadata=metadata, timeout=CALL_TIMEOUT)
            last = None
            try:
                for index, item in enumerate(call):
                    last = item
                    if index + 1 >= STREAM_MESSAGES:
                        break
            finally:
                call.cancel()
            return Answer(grpc.StatusCode.OK, "", 0, last)
        unary = channel.unary_unary(
            method, request_serializer=serialize, response_deserializer=response_class.FromString
        )
        return Answer(grpc.StatusCode.OK, "", 0, unary(request, metadata=metadata, timeout=CALL_TIMEOUT))
    except grpc.RpcError as exc:
        trailers = exc.trailing_metadata() or ()  # type: ignore[attr-defined]
        size = sum(len(k) + len(v if isinstance(v, (bytes, str)) else str(v)) for k, v in trailers)
        return Answer(exc.code(), exc.details() or "", size, None)  # type: ignore[attr-defined]


def _serving(channel: grpc.Channel) -> bool:
    response = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
    return response.status == health_pb2.HealthCheckResponse.SERVING


def _cancel_started_job(channels: dict[str, grpc.Channel], targets: Targets, answer: Answer) -> None:
    """A hostile request that still started a job (it happens: the input was valid): stop it."""
    name = getattr(answer.response, "name", "")
    md = bearer(targets.a.token)
    try:
        if isinstance(answer.response, embedding_pb2.Embedding) and name:
            embedding_pb2_grpc.EmbeddingServiceStub(channels["embedding"]).CancelEmbedding(
                embedding_pb2.CancelEmbeddingRequest(name=name), metadata=md, timeout=10
            )
        elif isinstance(answer.response, projection_pb2.Projection) and name:
            projection_pb2_grpc.ProjectionServiceStub(channels["projection"]).CancelProjection(
                projection_pb2.CancelProjectionRequest(name=name), metadata=md, timeout=10
            )
    except grpc.RpcError:
        pass  # it ended already


def _judge(method: str, request: Any, answer: Answer, elapsed: float) -> None:
    try:
        _check_answer(method, request, answer, elapsed)
    except AssertionError as exc:
        if not COLLECT:
            raise
        STATS.findings.append(str(exc))


def _check_answer(method: str, request: Any, answer: Answer, elapsed: float) -> None:
    STATS.requests += 1
    STATS.codes[answer.code.name] += 1
    STATS.per_method[method] += 1
    STATS.seconds_per_method[method] += elapsed
    STATS.slowest = max(STATS.slowest, (elapsed, method))
    shown = repr(request)[:600] if not isinstance(request, bytes) else repr(request[:200])
    assert answer.code not in NEVER, f"{method} answered {answer.code.name} ({answer.details[:300]!r}) to {shown}"
    assert answer.code != grpc.StatusCode.DEADLINE_EXCEEDED, f"{method} did not answer within {CALL_TIMEOUT} s: {shown}"
    assert len(answer.details.encode()) <= MAX_DETAILS_BYTES, (
        f"{method}: a {len(answer.details)}-character message for {shown}"
    )
    assert answer.trailers_bytes < 8192, f"{method}: {answer.trailers_bytes} bytes of trailers for {shown}"
    if answer.code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        assert "metadata" not in answer.details.lower() and "header" not in answer.details.lower(), answer.details


def _metadata(draw: Any, targets: Targets, internal: bool) -> tuple[tuple[str, str], ...]:
    who = draw(st.sampled_from(["a"] * 6 + ["none", "garbage"]), label="caller")
    md = bearer(targets.a.token if who == "a" else ("not-a-jwt" if who == "garbage" else None))
    # Failed logins count per client address: a made-up one for each request, so the
    # fuzzer never throttles 127.0.0.1 for the tests that log in after it.
    md += (("x-forwarded-for", f"198.51.100.{STATS.requests % 250}"),)
    if internal and draw(st.booleans(), label="wrong secret"):
        md += ((INTERNAL_SECRET_HEADER, draw(st.sampled_from(["", "wrong", "x" * 5000]))),)
    return md


def _spent(made: int, deadline: float) -> bool:
    """A test's share of the budget is spent (after the few requests it always gets)."""
    return time.monotonic() > deadline and made >= MIN_EXAMPLES


def _deadline() -> float:
    """This test's share of what is left of the budget (every method and the raw-bytes
    test get one share each)."""
    now = time.monotonic()
    if STATS.first_share is None:
        STATS.first_share = now
    left = BUDGET_SECONDS - (now - STATS.first_share)
    shares_left = max(len(METHODS) + 1 - STATS.shares_taken, 1)
    STATS.shares_taken += 1
    return now + max(left, 0.0) / shares_left


# --- the properties ----------------------------------------------------------------------


def test_every_rpc_of_the_protos_is_fuzzed() -> None:
    assert len(METHODS) >= 50, "the fuzzer found fewer methods than the protos have"


@pytest.mark.parametrize("method,descriptor", METHODS, ids=[m.split("/", 1)[1] for m, _ in METHODS])
def test_hostile_requests_never_reach_internal(
    method: str,
    descriptor: MethodDescriptor,
    targets: tuple[Targets, dict[str, Any]],
    channels: dict[str, grpc.Channel],
) -> None:
    world, _ = targets
    channel = channels[service_of(method)]
    internal = "InternalService" in method
    deadline = _deadline()

    @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=False,
              suppress_health_check=list(HealthCheck))
    @given(data=st.data())
    def fuzz(data: st.DataObject) -> None:
        drawer = Drawer(data, world, method in DESTRUCTIVE)
        request = drawer.request(descriptor.input_type)
        metadata = _metadata(data.draw, world, internal)
        # Checked after every draw: hypothesis replays examples and wants the same draws.
        if _spent(STATS.per_method[method], deadline):
            return
        started = time.monotonic()
        answer = _call(channel, method, descriptor, request, metadata)
        _judge(method, request, answer, time.monotonic() - started)
        if answer.code == grpc.StatusCode.OK:
            _cancel_started_job(channels, world, answer)
        assert _serving(channel), f"{service_of(method)} is not SERVING after {method}"

    fuzz()


def test_bytes_that_are_no_message_never_reach_internal(
    targets: tuple[Targets, dict[str, Any]], channels: dict[str, grpc.Channel]
) -> None:
    world, _ = targets
    deadline = _deadline()
    made = [0]

    @settings(max_examples=max(EXAMPLES, 60), deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(
        target=st.sampled_from(METHODS),
        raw=st.one_of(
            st.binary(min_size=1, max_size=64),
            st.sampled_from(
                [
                    b"\x0a\x02\xff\xfe",
                    b"\xff\xff\xff\xff",
                    b"\x0a\x05ab",
                    b"\x08" + b"\xff" * 11,
                    b"\x12\x80\x80\x80\x80\x10",
                ]
            ),
        ),
    )
    def fuzz(target: tuple[str, MethodDescriptor], raw: bytes) -> None:
        method, descriptor = target
        if _spent(made[0], deadline):
            return
        made[0] += 1
        channel = channels[service_of(method)]
        started = time.monotonic()
        answer = _call(channel, method, descriptor, raw, bearer(world.a.token), raw=True)
        _judge(method, raw, answer, time.monotonic() - started)
        assert _serving(channel)

    fuzz()


async def test_zz_services_serving_and_the_other_users_data_unchanged(
    stack: Stack,
    targets: tuple[Targets, dict[str, Any]],
    channels: dict[str, grpc.Channel],
    capsys: pytest.CaptureFixture[str],
) -> None:
    world, before = targets
    line = _report()
    with capsys.disabled():  # the request count belongs in every run's output
        print(f"\n{line}")
    assert STATS.findings == [], "\n".join(STATS.findings)
    for name, channel in channels.items():
        assert _serving(channel), f"{name} is not SERVING after the fuzzer"
    stubs = Stubs(stack)
    try:
        assert await _snapshot(stubs, world.b, world.b_project, world.b_dataset) == before
    finally:
        await stubs.close()
