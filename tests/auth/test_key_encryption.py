"""Signing keys encrypted at rest (services/auth/key_encryption.py, KeyRing.ensure_key),
against the real PostgreSQL of the `infra` fixture in databases of their own: the table
holds no private key in the clear, tokens still verify, a row copied under another kid does
not open, keys stored in plaintext by an earlier version are sealed when auth starts, and
auth refuses to start without the key-encryption key or with the wrong one."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import jwt
import pytest
from alembic import command
from alembic.config import Config
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import delete

from services.auth.key_encryption import (
    ENV,
    ENV_FILE,
    KeyEncryption,
    KeyEncryptionError,
    new_key_text,
)
from services.auth.keys import KeyRing
from services.auth.models import SCHEMA, SigningKey
from services.common.db import Database, migrate
from services.stack import Stack

REPO = Path(__file__).resolve().parents[2]
MIGRATIONS = REPO / "services" / "auth" / "migrations"


def sealing(text: str | None = None, previous: str | None = None) -> KeyEncryption:
    environ = {ENV: text or new_key_text()}
    if previous:
        environ["EMBEDVIZ_OLD_KEY_ENCRYPTION_KEY"] = previous
    return KeyEncryption.from_env(environ)


async def new_database(infra: Stack, prefix: str) -> str:
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    connection = await asyncpg.connect(infra.pg_dsn)
    try:
        await connection.execute(f'CREATE DATABASE "{name}"')
    finally:
        await connection.close()
    return infra.database_url.rsplit("/", 1)[0] + f"/{name}"


def dsn(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


@pytest.fixture(scope="module")
async def database_url(infra: Stack) -> str:
    url = await new_database(infra, "sealed")
    await migrate(url, SCHEMA, MIGRATIONS)
    return url


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    database = Database(database_url)
    async with database.sessions() as session:
        await session.execute(delete(SigningKey))
        await session.commit()
    yield database
    await database.close()


async def stored_keys(url: str) -> dict[str, str]:
    connection = await asyncpg.connect(dsn(url))
    try:
        rows = await connection.fetch("SELECT kid, sealed_private_key FROM auth.signing_keys")
    finally:
        await connection.close()
    return {r["kid"]: r["sealed_private_key"] for r in rows}


async def verifies(keys: KeyRing, token: str) -> dict[str, object]:
    key = await keys.lookup(jwt.get_unverified_header(token)["kid"])
    assert key is not None
    claims: dict[str, object] = jwt.decode(token, key.key, algorithms=["ES256"])
    return claims


async def test_the_key_table_holds_no_private_key_in_the_clear_and_tokens_still_verify(db: Database) -> None:
    kek = sealing()
    keys = KeyRing(db.sessions, 900, sealing=kek)
    await keys.ensure_key()
    await keys.rotate()
    stored = await stored_keys(db.url)
    assert len(stored) == 2
    for value in stored.values():
        assert "PRIVATE KEY" not in value and "-----BEGIN" not in value
        assert value.startswith(f"aesgcm1.{kek.fingerprint}.")
        assert b"PRIVATE KEY" not in base64.urlsafe_b64decode(value.split(".", 2)[2])
    token = await keys.sign({"sub": "someone"})
    assert (await verifies(keys, token))["sub"] == "someone"
    # Another replica with the same key-encryption key signs with the same key.
    replica = KeyRing(db.sessions, 900, sealing=kek)
    await replica.ensure_key()
    assert (await verifies(keys, await replica.sign({"sub": "other"})))["sub"] == "other"


async def test_a_row_copied_under_another_kid_does_not_open(db: Database) -> None:
    kek = sealing()
    keys = KeyRing(db.sessions, 900, publish_ahead=0, sealing=kek)
    await keys.ensure_key()
    first = jwt.get_unverified_header(await keys.sign({"sub": "a"}))["kid"]
    second = await keys.rotate()
    stored = await stored_keys(db.url)
    connection = await asyncpg.connect(dsn(db.url))
    try:  # someone with write access copies the first key's ciphertext onto the second kid
        await connection.execute(
            "UPDATE auth.signing_keys SET sealed_private_key = $1 WHERE kid = $2", stored[first], second
        )
    finally:
        await connection.close()
    with pytest.raises(
        KeyEncryptionError, match=rf"signing key {second} .* does not decrypt .* copied from another kid"
    ):
        kek.open(second, stored[first])
    restarted = KeyRing(db.sessions, 900, publish_ahead=0, sealing=kek)
    with pytest.raises(KeyEncryptionError, match=second):
        await restarted.ensure_key()  # auth refuses to start rather than sign with it
    assert await stored_keys(db.url) == {first: stored[first], second: stored[first]}  # left as found


async def test_the_wrong_key_encryption_key_stops_auth_and_names_the_setting(db: Database) -> None:
    await KeyRing(db.sessions, 900, sealing=sealing()).ensure_key()
    other = sealing()
    with pytest.raises(
        KeyEncryptionError, match=rf"another key-encryption key .* the one in {ENV} \(fingerprint {other.fingerprint}\)"
    ):
        await KeyRing(db.sessions, 900, sealing=other).ensure_key()
    with pytest.raises(KeyEncryptionError):  # nor can a rotation plant a key auth could not open
        await KeyRing(db.sessions, 900, sealing=other).rotate()


async def test_a_new_key_encryption_key_reseals_every_key_at_start(db: Database) -> None:
    old_text = new_key_text()
    keys = KeyRing(db.sessions, 900, sealing=sealing(old_text))
    await keys.ensure_key()
    token = await keys.sign({"sub": "before"})
    new_text = new_key_text()
    changing = sealing(new_text, previous=old_text)
    await KeyRing(db.sessions, 900, sealing=changing).ensure_key()
    assert all(changing.is_current(v) for v in (await stored_keys(db.url)).values())
    after = KeyRing(db.sessions, 900, sealing=sealing(new_text))  # the old key is no longer needed
    await after.ensure_key()
    assert (await verifies(after, token))["sub"] == "before"
    assert jwt.get_unverified_header(await after.sign({"sub": "x"}))["kid"] == jwt.get_unverified_header(token)["kid"]


async def test_a_plaintext_key_from_an_earlier_version_is_sealed_at_start(infra: Stack) -> None:
    url = await new_database(infra, "plain")
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["database_url"] = url
    config.attributes["schema"] = SCHEMA
    await asyncio.to_thread(command.upgrade, config, "0002")  # the schema before encryption at rest
    private = ec.generate_private_key(ec.SECP256R1())
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    kid = "0123456789abcdef"
    jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(private.public_key()))
    jwk.update({"kid": kid, "use": "sig", "alg": "ES256"})
    connection = await asyncpg.connect(dsn(url))
    try:
        await connection.execute(
            "INSERT INTO auth.signing_keys (kid, private_pem, public_jwk, create_time) VALUES ($1, $2, $3, now())",
            kid, pem, json.dumps(jwk),
        )
    finally:
        await connection.close()
    issued_before = jwt.encode({"sub": "someone"}, private, algorithm="ES256", headers={"kid": kid})

    await migrate(url, SCHEMA, MIGRATIONS)  # what auth does when it starts, then:
    db = Database(url)
    try:
        kek = sealing()
        keys = KeyRing(db.sessions, 900, sealing=kek)
        await keys.ensure_key()
        stored = await stored_keys(url)
        assert list(stored) == [kid]  # the same key, no new one: nobody is logged out
        assert "PRIVATE KEY" not in stored[kid] and kek.is_current(stored[kid])
        assert kek.open(kid, stored[kid]) == pem
        assert (await verifies(keys, issued_before))["sub"] == "someone"
        signed_now = await keys.sign({"sub": "later"})
        assert jwt.get_unverified_header(signed_now)["kid"] == kid
        jwt.decode(signed_now, private.public_key(), algorithms=["ES256"])
    finally:
        await db.close()


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ({}, rf"{ENV} is not set"),
        ({ENV: "not base64 at all!"}, rf"{ENV} must be 32 random bytes in base64"),
        ({ENV: base64.b64encode(b"short").decode()}, rf"{ENV} must be 32 random bytes in base64"),
        ({ENV: new_key_text(), ENV_FILE: "/etc/hostname"}, rf"set {ENV} or {ENV_FILE}, not both"),
        ({ENV_FILE: "/nonexistent/kek"}, rf"{ENV_FILE} names /nonexistent/kek, which cannot be read"),
    ],
)
def test_a_missing_or_malformed_key_encryption_key_is_a_clear_error(given: dict[str, str], message: str) -> None:
    with pytest.raises(KeyEncryptionError, match=message):
        KeyEncryption.from_env(given)


def test_the_key_encryption_key_may_come_from_a_secret_file(tmp_path: Path) -> None:
    text = new_key_text()
    secret = tmp_path / "kek"
    secret.write_text(text + "\n")
    from_file = KeyEncryption.from_env({ENV_FILE: str(secret)})
    assert from_file.source == ENV_FILE
    assert from_file.fingerprint == sealing(text).fingerprint
    urlsafe = base64.urlsafe_b64encode(base64.b64decode(text)).decode().rstrip("=")
    assert KeyEncryption.from_env({ENV: urlsafe}).fingerprint == from_file.fingerprint


@pytest.mark.parametrize("argv", [[], ["rotate-key"]])
def test_auth_without_the_key_refuses_to_start_naming_the_setting(infra: Stack, argv: list[str]) -> None:
    env = {k: v for k, v in {**os.environ, **infra.env}.items() if not k.startswith("EMBEDVIZ_KEY_ENCRYPTION_KEY")}
    started = subprocess.run(
        [sys.executable, "-m", "services.auth", *argv], env=env, capture_output=True, text=True, timeout=120, cwd=REPO,
    )
    assert started.returncode != 0
    assert f"auth cannot start: {ENV} is not set" in started.stderr, started.stderr
    assert "Traceback" not in started.stderr
