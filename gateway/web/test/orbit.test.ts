import { describe, expect, it } from "vitest";
import { backToFront, normalize3d, project3d } from "../src/orbit";

describe("3-D view arithmetic", () => {
  it("normalises into [-1, 1]³ with one scale", () => {
    const p = normalize3d(new Float32Array([0, 0, 0, 10, 2, 4]), 2);
    [-1, -0.2, -0.4, 1, 0.2, 0.4].forEach((v, i) => expect(p[i]).toBeCloseTo(v, 6));
  });

  it("the centre lands in the middle; rotating by yaw moves x off-centre points", () => {
    const xyz = new Float32Array([0, 0, 0, 1, 0, 0]);
    const a = project3d(xyz, 2, { yaw: 0, pitch: 0, distance: 3 }, 400, 200);
    expect(a.sx[0]).toBe(200);
    expect(a.sy[0]).toBe(100);
    expect(a.sx[1]).toBeGreaterThan(200);
    const b = project3d(xyz, 2, { yaw: Math.PI / 2, pitch: 0, distance: 3 }, 400, 200);
    expect(b.sx[1]).toBeCloseTo(200);
    // Turned a quarter, the point is now nearer or farther than the centre.
    expect(Math.abs(b.depth[1] - b.depth[0])).toBeCloseTo(1);
  });

  it("perspective: nearer points spread wider; drawing order is back to front", () => {
    const xyz = new Float32Array([1, 0, 1, 1, 0, -1]);
    const p = project3d(xyz, 2, { yaw: 0, pitch: 0, distance: 3 }, 400, 400);
    expect(p.depth[0]).toBeLessThan(p.depth[1]);
    expect(p.sx[0] - 200).toBeGreaterThan(p.sx[1] - 200);
    expect([...backToFront(p.depth)]).toEqual([1, 0]);
  });
});
