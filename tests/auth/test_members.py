"""Project members, as the Members page uses them, over real gRPC on the whole stack:
owners add people by email, change roles and remove them; the last owner stays; what a
member may do follows their role at once, in ingest and in the other services."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest

from embedviz.v1 import embedding_pb2, ingest_pb2
from services.stack import Stack
from tests.support.world import Stubs, eventually

OWNER, EDITOR, VIEWER = ingest_pb2.ROLE_OWNER, ingest_pb2.ROLE_EDITOR, ingest_pb2.ROLE_VIEWER


@pytest.fixture(scope="module")
async def stubs(stack: Stack) -> AsyncIterator[Stubs]:
    s = Stubs(stack)
    yield s
    await s.close()


async def code_of(call) -> grpc.StatusCode:  # type: ignore[no-untyped-def]
    try:
        await call
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


async def test_owner_adds_by_email_changes_role_and_removes(stubs: Stubs) -> None:
    owner, ada = await stubs.sign_up("owner"), await stubs.sign_up("ada")
    project = await stubs.make_project(owner)
    added = await stubs.ingest.CreateMember(
        ingest_pb2.CreateMemberRequest(parent=project, member=ingest_pb2.Member(email=ada.email.upper(), role=VIEWER)),
        metadata=owner.md,
    )
    assert added.name == f"{project}/members/{ada.user_id}"
    assert (added.email, added.role, added.user) == (ada.email, VIEWER, ada.user)

    seen = await stubs.ingest.GetProject(ingest_pb2.GetProjectRequest(name=project), metadata=ada.md)
    assert seen.role == VIEWER
    listed = await stubs.ingest.ListMembers(ingest_pb2.ListMembersRequest(parent=project), metadata=ada.md)
    assert {(m.email, m.role) for m in listed.members} == {(owner.email, OWNER), (ada.email, VIEWER)}

    rename = ingest_pb2.UpdateProjectRequest(project=ingest_pb2.Project(name=project, display_name="by ada"))
    assert await code_of(stubs.ingest.UpdateProject(rename, metadata=ada.md)) == grpc.StatusCode.PERMISSION_DENIED
    changed = await stubs.ingest.UpdateMember(
        ingest_pb2.UpdateMemberRequest(member=ingest_pb2.Member(name=added.name, role=EDITOR)), metadata=owner.md
    )
    assert changed.role == EDITOR
    assert (await stubs.ingest.UpdateProject(rename, metadata=ada.md)).display_name == "by ada"

    await stubs.ingest.DeleteMember(ingest_pb2.DeleteMemberRequest(name=added.name), metadata=owner.md)
    get = ingest_pb2.GetProjectRequest(name=project)
    assert await code_of(stubs.ingest.GetProject(get, metadata=ada.md)) == grpc.StatusCode.NOT_FOUND


async def test_adding_someone_without_an_account_says_to_sign_up_first(stubs: Stubs) -> None:
    owner = await stubs.sign_up("owner")
    project = await stubs.make_project(owner)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stubs.ingest.CreateMember(
            ingest_pb2.CreateMemberRequest(
                parent=project, member=ingest_pb2.Member(email="nobody-here@example.org", role=VIEWER)
            ),
            metadata=owner.md,
        )
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert "sign up first" in (err.value.details() or "")
    for bad, words in (("", "member.email is required"), ("not an email", "not an email")):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stubs.ingest.CreateMember(
                ingest_pb2.CreateMemberRequest(parent=project, member=ingest_pb2.Member(email=bad, role=VIEWER)),
                metadata=owner.md,
            )
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and words in (err.value.details() or "")


async def test_adding_a_member_twice_is_already_exists(stubs: Stubs) -> None:
    owner, ada = await stubs.sign_up("owner"), await stubs.sign_up("ada")
    project = await stubs.make_project(owner)
    await stubs.add_member(owner, project, ada, VIEWER)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stubs.add_member(owner, project, ada, EDITOR)
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert "change their role" in (err.value.details() or "")


async def test_only_owners_manage_members(stubs: Stubs) -> None:
    owner, editor, stranger, other = [await stubs.sign_up(x) for x in ("owner", "editor", "stranger", "other")]
    project = await stubs.make_project(owner)
    await stubs.add_member(owner, project, editor, EDITOR)
    assert await code_of(stubs.add_member(editor, project, other, VIEWER)) == grpc.StatusCode.PERMISSION_DENIED
    assert await code_of(stubs.add_member(stranger, project, other, VIEWER)) == grpc.StatusCode.NOT_FOUND
    promote = ingest_pb2.UpdateMemberRequest(
        member=ingest_pb2.Member(name=f"{project}/members/{editor.user_id}", role=OWNER)
    )
    assert await code_of(stubs.ingest.UpdateMember(promote, metadata=editor.md)) == grpc.StatusCode.PERMISSION_DENIED


async def test_the_last_owner_cannot_leave_or_be_demoted_but_others_can_leave(stubs: Stubs) -> None:
    owner, ada = await stubs.sign_up("owner"), await stubs.sign_up("ada")
    project = await stubs.make_project(owner)
    mine = f"{project}/members/{owner.user_id}"
    leave = ingest_pb2.DeleteMemberRequest(name=mine)
    demote = ingest_pb2.UpdateMemberRequest(member=ingest_pb2.Member(name=mine, role=EDITOR))
    for call in (
        stubs.ingest.DeleteMember(leave, metadata=owner.md),
        stubs.ingest.UpdateMember(demote, metadata=owner.md),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "at least one owner" in (err.value.details() or "")

    viewer = await stubs.add_member(owner, project, ada, VIEWER)
    await stubs.ingest.DeleteMember(ingest_pb2.DeleteMemberRequest(name=viewer.name), metadata=ada.md)  # ada leaves
    assert (
        await code_of(stubs.ingest.GetProject(ingest_pb2.GetProjectRequest(name=project), metadata=ada.md))
        == grpc.StatusCode.NOT_FOUND
    )

    second = await stubs.add_member(owner, project, ada, OWNER)
    await stubs.ingest.DeleteMember(leave, metadata=owner.md)  # now there is another owner
    assert (
        await code_of(stubs.ingest.GetProject(ingest_pb2.GetProjectRequest(name=project), metadata=owner.md))
        == grpc.StatusCode.NOT_FOUND
    )
    remaining = await stubs.ingest.ListMembers(ingest_pb2.ListMembersRequest(parent=project), metadata=ada.md)
    assert [m.name for m in remaining.members] == [second.name]


async def test_a_removed_member_loses_access_in_the_other_services_too(stubs: Stubs) -> None:
    owner, ada = await stubs.sign_up("owner"), await stubs.sign_up("ada")
    project = await stubs.make_project(owner)
    dataset = await stubs.make_dataset(owner, project, n_rows=20)
    member = await stubs.add_member(owner, project, ada, VIEWER)
    listing = embedding_pb2.ListEmbeddingsRequest(parent=dataset)
    await stubs.embedding.ListEmbeddings(listing, metadata=ada.md)
    await stubs.ingest.DeleteMember(ingest_pb2.DeleteMemberRequest(name=member.name), metadata=owner.md)

    async def gone() -> None:  # other services cache a role for a few seconds
        assert await code_of(stubs.embedding.ListEmbeddings(listing, metadata=ada.md)) == grpc.StatusCode.NOT_FOUND

    await eventually(gone, timeout=15)
