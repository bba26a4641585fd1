import { describe, expect, it } from "vitest";
import { alignPositions, easeInOutCubic, interpolate, progressAt, TRANSITION_MS } from "../src/transition";

const f = (...v: number[]) => Float32Array.from(v);

describe("transition between two 2-D maps", () => {
  it("aligns the old positions to the new point order by row", () => {
    const previous = { rows: [0, 1, 2, 3], x: f(0, 1, 2, 3), y: f(10, 11, 12, 13) };
    const next = { rows: [3, 1, 0, 2], x: f(-1, -1, -1, -1), y: f(-2, -2, -2, -2) };
    const from = alignPositions(previous, next, 4)!;
    expect(Array.from(from.x)).toEqual([3, 1, 0, 2]);
    expect(Array.from(from.y)).toEqual([13, 11, 10, 12]);
  });

  it("rows the old map lacks start where they end; too few shared rows: no move", () => {
    const previous = { rows: [0, 1], x: f(5, 6), y: f(7, 8) };
    const from = alignPositions(previous, { rows: [0, 1, 9], x: f(0, 0, 0.5), y: f(0, 0, -0.5) }, 3)!;
    expect(Array.from(from.x)).toEqual([5, 6, 0.5]);
    expect(Array.from(from.y)).toEqual([7, 8, -0.5]);
    expect(alignPositions(previous, { rows: [7, 8, 9], x: f(0, 0, 0), y: f(0, 0, 0) }, 3)).toBeNull();
    expect(alignPositions(previous, { rows: [], x: f(), y: f() }, 0)).toBeNull();
  });

  it("eases from 0 to 1, symmetric, monotone", () => {
    expect(easeInOutCubic(0)).toBe(0);
    expect(easeInOutCubic(1)).toBe(1);
    expect(easeInOutCubic(0.5)).toBeCloseTo(0.5);
    expect(easeInOutCubic(-1)).toBe(0);
    expect(easeInOutCubic(2)).toBe(1);
    for (let t = 0; t < 1; t += 0.05) {
      expect(easeInOutCubic(t + 0.05)).toBeGreaterThanOrEqual(easeInOutCubic(t));
      expect(easeInOutCubic(1 - t)).toBeCloseTo(1 - easeInOutCubic(t));
    }
    expect(progressAt(0)).toBe(0);
    expect(progressAt(TRANSITION_MS / 2)).toBeCloseTo(0.5);
    expect(progressAt(TRANSITION_MS * 2)).toBe(1);
    expect(progressAt(10, 0)).toBe(1);
  });

  it("interpolates between the two maps, ending exactly on the new one", () => {
    const from = f(0, 1, -1), to = f(1, 1, 1), out = new Float32Array(3);
    expect(Array.from(interpolate(from, to, 0, out))).toEqual([0, 1, -1]);
    expect(Array.from(interpolate(from, to, 0.5, out))).toEqual([0.5, 1, 0]);
    expect(Array.from(interpolate(from, to, 1, out))).toEqual([1, 1, 1]);
  });
});
