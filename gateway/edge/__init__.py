"""The stand-in edge: Envoy's two jobs (JWT check, grpc-web to gRPC) read from envoy.yaml."""
