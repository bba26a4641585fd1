"""Tokens good and bad, minted the way the auth service mints them (ES256, kid header)."""

from __future__ import annotations

import base64
import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec


def new_ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def public_jwk(key: ec.EllipticCurvePrivateKey, kid: str) -> dict[str, Any]:
    jwk: dict[str, Any] = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
    return {**jwk, "kid": kid, "alg": "ES256", "use": "sig"}


def public_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass(frozen=True)
class TokenMint:
    """Signs access tokens with a key the edge trusts (its kid is in the JWKS)."""

    key: ec.EllipticCurvePrivateKey
    kid: str
    issuer: str = "embedviz-auth"
    audience: str = "embedviz"
    subject: str | None = None  # a real user's id, for edges in front of the real services

    def claims(self, **overrides: Any) -> dict[str, Any]:
        now = int(time.time())
        base = {
            "iss": self.issuer,
            "aud": self.audience,
            "sub": self.subject or str(uuid.uuid4()),
            "email": "ada@example.com",
            "iat": now,
            "nbf": now,
            "exp": now + 900,
            "jti": str(uuid.uuid4()),
            "sid": str(uuid.uuid4()),
        }
        base.update(overrides)
        return base

    def token(self, key: ec.EllipticCurvePrivateKey | None = None, kid: str | None = None, **claims: Any) -> str:
        return jwt.encode(self.claims(**claims), key or self.key, algorithm="ES256", headers={"kid": kid or self.kid})

    def valid(self) -> str:
        return self.token()

    def expired(self) -> str:
        now = int(time.time())
        return self.token(iat=now - 7200, nbf=now - 7200, exp=now - 3600)

    def not_yet_valid(self) -> str:
        now = int(time.time())
        return self.token(nbf=now + 3600, exp=now + 7200)

    def wrong_issuer(self) -> str:
        return self.token(iss="someone-else")

    def wrong_audience(self) -> str:
        return self.token(aud="embedviz-internal")

    def unknown_kid(self) -> str:
        return self.token(key=new_ec_key(), kid="kid-nobody-published")

    def known_kid_other_key(self) -> str:
        return self.token(key=new_ec_key())

    def alg_none(self) -> str:
        header = _b64(json.dumps({"alg": "none", "typ": "JWT", "kid": self.kid}).encode())
        return f"{header}.{_b64(json.dumps(self.claims()).encode())}."

    def payload_edited(self, **changes: Any) -> str:
        """A valid token whose payload was changed after signing (the signature is kept)."""
        header, payload, signature = self.valid().split(".")
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        claims.update(changes or {"sub": str(uuid.uuid4())})
        return f"{header}.{_b64(json.dumps(claims).encode())}.{signature}"

    def hs256_with_public_key(self) -> str:
        """The classic key-confusion attack: HMAC keyed with the published public key."""
        import hashlib
        import hmac

        header = _b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": self.kid}).encode())
        payload = _b64(json.dumps(self.claims()).encode())
        signing_input = f"{header}.{payload}".encode()
        sig = hmac.new(public_pem(self.key), signing_input, hashlib.sha256).digest()
        return f"{header}.{payload}.{_b64(sig)}"
