from services.common.db import run_env

run_env()
