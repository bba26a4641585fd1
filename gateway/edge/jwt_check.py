"""JWT verification with the rules of Envoy's jwt_authn filter, without any web framework.

A `KeyStore` caches the JWKS and refetches it on an unknown `kid`; `verify_token` checks
one token against one provider and raises `JwtError` with Envoy's words.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import jwt
from jwt.exceptions import (
    ExpiredSignatureError,
    ImmatureSignatureError,
    InvalidAudienceError,
    InvalidIssuerError,
    InvalidSignatureError,
    PyJWTError,
)

from gateway.edge.config import JwtProvider

# Asymmetric algorithms only, each tied to the JWKS key type that may sign it.
ALLOWED_ALGS: dict[str, str] = {"ES256": "EC", "RS256": "RSA"}
MIN_REFETCH_INTERVAL_S = 1.0

JwksFetcher = Callable[[], Awaitable[dict[str, Any]]]


class JwtError(Exception):
    """The token was refused; the message is what the caller reads in grpc-message."""


@dataclass(frozen=True)
class VerifiedJwt:
    claims: dict[str, Any]
    payload_b64url: str  # the token's payload segment, as Envoy forwards it


class KeyStore:
    """The JWKS, cached for `cache_seconds`, refetched when a token names an unknown kid."""

    def __init__(self, fetch: JwksFetcher, cache_seconds: float) -> None:
        self._fetch = fetch
        self._cache_seconds = cache_seconds
        self._keys: dict[str, dict[str, Any]] = {}
        self._fetched_at = float("-inf")
        self._lock = asyncio.Lock()

    async def _refresh(self) -> None:
        async with self._lock:
            if time.monotonic() - self._fetched_at < MIN_REFETCH_INTERVAL_S:
                return
            try:
                jwks = await self._fetch()
            except Exception as exc:  # any transport failure reads the same to the caller
                raise JwtError("Jwks remote fetch is failed") from exc
            self._keys = {k["kid"]: k for k in jwks.get("keys", []) if "kid" in k}
            self._fetched_at = time.monotonic()

    async def key_for(self, kid: str) -> dict[str, Any] | None:
        if time.monotonic() - self._fetched_at > self._cache_seconds:
            await self._refresh()
        if kid not in self._keys:
            await self._refresh()
        return self._keys.get(kid)


def bearer_token(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


async def verify_token(token: str | None, provider: JwtProvider, keys: KeyStore) -> VerifiedJwt:
    if token is None:
        raise JwtError("Jwt is missing")
    parts = token.split(".")
    if len(parts) != 3:
        raise JwtError("Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections")
    try:
        header = jwt.get_unverified_header(token)
    except PyJWTError as exc:
        raise JwtError("Jwt header is an invalid JSON") from exc
    alg = header.get("alg")
    kid = header.get("kid")
    if alg not in ALLOWED_ALGS:
        raise JwtError(f"Jwt verification fails: algorithm {alg!r} is not accepted (ES256 or RS256)")
    if not isinstance(kid, str):
        raise JwtError("Jwks doesn't have key to match kid or alg from Jwt")
    jwk = await keys.key_for(kid)
    if jwk is None or jwk.get("kty") != ALLOWED_ALGS[alg] or jwk.get("alg", alg) != alg:
        raise JwtError("Jwks doesn't have key to match kid or alg from Jwt")
    try:
        key = jwt.PyJWK.from_json(json.dumps(jwk), algorithm=alg)
        claims = jwt.decode(
            token,
            key=key.key,
            algorithms=[alg],
            audience=list(provider.audiences) or None,
            issuer=provider.issuer,
            leeway=provider.clock_skew_seconds,
            options={"require": ["iss"], "verify_aud": bool(provider.audiences)},
        )
    except ExpiredSignatureError as exc:
        raise JwtError("Jwt is expired") from exc
    except ImmatureSignatureError as exc:
        raise JwtError("Jwt not yet valid") from exc
    except InvalidAudienceError as exc:
        raise JwtError("Audiences in Jwt are not allowed") from exc
    except InvalidIssuerError as exc:
        raise JwtError("Jwt issuer is not configured") from exc
    except InvalidSignatureError as exc:
        raise JwtError("Jwt verification fails") from exc
    except PyJWTError as exc:
        raise JwtError(f"Jwt verification fails: {exc}") from exc
    return VerifiedJwt(claims=claims, payload_b64url=parts[1])
