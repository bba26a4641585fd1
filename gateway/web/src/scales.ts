// Colour scales for the map: a categorical palette that stays distinct past 20 values
// (Tableau 20, then generated hues at alternating lightness; past MAX_CATEGORIES the
// rarest values are grouped as "other"), and a continuous scale (viridis) for numbers.

/** Tableau 20, strong colours first. */
export const TABLEAU20 = [
  "#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7",
  "#9c755f", "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
  "#17becf", "#bcbd22", "#aec7e8", "#ffbb78",
];
export const NOISE_COLOR = "#b0b0b0";
export const OTHER_COLOR = "#7f7f7f";
/** Categories with their own colour; the rest are grouped as "other". */
export const MAX_CATEGORIES = 40;

function hslToHex(h: number, s: number, l: number): string {
  const a = s * Math.min(l, 1 - l);
  const f = (n: number) => {
    const k = (n + h / 30) % 12;
    const c = l - a * Math.max(-1, Math.min(k - 3, 9 - k, 1));
    return Math.round(255 * c).toString(16).padStart(2, "0");
  };
  return `#${f(0)}${f(8)}${f(4)}`;
}

/** `k` colours, all different: Tableau 20, then golden-angle hues at three lightnesses. */
export function categoricalPalette(k: number): string[] {
  const out = TABLEAU20.slice(0, k);
  const seen = new Set(out);
  for (let i = 0; out.length < k; i++) {
    const hue = (i * 137.508 + 20) % 360;
    const light = [0.42, 0.62, 0.32][i % 3];
    const sat = [0.7, 0.55, 0.8][Math.floor(i / 3) % 3];
    const c = hslToHex(hue, sat, light);
    if (!seen.has(c)) {
      seen.add(c);
      out.push(c);
    }
  }
  return out;
}

export function hexToRgb(hex: string): [number, number, number] {
  const v = Number.parseInt(hex.slice(1), 16);
  return [(v >> 16) & 255, (v >> 8) & 255, v & 255];
}

/** Viridis, 9 stops; numbers are interpolated between them. */
const VIRIDIS = ["#440154", "#472d7b", "#3b528b", "#2c728e", "#21918c", "#28ae80", "#5ec962", "#addc30", "#fde725"];

/** The colour of t in [0, 1] on the continuous scale. */
export function sequentialColor(t: number): string {
  const u = Math.max(0, Math.min(1, Number.isFinite(t) ? t : 0)) * (VIRIDIS.length - 1);
  const i = Math.min(VIRIDIS.length - 2, Math.floor(u));
  const f = u - i;
  const a = hexToRgb(VIRIDIS[i]), b = hexToRgb(VIRIDIS[i + 1]);
  const mix = a.map((v, j) => Math.round(v + (b[j] - v) * f));
  return `#${mix.map((v) => v.toString(16).padStart(2, "0")).join("")}`;
}

/** `steps` colours along the continuous scale (what the renderer interpolates between). */
export function sequentialRamp(steps = 64): string[] {
  return Array.from({ length: steps }, (_, i) => sequentialColor(i / (steps - 1)));
}

export interface NumericScale {
  lo: number;
  hi: number;
  /** t in [0, 1] for a value; NaN for a missing one. */
  normalize(v: number): number;
  color(v: number): string;
}

export function numericScale(values: ArrayLike<number>): NumericScale {
  let lo = Infinity, hi = -Infinity;
  for (let i = 0; i < values.length; i++) {
    const v = values[i];
    if (!Number.isFinite(v)) continue;
    if (v < lo) lo = v;
    if (v > hi) hi = v;
  }
  if (!Number.isFinite(lo)) (lo = 0), (hi = 0);
  const span = hi - lo;
  const normalize = (v: number) => (Number.isFinite(v) ? (span > 0 ? (v - lo) / span : 0.5) : Number.NaN);
  return { lo, hi, normalize, color: (v: number) => (Number.isFinite(v) ? sequentialColor(normalize(v)) : NOISE_COLOR) };
}

export interface CategoryEntry {
  /** The legend key: the value itself, "__other__" or "__null__". */
  key: string;
  label: string;
  color: string;
  count: number;
}

/**
 * Legend entries of a categorical encoding: values by count (most common first) each with
 * its own colour up to `max`, the tail grouped as "other", nulls last.
 */
export function categoryEntries(counts: Map<string, number>, nullCount: number, max = MAX_CATEGORIES): CategoryEntry[] {
  const top = [...counts.entries()].sort((a, b) => b[1] - a[1] || (a[0] < b[0] ? -1 : 1));
  const own = top.length > max ? top.slice(0, max - 1) : top;
  const palette = categoricalPalette(own.length);
  const entries: CategoryEntry[] = own.map(([v, count], i) => ({ key: v, label: v === "" ? "(empty)" : v, color: palette[i], count }));
  const rest = top.slice(own.length);
  if (rest.length) entries.push({ key: "__other__", label: `other (${rest.length} values)`, color: OTHER_COLOR, count: rest.reduce((s, [, c]) => s + c, 0) });
  if (nullCount) entries.push({ key: "__null__", label: "null", color: NOISE_COLOR, count: nullCount });
  return entries;
}
