"""Settings of the auth service beyond the shared ones (environment variables, all
optional; docs/auth.md has the table). Read once when the process starts. The
key-encryption key is read apart (key_encryption.py): it is a secret, not a setting."""

from __future__ import annotations

from dataclasses import dataclass, field

from services.auth.keys import (
    DEFAULT_DELEGATED_TTL,
    delegated_token_ttl,
    publish_ahead_seconds,
    reload_seconds,
    retention_setting,
)
from services.auth.throttle import Limits


@dataclass(frozen=True)
class AuthSettings:
    key_reload_seconds: float = 30.0  # EMBEDVIZ_KEY_RELOAD_SECONDS
    key_retention_seconds: float | None = None  # EMBEDVIZ_KEY_RETENTION_SECONDS; None: until its tokens expired
    delegated_token_ttl: int = DEFAULT_DELEGATED_TTL  # EMBEDVIZ_DELEGATED_TOKEN_TTL
    key_publish_ahead_seconds: float = 30.0  # EMBEDVIZ_KEY_PUBLISH_AHEAD_SECONDS
    login: Limits = field(default_factory=Limits)  # EMBEDVIZ_LOGIN_*

    @classmethod
    def from_env(cls) -> AuthSettings:
        return cls(
            key_reload_seconds=reload_seconds(),
            key_retention_seconds=retention_setting(),
            delegated_token_ttl=delegated_token_ttl(),
            key_publish_ahead_seconds=publish_ahead_seconds(),
            login=Limits.from_env(),
        )
