"""python -m services.embedding            the service (gRPC and its job workers)
python -m services.embedding worker     job workers only, no gRPC server"""

import asyncio
import functools
import sys

from services.common.app import read_settings, run, start_settings
from services.embedding.server import MIGRATIONS, build, serve_workers
from services.embedding.settings import EmbeddingSettings

if __name__ == "__main__":
    if sys.argv[1:] and sys.argv[1:] != ["worker"]:
        sys.exit(f"usage: python -m services.embedding [worker]; got {' '.join(sys.argv[1:])}")
    own = read_settings("embedding", EmbeddingSettings.from_env)
    if sys.argv[1:] == ["worker"]:
        asyncio.run(serve_workers(start_settings("embedding"), own))
    else:
        run("embedding", "embedding", MIGRATIONS, functools.partial(build, own=own))
