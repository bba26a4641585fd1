// The 3-D view's arithmetic, without the DOM or the API: normalising points into a cube,
// projecting them through an orbit camera with perspective, drawing order. Tested in Node.

export interface Orbit {
  /** Rotation about the vertical axis, radians. */
  yaw: number;
  /** Rotation about the horizontal axis, radians. */
  pitch: number;
  /** Camera distance from the centre (the points fill [-1, 1]³). */
  distance: number;
}

export const DEFAULT_ORBIT: Orbit = { yaw: 0.6, pitch: 0.35, distance: 3.2 };

/** Centres the points and scales them into [-1, 1]³ with one scale for all axes. */
export function normalize3d(coords: Float32Array, n: number): Float32Array {
  const lo = [Infinity, Infinity, Infinity], hi = [-Infinity, -Infinity, -Infinity];
  for (let i = 0; i < n; i++)
    for (let a = 0; a < 3; a++) {
      const v = coords[i * 3 + a];
      if (!Number.isFinite(v)) continue;
      if (v < lo[a]) lo[a] = v;
      if (v > hi[a]) hi[a] = v;
    }
  const centre = lo.map((l, a) => (Number.isFinite(l) ? (l + hi[a]) / 2 : 0));
  const half = Math.max(...lo.map((l, a) => (Number.isFinite(l) ? (hi[a] - l) / 2 : 0)));
  const s = half > 0 ? 1 / half : 0;
  const out = new Float32Array(n * 3);
  for (let i = 0; i < n * 3; i++) {
    const v = coords[i];
    out[i] = Number.isFinite(v) ? (v - centre[i % 3]) * s : 0;
  }
  return out;
}

/**
 * Screen positions (CSS px) and depths of every point for an orbit camera with a
 * perspective of `fov` (focal length in units of half the shorter side).
 */
export function project3d(xyz: Float32Array, n: number, orbit: Orbit, width: number, height: number, focal = 2.4): { sx: Float32Array; sy: Float32Array; depth: Float32Array } {
  const cy = Math.cos(orbit.yaw), sy_ = Math.sin(orbit.yaw), cp = Math.cos(orbit.pitch), sp = Math.sin(orbit.pitch);
  const half = Math.min(width, height) / 2;
  const sx = new Float32Array(n), sy = new Float32Array(n), depth = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    const x = xyz[i * 3], y = xyz[i * 3 + 1], z = xyz[i * 3 + 2];
    // Yaw about y, then pitch about x.
    const x1 = cy * x + sy_ * z;
    const z1 = -sy_ * x + cy * z;
    const y2 = cp * y - sp * z1;
    const z2 = sp * y + cp * z1;
    const d = orbit.distance - z2;
    const f = d > 0.05 ? focal / d : 0;
    sx[i] = width / 2 + x1 * f * half;
    sy[i] = height / 2 - y2 * f * half;
    depth[i] = d;
  }
  return { sx, sy, depth };
}

/** Indexes ordered back to front (farthest first), so near points are drawn last. */
export function backToFront(depth: Float32Array): Uint32Array {
  const order = new Uint32Array(depth.length);
  for (let i = 0; i < order.length; i++) order[i] = i;
  return order.sort((a, b) => depth[b] - depth[a]);
}
