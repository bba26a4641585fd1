"""A million-row map made the way a person makes one, against a running stack (`make run`),
through the edge with the `embedviz` command: sign up, upload a Parquet table, embed it from
the vectors it brings (no model), map it with the default clustering and the label column
for the quality figures, list the clusters, then take a screenshot of the map in Chromium
(gateway/web/e2e/shot.mjs). Prints and writes (build/bench/imported_million/result.json)
the time of each step and the peak memory of each part (whole_path.Memory), and the
screenshot beside it.

    make run                                        # in one terminal
    make bench BENCH=imported_million               # in another (ROWS, default 1,000,000)

The table: text (the 100,000 benchmark texts of tests/bench/corpus.py: Debian package
summaries, then first lines of docstrings, cycled), source (the Debian section, or "python
docstring") and vec, a fixed_size_list<float>[384]: the texts' real all-MiniLM-L6-v2
vectors, each used ROWS / 100,000 times with Gaussian noise (σ 0.02 a dimension) and
normalised again, as the umap bench's million rows are. Embedding a million rows with the
model takes hours on two cores (docs/jobs.md "A million rows through the whole path");
this shows the map side of a million at the cost of ten real vectors per row. Only when
named, as whole_path."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.bench import corpus  # noqa: E402
from tests.bench.report import Result, env_settings  # noqa: E402
from tests.bench.umap import million  # noqa: E402
from tests.bench.whole_path import Memory  # noqa: E402

ROWS = int(os.environ.get("ROWS", "1000000"))
EDGE = os.environ.get("EDGE", "http://127.0.0.1:8080")
OUT = ROOT / "build" / "bench" / "imported_million"
PASSWORD = "correct horse battery staple"


def table_file(rows: int) -> Path:
    path = OUT / f"table-{rows}.parquet"
    if path.exists():
        return path
    base = np.ascontiguousarray(corpus.vectors(100_000))
    texts = corpus.cached_texts(100_000)
    sources = [section or "python docstring" for section in corpus.sections(100_000)]
    vectors = million(base, rows)
    order = np.arange(rows) % len(texts)
    table = pa.table(
        {
            "text": pa.array([texts[i] for i in order]),
            "source": pa.array([sources[i] for i in order]),
            "vec": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), vectors.shape[1]),
        }
    )
    pq.write_table(table, path.with_suffix(".part"), row_group_size=50_000, compression="zstd")
    path.with_suffix(".part").rename(path)
    return path


def main() -> None:
    bench = Result(
        "imported_million",
        "A million-row map from the vectors a table brings, through the edge with the CLI",
        env_settings("ROWS", "EDGE"),
    )
    OUT.mkdir(parents=True, exist_ok=True)
    email = f"million-{int(time.time())}@example.org"
    env = dict(os.environ, XDG_CONFIG_HOME=str(OUT / "config"), EMBEDVIZ_PASSWORD=PASSWORD, EMBEDVIZ_URL=EDGE)

    def cli(*args: str) -> tuple[Any, float]:
        began = time.perf_counter()
        done = subprocess.run(
            [str(ROOT / ".venv" / "bin" / "embedviz"), "--json", *args], env=env, capture_output=True, text=True
        )
        seconds = time.perf_counter() - began
        sys.stderr.write(done.stderr[-4000:])
        if done.returncode:
            raise SystemExit(f"embedviz {' '.join(args)}: exit {done.returncode}")
        return (json.loads(done.stdout) if done.stdout.strip() else {}), seconds

    path = table_file(ROWS)
    result: dict[str, Any] = {"rows": ROWS, "email": email, "parquet_mb": round(path.stat().st_size / 1e6, 1)}
    cli("signup", "--email", email)
    project, _ = cli("projects", "create", f"{ROWS:,} rows")
    with Memory() as memory:
        dataset, result["upload_and_import_s"] = cli("upload", str(path), "--project", project["name"])
        embedding, result["embedding_s"] = cli("embed", dataset["name"], "--vectors", "vec", "--column", "text")
        projection, result["map_s"] = cli("map", embedding["name"], "--label-column", "source")
    result["peak_rss_mb"] = {part: round(value / 2**20) for part, value in memory.own.items()}
    result["peak_rss_mb_with_children"] = {part: round(value / 2**20) for part, value in memory.tree.items()}
    result["map"] = projection
    result["clusters"], _ = cli("clusters", projection["name"], "--all-levels")
    shot = subprocess.run(
        ["node", "e2e/shot.mjs", "--base-url", EDGE, "--email", email, "--password", PASSWORD,
         "--map", projection["name"], "--screenshot", str(OUT / "map.png"), "--timeout-s", "900"],
        cwd=ROOT / "gateway" / "web", capture_output=True, text=True,
    )
    lines = shot.stdout.strip().splitlines()
    result["screenshot"] = json.loads(lines[-1]) if lines else {"ok": False, "stderr": shot.stderr[-2000:]}
    (OUT / "result.json").write_text(json.dumps(result, indent=1, default=str))
    quality = projection.get("quality", {})
    peaks = result["peak_rss_mb_with_children"]
    bench.figure(f"upload and import, {ROWS:,} rows ({result['parquet_mb']:,} MB of Parquet)",
                 round(result["upload_and_import_s"], 1), "s", peak_rss_mb_ingest=peaks.get("ingest"))
    bench.figure("embedding from the table's vectors (imported)", round(result["embedding_s"], 1), "s",
                 peak_rss_mb_embedding=peaks.get("embedding"))
    bench.figure("map: UMAP 2-D, HDBSCAN clusters and levels, labels, quality", round(result["map_s"], 1), "s",
                 peak_rss_mb_projection_with_fits=peaks.get("projection"), fitted_rows=projection.get("fitted_rows"),
                 clusters=projection.get("cluster_count"), trustworthiness=quality.get("trustworthiness"),
                 section_agreement=quality.get("label_agreement"), cluster_ami=quality.get("cluster_agreement"))
    shown = result["screenshot"]
    bench.figure("map open in Chromium until every point is drawn", shown.get("mapSeconds", float("nan")), "s",
                 header=shown.get("header", ""))
    bench.write(f"bench imported_million rows={ROWS} map_s={result['map_s']:.1f} "
                f"projection_peak_rss_mb={peaks.get('projection')}")
    brief = {k: v for k, v in result.items() if k not in ("clusters", "map")}
    brief["quality"] = projection.get("quality")
    print(json.dumps(brief, indent=1, default=str))


if __name__ == "__main__":
    main()
