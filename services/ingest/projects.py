"""Projects, their members, and the one role check every ingest call goes through."""

from __future__ import annotations

import builtins
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import and_, delete, func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.common import names, paging
from services.common.auth import Identity
from services.common.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
)
from services.common.jobs import utcnow
from services.common.outbox import Outbox
from services.ingest.deletions import announce_deleted
from services.ingest.members import KnownUser
from services.ingest.models import Dataset, Member, Project, Upload

VIEWER, EDITOR, OWNER = "viewer", "editor", "owner"
RANK = {VIEWER: 1, EDITOR: 2, OWNER: 3}
MAX_DISPLAY_NAME = 200
MAX_DESCRIPTION = 10_000


def project_id(name: str) -> str:
    return names.parse(name, "projects/{project}")["project"]


async def require(session: AsyncSession, identity: Identity, project: str, minimum: str) -> Member:
    """The caller's membership of a project with at least `minimum` role. No membership
    (or no such project) is NOT_FOUND, never a hint that the project exists."""
    member = await session.get(Member, (project, identity.user_id))
    if member is None:
        raise NotFound(f"projects/{project} not found")
    if RANK[member.role] < RANK[minimum]:
        raise PermissionDenied(
            f"your role in projects/{project} is {member.role}; this needs {minimum} or more"
        )
    return member


def _check_display_name(value: str) -> str:
    value = value.strip()
    if not value:
        raise InvalidArgument("project.display_name is required")
    if len(value) > MAX_DISPLAY_NAME:
        raise InvalidArgument(f"project.display_name is longer than {MAX_DISPLAY_NAME} characters")
    return value


def _check_description(value: str) -> str:
    if len(value) > MAX_DESCRIPTION:
        raise InvalidArgument(f"project.description is longer than {MAX_DESCRIPTION} characters")
    return value


@dataclass
class ProjectPage:
    projects: list[tuple[Project, str]]
    next_page_token: str


@dataclass
class MemberPage:
    members: list[Member]
    next_page_token: str


FindUser = Callable[[str], Awaitable[KnownUser]]


class Projects:
    def __init__(
        self, sessions: async_sessionmaker[AsyncSession], outbox: Outbox, find_user: FindUser | None = None
    ) -> None:
        self._sessions = sessions
        self._outbox = outbox  # the deletion events of a deleted project's datasets
        self._find_user = find_user

    async def create(self, identity: Identity, display_name: str, description: str) -> tuple[Project, str]:
        project = Project(
            id=names.new_id(),
            display_name=_check_display_name(display_name),
            description=_check_description(description),
        )
        async with self._sessions() as session:
            session.add(project)
            await session.flush()
            session.add(Member(project_id=project.id, user_id=identity.user_id, email=identity.email, role=OWNER))
            await session.commit()
        return project, OWNER

    async def get(self, identity: Identity, name: str) -> tuple[Project, str]:
        pid = project_id(name)
        async with self._sessions() as session:
            member = await require(session, identity, pid, VIEWER)
            project = await session.get(Project, pid)
            if project is None:
                raise NotFound(f"{name} not found")
            return project, member.role

    async def role(self, identity: Identity, name: str) -> str:
        pid = project_id(name)
        async with self._sessions() as session:
            return (await require(session, identity, pid, VIEWER)).role

    async def role_rank(self, identity: Identity, name: str) -> int:
        """The caller's role as a rank (1 viewer .. 3 owner) for the shared access rules."""
        return RANK[await self.role(identity, name)]

    async def list(self, identity: Identity, size: int, token: str) -> ProjectPage:
        """The caller's projects, newest first; the token is the last (create_time, id)."""
        limit = paging.page_size(size, 50, 1000)
        after = paging.decode(token)
        query = (
            select(Project, Member.role)
            .join(Member, Member.project_id == Project.id)
            .where(Member.user_id == identity.user_id)
            .order_by(Project.create_time.desc(), Project.id.desc())
            .limit(limit + 1)
        )
        if after is not None:
            try:
                at, last_id = datetime.fromisoformat(after[0]), str(after[1])
            except (TypeError, ValueError, IndexError):
                raise InvalidArgument("page_token is not a token this service gave out") from None
            query = query.where(
                or_(Project.create_time < at, and_(Project.create_time == at, Project.id < last_id))
            )
        async with self._sessions() as session:
            found = [(p, r) for p, r in (await session.execute(query)).all()]
        more = len(found) > limit
        found = found[:limit]
        next_token = paging.encode([found[-1][0].create_time.isoformat(), found[-1][0].id]) if more else ""
        return ProjectPage(found, next_token)

    async def update(
        self, identity: Identity, name: str, display_name: str | None, description: str | None
    ) -> tuple[Project, str]:
        """Editors and owners may rename a project and change its description: that is
        content, like the datasets they may change. Members and deletion stay with owners."""
        pid = project_id(name)
        async with self._sessions() as session:
            member = await require(session, identity, pid, EDITOR)
            project = await session.get(Project, pid, with_for_update=True)
            if project is None:
                raise NotFound(f"{name} not found")
            if display_name is not None:
                project.display_name = _check_display_name(display_name)
            if description is not None:
                project.description = _check_description(description)
            project.update_time = utcnow()
            await session.commit()
            return project, member.role

    async def delete(self, identity: Identity, name: str) -> builtins.list[str]:  # `list` is a method here
        """Owner only. Delete the project row (members, uploads and datasets go with it by
        cascade); returns the blob prefixes so the caller removes them and their events.
        Each dataset's deletion event is committed with the rows (the outbox), so the
        embedding and projection services remove what they made from them."""
        pid = project_id(name)
        async with self._sessions() as session:
            await require(session, identity, pid, OWNER)
            dataset_ids = list((await session.scalars(select(Dataset.id).where(Dataset.project_id == pid))).all())
            upload_ids = list((await session.scalars(select(Upload.id).where(Upload.project_id == pid))).all())
            await session.execute(delete(Project).where(Project.id == pid))
            await announce_deleted(self._outbox, session, pid, dataset_ids)
            await session.commit()
        return [*(f"datasets/{d}" for d in dataset_ids), *(f"uploads/{u}" for u in upload_ids)]

    # --- members ---------------------------------------------------------------------

    async def list_members(self, identity: Identity, parent: str, size: int, token: str) -> MemberPage:
        pid = project_id(parent)
        limit = paging.page_size(size, 100, 1000)
        after = paging.decode(token)
        query = select(Member).where(Member.project_id == pid).order_by(Member.user_id).limit(limit + 1)
        if after is not None:
            query = query.where(Member.user_id > str(after))
        async with self._sessions() as session:
            await require(session, identity, pid, VIEWER)
            found = list((await session.scalars(query)).all())
        more = len(found) > limit
        found = found[:limit]
        return MemberPage(found, paging.encode(found[-1].user_id) if more else "")

    async def create_member(self, identity: Identity, parent: str, email: str, role: str) -> Member:
        """Owner only: add the user with this email (they must have signed up)."""
        pid = project_id(parent)
        if not email.strip():
            raise InvalidArgument("member.email is required: the email the person signed up with")
        async with self._sessions() as session:
            await require(session, identity, pid, OWNER)
        if self._find_user is None:
            raise FailedPrecondition("this ingest server cannot look users up; it was started without the auth service")
        user = await self._find_user(email)
        async with self._sessions() as session:
            await require(session, identity, pid, OWNER)
            existing = await session.get(Member, (pid, user.user_id))
            if existing is not None:
                raise AlreadyExists(
                    f"{user.email} is already a member of {parent} ({existing.role}); change their role instead"
                )
            member = Member(project_id=pid, user_id=user.user_id, email=user.email, role=role)
            session.add(member)
            try:
                await session.commit()
            except IntegrityError:  # added by a concurrent call a moment ago
                raise AlreadyExists(
                    f"{user.email} is already a member of {parent}; change their role instead"
                ) from None
            return member

    async def update_member(self, identity: Identity, name: str, role: str) -> Member:
        parts = names.parse(name, "projects/{project}/members/{user}")
        async with self._sessions() as session:
            await require(session, identity, parts["project"], OWNER)
            member = await session.get(Member, (parts["project"], parts["user"]), with_for_update=True)
            if member is None:
                raise NotFound(f"{name} not found")
            if member.role == OWNER and role != OWNER:
                await self._keep_an_owner(session, parts["project"])
            member.role = role
            await session.commit()
            return member

    async def delete_member(self, identity: Identity, name: str) -> None:
        parts = names.parse(name, "projects/{project}/members/{user}")
        async with self._sessions() as session:
            # Anyone may leave a project; removing someone else takes an owner.
            minimum = VIEWER if parts["user"] == identity.user_id else OWNER
            await require(session, identity, parts["project"], minimum)
            member = await session.get(Member, (parts["project"], parts["user"]), with_for_update=True)
            if member is None:
                raise NotFound(f"{name} not found")
            if member.role == OWNER:
                await self._keep_an_owner(session, parts["project"])
            await session.delete(member)
            await session.commit()

    @staticmethod
    async def _keep_an_owner(session: AsyncSession, pid: str) -> None:
        owners = await session.scalar(
            select(func.count()).select_from(Member).where(Member.project_id == pid, Member.role == OWNER)
        )
        if (owners or 0) <= 1:
            raise FailedPrecondition(
                "a project needs at least one owner; make another member owner first, or delete the project"
            )
