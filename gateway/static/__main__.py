"""python -m gateway.static: serve the built web client (make run and the tests).

EMBEDVIZ_WEB_ADDR (127.0.0.1:8090) is where it listens, EMBEDVIZ_WEB_DIST (gateway/web/dist)
what it serves. Envoy's `web` cluster points here; browsers never talk to it directly.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from aiohttp import web

from gateway.static.files import NO_BUILD_PAGE, REVALIDATE, cache_control, resolve

REPO_ROOT = Path(__file__).resolve().parents[2]
log = logging.getLogger("embedviz.static")


def build_app(dist: Path) -> web.Application:
    async def serve(request: web.Request) -> web.StreamResponse:
        if request.method not in ("GET", "HEAD"):
            raise web.HTTPMethodNotAllowed(request.method, ["GET", "HEAD"])
        path = resolve(dist, request.path)
        if path is None:
            return web.Response(text=NO_BUILD_PAGE, content_type="text/html", status=503,
                                headers={"Cache-Control": REVALIDATE})
        return web.FileResponse(path, headers={"Cache-Control": cache_control(dist, path)})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", serve)
    return app


def main() -> None:
    logging.basicConfig(level=os.environ.get("EMBEDVIZ_LOG_LEVEL", "INFO").upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    host, port = os.environ.get("EMBEDVIZ_WEB_ADDR", "127.0.0.1:8090").rsplit(":", 1)
    dist = Path(os.environ.get("EMBEDVIZ_WEB_DIST") or REPO_ROOT / "gateway" / "web" / "dist")
    log.info("serving %s on %s:%s", dist, host, port)
    web.run_app(build_app(dist), host=host, port=int(port), print=None, access_log=None)


if __name__ == "__main__":
    main()
