// What the map's panels share once the points are in. Each panel takes the few parts it
// needs (Pick<MapContext, ...>), renders from the view store and the scene, and changes
// the store, never another panel.

import type createScatterplot from "regl-scatterplot";
import type { ColumnReader } from "./columnreader";
import type { Column } from "./gen/embedviz/v1/ingest_pb";
import type { MapPoints } from "./mappoints";
import type { RowTexts } from "./rowtexts";
import type { MapScene } from "./scene";
import type { ViewStore } from "./viewstate";

export type Scatterplot = ReturnType<typeof createScatterplot>;

export interface EmbedvizTestHooks {
  pointCount: number;
  totalCount: number;
  ready: boolean;
  projection: string;
  background: string;
  screenPositionOf(i: number): { x: number; y: number } | null;
  rowOfPoint(i: number): number;
  hoveredPoint: number;
  pointOfRow(row: number): number;
  selectPoints(points: number[]): void;
  selected: number[];
  lastExport: { filename: string; bytes: number; text: string } | null;
  /** Labels drawn now, with their screen boxes (canvas px). */
  labels: { text: string; left: number; top: number; width: number; height: number }[];
  /** The cluster level the labels show (0: the finest; see labels.ts levelAt). */
  labelLevel?: number;
  /** Points that pass the filters now. */
  visibleCount: number;
  /** Rows of the linked table's set (selection and filters), ascending. */
  linkedRows: number[];
  /** Colour of the legend entry with this key, or "". */
  legendColor(key: string): string;
  /** Camera as in the view state. */
  camera(): { x: number; y: number; distance: number };
}

declare global {
  interface Window {
    __embedviz?: Partial<EmbedvizTestHooks>;
  }
}

export interface MapContext {
  store: ViewStore;
  projectionName: string;
  datasetName: string;
  /** The dataset's columns, in its order. */
  columns: Column[];
  points: MapPoints;
  scatterplot: Scatterplot;
  /** What the map draws now: encoding, filter mask, search hits, highlighted points. */
  scene: MapScene;
  reader: ColumnReader;
  texts: RowTexts;
  /** The WebGL canvas, and the frame around it (the map's box on the page). */
  canvas: HTMLCanvasElement;
  frame: HTMLElement;
  /** Point size in px when nothing sizes the points. */
  baseSize: number;
  hooks: Partial<EmbedvizTestHooks>;
  /** Moves the camera to a point (keeps the zoom, or zooms in to 0.35). */
  centreOn(point: number): void;
  /** Redraws the labels layer on the next frame. */
  drawLabels(): void;
  onError(err: unknown): void;
  clearError(): void;
}
