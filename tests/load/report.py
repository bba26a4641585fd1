"""What a load run measures: every call's latency and outcome (`Calls`), and the resident
memory of each part of the system (`Memory`), turned into the printed tables and the JSON."""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class Calls:
    """Latency in seconds per RPC (streams: to the first message for Watch*, to the last for
    the rest), unexpected errors by RPC and code, expected ones (probes) apart."""

    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    errors: Counter[tuple[str, str]] = field(default_factory=Counter)
    expected: Counter[tuple[str, str]] = field(default_factory=Counter)
    samples: dict[tuple[str, str], str] = field(default_factory=dict)  # first message of each error

    def ok(self, rpc: str, seconds: float) -> None:
        self.latencies[rpc].append(seconds)

    def failed(self, rpc: str, seconds: float, code: str, message: str, expected: bool = False) -> None:
        """A call that ended with `code`: latency counted either way (an error is an answer)."""
        self.latencies[rpc].append(seconds)
        (self.expected if expected else self.errors)[(rpc, code)] += 1
        self.samples.setdefault((rpc, code), message[:300])

    def summary(self, seconds: float) -> dict[str, object]:
        rpcs = {}
        for rpc in sorted(self.latencies):
            ms = np.array(self.latencies[rpc]) * 1e3
            rpcs[rpc] = {
                "calls": len(ms),
                "per_s": len(ms) / seconds,
                "p50_ms": float(np.percentile(ms, 50)),
                "p95_ms": float(np.percentile(ms, 95)),
                "p99_ms": float(np.percentile(ms, 99)),
                "max_ms": float(ms.max()),
                "errors": sum(n for (r, _), n in self.errors.items() if r == rpc),
                "expected_errors": sum(n for (r, _), n in self.expected.items() if r == rpc),
            }
        every = np.concatenate([np.array(v) for v in self.latencies.values()]) * 1e3 if self.latencies else np.zeros(1)
        total = sum(len(v) for v in self.latencies.values())
        return {
            "seconds": seconds,
            "calls": total,
            "per_s": total / seconds,
            "p50_ms": float(np.percentile(every, 50)),
            "p95_ms": float(np.percentile(every, 95)),
            "p99_ms": float(np.percentile(every, 99)),
            "errors": sum(self.errors.values()),
            "expected_errors": sum(self.expected.values()),
            "errors_by_code": by_code(self.errors),
            "expected_by_code": by_code(self.expected),
            "error_samples": [
                {"rpc": rpc, "code": code, "count": n, "message": self.samples[(rpc, code)]}
                for (rpc, code), n in self.errors.most_common()
            ],
            "rpcs": rpcs,
        }


def by_code(counts: Counter[tuple[str, str]]) -> dict[str, int]:
    out: Counter[str] = Counter()
    for (_, code), n in counts.items():
        out[code] += n
    return dict(out.most_common())


def print_calls(summary: dict[str, object], title: str) -> None:
    rpcs: dict[str, dict[str, float]] = summary["rpcs"]  # type: ignore[assignment]
    print(f"\n{title}")
    print(f"{'rpc':<44} {'calls':>7} {'per s':>7} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'max ms':>8} "
          f"{'errors':>6} {'expected':>8}")
    for rpc, s in rpcs.items():
        print(f"{rpc:<44} {int(s['calls']):>7} {s['per_s']:>7.1f} {s['p50_ms']:>8.1f} {s['p95_ms']:>8.1f} "
              f"{s['p99_ms']:>8.1f} {s['max_ms']:>8.0f} {int(s['errors']):>6} {int(s['expected_errors']):>8}")
    print(f"{'all':<44} {summary['calls']:>7} {summary['per_s']:>7.1f} {summary['p50_ms']:>8.1f} "
          f"{summary['p95_ms']:>8.1f} {summary['p99_ms']:>8.1f} {'':>8} {summary['errors']:>6} "
          f"{summary['expected_errors']:>8}")
    print(f"errors by code: {summary['errors_by_code'] or 'none'}; expected (probes): "
          f"{summary['expected_by_code'] or 'none'}")
    for sample in summary["error_samples"][:10]:  # type: ignore[index]
        print(f"  {sample['count']:>5} x {sample['rpc']} {sample['code']}: {sample['message']}")


# --- memory ---------------------------------------------------------------------------------------

# The parts of a `make run` stack found by their command line when the driver did not start
# the stack itself (the same needles as tests/bench/whole_path.py).
NEEDLES = {
    "postgres": "postgres",
    "nats": "nats-server",
    "auth": "services.auth",
    "ingest": "services.ingest",
    "embedding": "services.embedding",
    "projection": "services.projection",
    "edge": "envoy",
}


def _status_kb(pid: int, field_name: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field_name}:"):
            return int(line.split()[1])
    return 0


def _children() -> dict[int, list[int]]:
    out: dict[int, list[int]] = defaultdict(list)
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = _status_kb(int(entry.name), "PPid")
            except OSError:
                continue
            out[ppid].append(int(entry.name))
    return out


def _pss_kb(pid: int) -> int:
    """Proportional set size: shared pages split between the processes that map them, so a
    tree's sum does not count PostgreSQL's shared buffers once per backend."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return _status_kb(pid, "VmRSS")


def find_parts() -> tuple[dict[str, int], list[str]]:
    """pid of each part of a stack running on this machine, by command line; a part found more
    than once (two stacks) is left out and named in the second list."""
    found: dict[str, list[int]] = defaultdict(list)
    parents: dict[int, int] = {}
    commands: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        try:
            commands[pid] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            parents[pid] = _status_kb(pid, "PPid")
        except OSError:
            continue
    for pid, command in commands.items():
        for part, needle in NEEDLES.items():
            # the top process of a part only: not a child whose parent is the same part
            if needle in command and needle not in commands.get(parents[pid], ""):
                found[part].append(pid)
    pids = {part: p[0] for part, p in found.items() if len(p) == 1}
    return pids, sorted(part for part, p in found.items() if len(p) > 1)


class Memory:
    """Resident memory of each part: the process itself (RSS) and it with all its children
    (PSS: embedding workers, fit processes, PostgreSQL backends), sampled on demand."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.samples: list[dict[str, object]] = []

    def sample(self, label: str, started: float) -> dict[str, object]:
        children = _children()
        parts: dict[str, dict[str, float]] = {}
        for part, pid in self.pids.items():
            try:
                own = _status_kb(pid, "VmRSS")
            except OSError:
                continue  # the part has exited
            tree, todo = 0, [pid]
            while todo:
                p = todo.pop()
                try:
                    tree += _pss_kb(p)
                except OSError:
                    continue
                todo.extend(children.get(p, []))
            parts[part] = {"rss_mb": own / 1024, "tree_pss_mb": tree / 1024}
        sample = {"label": label, "t_s": round(time.monotonic() - started, 1), "parts": parts}
        self.samples.append(sample)
        return sample


def print_memory(samples: list[dict[str, object]]) -> None:
    """RSS at the start, after the first minute (when the run is long enough to tell warm-up
    from growth) and at the end, and the drift between them."""
    start, end = samples[0], samples[-1]
    minute = next((s for s in samples if float(s["t_s"]) >= 60), None)  # type: ignore[arg-type]
    warm = minute if minute is not None and float(end["t_s"]) >= 180 else None  # type: ignore[arg-type]
    print("\nmemory: RSS of each part's own process; with children: PSS of it and every child")
    head = f"{'part':<11} {'RSS start':>10}"
    if warm:
        head += f" {'at 1 min':>9}"
    head += f" {'RSS end':>9} {'drift':>8}"
    if warm:
        head += f" {'since 1 min':>11}"
    head += f" {'w/ children start':>18} {'end':>8} {'drift':>8}"
    print(head + "   (MB)")
    parts_start: dict[str, dict[str, float]] = start["parts"]  # type: ignore[assignment]
    parts_end: dict[str, dict[str, float]] = end["parts"]  # type: ignore[assignment]
    for part, a in parts_start.items():
        b = parts_end.get(part)
        if b is None:
            print(f"{part:<11} {a['rss_mb']:>10.0f}  (gone by the end)")
            continue
        line = f"{part:<11} {a['rss_mb']:>10.0f}"
        if warm:
            w = warm["parts"].get(part, a)  # type: ignore[attr-defined]
            line += f" {w['rss_mb']:>9.0f}"
        line += f" {b['rss_mb']:>9.0f} {b['rss_mb'] - a['rss_mb']:>+8.0f}"
        if warm:
            line += f" {b['rss_mb'] - w['rss_mb']:>+11.0f}"
        line += f" {a['tree_pss_mb']:>18.0f} {b['tree_pss_mb']:>8.0f} {b['tree_pss_mb'] - a['tree_pss_mb']:>+8.0f}"
        print(line)
