import { describe, expect, it } from "vitest";
import { categoricalPalette, categoryEntries, hexToRgb, numericScale, sequentialColor, TABLEAU20 } from "../src/scales";

const dist = (a: string, b: string) => {
  const x = hexToRgb(a), y = hexToRgb(b);
  return Math.hypot(x[0] - y[0], x[1] - y[1], x[2] - y[2]);
};

describe("categorical palette", () => {
  it("starts with Tableau 20 and stays distinct past 20", () => {
    const p = categoricalPalette(40);
    expect(p.slice(0, 20)).toEqual(TABLEAU20);
    expect(new Set(p).size).toBe(40);
    for (let i = 0; i < p.length; i++) for (let j = i + 1; j < p.length; j++) expect(dist(p[i], p[j])).toBeGreaterThan(8);
  });

  it("groups the tail past the maximum as other, nulls last", () => {
    const counts = new Map<string, number>();
    for (let i = 0; i < 60; i++) counts.set(`v${i}`, 100 - i);
    const e = categoryEntries(counts, 3, 40);
    expect(e.length).toBe(41);
    expect(e[0]).toMatchObject({ key: "v0", count: 100 });
    expect(e[39]).toMatchObject({ key: "__other__", label: "other (21 values)" });
    expect(e[39].count).toBe(counts.size ? [...counts.values()].slice(39).reduce((a, b) => a + b, 0) : 0);
    expect(e[40]).toMatchObject({ key: "__null__", count: 3 });
    expect(new Set(e.slice(0, 39).map((x) => x.color)).size).toBe(39);
  });

  it("25 values get 25 colours", () => {
    const counts = new Map(Array.from({ length: 25 }, (_, i) => [`c${i}`, 1] as [string, number]));
    const e = categoryEntries(counts, 0);
    expect(e.length).toBe(25);
    expect(new Set(e.map((x) => x.color)).size).toBe(25);
  });
});

describe("numeric scale", () => {
  it("maps the range onto viridis ends and skips non-finite values", () => {
    const s = numericScale(new Float64Array([5, NaN, 10, 7.5, Infinity]));
    expect([s.lo, s.hi]).toEqual([5, 10]);
    expect(s.normalize(7.5)).toBe(0.5);
    expect(s.color(5)).toBe("#440154");
    expect(s.color(10)).toBe("#fde725");
    expect(s.color(NaN)).toBe("#b0b0b0");
    expect(sequentialColor(0.5)).toBe("#21918c");
  });

  it("a constant column sits in the middle", () => {
    expect(numericScale([3, 3]).normalize(3)).toBe(0.5);
  });
});
