"""Signing keys: ES256 key pairs kept in the auth schema. A rotation publishes the new
key at once but signs with it only `publish_ahead` seconds later (default 30: twice the
edge's 15 s JWKS cache, and Envoy does not refetch on an unknown kid); until then the old
key signs, and its retire time is that activation time. The newest activated key signs;
the JWKS publishes keys not yet active, the current key and every key retired less than
`retention` seconds ago (default: the longest token lifetime plus a minute), so tokens
signed before a rotation stay valid until they expire, and a retired key leaves the JWKS
on its own after that. Every choice is made from the table's times, so replicas agree.
Private halves are stored sealed under the key-encryption key (key_encryption.py); keys
stored in plaintext by an earlier version are sealed when auth starts."""

from __future__ import annotations

import json
import math
import os
import secrets
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.auth.key_encryption import KeyEncryption, is_plaintext
from services.auth.models import SigningKey
from services.common.config import SettingsError, number
from services.common.jobs import utcnow

ALGORITHM = "ES256"
# Delegated (worker) tokens live EMBEDVIZ_DELEGATED_TOKEN_TTL seconds, at most this long;
# see Accounts.delegated_token. Retention counts from this bound, so it covers any setting.
LONGEST_DELEGATED_TTL = 3600
DEFAULT_DELEGATED_TTL = 600
# The published JWKS is at most this old, whatever the reload period: a replica must not
# serve the edge a JWKS without a key that another replica starts signing with soon.
JWKS_FRESH_SECONDS = 1.0


def reload_seconds() -> float:
    """How often a replica looks at the key table again (a rotation by another process):
    EMBEDVIZ_KEY_RELOAD_SECONDS (30)."""
    return number(os.environ, "EMBEDVIZ_KEY_RELOAD_SECONDS", 30.0, minimum=0.1)


def retention_setting() -> float | None:
    """EMBEDVIZ_KEY_RETENTION_SECONDS, when set (see retention_seconds)."""
    if not os.environ.get("EMBEDVIZ_KEY_RETENTION_SECONDS", "").strip():
        return None
    return number(os.environ, "EMBEDVIZ_KEY_RETENTION_SECONDS", 0.0, minimum=0.0)


def retention_seconds(access_ttl: int) -> float:
    """How long a retired key stays published: EMBEDVIZ_KEY_RETENTION_SECONDS, or long
    enough for every token it signed to expire."""
    given = retention_setting()
    return given if given is not None else float(max(access_ttl, LONGEST_DELEGATED_TTL) + 60)


def delegated_token_ttl() -> int:
    """How long a delegated (worker) token lives: EMBEDVIZ_DELEGATED_TOKEN_TTL (600). A job
    renews its token at half this lifetime, so a short one costs a call to auth that often."""
    given = os.environ.get("EMBEDVIZ_DELEGATED_TOKEN_TTL", "").strip()
    if not given:
        return DEFAULT_DELEGATED_TTL
    try:
        seconds = int(given)
    except ValueError:
        seconds = 0
    if not 2 <= seconds <= LONGEST_DELEGATED_TTL:
        raise SettingsError(
            f"EMBEDVIZ_DELEGATED_TOKEN_TTL must be a whole number of seconds from 2 to {LONGEST_DELEGATED_TTL} "
            f"(got {given!r}); leave it unset for {DEFAULT_DELEGATED_TTL}"
        )
    return seconds


def publish_ahead_seconds() -> float:
    """How long a new key is published before it signs: EMBEDVIZ_KEY_PUBLISH_AHEAD_SECONDS
    (30, twice the edge's JWKS cache_duration in envoy.yaml)."""
    given = os.environ.get("EMBEDVIZ_KEY_PUBLISH_AHEAD_SECONDS", "").strip()
    if not given:
        return 30.0
    try:
        seconds = float(given)
    except ValueError:
        seconds = math.nan
    if not math.isfinite(seconds) or seconds < 0:
        raise SettingsError(
            f"EMBEDVIZ_KEY_PUBLISH_AHEAD_SECONDS must be a number of seconds, 0 or more (got {given!r}); "
            "leave it unset for 30"
        )
    return seconds


@dataclass(frozen=True)
class Signer:
    kid: str
    private_key: ec.EllipticCurvePrivateKey


@dataclass(frozen=True)
class _Key:
    kid: str
    sealed_private_key: str
    jwk: dict[str, object]
    activate_time: datetime | None
    retire_time: datetime | None


def _new_key(sealing: KeyEncryption) -> SigningKey:
    private = ec.generate_private_key(ec.SECP256R1())
    kid = secrets.token_hex(8)
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(private.public_key()))
    jwk.update({"kid": kid, "use": "sig", "alg": ALGORITHM})
    return SigningKey(kid=kid, sealed_private_key=sealing.seal(kid, pem), public_jwk=json.dumps(jwk))


class KeyRing:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        token_ttl: int,
        retention: float | None = None,
        publish_ahead: float | None = None,
        *,
        sealing: KeyEncryption,
        reload_every: float | None = None,
    ) -> None:
        self._sessions = sessions
        self._sealing = sealing
        self._retention = retention if retention is not None else retention_seconds(token_ttl)
        self._publish_ahead = publish_ahead if publish_ahead is not None else publish_ahead_seconds()
        self._keys: list[_Key] = []  # newest first
        self._signers: dict[str, Signer] = {}
        self._loaded_at = 0.0
        self._reload_every = reload_every if reload_every is not None else reload_seconds()

    async def ensure_key(self) -> None:
        """At start: seal keys stored in plaintext by an earlier version (and re-seal those
        under EMBEDVIZ_OLD_KEY_ENCRYPTION_KEY), check that every key opens, so a wrong
        key-encryption key stops auth here rather than at the first login, and create the
        first key on a fresh database."""
        async with self._sessions() as session:
            rows = (await session.scalars(select(SigningKey).order_by(SigningKey.kid).with_for_update())).all()
            for row in rows:
                stored = row.sealed_private_key
                if is_plaintext(stored):
                    row.sealed_private_key = self._sealing.seal(row.kid, stored)
                elif not self._sealing.is_current(stored):
                    row.sealed_private_key = self._sealing.seal(row.kid, self._sealing.open(row.kid, stored))
                else:
                    self._sealing.open(row.kid, stored)
            if not any(row.retire_time is None for row in rows):
                session.add(_new_key(self._sealing))
            await session.commit()
        await self.reload()

    async def rotate(self) -> str:
        """Publish a new key now, sign with it `publish_ahead` seconds from now, and retire
        the keys in use at that time; returns the new kid."""
        now = utcnow()
        activate = now + timedelta(seconds=self._publish_ahead)
        async with self._sessions() as session:
            # Also a key still waiting from an earlier rotation: it signs until this one starts.
            for key in (await session.scalars(select(SigningKey).where(SigningKey.retire_time.is_(None)))).all():
                if not is_plaintext(key.sealed_private_key):
                    # A rotation with another key-encryption key than auth's would leave a key auth cannot open.
                    self._sealing.open(key.kid, key.sealed_private_key)
                key.retire_time = activate
            fresh = _new_key(self._sealing)
            fresh.create_time = now
            fresh.activate_time = activate
            session.add(fresh)
            await session.commit()
        await self.reload()
        return fresh.kid

    def activate_time(self, kid: str) -> datetime | None:
        """When the key signs from (None: since its creation, or an unknown kid)."""
        return next((k.activate_time for k in self._keys if k.kid == kid), None)

    async def reload(self) -> None:
        async with self._sessions() as session:
            rows = (
                await session.scalars(select(SigningKey).order_by(SigningKey.create_time.desc(), SigningKey.kid))
            ).all()
        self._keys = [
            _Key(r.kid, r.sealed_private_key, json.loads(r.public_jwk), r.activate_time, r.retire_time) for r in rows
        ]
        self._signers = {kid: s for kid, s in self._signers.items() if any(k.kid == kid for k in self._keys)}
        self._loaded_at = time.monotonic()

    def _signer(self) -> Signer | None:
        # Chosen on every signature, so a published key starts signing at its time, not at the next reload.
        now = utcnow()
        key = next((k for k in self._keys if k.activate_time is None or k.activate_time <= now), None)
        if key is None:
            return None
        signer = self._signers.get(key.kid)
        if signer is None:
            # Plaintext is taken only at start (ensure_key seals it), never from a row written later.
            pem = self._sealing.open(key.kid, key.sealed_private_key)
            private = serialization.load_pem_private_key(pem.encode(), password=None)
            assert isinstance(private, ec.EllipticCurvePrivateKey)
            signer = self._signers[key.kid] = Signer(key.kid, private)
        return signer

    def _live(self) -> list[dict[str, object]]:
        # Filtered on every read, so a retired key leaves at its time, not at the next reload.
        cutoff = utcnow() - timedelta(seconds=self._retention)
        return [k.jwk for k in self._keys if k.retire_time is None or k.retire_time > cutoff]

    async def jwks(self) -> dict[str, object]:
        """The published key set (the edge and the services fetch it over HTTP)."""
        if time.monotonic() - self._loaded_at > JWKS_FRESH_SECONDS:
            await self.reload()
        return {"keys": self._live()}

    async def lookup(self, kid: str) -> jwt.PyJWK | None:
        # Replicas and the rotate command change keys in the database: look again now and then.
        if time.monotonic() - self._loaded_at > self._reload_every:
            await self.reload()
        for entry in self._live():
            if entry.get("kid") == kid:
                return jwt.PyJWK(entry)
        await self.reload()
        for entry in self._live():
            if entry.get("kid") == kid:
                return jwt.PyJWK(entry)
        return None

    async def sign(self, claims: dict[str, object]) -> str:
        if not self._keys or time.monotonic() - self._loaded_at > self._reload_every:
            await self.reload()
        signer = self._signer()
        if signer is None:
            raise RuntimeError("no signing key; the auth service did not initialise its keys")
        return jwt.encode(
            {**claims, "jti": uuid.uuid4().hex},
            signer.private_key,
            algorithm=ALGORITHM,
            headers={"kid": signer.kid},
        )
