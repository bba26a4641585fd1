"""Who is calling: JWT verification, the caller's identity as a context variable, and
bearer metadata for calls to other services."""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import aiohttp
import jwt

from services.common import request_ids, revocations
from services.common.errors import Unauthenticated
from services.common.revocations import Revocations

log = logging.getLogger(__name__)

# Algorithms we ever accept; the key type in the JWKS decides which one a key may use.
_ALLOWED_ALGORITHMS = {"EC": "ES256", "RSA": "RS256", "OKP": "EdDSA"}


@dataclass(frozen=True)
class Identity:
    user_id: str
    email: str
    token: str
    audience: str
    session_id: str = ""
    api_key_id: str = ""  # the API key this token was exchanged for, if any

    @property
    def user(self) -> str:
        return f"users/{self.user_id}"

    def metadata(self) -> tuple[tuple[str, str], ...]:
        """Metadata that carries this identity (and the request id) on a call to another service."""
        return (("authorization", f"Bearer {self.token}"), *request_ids.outgoing())


_current: contextvars.ContextVar[Identity | None] = contextvars.ContextVar(
    "embedviz_identity", default=None
)


def current_identity() -> Identity:
    identity = _current.get()
    if identity is None:
        raise Unauthenticated("this call needs an access token")
    return identity


def set_identity(identity: Identity | None) -> contextvars.Token[Identity | None]:
    return _current.set(identity)


def reset_identity(token: contextvars.Token[Identity | None]) -> None:
    try:
        _current.reset(token)
    except ValueError:
        # A cancelled stream is closed from another task's context, which never had the
        # identity; the call's own context ends with its task, so there is nothing to undo.
        pass


KeySource = Callable[[], Awaitable[dict[str, jwt.PyJWK]]]


class JwksKeys:
    """Public keys fetched from a JWKS URL, cached, refetched when a token names an
    unknown `kid` (at most once every few seconds, so garbage kids cannot flood auth)."""

    def __init__(self, url: str, max_age: float = 300.0, min_refetch: float = 5.0) -> None:
        self._url = url
        self._max_age = max_age
        self._min_refetch = min_refetch
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at = 0.0
        self._lock = asyncio.Lock()

    async def get(self, kid: str) -> jwt.PyJWK | None:
        now = time.monotonic()
        stale = now - self._fetched_at > self._max_age
        unknown = kid not in self._keys and now - self._fetched_at > self._min_refetch
        if stale or unknown:
            await self._refresh()
        return self._keys.get(kid)

    async def _refresh(self) -> None:
        async with self._lock:
            try:
                timeout = aiohttp.ClientTimeout(total=5)
                async with aiohttp.ClientSession(timeout=timeout) as session:
                    async with session.get(self._url) as response:
                        response.raise_for_status()
                        body = await response.read()
                self._keys = parse_jwks(json.loads(body))
                self._fetched_at = time.monotonic()
            except Exception as exc:  # keep the old keys; auth may be restarting
                log.warning("could not fetch JWKS from %s: %s", self._url, exc)


def parse_jwks(document: dict[str, object]) -> dict[str, jwt.PyJWK]:
    keys: dict[str, jwt.PyJWK] = {}
    entries = document.get("keys", [])
    if not isinstance(entries, list):
        raise ValueError(f"the JWKS document's keys are a {type(entries).__name__}, not a list")
    for entry in entries:
        if isinstance(entry, dict) and entry.get("kid"):
            keys[str(entry["kid"])] = jwt.PyJWK(entry)
    return keys


class TokenVerifier:
    """Verifies access tokens the way the edge does, so a call that bypasses the edge
    gets the same answer."""

    def __init__(
        self,
        keys: Callable[[str], Awaitable[jwt.PyJWK | None]],
        issuer: str,
        audiences: list[str],
        leeway: float = 5.0,
        revocations: Revocations | None = None,
    ) -> None:
        self._keys = keys
        self._issuer = issuer
        self._audiences = audiences
        self._leeway = leeway
        self._revocations = revocations

    def with_keys(self, keys: Callable[[str], Awaitable[jwt.PyJWK | None]]) -> TokenVerifier:
        """The same rules over another key source."""
        return TokenVerifier(keys, self._issuer, self._audiences, self._leeway, self._revocations)

    async def verify(self, token: str) -> Identity:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise Unauthenticated("the access token is malformed") from None
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise Unauthenticated("the access token names no signing key")
        key = await self._keys(kid)
        if key is None:
            raise Unauthenticated("the access token is signed by an unknown key")
        algorithm = _ALLOWED_ALGORITHMS.get(str(key.key_type))
        if algorithm is None or header.get("alg") != algorithm:
            raise Unauthenticated("the access token uses a signing algorithm that is not allowed")
        try:
            claims = jwt.decode(
                token,
                key=key.key,
                algorithms=[algorithm],
                audience=self._audiences,
                issuer=self._issuer,
                leeway=self._leeway,
                options={"require": ["exp", "iat", "nbf", "sub", "iss", "aud"]},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthenticated("the access token has expired; refresh the session") from None
        except jwt.ImmatureSignatureError:
            raise Unauthenticated("the access token is not valid yet") from None
        except jwt.InvalidAudienceError:
            raise Unauthenticated("the access token is for another audience") from None
        except jwt.InvalidIssuerError:
            raise Unauthenticated("the access token is from another issuer") from None
        except jwt.PyJWTError:
            raise Unauthenticated("the access token is not valid") from None
        session_id, api_key_id = str(claims.get("sid", "")), str(claims.get("akey", ""))
        if self._revocations is not None:
            if self._revocations.is_revoked(revocations.SESSION, session_id):
                raise Unauthenticated("this session has ended (logged out or revoked); log in again")
            if self._revocations.is_revoked(revocations.API_KEY, api_key_id):
                raise Unauthenticated("the API key this token was made from has been deleted")
        audience = claims["aud"]
        if isinstance(audience, list):
            audience = next((a for a in audience if a in self._audiences), "")
        return Identity(
            user_id=str(claims["sub"]),
            email=str(claims.get("email", "")),
            token=token,
            audience=str(audience),
            session_id=session_id,
            api_key_id=api_key_id,
        )


def bearer_token(metadata: tuple[tuple[str, str | bytes], ...] | None) -> str | None:
    for key, value in metadata or ():
        if key.lower() == "authorization":
            text = value.decode() if isinstance(value, bytes) else value
            scheme, _, token = text.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
            return None
    return None
