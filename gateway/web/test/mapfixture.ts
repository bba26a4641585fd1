// A small map for the panel tests: points built the way the client builds them (PointSet,
// mapPoints), with labelled clusters.
import { create } from "@bufbuild/protobuf";
import { ClusterSchema } from "../src/gen/embedviz/v1/projection_pb";
import { mapPoints, type MapPoints } from "../src/mappoints";
import { PointSet } from "../src/points";

const bytes = (a: Uint32Array | Int32Array | Float32Array) => new Uint8Array(a.buffer, a.byteOffset, a.byteLength);

export function smallMap(rows: number[], xy: number[], clusters: number[], labels: { id: number; label: string; terms: string[]; level?: number; parentId?: number }[] = []): MapPoints {
  const set = new PointSet();
  set.add({
    count: rows.length,
    dimensions: 2,
    rowIndexes: bytes(Uint32Array.from(rows)),
    coordinates: bytes(Float32Array.from(xy)),
    clusterIds: bytes(Int32Array.from(clusters)),
    totalCount: rows.length,
  });
  return mapPoints(set, rows.length, labels.map((c) => create(ClusterSchema, c)));
}
