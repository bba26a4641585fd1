"""How far a map job is, as one number that only grows. Each stage a map goes through owns
a share of the job, by how long it usually takes (STAGE_WEIGHTS); within a stage, the
stage's own count (vectors read, optimisation epochs, rows placed) moves through its share.
The job reports it as `done` out of `total` = the map's rows: rows' worth of the whole job,
so `progress`, the rate and the time left mean the whole job, not the current stage."""

from __future__ import annotations

from dataclasses import dataclass, field

from services.projection import maps

LOADING = "loading vectors"
PCA = "pca"  # the whole reduction of a PCA map
CLUSTERING = "clustering"
QUALITY = "quality"
LABELLING = "labelling"
SAVING = "saving"

# Relative cost of each stage; only the stages a map goes through count.
STAGE_WEIGHTS: dict[str, float] = {
    LOADING: 10,
    PCA: 15,
    maps.STAGE_PRE_REDUCTION: 5,
    maps.STAGE_NEIGHBOURS: 20,
    maps.STAGE_OPTIMISATION: 35,
    maps.STAGE_PLACING: 15,
    CLUSTERING: 15,  # by default a 5-D UMAP of (a sample of) the vectors, then HDBSCAN
    QUALITY: 5,
    LABELLING: 5,
    SAVING: 2,
}


def stages_of(params: maps.MapParams, sampled: bool) -> list[str]:
    """The stages a map with these parameters goes through, in order (`sampled`: fitted on
    a sample, the other rows placed afterwards)."""
    if params.method == maps.PCA:
        reduction = [PCA]
    elif params.method == maps.TSNE:
        reduction = [maps.STAGE_PRE_REDUCTION, maps.STAGE_OPTIMISATION]
    else:
        reduction = [maps.STAGE_PRE_REDUCTION, maps.STAGE_NEIGHBOURS, maps.STAGE_OPTIMISATION]
    if sampled and params.method != maps.PCA:
        reduction.append(maps.STAGE_PLACING)
    return [LOADING, *reduction, CLUSTERING, QUALITY, LABELLING, SAVING]


@dataclass
class MapProgress:
    """`at(stage, done, total)`: the job's (done, total) when `stage` has counted `done` of
    its `total`; never less than an earlier answer (a stage reported late, or again after a
    resume, does not move the job back)."""

    stages: list[str]
    rows: int
    _start: dict[str, float] = field(default_factory=dict)
    _sum: float = 0.0
    _best: float = 0.0

    def __post_init__(self) -> None:
        running = 0.0
        for stage in self.stages:
            self._start[stage] = running
            running += STAGE_WEIGHTS.get(stage, 1.0)
        self._sum = running or 1.0

    def fraction(self, stage: str, done: int = 0, total: int = 0) -> float:
        start = self._start.get(stage)
        if start is not None:
            within = min(max(done / total, 0.0), 1.0) if total > 0 else 0.0
            reached = (start + STAGE_WEIGHTS.get(stage, 1.0) * within) / self._sum
            self._best = max(self._best, min(reached, 1.0))
        return self._best

    def at(self, stage: str, done: int = 0, total: int = 0) -> tuple[int, int]:
        return int(self.fraction(stage, done, total) * self.rows), self.rows
