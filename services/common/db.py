"""Async SQLAlchemy engine and sessions (asyncpg), and Alembic migrations applied on
start. One database, one schema per service."""

from __future__ import annotations

import asyncio
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine


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

    def run(connection) -> None:  # type: ignore[no-untyped-def]
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
