"""The role matrix: every RPC of every service, called over real gRPC against the whole
stack by an owner, an editor, a viewer, an outsider and an anonymous caller, on real
resources (a project with datasets, embeddings and projections of 100 rows).

The expected status of each cell comes from the one access table the servers enforce,
services/common/authz.py RULES:
  allowed          -> OK, or a validation answer (INVALID_ARGUMENT, FAILED_PRECONDITION, ...)
  no role          -> NOT_FOUND (never a hint that the project exists)
  too small a role -> PERMISSION_DENIED
  no token         -> UNAUTHENTICATED (public methods answer; internal ones want the secret)
The methods are enumerated from the proto descriptors, so a new RPC without a rule or
without a request here fails this test.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from google.protobuf import field_mask_pb2, message_factory
from google.protobuf.message import Message

from embedviz.v1 import auth_pb2, embedding_pb2, ingest_pb2, projection_pb2
from services.common import authz
from services.common.authz import EDITOR, OWNER, RULES, VIEWER, Kind, Rule
from services.stack import Stack
from tests.support.world import Person, Stubs, bearer

pytestmark = pytest.mark.slow

PROTO_MODULES = (auth_pb2, ingest_pb2, embedding_pb2, projection_pb2)
ROLES = ("anonymous", "outsider", "viewer", "editor", "owner")  # the owner last: it may destroy
RANK = {"viewer": VIEWER, "editor": EDITOR, "owner": OWNER}
ADDRESS_OF = {"Auth": "auth", "Ingest": "ingest", "Embedding": "embedding", "Projection": "projection"}
# Answers that mean "the call got past access control" (the request itself may be wrong on purpose).
ALLOWED = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.OUT_OF_RANGE,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.UNIMPLEMENTED,
}
# Destructive calls go last, in this order, after every other method.
LAST = [
    "/embedviz.v1.ProjectionService/DeleteProjection",
    "/embedviz.v1.EmbeddingService/DeleteEmbedding",
    "/embedviz.v1.IngestService/DeleteDataset",
    "/embedviz.v1.IngestService/DeleteMember",
    "/embedviz.v1.IngestService/DeleteProject",
]


def all_methods() -> list[tuple[str, Any]]:
    """(full method name, method descriptor) of every service in the embedviz protos."""
    found = []
    for module in PROTO_MODULES:
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                found.append((f"/{service.full_name}/{method.name}", method))
    return found


def expected(rule: Rule, role: str) -> str:
    if rule.kind is Kind.INTERNAL:
        return "PERMISSION_DENIED"  # no internal secret, whoever asks
    if role == "anonymous":
        return "allowed" if rule.kind is Kind.PUBLIC else "UNAUTHENTICATED"
    if rule.kind in (Kind.PUBLIC, Kind.AUTHENTICATED):
        return "allowed"
    if rule.kind is Kind.OWN_USER:  # the resources named belong to the owner
        return "allowed" if role == "owner" else "NOT_FOUND"
    if role == "outsider":
        return "NOT_FOUND"
    return "allowed" if RANK[role] >= rule.minimum else "PERMISSION_DENIED"


@dataclass
class World:
    people: dict[str, Person]
    spare: Person  # a signed-up user the owner adds as a member
    project: str
    dataset: str
    dataset_throwaway: str
    embedding: str
    embedding_throwaway: str
    projection: str
    projection_throwaway: str
    upload: str  # created, never finished
    member: str  # a third member, for UpdateMember / DeleteMember
    api_key: str  # the owner's


Build = Callable[[World, str], Message]


def _mask(*paths: str) -> field_mask_pb2.FieldMask:
    return field_mask_pb2.FieldMask(paths=list(paths))


def _for(role: str, mine: str, other: str) -> str:
    """Destructive calls: an editor gets a throwaway, the owner the real one (at the end)."""
    return other if role == "editor" else mine


# One request per method. A method of the protos without an entry here fails the test.
REQUESTS: dict[str, Build] = {
    "/embedviz.v1.AuthService/SignUp": lambda w, r: auth_pb2.SignUpRequest(),
    "/embedviz.v1.AuthService/Login": lambda w, r: auth_pb2.LoginRequest(),
    "/embedviz.v1.AuthService/RefreshSession": lambda w, r: auth_pb2.RefreshSessionRequest(),
    "/embedviz.v1.AuthService/Logout": lambda w, r: auth_pb2.LogoutRequest(),
    "/embedviz.v1.AuthService/GetCurrentUser": lambda w, r: auth_pb2.GetCurrentUserRequest(),
    "/embedviz.v1.AuthService/CreateApiKey": lambda w, r: auth_pb2.CreateApiKeyRequest(
        api_key=auth_pb2.ApiKey(display_name="matrix")
    ),
    "/embedviz.v1.AuthService/ListApiKeys": lambda w, r: auth_pb2.ListApiKeysRequest(),
    "/embedviz.v1.AuthService/DeleteApiKey": lambda w, r: auth_pb2.DeleteApiKeyRequest(name=w.api_key),
    "/embedviz.v1.AuthService/ExchangeApiKey": lambda w, r: auth_pb2.ExchangeApiKeyRequest(),
    "/embedviz.v1.AuthInternalService/IssueDelegatedToken": lambda w, r: auth_pb2.IssueDelegatedTokenRequest(
        user=w.people["owner"].user
    ),
    "/embedviz.v1.AuthInternalService/LookupUser": lambda w, r: auth_pb2.LookupUserRequest(
        email=w.people["owner"].email
    ),
    "/embedviz.v1.IngestService/CreateProject": lambda w, r: ingest_pb2.CreateProjectRequest(
        project=ingest_pb2.Project(display_name="matrix")
    ),
    "/embedviz.v1.IngestService/GetProject": lambda w, r: ingest_pb2.GetProjectRequest(name=w.project),
    "/embedviz.v1.IngestService/ListProjects": lambda w, r: ingest_pb2.ListProjectsRequest(),
    "/embedviz.v1.IngestService/UpdateProject": lambda w, r: ingest_pb2.UpdateProjectRequest(
        project=ingest_pb2.Project(name=w.project, display_name=f"renamed by {r}"), update_mask=_mask("display_name")
    ),
    "/embedviz.v1.IngestService/DeleteProject": lambda w, r: ingest_pb2.DeleteProjectRequest(name=w.project),
    "/embedviz.v1.IngestService/ListMembers": lambda w, r: ingest_pb2.ListMembersRequest(parent=w.project),
    "/embedviz.v1.IngestService/CreateMember": lambda w, r: ingest_pb2.CreateMemberRequest(
        parent=w.project, member=ingest_pb2.Member(email=w.spare.email, role=ingest_pb2.ROLE_VIEWER)
    ),
    "/embedviz.v1.IngestService/UpdateMember": lambda w, r: ingest_pb2.UpdateMemberRequest(
        member=ingest_pb2.Member(name=w.member, role=ingest_pb2.ROLE_EDITOR)
    ),
    "/embedviz.v1.IngestService/DeleteMember": lambda w, r: ingest_pb2.DeleteMemberRequest(name=w.member),
    "/embedviz.v1.IngestService/CreateUpload": lambda w, r: ingest_pb2.CreateUploadRequest(
        parent=w.project, upload=ingest_pb2.Upload(filename="matrix.csv", size_bytes=10)
    ),
    "/embedviz.v1.IngestService/GetUpload": lambda w, r: ingest_pb2.GetUploadRequest(name=w.upload),
    "/embedviz.v1.IngestService/AppendUploadChunk": lambda w, r: ingest_pb2.AppendUploadChunkRequest(
        name=w.upload, offset=10**6, data=b"x"
    ),
    "/embedviz.v1.IngestService/FinishUpload": lambda w, r: ingest_pb2.FinishUploadRequest(name=w.upload),
    "/embedviz.v1.IngestService/GetDataset": lambda w, r: ingest_pb2.GetDatasetRequest(name=w.dataset),
    "/embedviz.v1.IngestService/ListDatasets": lambda w, r: ingest_pb2.ListDatasetsRequest(parent=w.project),
    "/embedviz.v1.IngestService/DeleteDataset": lambda w, r: ingest_pb2.DeleteDatasetRequest(
        name=_for(r, w.dataset, w.dataset_throwaway)
    ),
    "/embedviz.v1.IngestService/WatchDataset": lambda w, r: ingest_pb2.WatchDatasetRequest(name=w.dataset),
    "/embedviz.v1.IngestService/ListRows": lambda w, r: ingest_pb2.ListRowsRequest(parent=w.dataset, page_size=5),
    "/embedviz.v1.IngestService/BatchGetRows": lambda w, r: ingest_pb2.BatchGetRowsRequest(
        parent=w.dataset, indexes=[0, 1]
    ),
    "/embedviz.v1.IngestService/ReadColumns": lambda w, r: ingest_pb2.ReadColumnsRequest(
        dataset=w.dataset, columns=["text"]
    ),
    "/embedviz.v1.IngestService/AppendRows": lambda w, r: ingest_pb2.AppendRowsRequest(
        dataset=w.dataset, upload=w.upload
    ),
    "/embedviz.v1.IngestInternalService/GetProjectRole": lambda w, r: ingest_pb2.GetProjectRoleRequest(
        project=w.project
    ),
    "/embedviz.v1.IngestInternalService/StreamRows": lambda w, r: ingest_pb2.StreamRowsRequest(
        dataset=w.dataset, columns=["text"]
    ),
    "/embedviz.v1.EmbeddingService/ListModels": lambda w, r: embedding_pb2.ListModelsRequest(),
    "/embedviz.v1.EmbeddingService/CreateEmbedding": lambda w, r: embedding_pb2.CreateEmbeddingRequest(
        parent=w.dataset, embedding=embedding_pb2.Embedding(text_columns=["no_such_column"])
    ),
    "/embedviz.v1.EmbeddingService/GetEmbedding": lambda w, r: embedding_pb2.GetEmbeddingRequest(name=w.embedding),
    "/embedviz.v1.EmbeddingService/ListEmbeddings": lambda w, r: embedding_pb2.ListEmbeddingsRequest(parent=w.dataset),
    "/embedviz.v1.EmbeddingService/DeleteEmbedding": lambda w, r: embedding_pb2.DeleteEmbeddingRequest(
        name=_for(r, w.embedding, w.embedding_throwaway)
    ),
    "/embedviz.v1.EmbeddingService/WatchEmbedding": lambda w, r: embedding_pb2.WatchEmbeddingRequest(name=w.embedding),
    "/embedviz.v1.EmbeddingService/CancelEmbedding": lambda w, r: embedding_pb2.CancelEmbeddingRequest(
        name=w.embedding
    ),
    "/embedviz.v1.EmbeddingService/ExtendEmbedding": lambda w, r: embedding_pb2.ExtendEmbeddingRequest(
        name=w.embedding
    ),
    "/embedviz.v1.EmbeddingService/EmbedTexts": lambda w, r: embedding_pb2.EmbedTextsRequest(
        texts=["a rocket to the moon"]
    ),
    "/embedviz.v1.EmbeddingInternalService/StreamVectors": lambda w, r: embedding_pb2.StreamVectorsRequest(
        embedding=w.embedding
    ),
    "/embedviz.v1.ProjectionService/CreateProjection": lambda w, r: projection_pb2.CreateProjectionRequest(
        parent=w.embedding,
        projection=projection_pb2.Projection(method=projection_pb2.PROJECTION_METHOD_PCA, dimensions=7),
    ),
    "/embedviz.v1.ProjectionService/GetProjection": lambda w, r: projection_pb2.GetProjectionRequest(name=w.projection),
    "/embedviz.v1.ProjectionService/ListProjections": lambda w, r: projection_pb2.ListProjectionsRequest(
        parent=w.embedding
    ),
    "/embedviz.v1.ProjectionService/DeleteProjection": lambda w, r: projection_pb2.DeleteProjectionRequest(
        name=_for(r, w.projection, w.projection_throwaway)
    ),
    "/embedviz.v1.ProjectionService/WatchProjection": lambda w, r: projection_pb2.WatchProjectionRequest(
        name=w.projection
    ),
    "/embedviz.v1.ProjectionService/CancelProjection": lambda w, r: projection_pb2.CancelProjectionRequest(
        name=w.projection
    ),
    "/embedviz.v1.ProjectionService/StreamPoints": lambda w, r: projection_pb2.StreamPointsRequest(name=w.projection),
    "/embedviz.v1.ProjectionService/ListClusters": lambda w, r: projection_pb2.ListClustersRequest(parent=w.projection),
    "/embedviz.v1.ProjectionService/SearchPoints": lambda w, r: projection_pb2.SearchPointsRequest(
        name=w.projection, query="rocket", limit=3
    ),
    "/embedviz.v1.ProjectionService/FindNeighbors": lambda w, r: projection_pb2.FindNeighborsRequest(
        name=w.projection, row_index=0, limit=3
    ),
    "/embedviz.v1.ProjectionService/ExportProjection": lambda w, r: projection_pb2.ExportProjectionRequest(
        name=w.projection
    ),
}


def test_every_rpc_has_an_access_rule_and_a_matrix_request() -> None:
    methods = [name for name, _ in all_methods()]
    assert [m for m in methods if m not in RULES] == [], "add these methods to services/common/authz.py RULES"
    assert [m for m in methods if m not in REQUESTS] == [], "add a request for these methods to REQUESTS here"
    assert sorted(set(RULES) - set(methods)) == [], "RULES names methods that no proto has"


def test_a_server_with_a_method_without_a_rule_refuses_to_start(monkeypatch: pytest.MonkeyPatch) -> None:
    service = "embedviz.v1.IngestService"
    authz.check_complete([service])
    monkeypatch.delitem(RULES, "/embedviz.v1.IngestService/ListRows")
    with pytest.raises(RuntimeError, match="IngestService/ListRows"):
        authz.check_complete([service])


@pytest.fixture(scope="module")
async def world(stack: Stack) -> AsyncIterator[World]:
    stubs = Stubs(stack)
    try:
        owner, editor, viewer, outsider, spare, third = [
            await stubs.sign_up(label) for label in ("owner", "editor", "viewer", "outsider", "spare", "third")
        ]
        project = await stubs.make_project(owner, "role matrix")
        await stubs.add_member(owner, project, editor, ingest_pb2.ROLE_EDITOR)
        await stubs.add_member(owner, project, viewer, ingest_pb2.ROLE_VIEWER)
        member = (await stubs.add_member(owner, project, third, ingest_pb2.ROLE_VIEWER)).name
        dataset = await stubs.make_dataset(owner, project)
        dataset_throwaway = await stubs.make_dataset(editor, project)
        embedding = await stubs.make_embedding(owner, dataset)
        embedding_throwaway = await stubs.make_embedding(editor, dataset)
        projection = await stubs.make_projection(owner, embedding)
        projection_throwaway = await stubs.make_projection(editor, embedding)
        upload = await stubs.ingest.CreateUpload(
            ingest_pb2.CreateUploadRequest(
                parent=project, upload=ingest_pb2.Upload(filename="half.csv", size_bytes=100)
            ),
            metadata=owner.md,
        )
        key = await stubs.auth.CreateApiKey(
            auth_pb2.CreateApiKeyRequest(api_key=auth_pb2.ApiKey(display_name="owner's")), metadata=owner.md
        )
        yield World(
            people={"owner": owner, "editor": editor, "viewer": viewer, "outsider": outsider},
            spare=spare, project=project, dataset=dataset, dataset_throwaway=dataset_throwaway,
            embedding=embedding, embedding_throwaway=embedding_throwaway, projection=projection,
            projection_throwaway=projection_throwaway, upload=upload.name, member=member, api_key=key.api_key.name,
        )
    finally:
        await stubs.close()


async def call(stack: Stack, method: str, descriptor: Any, request: Message, token: str | None) -> grpc.StatusCode:
    service = method.split("/")[1].split(".")[-1]
    address = stack.addrs[next(v for k, v in ADDRESS_OF.items() if service.startswith(k))]
    response_class = message_factory.GetMessageClass(descriptor.output_type)
    async with grpc.aio.insecure_channel(address) as channel:
        try:
            if descriptor.server_streaming:
                stream = channel.unary_stream(method, request_serializer=lambda m: m.SerializeToString(),
                                              response_deserializer=response_class.FromString)
                async for _ in stream(request, metadata=bearer(token), timeout=60):
                    pass
            else:
                unary = channel.unary_unary(method, request_serializer=lambda m: m.SerializeToString(),
                                            response_deserializer=response_class.FromString)
                await unary(request, metadata=bearer(token), timeout=60)
        except grpc.aio.AioRpcError as exc:
            return exc.code()
    return grpc.StatusCode.OK


def _ordered() -> list[tuple[str, Any]]:
    methods = dict(all_methods())
    first = [(m, d) for m, d in methods.items() if m not in LAST]
    return first + [(m, methods[m]) for m in LAST]


async def test_role_matrix(stack: Stack, world: World) -> None:
    wrong: list[str] = []
    seen: dict[str, int] = {}
    for method, descriptor in _ordered():
        rule = RULES[method]
        for role in ROLES:
            token = None if role == "anonymous" else world.people[role].token
            code = await call(stack, method, descriptor, REQUESTS[method](world, role), token)
            want = expected(rule, role)
            seen[code.name] = seen.get(code.name, 0) + 1
            ok = code in ALLOWED if want == "allowed" else code.name == want
            if not ok:
                wrong.append(f"{method} as {role}: got {code.name}, want {want}")
    print("role matrix answers:", dict(sorted(seen.items())))
    assert wrong == [], "\n".join(wrong)
