"""Edge conformance: the same checks against the stand-in edge or Envoy (EDGE_URL)."""
