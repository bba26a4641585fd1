"""python -m services.embedding            the service (gRPC and its job workers)
python -m services.embedding worker     job workers only, no gRPC server"""

import asyncio
import sys

from services.common.app import run
from services.embedding.server import MIGRATIONS, build, serve_workers

if __name__ == "__main__":
    if sys.argv[1:] == ["worker"]:
        asyncio.run(serve_workers())
    elif sys.argv[1:]:
        sys.exit(f"usage: python -m services.embedding [worker]; got {' '.join(sys.argv[1:])}")
    else:
        run("embedding", "embedding", MIGRATIONS, build)
