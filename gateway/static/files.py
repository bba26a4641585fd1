"""Which file answers a GET, and how long a browser may keep it.

The same rules as deploy/web/nginx.conf: Vite's hashed files under /assets/ never change,
so browsers keep them for a year; index.html (and anything else) is revalidated every time,
so a new build is seen on the next load. Paths that name no file fall back to index.html,
so the client's own routes survive a reload.
"""

from __future__ import annotations

from pathlib import Path

NO_BUILD_PAGE = (
    "<!doctype html><title>embedviz</title>"
    "<h1>The web client is not built</h1>"
    "<p>Run <code>make web</code>, then reload this page.</p>"
)
IMMUTABLE = "public, max-age=31536000, immutable"
REVALIDATE = "no-cache"


def resolve(dist: Path, url_path: str) -> Path | None:
    """The file to serve for `url_path`, or None when there is no build at all."""
    root = dist.resolve()
    index = root / "index.html"
    if not index.is_file():
        return None
    candidate = (root / url_path.lstrip("/")).resolve()
    if candidate.is_relative_to(root) and candidate.is_file():
        return candidate
    return index


def cache_control(dist: Path, served: Path) -> str:
    relative = served.relative_to(dist.resolve())
    return IMMUTABLE if relative.parts[:1] == ("assets",) else REVALIDATE
