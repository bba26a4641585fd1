"""Signing keys published ahead of use (services/auth/keys.py), against the real
PostgreSQL of the `infra` fixture, in a database of their own, with a short publish-ahead
and retention: a rotated key is in the JWKS at once, signs only from its activation time,
and the old key signs until then and leaves the JWKS `retention` after it."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path

import asyncpg
import jwt
import pytest
from sqlalchemy import delete, select

from services.auth.key_encryption import ENV as KEY_ENCRYPTION_ENV
from services.auth.key_encryption import KeyEncryption, new_key_text
from services.auth.keys import JWKS_FRESH_SECONDS, KeyRing, publish_ahead_seconds
from services.auth.models import SCHEMA, SigningKey
from services.common.db import Database, migrate
from services.common.jobs import utcnow
from services.stack import Stack
from tests.support.world import eventually

AHEAD_S = 2.0
RETENTION_S = 1.5
REPO = Path(__file__).resolve().parents[2]
MIGRATIONS = REPO / "services" / "auth" / "migrations"
KEY_ENCRYPTION_KEY = new_key_text()  # this module's and its rotate commands'


@pytest.fixture(scope="module")
async def database_url(infra: Stack) -> str:
    name = f"keys_{uuid.uuid4().hex[:8]}"
    connection = await asyncpg.connect(infra.pg_dsn)
    try:
        await connection.execute(f'CREATE DATABASE "{name}"')
    finally:
        await connection.close()
    url = infra.database_url.rsplit("/", 1)[0] + f"/{name}"
    await migrate(url, SCHEMA, MIGRATIONS)
    return url


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    database = Database(database_url)
    async with database.sessions() as session:  # every test starts from a fresh key table
        await session.execute(delete(SigningKey))
        await session.commit()
    yield database
    await database.close()


def ring(db: Database) -> KeyRing:
    sealing = KeyEncryption.from_env({KEY_ENCRYPTION_ENV: KEY_ENCRYPTION_KEY})
    return KeyRing(db.sessions, 900, retention=RETENTION_S, publish_ahead=AHEAD_S, sealing=sealing)


async def kids(keys: KeyRing) -> set[str]:
    return {str(k["kid"]) for k in (await keys.jwks())["keys"]}  # type: ignore[union-attr]


async def signing_kid(keys: KeyRing) -> str:
    token = await keys.sign({"sub": "someone"})
    kid = jwt.get_unverified_header(token)["kid"]
    key = await keys.lookup(kid)  # what a verifier finds in the JWKS checks the signature
    assert key is not None
    jwt.decode(token, key.key, algorithms=["ES256"])
    return kid


async def sleep_until(moment: datetime) -> None:
    await asyncio.sleep(max(0.0, (moment - utcnow()).total_seconds()) + 0.05)


async def test_a_rotated_key_is_published_at_once_and_signs_only_from_its_activation(db: Database) -> None:
    keys = ring(db)
    await keys.ensure_key()
    old_kid = await signing_kid(keys)

    new_kid = await keys.rotate()
    activate = keys.activate_time(new_kid)
    assert new_kid != old_kid and activate is not None
    assert timedelta(seconds=AHEAD_S - 1) < activate - utcnow() <= timedelta(seconds=AHEAD_S)
    assert await kids(keys) == {old_kid, new_kid}  # both at once, before any token of the new key
    assert await signing_kid(keys) == old_kid

    await sleep_until(activate)  # no reload in between: the signer is chosen at sign time
    assert await signing_kid(keys) == new_kid
    assert await kids(keys) == {old_kid, new_kid}  # tokens the old key signed are still valid

    await sleep_until(activate + timedelta(seconds=RETENTION_S))  # retention counts from activation
    assert await kids(keys) == {new_kid}
    assert await signing_kid(keys) == new_kid


async def test_replicas_agree_from_the_table_s_times(db: Database) -> None:
    running, command = ring(db), ring(db)
    await running.ensure_key()
    old_kid = await signing_kid(running)

    new_kid = await command.rotate()  # python -m services.auth rotate-key: another process

    async def published_by_the_running_replica() -> None:  # at once, not after its 30 s reload
        assert await kids(running) == {old_kid, new_kid}

    await eventually(published_by_the_running_replica, timeout=JWKS_FRESH_SECONDS + 0.5, every=0.1)
    await running.reload()  # what each replica does every EMBEDVIZ_KEY_RELOAD_SECONDS
    started_later = ring(db)
    await started_later.reload()
    replicas = (running, started_later)
    for replica in replicas:
        assert await kids(replica) == {old_kid, new_kid}
        assert await signing_kid(replica) == old_kid
        assert replica.activate_time(new_kid) == command.activate_time(new_kid)

    await sleep_until(command.activate_time(new_kid))  # type: ignore[arg-type]
    for replica in replicas:
        assert await signing_kid(replica) == new_kid


async def test_a_second_rotation_before_the_first_activates_retires_the_waiting_key_at_its_own_start(
    db: Database,
) -> None:
    keys = ring(db)
    await keys.ensure_key()
    first = await signing_kid(keys)
    second = await keys.rotate()
    third = await keys.rotate()
    assert await kids(keys) == {first, second, third}
    assert await signing_kid(keys) == first

    async with db.sessions() as session:
        rows = {k.kid: k for k in (await session.scalars(select(SigningKey))).all()}
    # Each key is retired when the next one starts signing: retention counts from then.
    assert rows[first].retire_time == rows[second].activate_time
    assert rows[second].retire_time == rows[third].activate_time
    assert rows[third].retire_time is None

    await sleep_until(rows[third].activate_time)  # type: ignore[arg-type]
    assert await signing_kid(keys) == third


@pytest.mark.parametrize("given", ["soon", "-1", "nan"])
def test_a_bad_publish_ahead_setting_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, given: str) -> None:
    monkeypatch.setenv("EMBEDVIZ_KEY_PUBLISH_AHEAD_SECONDS", given)
    with pytest.raises(ValueError, match=r"EMBEDVIZ_KEY_PUBLISH_AHEAD_SECONDS must be a number of seconds, 0 or more"):
        publish_ahead_seconds()


def test_publish_ahead_defaults_to_twice_the_edge_s_jwks_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EMBEDVIZ_KEY_PUBLISH_AHEAD_SECONDS", raising=False)
    assert publish_ahead_seconds() == 30
    monkeypatch.setenv("EMBEDVIZ_KEY_PUBLISH_AHEAD_SECONDS", "0")
    assert publish_ahead_seconds() == 0


@pytest.mark.parametrize("ahead", ["30", "0"])
async def test_the_rotate_command_says_when_the_new_key_starts_signing(db: Database, infra: Stack, ahead: str) -> None:
    await ring(db).ensure_key()
    env = {**os.environ, **infra.env, "EMBEDVIZ_DATABASE_URL": db.url, "EMBEDVIZ_KEY_PUBLISH_AHEAD_SECONDS": ahead,
           KEY_ENCRYPTION_ENV: KEY_ENCRYPTION_KEY}
    rotated = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "services.auth", "rotate-key"],
        env=env, capture_output=True, text=True, timeout=120, cwd=REPO,
    )
    assert rotated.returncode == 0, rotated.stderr
    new_kid = rotated.stdout.split()[3].rstrip(";")  # as tests/auth/test_key_rotation.py reads it
    assert "stays in the JWKS" in rotated.stdout
    keys = ring(db)
    await keys.reload()
    assert new_kid in await kids(keys)
    if ahead == "0":
        assert "it signs from now on" in rotated.stdout
        assert await signing_kid(keys) == new_kid
    else:
        assert re.search(r"starts signing at \S+ \(in (29|30) s\)", rotated.stdout), rotated.stdout
        assert await signing_kid(keys) != new_kid
