"""The conformance checks against any running edge (a `make run`, docker compose, a cluster).

    EDGE_URL=http://127.0.0.1:8080 .venv/bin/python -m pytest tests/edge/edge_url_suite.py

(Not named test_*.py on purpose: `make test` does not collect it; the same checks run there
against Envoy, in tests/edge/test_envoy_edge.py and tests/test_tokens.py.)

Optional, to run more of the checks:
    EDGE_TOKEN            a valid access token (e.g. from AuthService/Login) -> unary, text
                          mode and InternalService-not-routed checks
    EDGE_SIGNING_KEY      path of the PEM ES256 private key the auth service signs with, and
    EDGE_SIGNING_KID      its kid -> the expired / wrong issuer / wrong audience / other key /
                          alg none / HS256-with-public-key checks
Without EDGE_URL it refuses to run.
"""

from __future__ import annotations

import os
from pathlib import Path

import aiohttp
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.edge.conformance import CHECKS, EdgeTarget, checks_for
from tests.edge.tokens import TokenMint


def _target() -> EdgeTarget | None:
    url = os.environ.get("EDGE_URL")
    if not url:
        return None
    mint = None
    if os.environ.get("EDGE_SIGNING_KEY"):
        key = serialization.load_pem_private_key(Path(os.environ["EDGE_SIGNING_KEY"]).read_bytes(), password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey), "EDGE_SIGNING_KEY must be an EC (ES256) key"
        mint = TokenMint(key=key, kid=os.environ["EDGE_SIGNING_KID"])
    return EdgeTarget(edge_url=url.rstrip("/"), mint=mint, valid_token=os.environ.get("EDGE_TOKEN"))


TARGET = _target()
if TARGET is None:
    raise pytest.UsageError("set EDGE_URL to the edge to check, e.g. EDGE_URL=http://127.0.0.1:8080")


@pytest.mark.asyncio
@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", checks_for(TARGET))
async def test_edge_conformance_at_edge_url(name: str) -> None:
    fn, _ = CHECKS[name]
    async with aiohttp.ClientSession() as session:
        await fn(TARGET, session)
