"""python -m services.auth            serve
python -m services.auth rotate-key    start signing with a new key (the old one stays
                                      published until its tokens have expired)"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from services.auth.keys import KeyRing
from services.auth.models import SCHEMA
from services.auth.server import build
from services.common.app import run
from services.common.config import Settings
from services.common.db import Database, migrate

MIGRATIONS = Path(__file__).parent / "migrations"


async def rotate_key() -> None:
    settings = Settings.from_env()
    await migrate(settings.database_url, SCHEMA, MIGRATIONS)
    db = Database(settings.database_url)
    try:
        kid = await KeyRing(db.sessions, settings.access_token_ttl).rotate()
    finally:
        await db.close()
    print(f"new signing key {kid}; the previous key stays in the JWKS until its tokens expire")


if __name__ == "__main__":
    if sys.argv[1:] == ["rotate-key"]:
        asyncio.run(rotate_key())
    elif sys.argv[1:]:
        sys.exit(__doc__)
    else:
        run("auth", SCHEMA, MIGRATIONS, build)
