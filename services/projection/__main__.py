"""python -m services.projection          the gRPC service (with EMBEDVIZ_WORKERS job workers)
python -m services.projection worker   job workers only, no gRPC server: scale the heavy
                                        work apart from the API (EMBEDVIZ_WORKERS, at least 1)"""

import asyncio
import dataclasses
import functools
import logging
import signal
import sys
from pathlib import Path

from services.common.app import close_deps, open_deps, read_settings, run, start_settings
from services.common.config import Settings
from services.common.server import configure_logging
from services.projection.maps import ensure_numba_cache
from services.projection.server import build
from services.projection.settings import ProjectionSettings

MIGRATIONS = Path(__file__).parent / "migrations"
log = logging.getLogger("services.projection")


async def work(settings: Settings, own: ProjectionSettings) -> None:
    settings = dataclasses.replace(settings, workers=max(1, settings.workers))
    configure_logging(settings.log_level, settings.log_format)
    deps = await open_deps("projection-worker", settings, "projection", MIGRATIONS)
    try:
        built = await build(deps, own)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        tasks = [asyncio.ensure_future(job(stop)) for job in built.background]
        log.info("projection worker running %d job workers", settings.workers)
        await stop.wait()
        await asyncio.wait(tasks, timeout=10)
        for task in tasks:
            task.cancel()
    finally:
        await close_deps(deps)


if __name__ == "__main__":
    ensure_numba_cache()  # before anything imports numba
    if sys.argv[1:] and sys.argv[1:] != ["worker"]:
        sys.exit(f"usage: python -m services.projection [worker]; got {' '.join(sys.argv[1:])}")
    own = read_settings("projection", ProjectionSettings.from_env)
    if sys.argv[1:] == ["worker"]:
        asyncio.run(work(start_settings("projection"), own))
    else:
        run("projection", "projection", MIGRATIONS, functools.partial(build, own=own))
