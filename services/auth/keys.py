"""Signing keys: ES256 key pairs kept in the auth schema. The newest unretired key
signs; the JWKS publishes it and every key retired less than `retention` seconds ago
(default: the longest token lifetime plus a minute), so tokens signed before a rotation
stay valid until they expire, and a retired key leaves the JWKS on its own after that."""

from __future__ import annotations

import json
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

from services.auth.models import SigningKey
from services.common.jobs import utcnow

ALGORITHM = "ES256"
# Delegated (worker) tokens live at most this long; see Accounts.delegated_token.
LONGEST_DELEGATED_TTL = 3600


def reload_seconds() -> float:
    """How often a replica looks at the key table again (a rotation by another process)."""
    return float(os.environ.get("EMBEDVIZ_KEY_RELOAD_SECONDS") or 30)


def retention_seconds(access_ttl: int) -> float:
    """How long a retired key stays published: EMBEDVIZ_KEY_RETENTION_SECONDS, or long
    enough for every token it signed to expire."""
    given = os.environ.get("EMBEDVIZ_KEY_RETENTION_SECONDS", "")
    return float(given) if given else float(max(access_ttl, LONGEST_DELEGATED_TTL) + 60)


@dataclass(frozen=True)
class Signer:
    kid: str
    private_key: ec.EllipticCurvePrivateKey


def _new_key() -> SigningKey:
    private = ec.generate_private_key(ec.SECP256R1())
    kid = secrets.token_hex(8)
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(private.public_key()))
    jwk.update({"kid": kid, "use": "sig", "alg": ALGORITHM})
    return SigningKey(kid=kid, private_pem=pem, public_jwk=json.dumps(jwk))


class KeyRing:
    def __init__(self, sessions: async_sessionmaker[AsyncSession], token_ttl: int, retention: float | None = None) -> None:
        self._sessions = sessions
        self._retention = retention if retention is not None else retention_seconds(token_ttl)
        self._signer: Signer | None = None
        self._published: list[tuple[datetime | None, dict[str, object]]] = []
        self._loaded_at = 0.0
        self._reload_every = reload_seconds()

    async def ensure_key(self) -> None:
        """Create the first key on a fresh database."""
        async with self._sessions() as session:
            current = await session.scalar(select(SigningKey).where(SigningKey.retire_time.is_(None)))
            if current is None:
                session.add(_new_key())
                await session.commit()
        await self.reload()

    async def rotate(self) -> str:
        """Retire the current key and start signing with a new one; returns the new kid."""
        async with self._sessions() as session:
            for key in (await session.scalars(select(SigningKey).where(SigningKey.retire_time.is_(None)))).all():
                key.retire_time = utcnow()
            fresh = _new_key()
            session.add(fresh)
            await session.commit()
        await self.reload()
        return fresh.kid

    async def reload(self) -> None:
        async with self._sessions() as session:
            rows = (await session.scalars(select(SigningKey).order_by(SigningKey.create_time.desc()))).all()
        current = next((r for r in rows if r.retire_time is None), None)
        if current is not None:
            private = serialization.load_pem_private_key(current.private_pem.encode(), password=None)
            assert isinstance(private, ec.EllipticCurvePrivateKey)
            self._signer = Signer(current.kid, private)
        self._published = [(r.retire_time, json.loads(r.public_jwk)) for r in rows]
        self._loaded_at = time.monotonic()

    def _live(self) -> list[dict[str, object]]:
        # Filtered on every read, so a retired key leaves at its time, not at the next reload.
        cutoff = utcnow() - timedelta(seconds=self._retention)
        return [jwk for retired, jwk in self._published if retired is None or retired > cutoff]

    async def jwks(self) -> dict[str, object]:
        # Replicas and the rotate command change keys in the database: look again now and then.
        if time.monotonic() - self._loaded_at > self._reload_every:
            await self.reload()
        return {"keys": self._live()}

    async def lookup(self, kid: str) -> jwt.PyJWK | None:
        for entry in (await self.jwks())["keys"]:  # type: ignore[attr-defined]
            if entry.get("kid") == kid:
                return jwt.PyJWK(entry)
        await self.reload()
        for entry in self._live():
            if entry.get("kid") == kid:
                return jwt.PyJWK(entry)
        return None

    async def sign(self, claims: dict[str, object]) -> str:
        if self._signer is None or time.monotonic() - self._loaded_at > self._reload_every:
            await self.reload()
        if self._signer is None:
            raise RuntimeError("no signing key; the auth service did not initialise its keys")
        return jwt.encode(
            {**claims, "jti": uuid.uuid4().hex},
            self._signer.private_key,
            algorithm=ALGORITHM,
            headers={"kid": self._signer.kid},
        )
