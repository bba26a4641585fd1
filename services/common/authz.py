"""Who may call what: one table for every RPC of every embedviz service, enforced by one
server interceptor in the shared bootstrap, after the token is verified.

Each full method name maps to a `Rule`:

- PUBLIC: no token (sign-up, login, refresh, API-key exchange).
- INTERNAL: no user token needed; the handler demands the internal secret that only
  embedviz services hold (minting delegated tokens, looking a user up by email).
- AUTHENTICATED: any signed-in user; the call touches only the caller's own things or
  nothing in a project (create a project, list my projects, list models).
- OWN_USER: the request field names `users/{user}/...`; anyone else's is NOT_FOUND.
- PROJECT: the request field names a project or something inside one; the caller needs
  at least `minimum` role there. No role (or no project) is NOT_FOUND; too small a role
  is PERMISSION_DENIED.

A server refuses to start when one of its services has a method without a rule
(`check_complete`), and tests/test_role_matrix.py calls every method with every role
from this same table.
"""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import descriptor_pool

from services.common.auth import Identity, current_identity
from services.common.errors import InvalidArgument, NotFound, PermissionDenied, excerpt
from services.common.rpc_types import Context, MethodHandler

# The ranks of ingest_pb2.Role, repeated here so this module needs no generated code.
VIEWER, EDITOR, OWNER = 1, 2, 3
ROLE_NAMES = {VIEWER: "viewer", EDITOR: "editor", OWNER: "owner"}

# The caller's role (VIEWER..OWNER) in `projects/{p}`; raises NotFound when they have none.
RoleLookup = Callable[[Identity, str], Awaitable[int]]


class Kind(enum.Enum):
    PUBLIC = "public"
    INTERNAL = "internal"
    AUTHENTICATED = "authenticated"
    OWN_USER = "own user"
    PROJECT = "project"


@dataclass(frozen=True)
class Rule:
    kind: Kind
    field: str = ""  # dotted path of the request field holding the resource name
    minimum: int = 0  # PROJECT: the smallest role that may call
    # PROJECT: the smaller role that suffices when the named member is the caller (leaving).
    self_minimum: int = 0

    def needs_token(self) -> bool:
        return self.kind not in (Kind.PUBLIC, Kind.INTERNAL)


PUBLIC = Rule(Kind.PUBLIC)
INTERNAL = Rule(Kind.INTERNAL)
AUTHENTICATED = Rule(Kind.AUTHENTICATED)


def own_user(field: str) -> Rule:
    return Rule(Kind.OWN_USER, field)


def project(field: str, minimum: int, self_minimum: int = 0) -> Rule:
    return Rule(Kind.PROJECT, field, minimum, self_minimum)


_A = "/embedviz.v1.AuthService/"
_AI = "/embedviz.v1.AuthInternalService/"
_I = "/embedviz.v1.IngestService/"
_II = "/embedviz.v1.IngestInternalService/"
_E = "/embedviz.v1.EmbeddingService/"
_EI = "/embedviz.v1.EmbeddingInternalService/"
_P = "/embedviz.v1.ProjectionService/"

RULES: dict[str, Rule] = {
    # --- auth: users, sessions, API keys ---------------------------------------------
    _A + "SignUp": PUBLIC,
    _A + "Login": PUBLIC,
    _A + "RefreshSession": PUBLIC,
    _A + "ExchangeApiKey": PUBLIC,
    _A + "Logout": AUTHENTICATED,  # the handler checks the session is the caller's
    _A + "GetCurrentUser": AUTHENTICATED,
    _A + "CreateApiKey": AUTHENTICATED,
    _A + "ListApiKeys": AUTHENTICATED,
    _A + "DeleteApiKey": own_user("name"),
    _AI + "IssueDelegatedToken": INTERNAL,
    _AI + "LookupUser": INTERNAL,
    # --- ingest: projects and members -----------------------------------------------
    _I + "CreateProject": AUTHENTICATED,
    _I + "ListProjects": AUTHENTICATED,  # only the caller's own projects come back
    _I + "GetProject": project("name", VIEWER),
    _I + "UpdateProject": project("project.name", EDITOR),
    _I + "DeleteProject": project("name", OWNER),
    _I + "ListMembers": project("parent", VIEWER),
    _I + "CreateMember": project("parent", OWNER),
    _I + "UpdateMember": project("member.name", OWNER),
    _I + "DeleteMember": project("name", OWNER, self_minimum=VIEWER),  # anyone may leave
    # --- ingest: uploads, datasets, rows ---------------------------------------------
    _I + "CreateUpload": project("parent", EDITOR),
    _I + "GetUpload": project("name", VIEWER),
    _I + "AppendUploadChunk": project("name", EDITOR),
    _I + "FinishUpload": project("name", EDITOR),
    _I + "GetDataset": project("name", VIEWER),
    _I + "ListDatasets": project("parent", VIEWER),
    _I + "DeleteDataset": project("name", EDITOR),
    _I + "WatchDataset": project("name", VIEWER),
    _I + "ListRows": project("parent", VIEWER),
    _I + "BatchGetRows": project("parent", VIEWER),
    _I + "ReadColumns": project("dataset", VIEWER),
    # The upload must be of the same project: the handler checks that (NOT_FOUND otherwise).
    _I + "AppendRows": project("dataset", EDITOR),
    _I + "AppendRows": project("dataset", EDITOR),  # the upload must be in the same project
    _II + "GetProjectRole": project("project", VIEWER),
    _II + "StreamRows": project("dataset", VIEWER),
    # --- embedding ------------------------------------------------------------------
    _E + "ListModels": AUTHENTICATED,
    _E + "EmbedTexts": AUTHENTICATED,  # no project data involved: text in, vectors out
    _E + "CreateEmbedding": project("parent", EDITOR),
    _E + "GetEmbedding": project("name", VIEWER),
    _E + "ListEmbeddings": project("parent", VIEWER),
    _E + "DeleteEmbedding": project("name", EDITOR),
    _E + "WatchEmbedding": project("name", VIEWER),
    _E + "CancelEmbedding": project("name", EDITOR),
    _E + "ExtendEmbedding": project("name", EDITOR),
    _EI + "StreamVectors": project("embedding", VIEWER),
    # --- projection -----------------------------------------------------------------
    _P + "CreateProjection": project("parent", EDITOR),
    _P + "GetProjection": project("name", VIEWER),
    _P + "ListProjections": project("parent", VIEWER),
    _P + "DeleteProjection": project("name", EDITOR),
    _P + "WatchProjection": project("name", VIEWER),
    _P + "CancelProjection": project("name", EDITOR),
    _P + "StreamPoints": project("name", VIEWER),
    _P + "ListClusters": project("parent", VIEWER),
    _P + "SearchPoints": project("name", VIEWER),
    _P + "FindNeighbors": project("name", VIEWER),
    _P + "ExportProjection": project("name", VIEWER),
}

# Standard services every server carries; open to anyone (health checks, grpcurl list).
ALWAYS_PUBLIC_PREFIXES = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
)


def rule_for(method: str) -> Rule | None:
    if method.startswith(ALWAYS_PUBLIC_PREFIXES):
        return PUBLIC
    return RULES.get(method)


def methods_of(service_names: Iterable[str]) -> list[str]:
    """Full method names (`/pkg.Service/Method`) of services known to the descriptor pool."""
    pool = descriptor_pool.Default()
    found: list[str] = []
    for name in service_names:
        if name.startswith(("grpc.health.", "grpc.reflection.")):
            continue
        service = pool.FindServiceByName(name)
        found.extend(f"/{service.full_name}/{m.name}" for m in service.methods)
    return found


def check_complete(service_names: Iterable[str]) -> None:
    """Fail fast: a server whose services have a method without a rule does not start."""
    missing = [m for m in methods_of(service_names) if rule_for(m) is None]
    if missing:
        raise RuntimeError(
            "these methods have no entry in services/common/authz.py RULES, so nobody could "
            "say who may call them: " + ", ".join(missing)
        )


def public_methods() -> list[str]:
    return [m for m, r in RULES.items() if not r.needs_token()]


def field_value(request: Any, path: str) -> str:
    value = request
    for part in path.split("."):
        value = getattr(value, part)
    return str(value)


def project_of(name: str, field: str) -> str:
    parts = (name or "").split("/")
    if len(parts) < 2 or parts[0] != "projects" or not parts[1]:
        raise InvalidArgument(
            f"{field} '{excerpt(name)}' is not a resource name inside a project; expected projects/{{project}}/..."
        )
    return "/".join(parts[:2])


async def authorise(rule: Rule, request: Any, identity: Identity, roles: RoleLookup) -> None:
    """Raise NotFound / PermissionDenied unless `identity` may make this call."""
    if rule.kind is Kind.OWN_USER:
        name = field_value(request, rule.field)
        if not name.startswith(f"users/{identity.user_id}/"):
            raise NotFound(f"{excerpt(name) or rule.field} not found")
        return
    if rule.kind is not Kind.PROJECT:
        return
    name = field_value(request, rule.field)
    project = project_of(name, rule.field)
    role = await roles(identity, project)  # NotFound when the caller has no role
    minimum = rule.minimum
    if rule.self_minimum and name.rsplit("/", 1)[-1] == identity.user_id and "/members/" in name:
        minimum = rule.self_minimum
    if role < minimum:
        raise PermissionDenied(
            f"your role in {project} is {ROLE_NAMES.get(role, 'none')}; this needs {ROLE_NAMES[minimum]} or more"
        )


Behaviour = Callable[..., Any]


class AuthzInterceptor(grpc.aio.ServerInterceptor):
    """Applies RULES to every call; runs inside the AuthInterceptor, so the caller's
    identity is known. A method without a rule is refused (and never reaches a handler)."""

    def __init__(self, roles: RoleLookup | None) -> None:
        self._roles = roles

    async def _lookup(self, identity: Identity, project: str) -> int:
        if self._roles is None:
            raise RuntimeError("this server has PROJECT rules but was given no role lookup")
        return await self._roles(identity, project)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[MethodHandler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> MethodHandler | None:
        from services.common.server import _wrap_handler  # the bootstrap imports this module

        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method
        rule = rule_for(method)
        lookup = self._lookup

        async def check(request: Any) -> None:
            if rule is None:
                raise PermissionDenied(f"{method} has no access rule; it is refused until it gets one")
            if rule.kind in (Kind.OWN_USER, Kind.PROJECT):
                await authorise(rule, request, current_identity(), lookup)

        if rule is not None and rule.kind in (Kind.PUBLIC, Kind.INTERNAL, Kind.AUTHENTICATED):
            return handler

        def unary(behaviour: Behaviour) -> Behaviour:
            async def wrapped(request: Any, context: Context) -> Any:
                await check(request)
                return await behaviour(request, context)

            return wrapped

        def streaming(behaviour: Behaviour) -> Behaviour:
            async def wrapped(request: Any, context: Context) -> AsyncIterator[Any]:
                await check(request)
                async for item in behaviour(request, context):
                    yield item

            return wrapped

        return _wrap_handler(handler, unary, streaming)
