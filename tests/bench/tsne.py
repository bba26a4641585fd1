"""make bench BENCH=tsne — t-SNE 2-D of real 384-d vectors: the job path's reducer
(services/projection/maps.py: PCA to 50, then openTSNE with FFT-accelerated gradients)
against plain scikit-learn `TSNE(init="pca").fit_transform` and plain openTSNE on the same
vectors, each in its own process, in the same run.

Vectors: the first BENCH_TSNE_ROWS (5,000 and 20,000: a comma-separated list of sizes,
each its own round) Debian package summaries of tests/bench/corpus.py
(the packaged all-MiniLM-L6-v2, cached in build/bench-cache); their Debian section is the
label for the 10-NN label agreement. Printed per side: seconds, ratio to scikit-learn,
trustworthiness (2,000-row sample, k=10, cosine), label agreement, peak RSS of the process,
and the load average beside each figure. Each round ends with `bench tsne rows=N ratio=R`
(scikit-learn's seconds over ours)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.bench import corpus  # noqa: E402

SIDES = {
    "ours (job path)": """
from services.projection import maps
points = maps.reduce(vectors, maps.MapParams(method=maps.TSNE))
""",
    "scikit-learn TSNE": """
from sklearn.manifold import TSNE
points = TSNE(n_components=2, init="pca", perplexity=30.0).fit_transform(vectors)
""",
    "plain openTSNE": """
from openTSNE import TSNE
points = TSNE(n_components=2, perplexity=30.0, n_jobs=-1).fit(np.asarray(vectors, np.float64))
""",
}

RUN = """
import json, resource, sys, time
import numpy as np
vectors = np.load(sys.argv[1])
started = time.perf_counter()
{body}
seconds = time.perf_counter() - started
np.save(sys.argv[2], np.asarray(points, np.float32))
print(json.dumps({{"seconds": seconds, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
"""


def quality(vectors: np.ndarray, points: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    from sklearn.manifold import trustworthiness
    from sklearn.neighbors import NearestNeighbors

    rows = np.sort(np.random.default_rng(123).choice(len(points), size=min(2000, len(points)), replace=False))
    trust = trustworthiness(
        np.asarray(vectors[rows], np.float64), np.asarray(points[rows], np.float64), n_neighbors=10, metric="cosine"
    )
    _, near = NearestNeighbors(n_neighbors=11).fit(points).kneighbors(points)
    agreement = float((labels[near[:, 1:]] == labels[:, None]).mean())
    return float(trust), agreement


def main() -> None:
    from tests.bench.report import Result, env_settings
    from tests.projection import debian

    result = Result("tsne", "t-SNE 2-D of real 384-d vectors: the job path's reducer against scikit-learn TSNE "
                    "and plain openTSNE", env_settings("BENCH_TSNE_ROWS"))

    sizes = [int(size) for size in os.environ.get("BENCH_TSNE_ROWS", "5000,20000").split(",") if size.strip()]
    seen: set[str] = set()
    sections: list[str] = []
    for package in debian.packages():
        if package.summary not in seen:
            seen.add(package.summary)
            sections.append(package.section)
    if len(sections) < max(sizes):
        raise SystemExit(f"bench tsne: needs {max(sizes)} Debian package summaries, apt has {len(sections)}")
    lines: list[str] = []
    for rows in sizes:
        vectors = np.asarray(corpus.vectors(rows)[:rows], dtype=np.float32)
        lines.append(one_round(vectors, np.asarray(sections[:rows]), result))
    result.write("; ".join(lines))


def one_round(vectors: np.ndarray, labels: np.ndarray, report: Any) -> str:
    """One size, all sides; returns its `bench tsne` line."""
    rows = len(vectors)
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as work:
        source = Path(work) / "vectors.npy"
        np.save(source, vectors)
        for name, body in SIDES.items():
            out = Path(work) / "points.npy"
            done = subprocess.run(
                [sys.executable, "-c", RUN.format(body=body), str(source), str(out)],
                cwd=ROOT, capture_output=True, text=True, check=False,
            )
            if done.returncode:
                raise SystemExit(f"bench tsne: {name} failed:\n{done.stderr[-3000:]}")
            result = json.loads(done.stdout.strip().splitlines()[-1])
            result["trustworthiness"], result["label_agreement"] = quality(vectors, np.load(out), labels)
            result["load"] = os.getloadavg()[0]
            results[name] = result
    reference = results["scikit-learn TSNE"]["seconds"]
    print(f"t-SNE 2-D of {rows:,} real 384-d vectors (Debian summaries; label: section)")
    for name, r in results.items():
        print(
            f"  {name:<20} {r['seconds']:7.1f} s  x{reference / r['seconds']:5.2f}  "
            f"trustworthiness {r['trustworthiness']:.3f}  10-NN label agreement {r['label_agreement']:.3f}  "
            f"peak RSS {r['peak_rss_mb']:6.0f} MB  load {r['load']:.2f}"
        )
    line = f"bench tsne rows={rows} ratio={reference / results['ours (job path)']['seconds']:.2f}"
    print(line, flush=True)
    ours = results["ours (job path)"]
    for name in ("scikit-learn TSNE", "plain openTSNE"):
        peer = results[name]
        report.compare(
            f"{rows:,} × {vectors.shape[1]} to 2-D", ours=ours["seconds"], peer=peer["seconds"], unit="s",
            ours_is="job path reducer", peer_is=name, lower_is_better=True,
            trustworthiness=ours["trustworthiness"], peer_trustworthiness=peer["trustworthiness"],
            section_agreement=ours["label_agreement"], peer_section_agreement=peer["label_agreement"],
            ours_peak_rss_mb=ours["peak_rss_mb"], peer_peak_rss_mb=peer["peak_rss_mb"],
        )
    return line


if __name__ == "__main__":
    main()
