// Map geometry without WebGL: the camera's map → screen transform (the same arithmetic as
// regl-scatterplot's getScreenPosition), points inside a lasso or a box, cluster centroids
// and the placement of labels without overlap. Tested in Node.

/** Map (normalised) → screen (CSS px of the canvas) for a 2-D camera. */
export interface ScreenTransform {
  width: number;
  height: number;
  /** regl-scatterplot's camera.view, a column-major 4×4 matrix. */
  view: ArrayLike<number>;
}

export function toScreen(t: ScreenTransform, x: number, y: number): [number, number] {
  const v = t.view;
  const aspect = t.width / t.height;
  const cx = (v[0] * x + v[4] * y + v[12]) / aspect;
  const cy = v[1] * x + v[5] * y + v[13];
  return [(t.width * (cx + 1)) / 2, t.height * (0.5 - cy / 2)];
}

/** A view matrix that looks at (x, y) from `distance` (what camera.lookAt builds, no rotation). */
export function viewMatrix(x: number, y: number, distance: number): number[] {
  const s = 1 / distance;
  return [s, 0, 0, 0, 0, s, 0, 0, 0, 0, 1, 0, -x * s, -y * s, 0, 1];
}

/** Even-odd rule: is (px, py) inside the polygon? */
export function insidePolygon(px: number, py: number, poly: ArrayLike<number>): boolean {
  let inside = false;
  const m = poly.length / 2;
  for (let i = 0, j = m - 1; i < m; j = i++) {
    const xi = poly[2 * i], yi = poly[2 * i + 1], xj = poly[2 * j], yj = poly[2 * j + 1];
    if (yi > py !== yj > py && px < ((xj - xi) * (py - yi)) / (yj - yi) + xi) inside = !inside;
  }
  return inside;
}

/**
 * Points whose screen position lies inside `poly` (flat [x0, y0, x1, y1, …] in screen px),
 * among those with mask[i] = 1 (all when no mask).
 */
export function pointsInPolygon(x: Float32Array, y: Float32Array, t: ScreenTransform, poly: number[], mask?: Uint8Array): number[] {
  let minX = Infinity, maxX = -Infinity, minY = Infinity, maxY = -Infinity;
  for (let k = 0; k < poly.length; k += 2) {
    minX = Math.min(minX, poly[k]);
    maxX = Math.max(maxX, poly[k]);
    minY = Math.min(minY, poly[k + 1]);
    maxY = Math.max(maxY, poly[k + 1]);
  }
  const out: number[] = [];
  for (let i = 0; i < x.length; i++) {
    if (mask && !mask[i]) continue;
    const [sx, sy] = toScreen(t, x[i], y[i]);
    if (sx < minX || sx > maxX || sy < minY || sy > maxY) continue;
    if (insidePolygon(sx, sy, poly)) out.push(i);
  }
  return out;
}

/** A box from two corners as a polygon. */
export function boxPolygon(x0: number, y0: number, x1: number, y1: number): number[] {
  return [x0, y0, x1, y0, x1, y1, x0, y1];
}

export interface Centroid {
  id: number;
  x: number;
  y: number;
  size: number;
}

/**
 * Centre of each cluster (noise, id < 0, left out) in map coordinates: the median of its
 * points' x and y, so a few outliers do not drag the label off the cluster.
 */
export function clusterCentroids(x: Float32Array, y: Float32Array, clusters: Int32Array, mask?: Uint8Array): Centroid[] {
  const members = new Map<number, number[]>();
  for (let i = 0; i < x.length; i++) {
    if (clusters[i] < 0 || (mask && !mask[i])) continue;
    let list = members.get(clusters[i]);
    if (!list) members.set(clusters[i], (list = []));
    list.push(i);
  }
  const median = (vals: number[]) => {
    vals.sort((a, b) => a - b);
    const m = vals.length >> 1;
    return vals.length % 2 ? vals[m] : (vals[m - 1] + vals[m]) / 2;
  };
  return [...members.entries()].map(([id, pts]) => ({ id, x: median(pts.map((i) => x[i])), y: median(pts.map((i) => y[i])), size: pts.length }));
}

/**
 * Finer centres inside each cluster: its points split into up to 4 groups around its
 * centroid by quadrant, each group with at least `minSize` points.
 */
export function subCentroids(x: Float32Array, y: Float32Array, clusters: Int32Array, centres: Centroid[], minSize = 5, mask?: Uint8Array): (Centroid & { part: number })[] {
  const byId = new Map(centres.map((c) => [c.id, c]));
  const acc = new Map<string, { id: number; part: number; sx: number; sy: number; n: number }>();
  for (let i = 0; i < x.length; i++) {
    const c = byId.get(clusters[i]);
    if (!c || (mask && !mask[i])) continue;
    const part = (x[i] >= c.x ? 1 : 0) + (y[i] >= c.y ? 2 : 0);
    const key = `${c.id}:${part}`;
    let a = acc.get(key);
    if (!a) acc.set(key, (a = { id: c.id, part, sx: 0, sy: 0, n: 0 }));
    a.sx += x[i];
    a.sy += y[i];
    a.n++;
  }
  return [...acc.values()].filter((a) => a.n >= minSize).map((a) => ({ id: a.id, part: a.part, x: a.sx / a.n, y: a.sy / a.n, size: a.n }));
}

export interface LabelCandidate {
  text: string;
  /** Anchor (the label's centre) on screen. */
  x: number;
  y: number;
  width: number;
  height: number;
  /** Larger is placed first. */
  priority: number;
  /** Anything the caller wants back (a cluster id). */
  key: string;
}

export interface PlacedLabel extends LabelCandidate {
  left: number;
  top: number;
}

/**
 * Greedy placement: candidates by priority (largest cluster first); each is placed at its
 * anchor unless its box (plus `gap`) overlaps one already placed or leaves the viewport.
 */
export function placeLabels(candidates: LabelCandidate[], width: number, height: number, gap = 4): PlacedLabel[] {
  const placed: PlacedLabel[] = [];
  const sorted = [...candidates].sort((a, b) => b.priority - a.priority);
  for (const c of sorted) {
    const left = c.x - c.width / 2, top = c.y - c.height / 2;
    if (left < 0 || top < 0 || left + c.width > width || top + c.height > height) continue;
    const clash = placed.some((p) => left < p.left + p.width + gap && p.left < left + c.width + gap && top < p.top + p.height + gap && p.top < top + c.height + gap);
    if (!clash) placed.push({ ...c, left, top });
  }
  return placed;
}

/** Do any two placed labels overlap? (for tests and assertions) */
export function anyOverlap(labels: { left: number; top: number; width: number; height: number }[]): boolean {
  for (let i = 0; i < labels.length; i++)
    for (let j = i + 1; j < labels.length; j++) {
      const a = labels[i], b = labels[j];
      if (a.left < b.left + b.width && b.left < a.left + a.width && a.top < b.top + b.height && b.top < a.top + a.height) return true;
    }
  return false;
}
