"""The edge: Envoy with envoy.yaml, its conformance checks, and a grpc-web client for tests."""
