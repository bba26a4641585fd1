"""Settings are read once when a service starts: a value that cannot be used stops the
start with a message naming the variable, before the service opens anything."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from services.auth.key_encryption import new_key_text
from services.common.app import read_settings, start_settings
from services.common.config import S3Access, SettingsError, blob_settings, flag, number, whole

REPO_ROOT = Path(__file__).resolve().parents[1]

# Nothing listens here: a start that got past its settings would fail on the database instead.
UNREACHABLE = {
    "EMBEDVIZ_DATABASE_URL": "postgresql+asyncpg://nobody@127.0.0.1:9/none",
    "EMBEDVIZ_NATS_URL": "nats://127.0.0.1:9",
}


def _start(module: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("EMBEDVIZ_")}
    environ.update(UNREACHABLE, **env)
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=REPO_ROOT,
        env=environ,
        capture_output=True,
        text=True,
        timeout=120,
    )


# One real start per entry point (a process that stops before it opens anything); the other
# variables go through the same readers, in the same order, in this process.
STARTS = [
    ("services.embedding", (), "EMBEDVIZ_EMBED_SHARD_ROWS", "abc", "must be a whole number"),
    ("services.embedding", ("worker",), "EMBEDVIZ_EMBED_SHARD_ROWS", "-5", "use 1 or more"),
    ("services.ingest", (), "EMBEDVIZ_MAX_ROWS", "abc", "must be a whole number"),
    ("services.projection", (), "EMBEDVIZ_PROJECTION_FIT_ROWS", "-1", "use 0 or more"),
    ("services.projection", ("worker",), "EMBEDVIZ_PROJECTION_WARM_UP", "maybe", "use 1 or 0"),
    ("services.auth", (), "EMBEDVIZ_DELEGATED_TOKEN_TTL", "soon", "from 2 to 3600"),
]
READS = [
    ("services.embedding", "EMBEDVIZ_EMBED_ACK_WAIT", "soon", "must be a number"),
    ("services.ingest", "EMBEDVIZ_UPLOAD_TTL_SECONDS", "0", "use 1 or more"),
    ("services.projection", "EMBEDVIZ_PROJECTION_VECTOR_CACHE_MB", "1e3", "must be a whole number"),
    ("services.auth", "EMBEDVIZ_LOGIN_FAILURE_WINDOW", "-1", "use 1 or more"),
    ("services.ingest", "EMBEDVIZ_WORKERS", "many", "must be a whole number"),
    ("services.projection", "EMBEDVIZ_ACCESS_TOKEN_TTL", "0", "use 1 or more"),
    ("services.auth", "EMBEDVIZ_JWKS_MAX_AGE", "nan", "must be a number"),
    ("services.ingest", "EMBEDVIZ_JOB_ACK_WAIT", "soon", "must be a number of seconds"),
    ("services.projection", "EMBEDVIZ_OUTBOX_POLL_S", "0", "must be more than 0 seconds"),
    ("services.embedding", "EMBEDVIZ_RECONCILE_GRACE_S", "-1", "must be more than 0 seconds"),
    ("services.ingest", "EMBEDVIZ_IMPORT_PART_ROWS", "0", "use 1 or more"),
    ("services.embedding", "EMBEDVIZ_METRICS_ADDR", "9464", "use host:port"),
    ("services.projection", "EMBEDVIZ_LOG_FORMAT", "xml", "use plain or json"),
    ("services.auth", "OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4318", "use an http:// or https:// URL"),
    ("services.ingest", "EMBEDVIZ_BLOB_ROOT", "gs://bucket/blobs", "use a local folder or s3://bucket/prefix"),
    ("services.projection", "EMBEDVIZ_BLOB_ROOT", "s3://My_Bucket/blobs", "a bucket name is 3 to 63"),
    ("services.embedding", "EMBEDVIZ_S3_SCHEME", "ftp", "use http or https"),
    ("services.auth", "EMBEDVIZ_S3_ENDPOINT", "http://minio:99999", "use host:port"),
    ("services.ingest", "EMBEDVIZ_S3_ENDPOINT", "minio:9000", "EMBEDVIZ_BLOB_ROOT is the local folder"),
    ("services.projection", "EMBEDVIZ_S3_ACCESS_KEY", "key", "EMBEDVIZ_S3_SECRET_KEY is not"),
    ("services.embedding", "EMBEDVIZ_S3_SECRET_KEY_FILE", "/nonexistent/secret", "cannot be read"),
]


@pytest.mark.parametrize(("module", "args", "variable", "value", "words"), STARTS)
def test_a_bad_setting_stops_the_start_naming_the_variable(
    module: str, args: tuple[str, ...], variable: str, value: str, words: str
) -> None:
    started = _start(module, *args, **{variable: value, "EMBEDVIZ_KEY_ENCRYPTION_KEY": new_key_text()})
    assert started.returncode != 0
    assert variable in started.stderr and words in started.stderr, started.stderr
    assert "cannot start" in started.stderr
    assert "Traceback" not in started.stderr, started.stderr


def _own_reader(module: str) -> Callable[[], object]:
    """The settings a service's `__main__` reads first, before the shared ones."""
    if module == "services.auth":
        from services.auth.settings import AuthSettings

        return AuthSettings.from_env
    if module == "services.embedding":
        from services.embedding.settings import EmbeddingSettings

        return EmbeddingSettings.from_env
    if module == "services.ingest":
        from services.ingest.settings import IngestSettings

        return IngestSettings.from_env
    from services.projection.settings import ProjectionSettings

    return ProjectionSettings.from_env


@pytest.mark.parametrize(("module", "variable", "value", "words"), READS)
def test_every_service_setting_is_checked_at_the_start(
    module: str,
    variable: str,
    value: str,
    words: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for name in [k for k in os.environ if k.startswith("EMBEDVIZ_")]:
        monkeypatch.delenv(name)
    for name, setting in {**UNREACHABLE, variable: value}.items():
        monkeypatch.setenv(name, setting)
    service = module.rsplit(".", 1)[1]
    with pytest.raises(SystemExit) as stopped:
        read_settings(service, _own_reader(module))
        start_settings(service)
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert f"{service} cannot start: {variable}" in err and words in err, err


def test_the_parsers_name_the_variable_and_keep_the_default_when_unset() -> None:
    env = {"A": " 12 ", "B": "", "C": "1.5", "D": "off", "E": "inf"}
    assert whole(env, "A", 3, minimum=1) == 12
    assert whole(env, "B", 3) == 3
    assert whole(env, "MISSING", 7) == 7
    assert number(env, "C", 0.0) == 1.5
    assert flag(env, "D", True) is False
    with pytest.raises(SettingsError, match="^E is 'inf'; it must be a number"):
        number(env, "E", 1.0)
    with pytest.raises(SettingsError, match="^A is 12; use from 1 to 10"):
        whole(env, "A", 3, minimum=1, maximum=10)
    with pytest.raises(SettingsError, match="^C is '1.5'; it must be a whole number"):
        whole(env, "C", 3)


def test_the_s3_settings_take_an_endpoint_url_and_keys_from_mounted_files(tmp_path: Path) -> None:
    (tmp_path / "access").write_text("AKIAEXAMPLE\n")
    (tmp_path / "secret").write_text("very-secret\n")
    env = {
        "EMBEDVIZ_BLOB_ROOT": "s3://embedviz-blobs//prod/",
        "EMBEDVIZ_S3_ENDPOINT": "http://minio.storage:9000/",
        "EMBEDVIZ_S3_ACCESS_KEY_FILE": str(tmp_path / "access"),
        "EMBEDVIZ_S3_SECRET_KEY_FILE": str(tmp_path / "secret"),
        "EMBEDVIZ_S3_REGION": "eu-central-1",
    }
    root, s3 = blob_settings(env, tmp_path)
    assert root == "s3://embedviz-blobs/prod"
    assert s3 == S3Access(endpoint="minio.storage:9000", scheme="http", region="eu-central-1",
                          access_key="AKIAEXAMPLE", secret_key="very-secret")
    assert "very-secret" not in repr(s3)
    assert blob_settings({}, tmp_path) == (str(tmp_path / "blobs"), S3Access())
    assert blob_settings({"EMBEDVIZ_BLOB_ROOT": "s3://embedviz"}, tmp_path) == ("s3://embedviz", S3Access())
    with pytest.raises(SettingsError, match="^EMBEDVIZ_S3_ENDPOINT says https but EMBEDVIZ_S3_SCHEME says http"):
        blob_settings({**env, "EMBEDVIZ_S3_ENDPOINT": "https://minio:9000", "EMBEDVIZ_S3_SCHEME": "http"}, tmp_path)
