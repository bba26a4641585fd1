"""Async SQLAlchemy engine and sessions (asyncpg), and Alembic migrations applied on
start. One database, one schema per service."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import asyncpg
from alembic import command
from alembic.config import Config
from sqlalchemy import exc as sa_exc
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

log = logging.getLogger(__name__)
T = TypeVar("T")

# How long a job waits for PostgreSQL to come back before it gives up (a restart, a
# failover); calls made for a person are not retried: they get UNAVAILABLE at once.
OUTAGE_TOLERANCE_S = 180.0


def is_outage(exc: BaseException) -> bool:
    """Did this fail because the database could not be reached (not because of the query)?"""
    if isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated:
        return True
    if isinstance(exc, (sa_exc.OperationalError, sa_exc.InterfaceError)):
        return True
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, (OSError, asyncpg.exceptions.ConnectionDoesNotExistError,
                              asyncpg.exceptions.CannotConnectNowError, asyncpg.exceptions.InterfaceError)):
            return True
        cause = cause.__cause__ or cause.__context__
    return False


async def through_outages(work: Callable[[], Awaitable[T]], what: str, tolerance: float = OUTAGE_TOLERANCE_S) -> T:
    """Run `work` (one short transaction), again and again while PostgreSQL is unreachable,
    for up to `tolerance` seconds; then the last error is raised."""
    started = time.monotonic()
    delay = 0.5
    while True:
        try:
            return await work()
        except Exception as exc:
            if not is_outage(exc) or time.monotonic() - started > tolerance:
                raise
            log.warning("%s: PostgreSQL is unreachable (%s); trying again in %.0f s", what, type(exc).__name__, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


class Database:
    def __init__(self, url: str) -> None:
        self.url = url
        self.engine: AsyncEngine = create_async_engine(url, pool_pre_ping=True, pool_size=10)
        self.sessions: async_sessionmaker[AsyncSession] = async_sessionmaker(
            self.engine, expire_on_commit=False
        )

    async def close(self) -> None:
        await self.engine.dispose()


async def migrate(url: str, schema: str, migrations_dir: Path) -> None:
    """Apply the service's migrations up to head (its version table lives in its schema)."""
    config = Config()
    config.set_main_option("script_location", str(migrations_dir))
    config.attributes["database_url"] = url
    config.attributes["schema"] = schema
    await asyncio.to_thread(command.upgrade, config, "head")


def run_env() -> None:
    """Body of every service's migrations/env.py: online migrations over asyncpg, with an
    advisory lock so replicas starting together do not race."""
    from alembic import context

    config = context.config
    url = config.attributes["database_url"]
    schema = config.attributes["schema"]
    target_metadata = config.attributes.get("target_metadata")

    def run(connection: Connection) -> None:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            version_table_schema=schema,
            include_schemas=True,
        )
        with context.begin_transaction():
            context.run_migrations()

    async def main() -> None:
        engine = create_async_engine(url)
        try:
            async with engine.connect() as connection:
                await connection.execute(text("SELECT pg_advisory_lock(hashtext(:s))"), {"s": schema})
                await connection.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
                await connection.commit()
                try:
                    await connection.run_sync(run)
                    await connection.commit()
                finally:
                    await connection.execute(text("SELECT pg_advisory_unlock(hashtext(:s))"), {"s": schema})
                    await connection.commit()
        finally:
            await engine.dispose()

    asyncio.run(main())
