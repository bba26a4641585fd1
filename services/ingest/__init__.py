"""The ingest service: projects and members, resumable uploads, dataset imports, rows."""
