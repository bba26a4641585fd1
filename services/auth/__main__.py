"""python -m services.auth            serve
python -m services.auth rotate-key    publish a new key now and sign with it after
                                      EMBEDVIZ_KEY_PUBLISH_AHEAD_SECONDS (30); the old one
                                      signs until then and stays published until its
                                      tokens have expired"""

from __future__ import annotations

import asyncio
import functools
import sys
from pathlib import Path

from services.auth.key_encryption import KeyEncryption, KeyEncryptionError
from services.auth.keys import KeyRing
from services.auth.models import SCHEMA
from services.auth.server import build
from services.auth.settings import AuthSettings
from services.common.app import read_settings, run
from services.common.config import Settings
from services.common.db import Database, migrate
from services.common.jobs import utcnow

MIGRATIONS = Path(__file__).parent / "migrations"


async def rotate_key() -> None:
    settings = Settings.from_env()
    sealing = KeyEncryption.from_env()  # the new key is sealed like auth's own
    await migrate(settings.database_url, SCHEMA, MIGRATIONS)
    db = Database(settings.database_url)
    try:
        keys = KeyRing(db.sessions, settings.access_token_ttl, sealing=sealing)
        kid = await keys.rotate()
        start = keys.activate_time(kid) or utcnow()
    finally:
        await db.close()
    wait = round((start - utcnow()).total_seconds())
    if wait > 0:
        when = (f"published in the JWKS now, it starts signing at {start.isoformat(timespec='seconds')} "
                f"(in {wait} s); the previous key signs until then and")
    else:
        when = "it signs from now on; the previous key"
    print(f"new signing key {kid}; {when} stays in the JWKS until its tokens expire")


if __name__ == "__main__":
    if sys.argv[1:] and sys.argv[1:] != ["rotate-key"]:
        sys.exit(__doc__)
    try:
        KeyEncryption.from_env()  # missing or malformed: stop before touching the database
        if sys.argv[1:] == ["rotate-key"]:
            asyncio.run(rotate_key())
        else:
            own = read_settings("auth", AuthSettings.from_env)
            run("auth", SCHEMA, MIGRATIONS, functools.partial(build, own=own))
    except KeyEncryptionError as exc:
        sys.exit(f"auth cannot start: {exc}")
