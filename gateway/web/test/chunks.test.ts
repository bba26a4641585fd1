import { describe, expect, it } from "vitest";
import { backoffMs, CHUNK_BYTES, MAX_UPLOAD_RETRIES, planChunks } from "../src/chunks";

describe("planChunks", () => {
  it("cuts a file into 1 MiB chunks with a short last one", () => {
    const size = 2 * CHUNK_BYTES + 5;
    expect(planChunks(size)).toEqual([
      { offset: 0, length: CHUNK_BYTES },
      { offset: CHUNK_BYTES, length: CHUNK_BYTES },
      { offset: 2 * CHUNK_BYTES, length: 5 },
    ]);
  });

  it("plans one chunk for an exact multiple's worth and none for an empty file", () => {
    expect(planChunks(CHUNK_BYTES)).toEqual([{ offset: 0, length: CHUNK_BYTES }]);
    expect(planChunks(0)).toEqual([]);
  });

  it("covers every byte exactly once", () => {
    const size = 10_000_019;
    const chunks = planChunks(size, 65_536);
    let next = 0;
    for (const c of chunks) {
      expect(c.offset).toBe(next);
      expect(c.length).toBeGreaterThan(0);
      next += c.length;
    }
    expect(next).toBe(size);
  });

  it("resumes from the bytes the server already has", () => {
    expect(planChunks(25, 10, 10)).toEqual([
      { offset: 10, length: 10 },
      { offset: 20, length: 5 },
    ]);
    expect(planChunks(25, 10, 25)).toEqual([]);
  });

  it("rejects nonsense sizes", () => {
    expect(() => planChunks(-1)).toThrow();
    expect(() => planChunks(10, 0)).toThrow();
  });
});

describe("upload retry backoff", () => {
  it("doubles from half a second and stops at 8 s", () => {
    expect([1, 2, 3, 4, 5, 6, 9].map(backoffMs)).toEqual([500, 1000, 2000, 4000, 8000, 8000, 8000]);
    expect(MAX_UPLOAD_RETRIES).toBeGreaterThanOrEqual(5);
  });
});
