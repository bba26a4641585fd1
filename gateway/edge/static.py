"""Which file of the built web client answers a GET (SPA fallback to index.html)."""

from __future__ import annotations

from pathlib import Path

NO_BUILD_PAGE = (
    "<!doctype html><title>embedviz</title>"
    "<h1>The web client is not built</h1>"
    "<p>Run <code>make web</code>, then reload this page.</p>"
)


def resolve_static(dist: Path, url_path: str) -> Path | None:
    """The file to serve for `url_path`, or None when there is no build at all."""
    root = dist.resolve()
    index = root / "index.html"
    if not index.is_file():
        return None
    candidate = (root / url_path.lstrip("/")).resolve()
    if candidate.is_relative_to(root) and candidate.is_file():
        return candidate
    return index
