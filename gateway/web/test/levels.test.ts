// Cluster levels on the map: each point's cluster at a coarser level through the parent ids
// ListClusters gives, and which level's labels show at which zoom.
import { describe, expect, it } from "vitest";
import { levelAt } from "../src/labels";
import { liftClusters } from "../src/mappoints";
import { smallMap } from "./mapfixture";

describe("cluster levels", () => {
  it("lifts each point to its cluster's parent, noise staying noise", () => {
    const parents = new Map([[0, 4], [1, 4], [2, 5], [3, 5]]);
    expect(Array.from(liftClusters(Int32Array.from([0, 1, 2, 3, -1, 2]), 6, parents))).toEqual([4, 4, 5, 5, -1, 5]);
  });

  it("builds every level of a map from ListClusters' tree", () => {
    const map = smallMap(
      [0, 1, 2, 3, 4],
      [0, 0, 1, 1, 2, 2, 3, 3, 4, 4],
      [0, 1, 2, -1, 0],
      [
        { id: 0, label: "window manager", terms: [], level: 0, parentId: 3 },
        { id: 1, label: "desktop themes", terms: [], level: 0, parentId: 3 },
        { id: 2, label: "perl modules", terms: [], level: 0, parentId: 4 },
        { id: 3, label: "desktop", terms: [], level: 1, parentId: 5 },
        { id: 4, label: "perl", terms: [], level: 1, parentId: 5 },
        { id: 5, label: "software", terms: [], level: 2, parentId: -1 },
      ],
    );
    expect(map.levels).toBe(3);
    expect(Array.from(map.clustersAt(0))).toEqual([0, 1, 2, -1, 0]);
    expect(Array.from(map.clustersAt(1))).toEqual([3, 3, 4, -1, 3]);
    expect(Array.from(map.clustersAt(2))).toEqual([5, 5, 5, -1, 5]);
    expect(map.clusterLabel(4)).toBe("perl");
    // a map without levels has one
    expect(smallMap([0, 1], [0, 0, 1, 1], [0, 1]).levels).toBe(1);
  });

  it("shows coarse labels zoomed out and finer ones zooming in", () => {
    expect([1, 0.85, 0.7].map((d) => levelAt(d, 3))).toEqual([2, 1, 0]);
    expect([1, 0.7].map((d) => levelAt(d, 2))).toEqual([1, 0]);
    expect(levelAt(1, 1)).toBe(0);
  });
});
