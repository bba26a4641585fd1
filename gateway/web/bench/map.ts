// The map bench page: synthetic points fed through the client's own decoding path
// (PointSet over 12-byte packed chunks, normalizeCoordinates; a category column as Arrow
// IPC through ColumnAssembler; filterMask) into regl-scatterplot with map.ts's settings.
// e2e/bench-map.mjs drives window.bench; tests/bench/map.py prints the table.

import createScatterplot from "regl-scatterplot";
import { Dictionary, Int32, Utf8, Table, tableToIPC, vectorFromArray } from "apache-arrow";
import { PointSet, normalizeCoordinates, type PointChunk } from "../src/points";
import { ColumnAssembler } from "../src/columns";
import { countsByCluster, filterMask, maskIndexes } from "../src/filters";
import { categoricalPalette } from "../src/scales";

const CHUNK = 65_536; // the projection service's default chunk_points
const CLUSTERS = 20;

function rng(seed: number) {
  let s = seed >>> 0;
  return () => ((s = (s * 1664525 + 1013904223) >>> 0) / 4294967296);
}

/** Packed StreamPoints chunks (x, y float32, uint16 cluster) for n points in gaussian blobs. */
function syntheticChunks(n: number): { chunks: PointChunk[]; json: number; jsonText: string } {
  const r = rng(42);
  const centres = Array.from({ length: CLUSTERS }, () => [r() * 20 - 10, r() * 20 - 10]);
  const chunks: PointChunk[] = [];
  let json = 2; // "[" "]"
  const jsonParts: string[] = [];
  for (let start = 0; start < n; start += CHUNK) {
    const count = Math.min(CHUNK, n - start);
    const packed = new Uint8Array(count * 12);
    const view = new DataView(packed.buffer);
    for (let i = 0; i < count; i++) {
      const c = Math.floor(r() * CLUSTERS);
      const g = () => Math.sqrt(-2 * Math.log(r() + 1e-12)) * Math.cos(2 * Math.PI * r());
      const x = centres[c][0] + g(), y = centres[c][1] + g();
      view.setFloat32(i * 12, x, true);
      view.setFloat32(i * 12 + 4, y, true);
      view.setUint16(i * 12 + 8, c, true);
      // The same point as JSON, as a JSON API would send it (float32 printed shortest).
      const part = JSON.stringify({ row: start + i, x: Math.fround(x), y: Math.fround(y), cluster: c });
      jsonParts.push(part);
      json += part.length + 1;
    }
    const empty = new Uint8Array(0);
    chunks.push({ count, dimensions: 2, rowIndexes: empty, coordinates: empty, clusterIds: empty, totalCount: n, packed, start });
  }
  return { chunks, json: json - 1, jsonText: `[${jsonParts.join(",")}]` };
}

/** A "topic" category column as ReadColumns sends it: Arrow IPC batches, dictionary<int32, string>. */
function syntheticTopicIpc(n: number): Uint8Array[] {
  const r = rng(7);
  const topics = Array.from({ length: 12 }, (_, i) => `topic ${i}`);
  const out: Uint8Array[] = [];
  for (let start = 0; start < n; start += 131_072) {
    const count = Math.min(131_072, n - start);
    const vals = Array.from({ length: count }, () => topics[Math.floor(r() * r() * topics.length)]);
    out.push(tableToIPC(new Table({ topic: vectorFromArray(vals, new Dictionary(new Utf8(), new Int32())) })));
  }
  return out;
}

const raf = () => new Promise<number>((res) => requestAnimationFrame(res));
const canvas = document.getElementById("map") as HTMLCanvasElement;

/** Waits for the next frame and for the GPU (software GL here) to finish it. */
async function frameDone(gl: WebGLRenderingContext | null) {
  await raf();
  if (gl) gl.readPixels(0, 0, 1, 1, gl.RGBA, gl.UNSIGNED_BYTE, new Uint8Array(4));
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
}

async function run(n: number, repeats: number) {
  const { chunks, json, jsonText } = syntheticChunks(n);
  const wire = chunks.reduce((a, c) => a + c.packed!.byteLength + 16, 0); // + field/frame headers a chunk
  const topicIpc = syntheticTopicIpc(n);
  const ipcBytes = topicIpc.reduce((a, b) => a + b.byteLength, 0);

  // ---- first points byte → first frame → interactive ----
  const t0 = performance.now();
  const points = new PointSet();
  for (const c of chunks) points.add(c);
  const { x, y } = normalizeCoordinates(points.coords, points.length, points.dimensions);
  const ids = [...new Set(points.clusters)].sort((a, b) => a - b);
  const index = new Map(ids.map((id, i) => [id, i]));
  const valueA = new Float32Array(n);
  for (let i = 0; i < n; i++) valueA[i] = index.get(points.clusters[i]) ?? 0;
  const tDecoded = performance.now();
  const pointSize = n < 500_000 ? 2.5 : 1.5;
  const sp = createScatterplot({
    canvas, width: "auto", height: "auto", backgroundColor: "#ffffff", pointSize, pointSizeSelected: pointSize + 3,
    pointOutlineWidth: 2, pointColor: categoricalPalette(ids.length), colorBy: "valueA", opacity: n > 100_000 ? 0.6 : 0.9,
    lassoOnLongPress: false, cameraDistance: 1.08,
  });
  if (n > 100_000) sp.set({ opacityBy: "density" } as unknown as Parameters<typeof sp.set>[0]);
  const gl = (sp.get("regl" as never) as unknown as { _gl?: WebGLRenderingContext })?._gl ?? canvas.getContext("webgl");
  await sp.draw({ x, y, valueA }, { zDataType: "categorical" });
  await frameDone(gl);
  const tFirstFrame = performance.now();
  // The rest of what map.ts does before the map answers input: legend counts per cluster
  // (map.ts counts them before creating the scatterplot), the filter mask, unfilter.
  // regl-scatterplot's hover/lasso index is built before its first frame.
  countsByCluster(points.clusters, Array.from({ length: n }, (_, i) => i));
  filterMask({ n, filters: { categories: {}, ranges: {}, onlySearch: false, onlySelection: false } as never, columns: new Map() });
  await sp.unfilter({ preventEvent: true });
  const pointOver = sp.get("isPointsDrawn" as never) as unknown as boolean;
  await frameDone(gl);
  const tInteractive = performance.now();

  // ---- pan frames ----
  const pans: number[] = [];
  for (let k = 0; k < repeats; k++) {
    const t = performance.now();
    await sp.zoomToLocation([Math.sin(k) * 0.3, Math.cos(k) * 0.3], 1.0, { transition: false } as never);
    await frameDone(gl);
    pans.push(performance.now() - t);
  }

  // ---- the topic column through ReadColumns' decoding, then filter changes ----
  const tc0 = performance.now();
  const asm = new ColumnAssembler(n, (row) => (row < n ? row : -1));
  let row = 0;
  for (const b of topicIpc) {
    asm.add(row, b);
    row += Math.min(131_072, n - row);
  }
  const topic = asm.finish();
  const columnMs = performance.now() - tc0;
  const columns = new Map([["topic", topic]]);
  const filters: number[] = [];
  for (let k = 0; k < repeats; k++) {
    const t = performance.now();
    const keep = k % 2 ? ["topic 0", "topic 1"] : ["topic 2", "topic 3", "topic 4"];
    const { mask, count } = filterMask({ n, filters: { categories: { topic: keep }, ranges: {} } as never, columns });
    if (count === n) await sp.unfilter({ preventEvent: true });
    else await sp.filter(Array.from(maskIndexes(mask)), { preventEvent: true });
    await frameDone(gl);
    filters.push(performance.now() - t);
  }
  sp.destroy();

  // ---- the peer: the same points as a JSON API would send them, parsed and drawn by plain
  // regl-scatterplot (no packed decoding, no normalising module); run after ours, so any
  // browser cache (shaders) favours the peer ----
  const p0 = performance.now();
  const parsed = JSON.parse(jsonText) as { row: number; x: number; y: number; cluster: number }[];
  const px = new Float32Array(n), py = new Float32Array(n), pv = new Float32Array(n);
  let lo = Infinity, hi = -Infinity;
  for (const pt of parsed) {
    lo = Math.min(lo, pt.x, pt.y);
    hi = Math.max(hi, pt.x, pt.y);
  }
  const mid = (lo + hi) / 2, half = (hi - lo) / 2 || 1;
  for (const pt of parsed) {
    px[pt.row] = (pt.x - mid) / half;
    py[pt.row] = (pt.y - mid) / half;
    pv[pt.row] = pt.cluster;
  }
  const peer = createScatterplot({
    canvas, width: "auto", height: "auto", backgroundColor: "#ffffff", pointSize, pointSizeSelected: pointSize + 3,
    pointOutlineWidth: 2, pointColor: categoricalPalette(ids.length), colorBy: "valueA", opacity: n > 100_000 ? 0.6 : 0.9,
    lassoOnLongPress: false, cameraDistance: 1.08,
  });
  if (n > 100_000) peer.set({ opacityBy: "density" } as unknown as Parameters<typeof peer.set>[0]);
  const peerGl = (peer.get("regl" as never) as unknown as { _gl?: WebGLRenderingContext })?._gl ?? canvas.getContext("webgl");
  await peer.draw({ x: px, y: py, valueA: pv }, { zDataType: "categorical" });
  await frameDone(peerGl);
  const peerFirstFrameMs = performance.now() - p0;
  peer.destroy();
  return {
    peerFirstFrameMs,
    n, chunks: chunks.length, pointOver,
    decodeMs: tDecoded - t0, firstFrameMs: tFirstFrame - t0, interactiveMs: tInteractive - t0,
    panMs: median(pans), panP90Ms: [...pans].sort((a, b) => a - b)[Math.floor(pans.length * 0.9)],
    filterMs: median(filters), columnMs, columnBytesPerRow: ipcBytes / n,
    wireBytesPerPoint: wire / n, jsonBytesPerPoint: json / n,
    renderer: (() => { const g = canvas.getContext("webgl") ?? gl; const ext = g?.getExtension("WEBGL_debug_renderer_info"); return ext && g ? String(g.getParameter(ext.UNMASKED_RENDERER_WEBGL)) : "?"; })(),
  };
}

(window as unknown as { bench: unknown }).bench = { run };
document.title = "bench ready";
