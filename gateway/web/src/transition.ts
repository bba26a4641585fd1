// A smooth move between two 2-D maps of the same rows: each point goes from where it was
// on the old map to where it is on the new one. Pure (typed arrays in, typed arrays out),
// tested in Node; map.ts drives it frame by frame.

export interface Positions {
  /** Dataset row of each point. */
  rows: ArrayLike<number>;
  x: Float32Array;
  y: Float32Array;
}

/** How long a switch between two 2-D maps moves the points, in ms. */
export const TRANSITION_MS = 800;
/** Past this many points a switch jumps: redrawing a million points each frame would stutter. */
export const TRANSITION_MAX_POINTS = 300_000;

/**
 * The old map's positions in the new map's point order (matched by row). Rows the old
 * map lacks start where they end. null when too few rows are shared for a move to mean
 * anything (under half of the new map).
 */
export function alignPositions(previous: Positions, next: Positions, n: number): { x: Float32Array; y: Float32Array } | null {
  let maxRow = -1;
  for (let i = 0; i < previous.rows.length; i++) if (previous.rows[i] > maxRow) maxRow = previous.rows[i];
  const at = new Int32Array(maxRow + 1).fill(-1);
  for (let i = 0; i < previous.rows.length; i++) at[previous.rows[i]] = i;
  const x = new Float32Array(n), y = new Float32Array(n);
  let shared = 0;
  for (let i = 0; i < n; i++) {
    const r = next.rows[i];
    const j = r >= 0 && r <= maxRow ? at[r] : -1;
    if (j >= 0) {
      x[i] = previous.x[j];
      y[i] = previous.y[j];
      shared++;
    } else {
      x[i] = next.x[i];
      y[i] = next.y[i];
    }
  }
  return n > 0 && shared * 2 >= n ? { x, y } : null;
}

/** Slow at both ends: 0 → 0, 0.5 → 0.5, 1 → 1. */
export function easeInOutCubic(t: number): number {
  const c = Math.min(1, Math.max(0, t));
  return c < 0.5 ? 4 * c * c * c : 1 - (-2 * c + 2) ** 3 / 2;
}

/** out[i] = from[i] + (to[i] - from[i]) · t. */
export function interpolate(from: Float32Array, to: Float32Array, t: number, out: Float32Array): Float32Array {
  for (let i = 0; i < out.length; i++) out[i] = from[i] + (to[i] - from[i]) * t;
  return out;
}

/** The eased fraction of the move at `elapsed` ms (1 once it is over). */
export function progressAt(elapsed: number, duration = TRANSITION_MS): number {
  return duration <= 0 ? 1 : easeInOutCubic(elapsed / duration);
}
