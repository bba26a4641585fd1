// One view state for the workspace: what is open (project, dataset, embedding, projection),
// how the map looks (camera, colour and size encodings, hidden legend entries), what is
// filtered, selected and searched. Every panel renders from it; the URL carries it, so a
// link reopens the same view. Plain TypeScript, no DOM: tested in Node.

export interface Camera {
  /** Map centre in normalised map coordinates ([-1, 1] both ways). */
  x: number;
  y: number;
  /** Camera distance: 1 shows the whole map, smaller is zoomed in. */
  distance: number;
}

export interface Filters {
  /** Column → the values kept (a row passes when its value is one of them). */
  categories: Record<string, string[]>;
  /** Column → [lo, hi] inclusive. */
  ranges: Record<string, [number, number]>;
  /** Keep only the search hits. */
  searchOnly: boolean;
  /** Keep only the selected rows. */
  selectionOnly: boolean;
}

export interface Search {
  query: string;
  /** "" = by meaning; else a text search in this column. */
  column: string;
}

export interface ViewState {
  project: string;
  dataset: string;
  embedding: string;
  projection: string;
  camera: Camera | null;
  /** "" = by cluster, else a column name. */
  colorBy: string;
  /** "" = constant size, else a numeric column. */
  sizeBy: string;
  /** Legend keys (cluster ids or column values) hidden from the map. */
  hidden: string[];
  filters: Filters;
  /** Selected dataset row indexes, ascending. */
  selection: number[];
  search: Search;
  /** The point whose details are open (a row index), or -1. */
  focus: number;
  /** Columns the tooltip shows; [] = the embedded text. */
  tooltip: string[];
  /** The linked table's sort, or null for row order. */
  sort: TableSort | null;
  /** The linked table's columns; [] = all of them. */
  tableColumns: string[];
}

export interface TableSort {
  column: string;
  desc: boolean;
}

export function emptyFilters(): Filters {
  return { categories: {}, ranges: {}, searchOnly: false, selectionOnly: false };
}

export function emptyView(): ViewState {
  return {
    project: "",
    dataset: "",
    embedding: "",
    projection: "",
    camera: null,
    colorBy: "",
    sizeBy: "",
    hidden: [],
    filters: emptyFilters(),
    selection: [],
    search: { query: "", column: "" },
    focus: -1,
    tooltip: [],
    sort: null,
    tableColumns: [],
  };
}

export function hasFilters(f: Filters): boolean {
  return Object.keys(f.categories).length > 0 || Object.keys(f.ranges).length > 0 || f.searchOnly || f.selectionOnly;
}

type Listener = (state: ViewState, previous: ViewState) => void;

/** A store: get(), update(patch) notifies subscribers once per change. */
export class ViewStore {
  private state: ViewState;
  private readonly listeners = new Set<Listener>();

  constructor(initial: ViewState = emptyView()) {
    this.state = initial;
  }

  get(): ViewState {
    return this.state;
  }

  update(patch: Partial<ViewState> | ((s: ViewState) => Partial<ViewState>)): void {
    const previous = this.state;
    const change = typeof patch === "function" ? patch(previous) : patch;
    const next = { ...previous, ...change };
    if (sameView(previous, next)) return;
    this.state = next;
    for (const l of [...this.listeners]) l(next, previous);
  }

  subscribe(listener: Listener): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /** Calls `fn` when the value `pick` returns changes (compared as JSON). */
  watch<T>(pick: (s: ViewState) => T, fn: (value: T, state: ViewState) => void): () => void {
    let last = JSON.stringify(pick(this.state));
    return this.subscribe((s) => {
      const v = pick(s);
      const key = JSON.stringify(v);
      if (key === last) return;
      last = key;
      fn(v, s);
    });
  }
}

export function sameView(a: ViewState, b: ViewState): boolean {
  return JSON.stringify(a) === JSON.stringify(b);
}

// ---------- URL ----------

/** Row indexes as runs: [1,2,3,7,9,10] → "1-3,7,9-10". */
export function encodeRows(rows: number[]): string {
  const sorted = [...new Set(rows)].sort((a, b) => a - b);
  const parts: string[] = [];
  for (let i = 0; i < sorted.length; ) {
    let j = i;
    while (j + 1 < sorted.length && sorted[j + 1] === sorted[j] + 1) j++;
    parts.push(j === i ? String(sorted[i]) : `${sorted[i]}-${sorted[j]}`);
    i = j + 1;
  }
  return parts.join(",");
}

export function decodeRows(text: string): number[] {
  const out: number[] = [];
  for (const part of text.split(",")) {
    const m = /^(\d+)(?:-(\d+))?$/.exec(part.trim());
    if (!m) continue;
    const a = Number(m[1]), b = m[2] === undefined ? a : Number(m[2]);
    for (let r = a; r <= b && out.length < 5_000_000; r++) out.push(r);
  }
  return out;
}

const round = (v: number, digits = 5) => Number(v.toFixed(digits));

/**
 * The hash of a view: the resource path (the projection when one is open, else the
 * dataset) and, after "?", the rest of the view as query parameters.
 */
export function viewToHash(s: ViewState): string {
  const path = s.projection || s.embedding || s.dataset || s.project;
  const q = new URLSearchParams();
  if (s.camera) q.set("cam", [round(s.camera.x), round(s.camera.y), round(s.camera.distance)].join(","));
  if (s.colorBy) q.set("color", s.colorBy);
  if (s.sizeBy) q.set("size", s.sizeBy);
  if (s.hidden.length) q.set("hide", JSON.stringify(s.hidden));
  const f = s.filters;
  if (Object.keys(f.categories).length || Object.keys(f.ranges).length) q.set("filter", JSON.stringify({ c: f.categories, r: f.ranges }));
  if (f.searchOnly) q.set("only", f.selectionOnly ? "search,selection" : "search");
  else if (f.selectionOnly) q.set("only", "selection");
  if (s.selection.length) q.set("sel", encodeRows(s.selection));
  if (s.search.query) q.set("q", s.search.query);
  if (s.search.column) q.set("qcol", s.search.column);
  if (s.focus >= 0) q.set("focus", String(s.focus));
  if (s.tooltip.length) q.set("tip", JSON.stringify(s.tooltip));
  if (s.sort) q.set("sort", JSON.stringify([s.sort.column, s.sort.desc ? "desc" : "asc"]));
  if (s.tableColumns.length) q.set("cols", JSON.stringify(s.tableColumns));
  const query = q.toString();
  return `#/${path}${query ? `?${query}` : ""}`;
}

function parseJson<T>(text: string | null, fallback: T, valid: (v: unknown) => boolean): T {
  if (!text) return fallback;
  try {
    const v = JSON.parse(text) as unknown;
    return valid(v) ? (v as T) : fallback;
  } catch {
    return fallback;
  }
}

const isObject = (v: unknown): v is Record<string, unknown> => typeof v === "object" && v !== null && !Array.isArray(v);

/** The view a hash describes; what it does not say stays empty. */
export function hashToView(hash: string): ViewState {
  const s = emptyView();
  const raw = hash.replace(/^#\/?/, "");
  const at = raw.indexOf("?");
  const path = (at >= 0 ? raw.slice(0, at) : raw).replace(/\/+$/, "");
  const q = new URLSearchParams(at >= 0 ? raw.slice(at + 1) : "");
  const parts = path.split("/");
  if (parts[0] === "projects" && parts.length >= 2) s.project = parts.slice(0, 2).join("/");
  if (parts[2] === "datasets" && parts.length >= 4) s.dataset = parts.slice(0, 4).join("/");
  if (parts[4] === "embeddings" && parts.length >= 6) s.embedding = parts.slice(0, 6).join("/");
  if (parts[6] === "projections" && parts.length >= 8) s.projection = parts.slice(0, 8).join("/");
  const cam = q.get("cam")?.split(",").map(Number);
  if (cam && cam.length === 3 && cam.every(Number.isFinite) && cam[2] > 0) s.camera = { x: cam[0], y: cam[1], distance: cam[2] };
  s.colorBy = q.get("color") ?? "";
  s.sizeBy = q.get("size") ?? "";
  s.hidden = parseJson<string[]>(q.get("hide"), [], (v) => Array.isArray(v) && v.every((x) => typeof x === "string"));
  const filter = parseJson<{ c?: Record<string, string[]>; r?: Record<string, [number, number]> }>(q.get("filter"), {}, isObject);
  if (isObject(filter.c)) {
    for (const [k, v] of Object.entries(filter.c)) if (Array.isArray(v)) s.filters.categories[k] = v.map(String);
  }
  if (isObject(filter.r)) {
    for (const [k, v] of Object.entries(filter.r)) if (Array.isArray(v) && v.length === 2 && v.every((x) => typeof x === "number")) s.filters.ranges[k] = [v[0], v[1]];
  }
  const only = (q.get("only") ?? "").split(",");
  s.filters.searchOnly = only.includes("search");
  s.filters.selectionOnly = only.includes("selection");
  s.selection = decodeRows(q.get("sel") ?? "");
  s.search = { query: q.get("q") ?? "", column: q.get("qcol") ?? "" };
  const focus = Number(q.get("focus") ?? "-1");
  s.focus = Number.isInteger(focus) && focus >= 0 ? focus : -1;
  const strings = (v: unknown) => Array.isArray(v) && v.every((x) => typeof x === "string");
  s.tooltip = parseJson<string[]>(q.get("tip"), [], strings);
  const sort = parseJson<string[] | null>(q.get("sort"), null, (v) => strings(v) && (v as string[]).length === 2 && ["asc", "desc"].includes((v as string[])[1]));
  s.sort = sort ? { column: sort[0], desc: sort[1] === "desc" } : null;
  s.tableColumns = parseJson<string[]>(q.get("cols"), [], strings);
  return s;
}

/** The resource path of a hash, without its view query. */
export function hashPath(hash: string): string {
  const raw = hash.replace(/^#\/?/, "");
  const at = raw.indexOf("?");
  return (at >= 0 ? raw.slice(0, at) : raw).replace(/\/+$/, "");
}
