"""python -m services.ingest"""

import functools
from pathlib import Path

from services.common.app import read_settings, run
from services.ingest.server import build
from services.ingest.settings import IngestSettings

if __name__ == "__main__":
    own = read_settings("ingest", IngestSettings.from_env)
    run("ingest", "ingest", Path(__file__).parent / "migrations", functools.partial(build, own=own))
