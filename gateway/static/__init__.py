"""The built web client as static files, behind Envoy's `web` cluster (nginx in images)."""
