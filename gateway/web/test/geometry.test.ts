import { describe, expect, it } from "vitest";
import { anyOverlap, boxPolygon, clusterCentroids, insidePolygon, placeLabels, pointsInPolygon, subCentroids, toScreen, viewMatrix, type LabelCandidate } from "../src/geometry";

describe("camera transform", () => {
  it("maps the map's corners to the canvas at distance 1", () => {
    const t = { width: 800, height: 400, view: viewMatrix(0, 0, 1) };
    expect(toScreen(t, 0, 0)).toEqual([400, 200]);
    expect(toScreen(t, 0, 1)).toEqual([400, 0]);
    // x is divided by the aspect ratio (2): x = 1 lands at 3/4 of the width.
    expect(toScreen(t, 1, 0)).toEqual([600, 200]);
  });

  it("zoomed in on a target, the target is the centre", () => {
    const t = { width: 500, height: 500, view: viewMatrix(0.5, 0.5, 0.25) };
    expect(toScreen(t, 0.5, 0.5)).toEqual([250, 250]);
    expect(toScreen(t, 0.75, 0.5)[0]).toBeCloseTo(500);
  });
});

describe("lasso and box", () => {
  it("even-odd inside test", () => {
    const square = [0, 0, 10, 0, 10, 10, 0, 10];
    expect(insidePolygon(5, 5, square)).toBe(true);
    expect(insidePolygon(15, 5, square)).toBe(false);
  });

  it("selects the points inside, whatever is under the first vertex, respecting the mask", () => {
    const x = new Float32Array([0, 0.1, -0.1, 0.9, 0.05]);
    const y = new Float32Array([0, 0.1, -0.1, 0.9, 0.0]);
    const t = { width: 400, height: 400, view: viewMatrix(0, 0, 1) };
    // A loop around point 0 (the stroke may start anywhere: the selection is pure geometry).
    const [cx, cy] = toScreen(t, 0, 0);
    const poly: number[] = [];
    for (let a = 0; a < 2 * Math.PI; a += 0.2) poly.push(cx + 50 * Math.cos(a), cy + 50 * Math.sin(a));
    expect(pointsInPolygon(x, y, t, poly)).toEqual([0, 1, 2, 4]);
    const box = boxPolygon(cx - 40, cy - 40, cx + 40, cy + 40);
    expect(pointsInPolygon(x, y, t, box)).toEqual([0, 1, 2, 4]);
    expect(pointsInPolygon(x, y, t, box, new Uint8Array([1, 0, 1, 1, 1]))).toEqual([0, 2, 4]);
  });
});

describe("labels", () => {
  it("centroids are medians per cluster, noise left out", () => {
    const x = new Float32Array([0, 1, 2, 100, 5, 5]);
    const y = new Float32Array([0, 1, 2, 100, 5, 5]);
    const c = new Int32Array([0, 0, 0, 0, -1, 1]);
    const got = clusterCentroids(x, y, c);
    expect(got).toEqual([
      { id: 0, x: 1.5, y: 1.5, size: 4 },
      { id: 1, x: 5, y: 5, size: 1 },
    ]);
    expect(subCentroids(x, y, c, got, 1).filter((s) => s.id === 0).length).toBeGreaterThan(1);
  });

  it("greedy placement: no two labels overlap, bigger clusters win, off-screen ones are dropped", () => {
    const cands: LabelCandidate[] = [];
    // 200 labels at random positions, many overlapping.
    let seed = 7;
    const rnd = () => ((seed = (seed * 16807) % 2147483647) / 2147483647);
    for (let i = 0; i < 200; i++) cands.push({ text: `l${i}`, key: String(i), x: rnd() * 800, y: rnd() * 600, width: 40 + rnd() * 60, height: 14, priority: i });
    const placed = placeLabels(cands, 800, 600);
    expect(placed.length).toBeGreaterThan(10);
    expect(placed.length).toBeLessThan(200);
    expect(anyOverlap(placed)).toBe(false);
    expect(placed[0].key).toBe(cands.filter((c) => c.x - c.width / 2 >= 0 && c.x + c.width / 2 <= 800 && c.y >= 7 && c.y <= 593).sort((a, b) => b.priority - a.priority)[0].key);
    for (const p of placed) expect(p.left >= 0 && p.top >= 0 && p.left + p.width <= 800 && p.top + p.height <= 600).toBe(true);
  });

  it("spread further apart (zoomed in), more labels fit", () => {
    const mk = (scale: number) =>
      Array.from({ length: 30 }, (_, i) => ({ text: `c${i}`, key: String(i), x: 400 + (i % 6 - 3) * 30 * scale, y: 300 + (Math.floor(i / 6) - 2) * 12 * scale, width: 60, height: 14, priority: 30 - i }));
    expect(placeLabels(mk(3), 800, 600).length).toBeGreaterThan(placeLabels(mk(1), 800, 600).length);
  });
});
