"""Who gets in: a call without a token, with an expired token, or with a token signed by
another key is UNAUTHENTICATED at the edge and straight at the service; a second user
cannot see or touch the first user's project (NOT_FOUND, never a hint it exists)."""

from __future__ import annotations

import time
import uuid

import aiohttp
import grpc
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from google.protobuf import empty_pb2

from embedviz.v1 import auth_pb2, auth_pb2_grpc, ingest_pb2, ingest_pb2_grpc
from services.stack import Stack
from tests.support.web import EdgeClient, GrpcWebError
from tests.support.world import signing_keys

UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED.value[0]
NOT_FOUND = grpc.StatusCode.NOT_FOUND.value[0]


async def sign_up(stack: Stack) -> auth_pb2.SignUpResponse:
    async with grpc.aio.insecure_channel(stack.addrs["auth"]) as channel:
        return await auth_pb2_grpc.AuthServiceStub(channel).SignUp(
            auth_pb2.SignUpRequest(email=f"u-{uuid.uuid4().hex[:8]}@example.org", password="correct horse battery")
        )


async def real_signing_key(stack: Stack) -> tuple[str, str]:
    return (await signing_keys(stack))[0]


def claims(user: str, **override: object) -> dict[str, object]:
    now = int(time.time())
    base: dict[str, object] = {
        "iss": "embedviz-auth", "aud": "embedviz", "sub": user.removeprefix("users/"),
        "iat": now, "nbf": now, "exp": now + 300,
    }
    return {**base, **override}


@pytest.fixture(scope="module")
async def bad_tokens(stack: Stack) -> dict[str, str | None]:
    user = (await sign_up(stack)).user.name
    kid, pem = await real_signing_key(stack)
    foreign = ec.generate_private_key(ec.SECP256R1())
    now = int(time.time())
    return {
        "no token": None,
        "garbage": "not-a-jwt",
        "expired": jwt.encode(
            claims(user, iat=now - 3600, nbf=now - 3600, exp=now - 1800), pem, "ES256", headers={"kid": kid}
        ),
        "another key, known kid": jwt.encode(claims(user), foreign, "ES256", headers={"kid": kid}),
        "another key, unknown kid": jwt.encode(claims(user), foreign, "ES256", headers={"kid": "not-ours"}),
    }


CASES = ["no token", "garbage", "expired", "another key, known kid", "another key, unknown kid"]


@pytest.mark.parametrize("case", CASES)
async def test_bad_token_is_unauthenticated_at_the_edge(
    stack: Stack, bad_tokens: dict[str, str | None], case: str
) -> None:
    async with aiohttp.ClientSession() as session:
        edge = EdgeClient(session, stack.edge_url, bad_tokens[case])
        with pytest.raises(GrpcWebError) as err:
            await edge.unary(
                "/embedviz.v1.IngestService/ListProjects",
                ingest_pb2.ListProjectsRequest(),
                ingest_pb2.ListProjectsResponse,
            )
    assert err.value.status == UNAUTHENTICATED


@pytest.mark.parametrize("service", ["auth", "ingest"])
@pytest.mark.parametrize("case", CASES)
async def test_bad_token_is_unauthenticated_at_the_service(
    stack: Stack, bad_tokens: dict[str, str | None], case: str, service: str
) -> None:
    token = bad_tokens[case]
    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    async with grpc.aio.insecure_channel(stack.addrs[service]) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            if service == "auth":
                await auth_pb2_grpc.AuthServiceStub(channel).GetCurrentUser(
                    auth_pb2.GetCurrentUserRequest(), metadata=metadata
                )
            else:
                await ingest_pb2_grpc.IngestServiceStub(channel).ListProjects(
                    ingest_pb2.ListProjectsRequest(), metadata=metadata
                )
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_second_user_cannot_see_or_touch_the_first_users_project(stack: Stack) -> None:
    owner, stranger = await sign_up(stack), await sign_up(stack)
    async with aiohttp.ClientSession() as session:
        mine = EdgeClient(session, stack.edge_url, owner.session.access_token)
        theirs = EdgeClient(session, stack.edge_url, stranger.session.access_token)
        project = await mine.unary(
            "/embedviz.v1.IngestService/CreateProject",
            ingest_pb2.CreateProjectRequest(project=ingest_pb2.Project(display_name="private")),
            ingest_pb2.Project,
        )
        listed = await theirs.unary(
            "/embedviz.v1.IngestService/ListProjects", ingest_pb2.ListProjectsRequest(), ingest_pb2.ListProjectsResponse
        )
        assert project.name not in [p.name for p in listed.projects]
        attempts = [
            ("GetProject", ingest_pb2.GetProjectRequest(name=project.name), ingest_pb2.Project),
            ("DeleteProject", ingest_pb2.DeleteProjectRequest(name=project.name), empty_pb2.Empty),
            ("ListDatasets", ingest_pb2.ListDatasetsRequest(parent=project.name), ingest_pb2.ListDatasetsResponse),
            ("CreateUpload", ingest_pb2.CreateUploadRequest(
                parent=project.name, upload=ingest_pb2.Upload(filename="x.csv", size_bytes=10)), ingest_pb2.Upload),
        ]
        for method, request, response in attempts:
            with pytest.raises(GrpcWebError) as err:
                await theirs.unary(f"/embedviz.v1.IngestService/{method}", request, response)
            assert err.value.status == NOT_FOUND, method
        still = await mine.unary(
            "/embedviz.v1.IngestService/GetProject", ingest_pb2.GetProjectRequest(name=project.name), ingest_pb2.Project
        )
        assert still.name == project.name

    async with grpc.aio.insecure_channel(stack.addrs["ingest"]) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as direct:
            await ingest_pb2_grpc.IngestServiceStub(channel).GetProject(
                ingest_pb2.GetProjectRequest(name=project.name),
                metadata=(("authorization", f"Bearer {stranger.session.access_token}"),),
            )
        assert direct.value.code() == grpc.StatusCode.NOT_FOUND
