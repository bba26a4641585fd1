"""Wiring a service process: open its dependencies, build its server, serve until
SIGTERM, close everything. Each service's __main__ is a call to `run`."""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import grpc
import jwt
from grpc_health.v1 import health
from nats.errors import AuthorizationError
from sqlalchemy.engine import make_url

from services.common import paging, telemetry
from services.common.auth import JwksKeys, TokenVerifier
from services.common.authz import RoleLookup, check_complete
from services.common.blobs import BlobStore
from services.common.clients import Channels, DelegatedTokens, ProjectAccess
from services.common.config import Settings, SettingsError
from services.common.db import Database, is_outage, migrate
from services.common.events import EventBus, describe
from services.common.events import where as nats_where
from services.common.outbox import OutboxSettings
from services.common.reconcile import ReconcileSettings
from services.common.revocations import Revocations
from services.common.runner import RunnerSettings
from services.common.server import (
    add_health_and_reflection,
    configure_logging,
    create_server,
    serve_until_signalled,
)

log = logging.getLogger(__name__)

KeyLookup = Callable[[str], Awaitable[jwt.PyJWK | None]]
Background = Callable[[asyncio.Event], Awaitable[None]]
S = TypeVar("S")
T = TypeVar("T")
START_RETRY_MAX_S = 5.0  # while waiting for PostgreSQL or NATS at the start: at most this between tries


@dataclass
class Deps:
    """Everything a service gets handed; nothing of this is a module global."""

    name: str
    settings: Settings
    db: Database
    bus: EventBus
    blobs: BlobStore
    channels: Channels
    verifier: TokenVerifier
    access: ProjectAccess
    delegated: DelegatedTokens
    revocations: Revocations
    telemetry: telemetry.Telemetry = field(default_factory=telemetry.Telemetry)


@dataclass
class Built:
    server: grpc.aio.Server
    health: health.aio.HealthServicer
    service_names: list[str]
    listen_addr: str
    background: list[Background] = field(default_factory=list)
    on_close: list[Callable[[], Awaitable[None]]] = field(default_factory=list)


def new_server(
    deps: Deps,
    service_names: Iterable[str],
    public_methods: Iterable[str] = (),
    roles: RoleLookup | None = None,
    reflected_names: Iterable[str] | None = None,
) -> tuple[grpc.aio.Server, health.aio.HealthServicer]:
    """The server with the shared interceptors. `roles` tells a caller's project role
    (default: ask ingest over gRPC); a method of `service_names` without an access rule
    in services/common/authz.py stops the start here. Reflection lists `reflected_names`
    (default: `service_names`)."""
    service_names = list(service_names)
    check_complete(service_names)
    server = create_server(
        verifier=deps.verifier,
        public_methods=public_methods,
        roles=roles or deps.access.role,
        page_key=paging.key_from_secret(deps.settings.internal_secret),
        service=deps.name,
    )
    health_servicer = add_health_and_reflection(server, service_names, reflected_names)
    return server, health_servicer


async def open_deps(
    name: str,
    settings: Settings,
    schema: str,
    migrations_dir: Path,
    keys: KeyLookup | None = None,
) -> Deps:
    # first, so that /metrics answers while the migrations run
    observed = telemetry.start(name, settings.metrics_addr, settings.otlp_endpoint, settings.traces_dir)
    # then the blob store: an S3 store that cannot be reached stops the start before the database or NATS
    blobs = await asyncio.to_thread(BlobStore, settings.blob_root, settings.s3)
    log.info("blobs in %s", blobs.where)
    # PostgreSQL and NATS may come up after this process (a whole system started at once, a
    # node restarted): wait for them, saying so, for up to EMBEDVIZ_START_WAIT seconds.
    deadline = time.monotonic() + settings.start_wait
    await when_reachable(
        lambda: migrate(settings.database_url, schema, migrations_dir),
        f"PostgreSQL at {database_where(settings.database_url)}", is_outage, deadline,
    )
    db = Database(settings.database_url)
    bus = await when_reachable(
        lambda: EventBus.connect(settings.nats_url, f"embedviz-{name}", settings.nats_user, settings.nats_password),
        f"NATS at {nats_where(settings.nats_url)}", nats_not_ready, deadline,
    )
    channels = Channels()
    max_age = settings.jwks_max_age
    lookup = (
        keys if keys is not None else JwksKeys(settings.jwks_url, max_age=max_age, min_refetch=min(5.0, max_age)).get
    )
    # Logged-out sessions and deleted API keys, followed live: their tokens stop at once.
    revoked = Revocations()
    await revoked.follow(bus)
    verifier = TokenVerifier(lookup, settings.jwt_issuer, [settings.jwt_audience, settings.internal_audience],
                             revocations=revoked)
    return Deps(
        name=name,
        settings=settings,
        db=db,
        bus=bus,
        blobs=blobs,
        channels=channels,
        verifier=verifier,
        access=ProjectAccess(channels.get(settings.ingest_addr)),
        delegated=DelegatedTokens(channels.get(settings.auth_addr), settings.internal_secret, verifier),
        revocations=revoked,
        telemetry=observed,
    )


async def when_reachable(
    connect: Callable[[], Awaitable[T]], part: str, transient: Callable[[BaseException], bool], deadline: float
) -> T:
    """`connect` again and again while `part` cannot be reached (`transient` says which
    errors mean that), a log line each time, until `deadline` (time.monotonic()); then the
    process ends with a message naming what it waited for, and its supervisor may start it
    again."""
    started = time.monotonic()
    delay = 0.5
    while True:
        try:
            result = await connect()
        except Exception as exc:
            if not transient(exc):
                raise
            left = deadline - time.monotonic()
            if left <= 0:
                message = (f"{part} could not be reached for {time.monotonic() - started:.0f} s "
                           f"({describe(exc)}); giving up. Start it, check the address, or wait longer "
                           "with EMBEDVIZ_START_WAIT")
                log.error("%s", message)
                raise SystemExit(message) from exc
            log.warning("%s cannot be reached yet (%s); trying again in %.1f s (for %.0f s more)",
                        part, describe(exc), min(delay, left), left)
            await asyncio.sleep(min(delay, left))
            delay = min(delay * 2, START_RETRY_MAX_S)
            continue
        if time.monotonic() - started > 1:
            log.info("%s reached after %.1f s", part, time.monotonic() - started)
        return result


def database_where(url: str) -> str:
    """A database URL for a log line: host, port and database, never the password."""
    try:
        parsed = make_url(url)
    except Exception:  # noqa: BLE001 - a URL SQLAlchemy cannot read fails later with its own message
        return "the configured address"
    return f"{parsed.host}:{parsed.port or 5432}/{parsed.database}"


def nats_not_ready(exc: BaseException) -> bool:
    """NATS not there yet, or its JetStream not ready (or the streams not yet made by auth),
    rather than refusing this service's credentials."""
    return not isinstance(exc, (AuthorizationError, PermissionError))


async def close_deps(deps: Deps) -> None:
    await deps.revocations.close()
    await deps.channels.close()
    await deps.bus.close()
    await deps.db.close()
    deps.telemetry.close()


async def serve(
    name: str,
    schema: str,
    migrations_dir: Path,
    build: Callable[[Deps], Awaitable[Built]],
    settings: Settings | None = None,
) -> None:
    settings = settings or Settings.from_env()
    configure_logging(settings.log_level, settings.log_format)
    deps = await open_deps(name, settings, schema, migrations_dir)
    try:
        built = await build(deps)
        await serve_until_signalled(
            built.server, built.listen_addr, built.health, built.service_names, built.background
        )
        for close in built.on_close:
            await close()
    finally:
        await close_deps(deps)
    log.info("%s stopped", name)


def read_settings(name: str, reader: Callable[[], S]) -> S:
    """Settings read once when the process starts. A value that cannot be used ends the
    process here, before anything is opened, with a message naming the variable."""
    try:
        return reader()
    except SettingsError as exc:
        print(f"{name} cannot start: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None


def run(
    name: str,
    schema: str,
    migrations_dir: Path,
    build: Callable[[Deps], Awaitable[Built]],
) -> None:
    """Serve `name` until SIGTERM; the shared settings are read and checked first (a
    service reads its own with `read_settings` before calling this)."""
    asyncio.run(serve(name, schema, migrations_dir, build, start_settings(name)))


def start_settings(name: str) -> Settings:
    """The shared settings, read and checked when a process starts, with the shared job
    settings (checked now; each part reads its own again where it is built)."""
    settings = read_settings(name, Settings.from_env)
    for shared in (RunnerSettings.from_env, OutboxSettings.from_env, ReconcileSettings.from_env):
        read_settings(name, shared)
    return settings
