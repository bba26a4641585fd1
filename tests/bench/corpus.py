"""The benchmark's real text and its vectors, made once and cached under build/bench-cache.

Texts: the one-line description of every Debian package apt knows (`apt-cache dumpavail`,
about 63,700), topped up to the wanted count with the first line of docstrings of the
functions and classes in the installed Python libraries and the standard library (real
English technical text). Vectors: the packaged all-MiniLM-L6-v2, normalised, 384-d."""

from __future__ import annotations

import re
import sys
import sysconfig
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / "build" / "bench-cache"
sys.path.insert(0, str(ROOT))

_DOCSTRING = re.compile(r'(?:def|class) [^\n]*:\n\s+(?:r|u)?"""([^\n"]{30,200})')


def _debian() -> list[tuple[str, str]]:
    """(summary, section) of each Debian package whose summary is not a repeat, in apt's order."""
    from tests.projection import debian

    seen: set[str] = set()
    out: list[tuple[str, str]] = []
    for package in debian.packages():
        if package.summary not in seen:
            seen.add(package.summary)
            out.append((package.summary, package.section))
    return out


def texts(count: int) -> tuple[list[str], dict[str, int]]:
    out = [summary for summary, _ in _debian()]
    seen = set(out)
    sources = {"debian": len(out)}
    for where in ("purelib", "stdlib"):
        base = Path(sysconfig.get_paths()[where])
        for path in sorted(base.rglob("*.py")):
            if len(out) >= count:
                break
            try:
                source = path.read_text(errors="ignore")
            except OSError:
                continue
            for match in _DOCSTRING.finditer(source):
                text = match.group(1).strip()
                if text not in seen:
                    seen.add(text)
                    out.append(text)
    sources["docstrings"] = len(out) - sources["debian"]
    return out[:count], sources


def sections(count: int) -> list[str]:
    """The Debian section of each of the first `count` texts (as `texts` orders them), ""
    for the docstring lines that top them up: labels for the 10-NN label agreement."""
    return ([section for _, section in _debian()] + [""] * count)[:count]


def vectors(count: int) -> np.ndarray:
    """`count` real 384-d vectors, embedded once and cached (one process at a time embeds)."""
    import fcntl

    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / "vectors.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _vectors(count)


def cached_texts(count: int) -> list[str]:
    """The first `count` texts of the largest cache `vectors` made (written beside its vectors,
    one per line), without searching the machine for them again."""
    sizes = sorted(int(size) for f in CACHE.glob("texts-*.txt") if (size := f.stem.split("-")[1]).isdigit())
    larger = [size for size in sizes if size >= count]
    if not larger:
        raise SystemExit(f"no cached texts for {count} rows under {CACHE}: run tests/bench/corpus.py {count} first")
    return (CACHE / f"texts-{larger[0]}.txt").read_text().split("\n")[:count]


def _vectors(count: int) -> np.ndarray:
    path = CACHE / f"minilm-{count}.npy"
    if path.exists():
        return np.load(path, mmap_mode="r")
    # texts(n) is a prefix of texts(m) for n < m: a larger cache holds these vectors already.
    sizes = sorted(int(size) for f in CACHE.glob("minilm-*.npy") if (size := f.stem.split("-")[1]).isdigit())
    for larger in sizes:
        if larger > count:
            return np.load(CACHE / f"minilm-{larger}.npy", mmap_mode="r")[:count]
    corpus, sources = texts(count)
    if len(corpus) < count:
        raise SystemExit(f"only {len(corpus)} texts found ({sources}); apt-get update may be needed")
    from sentence_transformers import SentenceTransformer

    from services.common.config import Settings

    model = SentenceTransformer(Settings.from_env().model_path, device="cpu")
    started = time.monotonic()
    result = model.encode(
        corpus, batch_size=256, normalize_embeddings=True, show_progress_bar=False, convert_to_numpy=True
    )
    result = np.ascontiguousarray(result, dtype=np.float32)
    print(f"embedded {count} texts ({sources}) in {time.monotonic() - started:.0f} s", file=sys.stderr)
    np.save(path.with_suffix(".tmp.npy"), result)
    path.with_suffix(".tmp.npy").rename(path)
    (CACHE / f"texts-{count}.txt").write_text("\n".join(t.replace("\n", " ") for t in corpus))
    return np.load(path, mmap_mode="r")


if __name__ == "__main__":
    v = vectors(int(sys.argv[1]) if len(sys.argv) > 1 else 100_000)
    print(v.shape)
