"""Check a bootstrap file against Envoy's own v3 schema (the xds-protos package).

Run under the `.venv-envoy` interpreter (`make envoy-venv`):
    .venv-envoy/bin/python tests/edge/check_envoy_schema.py envoy.yaml
Prints "ok" and exits 0, or prints the schema error and exits 1.
"""

from __future__ import annotations

import importlib
import sys

import yaml
from google.protobuf import json_format

# Every extension the edge uses; importing registers its messages so `@type` Anys resolve.
EXTENSION_MODULES = (
    "envoy.config.bootstrap.v3.bootstrap_pb2",
    "envoy.extensions.filters.network.http_connection_manager.v3.http_connection_manager_pb2",
    "envoy.extensions.http.early_header_mutation.header_mutation.v3.header_mutation_pb2",
    "envoy.extensions.filters.http.cors.v3.cors_pb2",
    "envoy.extensions.filters.http.grpc_web.v3.grpc_web_pb2",
    "envoy.extensions.filters.http.jwt_authn.v3.config_pb2",
    "envoy.extensions.filters.http.router.v3.router_pb2",
    "envoy.extensions.upstreams.http.v3.http_protocol_options_pb2",
)


def check(path: str) -> None:
    modules = [importlib.import_module(name) for name in EXTENSION_MODULES]
    bootstrap_cls = modules[0].Bootstrap
    with open(path, encoding="utf-8") as f:
        doc = yaml.safe_load(f)
    json_format.ParseDict(doc, bootstrap_cls(), ignore_unknown_fields=False)


def main(argv: list[str]) -> int:
    try:
        check(argv[1])
    except (json_format.ParseError, TypeError, ValueError, KeyError) as exc:
        print(f"schema error: {exc}")
        return 1
    print("ok")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
