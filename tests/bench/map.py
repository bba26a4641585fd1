"""make bench BENCH=map — the web map in headless Chromium with software GL.

No stack: `vite build --config bench/vite.config.ts` (in gateway/web) builds a bench page
that feeds synthetic points (20 gaussian blobs, 65,536-point chunks as StreamPoints sends
them) through the client's own decoding path (src/points.ts PointSet over 12-byte packed
records, normalizeCoordinates), draws them with regl-scatterplot set up as src/map.ts does,
decodes a 12-value category column from Arrow IPC as ReadColumns sends it (src/columns.ts)
and filters on it (src/filters.ts). gateway/web/e2e/bench-map.mjs serves it and runs it in
/usr/bin/chromium with the scenarios' flags (e2e/browser.mjs: --disable-gpu, so WebGL is
SwiftShader on the CPU). Per size (BENCH_MAP_SIZES, default 100000,1000000):

- decode: first points byte (the chunks are in memory) → typed arrays;
- first frame: → the scatterplot created, points drawn and the frame finished on the GPU
  (a 1-pixel readPixels); regl-scatterplot builds its hover/lasso index before it draws;
- interactive: first frame + what map.ts does before the map answers input (legend counts
  per cluster, the filter mask, unfilter) and one more finished frame;
- pan: median of BENCH_MAP_REPEATS (15) camera moves, each until its frame is finished;
- filter: median of as many category-filter changes (mask over every point + the
  scatterplot's filter + the frame);
- column: decoding the category column's Arrow IPC batches into Int32 codes;
- bytes per point: packed (12 B + a few bytes of protobuf/grpc-web framing a chunk) against
  the same points as JSON objects {"row","x","y","cluster"}, and the Arrow column per row.

The peer: the same points as a JSON API would send them (an array of {"row","x","y","cluster"}
objects), `JSON.parse`d, put in arrays and drawn by plain regl-scatterplot with the same
settings; first frame likewise, the network left out (it would favour the packed side more).

Prints a table, then ratios (1M / 100k, JSON / packed, the peer's first frame / ours)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
WEB = ROOT / "gateway" / "web"
OUT = ROOT / "build" / "bench-map-web"


def main() -> int:
    sys.path.insert(0, str(ROOT))
    from tests.bench.report import Result, env_settings

    result = Result("map", "The web map's first frame in headless Chromium (software GL): packed points through "
                    "the client's decoding against JSON drawn by plain regl-scatterplot",
                    env_settings("BENCH_MAP_SIZES", "BENCH_MAP_REPEATS"))
    if not (WEB / "node_modules").is_dir():
        print("bench map: gateway/web/node_modules is missing; run `make web-deps` first")
        return 1
    if not Path(os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")).exists() or not shutil.which("node"):
        print("bench map: needs node and /usr/bin/chromium (or $CHROMIUM_PATH)")
        return 1
    sizes = os.environ.get("BENCH_MAP_SIZES", "100000,1000000")
    repeats = os.environ.get("BENCH_MAP_REPEATS", "15")
    subprocess.run(
        ["npx", "vite", "build", "--config", "bench/vite.config.ts", "--logLevel", "warn"], cwd=WEB, check=True
    )
    proc = subprocess.run(
        ["node", "e2e/bench-map.mjs", "--dir", str(OUT), "--sizes", sizes, "--repeats", repeats],
        cwd=WEB,
        stdout=subprocess.PIPE,
        text=True,
        check=False,
    )
    lines = proc.stdout.strip().splitlines()
    if not lines:
        print("bench map: no output from e2e/bench-map.mjs")
        return 1
    out = json.loads(lines[-1])
    if not out.get("ok"):
        print(f"bench map: failed: {out.get('error') or out.get('errors')}")
        return 1
    rows = out["results"]
    print(f"renderer: {rows[0]['renderer']}; {os.cpu_count()} CPUs visible; {out['userAgent']}")
    cols = [
        ("points", "n", 10, ","),
        ("decode ms", "decodeMs", 10, ".0f"),
        ("1st frame ms", "firstFrameMs", 13, ".0f"),
        ("interactive ms", "interactiveMs", 15, ".0f"),
        ("pan ms", "panMs", 8, ".0f"),
        ("pan p90", "panP90Ms", 8, ".0f"),
        ("filter ms", "filterMs", 10, ".0f"),
        ("column ms", "columnMs", 10, ".0f"),
        ("B/pt packed", "wireBytesPerPoint", 12, ".2f"),
        ("B/pt JSON", "jsonBytesPerPoint", 10, ".1f"),
        ("B/row col", "columnBytesPerRow", 10, ".2f"),
    ]
    print(" ".join(f"{title:>{width}}" for title, _, width, _ in cols))
    for r in rows:
        print(" ".join(f"{r[key]:>{width}{fmt}}" for _, key, width, fmt in cols))
    for r in rows:
        print(f"{r['n']:,} points: JSON / packed = {r['jsonBytesPerPoint'] / r['wireBytesPerPoint']:.1f}x on the wire")
    if len(rows) >= 2:
        a, b = rows[0], rows[-1]
        k = b["n"] / a["n"]
        for key, name in (
            ("decodeMs", "decode"),
            ("firstFrameMs", "first frame"),
            ("interactiveMs", "interactive"),
            ("panMs", "pan"),
            ("filterMs", "filter"),
        ):
            print(f"{name}: {b['n']:,} / {a['n']:,} = {b[key] / max(a[key], 1e-9):.1f}x (points x{k:.0f})")
    for r in rows:
        print(f"{r['n']:,} points: first frame from JSON (plain regl-scatterplot) {r['peerFirstFrameMs']:.0f} ms, "
              f"ours {r['firstFrameMs']:.0f} ms: x{r['peerFirstFrameMs'] / r['firstFrameMs']:.2f}")
    big = rows[-1]
    summary = (
        f"map: {big['n']:,} points first frame {big['firstFrameMs'] / 1000:.2f} s, "
        f"interactive {big['interactiveMs'] / 1000:.2f} s, pan {big['panMs']:.0f} ms, "
        f"filter {big['filterMs']:.0f} ms; {big['wireBytesPerPoint']:.1f} B/point packed "
        f"vs {big['jsonBytesPerPoint']:.1f} JSON"
    )
    print(summary)
    for r in reversed(rows):  # the largest first: the report's headline
        result.compare(
            f"{r['n']:,} points, first points byte to first finished frame", ours=r["firstFrameMs"],
            peer=r["peerFirstFrameMs"], unit="ms", ours_is="packed chunks, src/points.ts, regl-scatterplot",
            peer_is="JSON.parse + plain regl-scatterplot", lower_is_better=True, decode_ms=r["decodeMs"],
            interactive_ms=r["interactiveMs"], pan_ms=r["panMs"], filter_ms=r["filterMs"],
        )
    for r in rows:
        result.compare(
            f"{r['n']:,} points, bytes per point on the wire", ours=r["wireBytesPerPoint"],
            peer=r["jsonBytesPerPoint"], unit="B", ours_is="packed", peer_is="JSON objects", lower_is_better=True,
        )
    result.note(f"renderer: {rows[0]['renderer']}; {out['userAgent']}")
    result.write(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
