"""The input rules (docs/architecture.md, "Input rules"), each pinned down on the real
stack: control characters refused naming the field, limits on strings and repeated
fields, page tokens that only the call that gave them out accepts, and error messages
that stay short whatever they quote — also when one service passes on another's."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import pytest
from google.protobuf import descriptor_pool, field_mask_pb2

from embedviz.v1 import auth_pb2, embedding_pb2, ingest_pb2, projection_pb2
from services.common import input_rules
from services.common.auth import Identity
from services.common.errors import InvalidArgument
from services.common.server import create_server
from services.stack import Stack
from tests.support.world import Person, Stubs

pytestmark = pytest.mark.slow

INVALID = grpc.StatusCode.INVALID_ARGUMENT
TOKEN_REFUSED = "page_token is not a token this call gave out; start again without it"


@dataclass
class Setting:
    stubs: Stubs
    alice: Person
    project: str
    dataset: str


@pytest.fixture(scope="module")
async def setting(stack: Stack) -> AsyncIterator[Setting]:
    stubs = Stubs(stack)
    try:
        alice = await stubs.sign_up("hostile")
        project = await stubs.make_project(alice, "first")
        await stubs.make_project(alice, "second")
        dataset = await stubs.make_dataset(alice, project, n_rows=30)
        for label in ("one", "two"):
            await stubs.auth.CreateApiKey(
                auth_pb2.CreateApiKeyRequest(api_key=auth_pb2.ApiKey(display_name=label)), metadata=alice.md
            )
        yield Setting(stubs, alice, project, dataset)
    finally:
        await stubs.close()


async def refused(call: object, request: object, metadata: object = ()) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call(request, metadata=metadata)  # type: ignore[operator]
    return err.value


def trailer_bytes(error: grpc.aio.AioRpcError) -> int:
    """What the reply's trailers weigh: grpc-message (percent-encoded, so up to three bytes
    a byte) plus every other trailer (grpc-status-details-bin repeats the message)."""
    others = sum(len(k) + len(v) for k, v in (error.trailing_metadata() or ()))
    return 3 * len((error.details() or "").encode()) + others


# --- control characters ------------------------------------------------------------------


async def test_nul_in_a_project_display_name_is_invalid_argument_naming_the_field(setting: Setting) -> None:
    error = await refused(
        setting.stubs.ingest.CreateProject,
        ingest_pb2.CreateProjectRequest(project=ingest_pb2.Project(display_name="abc\x00def")),
        setting.alice.md,
    )
    assert error.code() == INVALID
    assert error.details() == "project.display_name contains a control character (U+0000) at character 4; remove it"


async def test_nul_in_an_email_is_invalid_argument_naming_the_field(setting: Setting) -> None:
    error = await refused(
        setting.stubs.auth.SignUp, auth_pb2.SignUpRequest(email="x\x00@example.org", password="correct horse battery")
    )
    assert error.code() == INVALID and error.details().startswith("email contains a control character (U+0000)")


async def test_nul_in_a_file_name_is_invalid_argument_naming_the_field(setting: Setting) -> None:
    error = await refused(
        setting.stubs.ingest.CreateUpload,
        ingest_pb2.CreateUploadRequest(
            parent=setting.project, upload=ingest_pb2.Upload(filename="a\x00.csv", size_bytes=10)
        ),
        setting.alice.md,
    )
    assert error.code() == INVALID and error.details().startswith(
        "upload.filename contains a control character (U+0000)"
    )


async def test_nul_in_a_template_is_invalid_argument_naming_the_field(setting: Setting) -> None:
    error = await refused(
        setting.stubs.embedding.CreateEmbedding,
        embedding_pb2.CreateEmbeddingRequest(
            parent=setting.dataset, embedding=embedding_pb2.Embedding(text_columns=["text"], template="{text}\x00")
        ),
        setting.alice.md,
    )
    assert error.code() == INVALID and error.details().startswith(
        "embedding.template contains a control character (U+0000) at character 7"
    )


async def test_other_control_characters_are_refused_but_multi_line_text_keeps_its_newlines(setting: Setting) -> None:
    for bad, code in [("\x1b[31m", "U+001B"), ("new\nline", "U+000A"), ("\x85", "U+0085"), ("\x7f", "U+007F")]:
        error = await refused(
            setting.stubs.ingest.UpdateProject,
            ingest_pb2.UpdateProjectRequest(project=ingest_pb2.Project(name=setting.project, display_name=bad)),
            setting.alice.md,
        )
        assert (
            error.code() == INVALID and f"project.display_name contains a control character ({code})" in error.details()
        )
    updated = await setting.stubs.ingest.UpdateProject(
        ingest_pb2.UpdateProjectRequest(
            project=ingest_pb2.Project(name=setting.project, description="first line\n\tsecond line\r\n"),
            update_mask=field_mask_pb2.FieldMask(paths=["description"]),
        ),
        metadata=setting.alice.md,
    )
    assert updated.description == "first line\n\tsecond line\r\n"
    error = await refused(
        setting.stubs.ingest.UpdateProject,
        ingest_pb2.UpdateProjectRequest(project=ingest_pb2.Project(name=setting.project, description="bell\x07")),
        setting.alice.md,
    )
    assert error.code() == INVALID and error.details().startswith(
        "project.description contains a control character (U+0007)"
    )


async def test_a_tab_is_a_delimiter_not_a_control_character(setting: Setting) -> None:
    error = await refused(
        setting.stubs.ingest.FinishUpload,
        ingest_pb2.FinishUploadRequest(name=f"{setting.project}/uploads/nosuchupload", delimiter="\t"),
        setting.alice.md,
    )
    assert error.code() == grpc.StatusCode.NOT_FOUND


async def test_control_characters_in_nested_and_repeated_fields_are_named_by_their_path(setting: Setting) -> None:
    error = await refused(
        setting.stubs.ingest.ListRows,
        ingest_pb2.ListRowsRequest(parent=setting.dataset, columns=["text", "la\x00bel"]),
        setting.alice.md,
    )
    assert error.code() == INVALID and error.details().startswith(
        "columns[1] contains a control character (U+0000) at character 3"
    )
    error = await refused(
        setting.stubs.ingest.UpdateProject,
        ingest_pb2.UpdateProjectRequest(
            project=ingest_pb2.Project(name=setting.project),
            update_mask=field_mask_pb2.FieldMask(paths=["description\x00"]),
        ),
        setting.alice.md,
    )
    assert error.code() == INVALID and error.details().startswith("update_mask.paths[0] contains a control character")


# --- limits ------------------------------------------------------------------------------


async def test_a_10_kb_name_is_invalid_argument_with_a_short_message(setting: Setting) -> None:
    error = await refused(
        setting.stubs.ingest.CreateProject,
        ingest_pb2.CreateProjectRequest(project=ingest_pb2.Project(display_name="n" * 10_240)),
        setting.alice.md,
    )
    assert error.code() == INVALID
    assert error.details() == "project.display_name holds 10240 characters; at most 4096 are accepted"
    assert trailer_bytes(error) < 1024
    error = await refused(
        setting.stubs.ingest.GetProject,
        ingest_pb2.GetProjectRequest(name="projects/" + "🚀" * 10_000),
        setting.alice.md,
    )
    assert error.code() == INVALID and "name holds 10009 characters" in error.details() and trailer_bytes(error) < 1024


async def test_a_long_name_under_the_limit_is_quoted_only_in_part(setting: Setting) -> None:
    # 4,000 characters pass the length rule; the service's own message quotes 80 of them.
    error = await refused(
        setting.stubs.ingest.GetProject, ingest_pb2.GetProjectRequest(name="projects/" + "é" * 3_990), setting.alice.md
    )
    assert error.code() == INVALID
    assert error.details() == "'projects/" + "é" * 71 + "…' is not a valid resource name; expected projects/{project}"
    assert trailer_bytes(error) < 2048


async def test_repeated_fields_have_a_limit(setting: Setting) -> None:
    error = await refused(
        setting.stubs.ingest.BatchGetRows,
        ingest_pb2.BatchGetRowsRequest(parent=setting.dataset, indexes=list(range(1001))),
        setting.alice.md,
    )
    assert error.code() == INVALID and error.details() == "indexes holds 1001 values; at most 1000 are accepted"
    error = await refused(
        setting.stubs.ingest.ListRows,
        ingest_pb2.ListRowsRequest(parent=setting.dataset, columns=["text"] * 10_001),
        setting.alice.md,
    )
    assert error.code() == INVALID and error.details() == "columns holds 10001 values; at most 10000 are accepted"


async def test_embed_texts_keeps_its_own_longer_limit(setting: Setting) -> None:
    long_query = ("word " * 2_000).strip()  # 9,999 characters: more than an ordinary string, less than a text's limit
    response = await setting.stubs.embedding.EmbedTexts(
        embedding_pb2.EmbedTextsRequest(texts=[long_query]), metadata=setting.alice.md
    )
    assert response.dimension > 0
    error = await refused(
        setting.stubs.embedding.EmbedTexts, embedding_pb2.EmbedTextsRequest(texts=["x" * 100_001]), setting.alice.md
    )
    assert (
        error.code() == INVALID and error.details() == "texts[0] holds 100001 characters; at most 100000 are accepted"
    )


def test_every_field_the_rules_name_is_in_the_protos() -> None:
    pool = descriptor_pool.Default()
    assert all(module.DESCRIPTOR for module in (auth_pb2, ingest_pb2, embedding_pb2, projection_pb2))
    for full_name in [*input_rules.TEXT_FIELDS, *input_rules.REPEATED_LIMITS]:
        message, _, field = full_name.rpartition(".")
        assert field in pool.FindMessageTypeByName(message).fields_by_name, full_name


def test_the_rules_walk_nested_messages_repeated_fields_and_maps() -> None:
    from google.protobuf import struct_pb2

    value = struct_pb2.Struct()
    value.update({"fine": "ok", "bad": ["x", {"deep": "a\x00"}]})
    with pytest.raises(InvalidArgument) as err:
        input_rules.check_request(value)
    assert err.value.message.startswith(
        "fields['bad'].list_value.values[1].struct_value.fields['deep'].string_value contains"
    )


# --- page tokens -------------------------------------------------------------------------


def forged(value: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode()


async def test_forged_edited_and_other_call_page_tokens_are_invalid_argument(setting: Setting) -> None:
    ingest, md = setting.stubs.ingest, setting.alice.md
    first = await ingest.ListRows(
        ingest_pb2.ListRowsRequest(parent=setting.dataset, page_size=5, filter='text contains "a"'), metadata=md
    )
    token = first.next_page_token
    assert token
    # The same call with another page size is the same listing: the token is good.
    following = await ingest.ListRows(
        ingest_pb2.ListRowsRequest(parent=setting.dataset, page_size=7, filter='text contains "a"', page_token=token),
        metadata=md,
    )
    assert following.rows and following.rows[0].index > first.rows[-1].index

    edited = token[:3] + ("A" if token[3] != "A" else "B") + token[4:]
    projects = await ingest.ListProjects(ingest_pb2.ListProjectsRequest(page_size=1), metadata=md)
    cases = {
        "forged offset": ingest_pb2.ListRowsRequest(parent=setting.dataset, page_token=forged({"o": 5})),
        "negative offset": ingest_pb2.ListRowsRequest(parent=setting.dataset, page_token=forged({"o": -1})),
        "huge offset": ingest_pb2.ListRowsRequest(parent=setting.dataset, page_token=forged({"o": 10**30})),
        "wrong shape": ingest_pb2.ListRowsRequest(parent=setting.dataset, page_token=forged([1, "x"])),
        "not base64": ingest_pb2.ListRowsRequest(parent=setting.dataset, page_token="%%%"),
        "edited": ingest_pb2.ListRowsRequest(parent=setting.dataset, filter='text contains "a"', page_token=edited),
        "another filter": ingest_pb2.ListRowsRequest(
            parent=setting.dataset, filter='text contains "b"', page_token=token
        ),
        "another order": ingest_pb2.ListRowsRequest(
            parent=setting.dataset, filter='text contains "a"', order_by="text", page_token=token
        ),
        "another method's": ingest_pb2.ListRowsRequest(parent=setting.dataset, page_token=projects.next_page_token),
    }
    for case, request in cases.items():
        error = await refused(ingest.ListRows, request, md)
        assert (error.code(), error.details()) == (INVALID, TOKEN_REFUSED), case
    for request, call in [
        (ingest_pb2.ListDatasetsRequest(parent=setting.project, page_token=token), ingest.ListDatasets),
        (
            ingest_pb2.ListMembersRequest(parent=setting.project, page_token=projects.next_page_token),
            ingest.ListMembers,
        ),
        (ingest_pb2.ListProjectsRequest(page_token=forged(["2020-01-01T00:00:00+00:00", "x"])), ingest.ListProjects),
        (auth_pb2.ListApiKeysRequest(page_token=projects.next_page_token), setting.stubs.auth.ListApiKeys),
        (auth_pb2.ListApiKeysRequest(page_token=forged({"o": -3})), setting.stubs.auth.ListApiKeys),
        (
            embedding_pb2.ListEmbeddingsRequest(
                parent=setting.dataset, page_token=forged({"p": setting.dataset, "t": "x", "id": 1})
            ),
            setting.stubs.embedding.ListEmbeddings,
        ),
    ]:
        error = await refused(call, request, md)
        assert (error.code(), error.details()) == (INVALID, TOKEN_REFUSED), type(request).__name__


async def test_a_page_token_from_another_parent_is_invalid_argument(setting: Setting) -> None:
    other = await setting.stubs.make_project(setting.alice, "other parent")
    await setting.stubs.make_dataset(setting.alice, other, n_rows=5, wait=False)
    await setting.stubs.make_dataset(setting.alice, other, n_rows=5, wait=False)
    page = await setting.stubs.ingest.ListDatasets(
        ingest_pb2.ListDatasetsRequest(parent=other, page_size=1), metadata=setting.alice.md
    )
    assert page.next_page_token
    error = await refused(
        setting.stubs.ingest.ListDatasets,
        ingest_pb2.ListDatasetsRequest(parent=setting.project, page_token=page.next_page_token),
        setting.alice.md,
    )
    assert (error.code(), error.details()) == (INVALID, TOKEN_REFUSED)


# --- messages passed on ------------------------------------------------------------------


async def test_a_message_passed_on_from_another_service_is_short(setting: Setting) -> None:
    # ingest asks auth for the user with this email and passes auth's answer on.
    email = "a" * 3_990 + "@example.org"
    error = await refused(
        setting.stubs.ingest.CreateMember,
        ingest_pb2.CreateMemberRequest(
            parent=setting.project, member=ingest_pb2.Member(email=email, role=ingest_pb2.ROLE_VIEWER)
        ),
        setting.alice.md,
    )
    assert error.code() == INVALID and error.details().startswith("member.'aaaa")
    assert len(error.details()) < 200 and trailer_bytes(error) < 2048


async def test_bytes_that_are_no_message_are_invalid_argument(stack: Stack, setting: Setting) -> None:
    async with grpc.aio.insecure_channel(stack.addrs["ingest"]) as channel:
        call = channel.unary_unary("/embedviz.v1.IngestService/GetProject")
        error = await refused(call, b"\x0a\x02\xff\xfe", setting.alice.md)  # a string field that is not UTF-8
    assert error.code() == INVALID and error.details().startswith("the request is not a valid message of this method")


class _Unused:
    async def verify(self, token: str) -> Identity:  # SignUp is public: no token is read
        raise AssertionError("no token expected")


async def test_every_reply_message_is_capped_also_when_relayed() -> None:
    """The last line of defence in the error interceptor: a 20 KB message, from this
    service or from a neighbour (AioRpcError), leaves as at most 1 KB."""

    async def relayed(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        raise grpc.aio.AioRpcError(
            grpc.StatusCode.FAILED_PRECONDITION,
            grpc.aio.Metadata(),
            grpc.aio.Metadata(),
            details="neighbour says " + "é" * 20_000,
        )

    async def own(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        raise InvalidArgument("mine: " + "x" * 20_000)

    server = create_server(verifier=_Unused())  # type: ignore[arg-type]
    handlers = {
        "SignUp": grpc.unary_unary_rpc_method_handler(relayed),
        "Login": grpc.unary_unary_rpc_method_handler(own),
    }
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("embedviz.v1.AuthService", handlers)])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            for method, code, start in [
                ("SignUp", grpc.StatusCode.FAILED_PRECONDITION, "neighbour says éé"),
                ("Login", INVALID, "mine: xx"),
            ]:
                error = await refused(channel.unary_unary(f"/embedviz.v1.AuthService/{method}"), b"")
                assert error.code() == code and error.details().startswith(start) and error.details().endswith("…")
                assert len(error.details().encode()) <= 1024 and trailer_bytes(error) < 8192
    finally:
        await server.stop(None)
